"""The shapes of the format's documents, and the check that a document has them.

Owns one declarative table per document (bundle, event, receipt, key, signature,
state): which fields must be there and of what JSON type. After `check` returns no
problem, the rules in `verify` may index the document without guarding every step.
It does not check values against each other (hashes, signatures, times): `verify` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pithcrawl.findings import pointer

# A spec is a JSON type name, a Const, a Nullable, a ListOf or an Obj.


@dataclass(frozen=True, slots=True)
class Const:
    value: str


@dataclass(frozen=True, slots=True)
class Nullable:
    inner: Spec


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Spec


@dataclass(frozen=True, slots=True)
class Obj:
    required: dict[str, Spec]
    optional: dict[str, Spec]


Spec = str | Const | Nullable | ListOf | Obj

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "object": (dict,),
    "array": (list,),
    "boolean": (bool,),
    "any": (object,),
}

SIGNER = Obj(
    required={"key_id": "string", "public_key_fingerprint": "string"},
    optional={"signer_id": "string", "signer_type": "string"},
)
SIGNATURE_FIELDS: dict[str, Spec] = {
    "algorithm": Const("ed25519"),
    "key_id": "string",
    "public_key_fingerprint": "string",
    "signature_b64": "string",
    "signed_at": "string",
}
EVENT_SIGNATURE = Obj(
    required=SIGNATURE_FIELDS,
    optional={
        "signed_message": Const("open_graph_event_sha256_bytes"),
        "signature_status": "string",
    },
)
BUNDLE_SIGNATURE = Obj(
    required={**SIGNATURE_FIELDS, "bundle_sha256": "string"},
    optional={"signed_message": Const("bundle_sha256_bytes"), "signature_status": "string"},
)
RECEIPT = Obj(
    required={
        **SIGNATURE_FIELDS,
        "canonical_sha256": "string",
        "first_computed_at": "string",
        "last_reissued_at": "string",
    },
    optional={
        "kind": Const("pith_receipt"),
        "signed_message": Const("canonical_sha256_bytes"),
        "signature_status": "string",
        "builder_version": "string",
        "receipt_version": "string",
    },
)
CANONICAL_RECORD = Obj(
    required={
        "metadata": Obj(required={"submitted_at": "string"}, optional={}),
        "source": "object",
    },
    optional={"schema_version": "string"},
)
EVENT = Obj(
    required={
        "event_type": "string",
        "subject_pith_number": "string",
        "target": "string",
        "payload": "object",
        "signer": SIGNER,
        "created_at": "string",
        "supersedes": ListOf("string"),
        "prev_event": Nullable("string"),
        "signature": EVENT_SIGNATURE,
        "content_sha256": "string",
        "event_id": "string",
    },
    optional={"schema_version": "string"},
)
RECORD_CREATED_PAYLOAD = Obj(
    required={
        "canonical_record": CANONICAL_RECORD,
        "canonical_sha256": "string",
        "receipt": RECEIPT,
    },
    optional={},
)
PUBLIC_KEY = Obj(
    required={"key_id": "string"},
    optional={
        "algorithm": "string",
        "format": "string",
        "public_key_b64": "string",
        "public_key_hex": "string",
        "fingerprint_sha256_b32_first128bits": "string",
        "fingerprint_sha256_hex": "string",
        "rotates_at": Nullable("string"),
    },
)
ALIAS = Obj(
    required={"alias_kind": "string", "alias_value": "string"},
    optional={"created_at": "string"},
)
STATE = Obj(
    required={
        "state_type": Const("pith_open_graph_state"),
        "pith_number": "string",
        "current": "object",
        "state_sha256": "string",
    },
    optional={
        "state_version": "string",
        "merge_version": "string",
        "event_count": "integer",
        "valid_event_count": "integer",
        "invalid_event_count": "integer",
        "equivocation_count": "integer",
        "equivocations": "array",
        "invalid_events": "array",
        "applied_event_ids": ListOf("string"),
    },
)
BUNDLE = Obj(
    required={
        "bundle_type": Const("pith_open_graph_bundle"),
        "pith_number": "string",
        "canonical_record": CANONICAL_RECORD,
        "canonical_sha256": "string",
        "source_aliases": ListOf(ALIAS),
        "events": ListOf(EVENT),
        "public_keys": ListOf(PUBLIC_KEY),
        "merge_version": "string",
        "built_at": "string",
        "state": STATE,
        "bundle_signature": BUNDLE_SIGNATURE,
    },
    optional={
        "bundle_version": "string",
        "short_pith_number": "string",
        "source": "object",
        "timestamp_proofs": "array",
        "mirror_hints": ListOf("object"),
        "links": "object",
    },
)


Validator = Callable[[Any], bool]


def fits(doc: Any, spec: Spec) -> bool:
    """Whether `doc` fits `spec`: the fast question, asked of every document fetched."""
    return _compiled(spec)(doc)


def validator(spec: Spec) -> Validator:
    """`fits` for one spec, as a function a hot caller can keep: `validator(s)(d)` is
    `fits(d, s)` without the look-up."""
    return _compiled(spec)


def _compiled(spec: Spec) -> Validator:
    validator = _CACHE.get(id(spec))
    if validator is None:
        validator = _CACHE[id(spec)] = _compile(spec)
    return validator


_CACHE: dict[int, Validator] = {}


def _compile(spec: Spec) -> Validator:
    """Generate one flat Python function for `spec`: no call per field, so it is cheap
    enough to run on every document fetched."""
    gen = _Gen()
    # Builtins are bound as defaults: local lookups, not global ones. A required field is
    # read by subscript, and its absence ends the check through KeyError: the `try`
    # costs nothing in 3.11, a lookup with a sentinel costs a method call per field.
    head = "def fits(x0, type=type, str=str, int=int, dict=dict, list=list, bool=bool):"
    body = gen.lines(spec, "x0", 2)
    lines = [head, "    try:", *body, "    except KeyError:", "        return False"]
    lines.append("    return True")
    namespace: dict[str, Any] = dict(gen.consts)
    exec("\n".join(lines), namespace)  # noqa: S102 - source generated from the tables above
    validator: Validator = namespace["fits"]
    return validator


_EXACT = {"string": "str", "integer": "int", "object": "dict", "array": "list", "boolean": "bool"}


class _Gen:
    def __init__(self) -> None:
        self.consts: dict[str, str] = {}
        self.names = 0

    def fresh(self) -> str:
        self.names += 1
        return f"x{self.names}"

    def lines(self, spec: Spec, var: str, depth: int) -> list[str]:
        pad = "    " * depth
        if isinstance(spec, str):
            if spec == "any":
                return []
            return [f"{pad}if type({var}) is not {_EXACT[spec]}: return False"]
        if isinstance(spec, Const):
            name = f"C{len(self.consts)}"
            self.consts[name] = spec.value
            return [f"{pad}if type({var}) is not str or {var} != {name}: return False"]
        if isinstance(spec, Nullable):
            return [f"{pad}if {var} is not None:", *self.lines(spec.inner, var, depth + 1)]
        if isinstance(spec, ListOf):
            item = self.fresh()
            return [
                f"{pad}if type({var}) is not list: return False",
                f"{pad}for {item} in {var}:",
                *(self.lines(spec.item, item, depth + 1) or [f"{pad}    pass"]),
            ]
        out = [f"{pad}if type({var}) is not dict: return False"]
        for name, field in spec.required.items():
            if isinstance(field, str) and field != "any":
                # The commonest field, a plain type, needs no name of its own.
                out.append(f"{pad}if type({var}[{name!r}]) is not {_EXACT[field]}: return False")
                continue
            sub = self.fresh()
            inner = self.lines(field, sub, depth)
            if inner:
                out += [f"{pad}{sub} = {var}[{name!r}]", *inner]
            else:
                out.append(f"{pad}if {name!r} not in {var}: return False")
        for name, field in spec.optional.items():
            if field == "string":
                # An absent optional string reads as "", which passes: one lookup.
                out.append(f"{pad}if type({var}.get({name!r}, '')) is not str: return False")
                continue
            sub = self.fresh()
            inner = self.lines(field, sub, depth + 1)
            if inner:
                out += [f"{pad}if {name!r} in {var}:", f"{pad}    {sub} = {var}[{name!r}]", *inner]
        return out


def check(doc: Any, spec: Spec, *path: str | int) -> Iterator[tuple[str, str]]:
    """Yield (JSON Pointer, message) for every place where `doc` does not fit `spec`."""
    if not fits(doc, spec):
        yield from _explain(doc, spec, *path)


def _explain(doc: Any, spec: Spec, *path: str | int) -> Iterator[tuple[str, str]]:
    if isinstance(spec, str):
        if not _is(doc, spec):
            yield pointer(*path), f"expected {spec}, found {_json_type(doc)}"
    elif isinstance(spec, Const):
        if doc != spec.value:
            yield pointer(*path), f"expected {spec.value!r}, found {_short(doc)}"
    elif isinstance(spec, Nullable):
        if doc is not None:
            yield from _explain(doc, spec.inner, *path)
    elif isinstance(spec, ListOf):
        if not isinstance(doc, list):
            yield pointer(*path), f"expected array, found {_json_type(doc)}"
            return
        for i, item in enumerate(doc):
            yield from _explain(item, spec.item, *path, i)
    else:
        if not isinstance(doc, dict):
            yield pointer(*path), f"expected object, found {_json_type(doc)}"
            return
        for name, sub in spec.required.items():
            if name not in doc:
                yield pointer(*path, name), f"required field {name!r} is missing"
            else:
                yield from _explain(doc[name], sub, *path, name)
        for name, sub in spec.optional.items():
            if name in doc:
                yield from _explain(doc[name], sub, *path, name)


def _is(value: Any, type_name: str) -> bool:
    if type_name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[type_name])


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for name, types in _TYPES.items():
        if (
            name != "any"
            and isinstance(value, types)
            and not (name == "integer" and isinstance(value, bool))
        ):
            return name
    return "number" if isinstance(value, float) else type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
