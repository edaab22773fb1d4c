"""Strict JSON parsing, canonical JSON and the format's hashes (pith-format.md §1).

Owns the one definition of `canon(x)` and `H(x)` and the parser that refuses every
document two JSON parsers could read differently (duplicate keys, NaN/Infinity,
invalid UTF-8, a lone surrogate, absurd depth). It does not know what a bundle is:
`verify` decides what to hash.

Speed without a second definition: `canon` is written once, as the spec writes it
(`canonical_reference`), and computed by orjson, which produces the same bytes for
every document `parse` returns: the same escapes and key order, and floats are parsed
as `JsonFloat` so that orjson hands them back to Python's own `repr`. Integers beyond
64 bits fall back to the reference. The equivalence is a tested property.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

import orjson

#: At most this many values (counted from the structural bytes, before parsing) in a
#: document: a real bundle has about 1,500; a hostile one of a few MB of `[[],[],...]`
#: would otherwise cost tens of bytes of Python objects per byte received.
MAX_VALUES = 200_000


def _too_many_values(data: bytes) -> int | None:
    """An upper bound on the values in `data` when it is over the limit, else None."""
    if len(data) < 2 * MAX_VALUES:
        return None  # every value takes a byte and all but one a separator: it fits
    bound = data.count(b",") + data.count(b"[") + data.count(b"{")
    return bound if bound > MAX_VALUES else None


#: orjson reserves a dozen or more bytes of working memory per byte it reads; above this
#: size (real bundles are ~15 KB) the standard parser, leaner per byte, reads instead.
COMPACT_MAX_BYTES = 256 * 1024


#: An exponent as orjson writes one below 1e-4 (`1e-7`, `1.5e-7`), less the digit before.
_NEGATIVE_EXPONENT = re.compile(rb"e-[0-9]")


def _orjson_own_float(data: bytes) -> bool:
    """Whether `data` (written as orjson writes, the round trip proved it) may hold a
    float whose orjson writing is not Python's repr, the spec's canonical form.

    The two differ exactly for 0 < |x| < 1e-4: orjson writes `0.00001` (repr `1e-05`)
    down to 1e-5 and `1e-7` (repr `1e-07`) below. Conservative: a string that happens
    to hold such text only sends the document to the slower reading. A substring search
    and a pattern that starts with a literal (both scan at memory speed; a pattern
    starting with a digit class costs ten times as much here).
    """
    if b"0.0000" in data:
        return True
    for found in _NEGATIVE_EXPONENT.finditer(data):
        if data[found.start() - 1 : found.start()].isdigit():
            return True
    return False


class MalformedJSON(ValueError):
    """The bytes are not one strict JSON document; the message says why."""


class JsonFloat(float):
    """A float read from a document: canonicalised by Python's `repr`, as the spec says."""

    __slots__ = ()


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MalformedJSON(f"duplicate object key {key!r}")
            seen.add(key)
    return obj


def _constant(name: str) -> Any:
    raise MalformedJSON(f"{name} is not JSON")


def _float(text: str) -> JsonFloat:
    value = JsonFloat(text)
    if not math.isfinite(value):
        raise MalformedJSON(f"number {text[:40]!r} is out of range")
    return value


_fast = json.JSONDecoder(parse_float=_float, parse_constant=_constant)
_strict = json.JSONDecoder(object_pairs_hook=_pairs, parse_float=_float, parse_constant=_constant)


def parse(data: bytes) -> Any:
    """Parse one strict JSON document from raw bytes, or raise `MalformedJSON`."""
    too_many = _too_many_values(data)
    if too_many is not None:
        raise MalformedJSON(f"too large: up to {too_many} values (at most {MAX_VALUES})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedJSON(f"invalid UTF-8 at byte {e.start}") from None
    if text.startswith("\ufeff"):
        raise MalformedJSON("byte order mark before the document")
    try:
        doc = _fast.decode(text)
        # Documents as the registry serves them are compact JSON that re-serialises to
        # the same bytes; when they do, no key was dropped, so none was duplicated.
        # Anything else (whitespace, other escapes, duplicates) takes the strict parser.
        if _round_trip(doc) != data:
            doc = _strict.decode(text)
    except MalformedJSON:
        raise
    except RecursionError:
        # The C parser guards its own recursion; past the interpreter's limit the
        # document is refused whole, so no later code walks an unbounded tree.
        raise MalformedJSON("nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError, and int()'s 4300-digit cap
        raise MalformedJSON(f"not JSON: {e}") from None
    if "\\ud" in text or "\\uD" in text:
        # Only an escape can smuggle a lone surrogate past the UTF-8 decoder.
        try:
            canon(doc)
        except UnicodeEncodeError as e:
            raise MalformedJSON(f"string holds a lone surrogate at offset {e.start}") from None
    return doc


#: The deepest nesting `parse` accepts: what orjson writes, 254 levels (a real bundle
#: nests about ten). Every tree pithcrawl derives from a document (a state nests a payload a
#: few levels deeper) then stays far inside the interpreter's recursion limit, which a
#: document nested some 980 levels deep reached in the canonical writer and crashed
#: the complete check.
MAX_DEPTH = 254


def _round_trip(doc: Any) -> bytes:
    """`doc` written back compactly, in its own key order; `MalformedJSON` if it is nested
    deeper than `MAX_DEPTH`."""
    try:
        written: bytes = orjson.dumps(doc, default=_default)
    except orjson.JSONEncodeError:
        # Past 64 bits, a lone surrogate, or too deep: only the last is refused here.
        if _deeper_than(doc, MAX_DEPTH):
            raise MalformedJSON(f"nested too deeply (more than {MAX_DEPTH} levels)") from None
        return _dumps(doc, 0)
    return written


def _deeper_than(doc: Any, limit: int) -> bool:
    """Whether `doc` nests more than `limit` arrays and objects (iterative: no recursion)."""
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_compact(data: bytes) -> Any | None:
    """The fast reading of a compact document, or None when only `parse` may read it.

    orjson reads the document; when re-serialising it gives back exactly the same bytes,
    no key was duplicated or dropped and no integer was rounded, and every float is
    written as orjson writes it. Its floats are plain floats, which `canon` formats as
    orjson does; orjson and Python's `repr` (the spec's canonical form) agree on every
    float but those with 0 < |x| < 1e-4, so a document that may hold one of those is
    left to `parse` (`_orjson_own_float`). `verify.verify_bundle` also falls back to
    `parse` whenever this reading gives any finding.
    """
    if len(data) > COMPACT_MAX_BYTES or _too_many_values(data) is not None:
        return None
    try:
        doc = orjson.loads(data)
        if type(doc) is not dict or orjson.dumps(doc) != data:
            return None
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return None  # not JSON, or nested deeper than orjson writes (about 255)
    if _orjson_own_float(data):
        # A float below 1e-4 that orjson writes its own way (`1e-7`, `0.00001`), not as
        # Python's repr does (`1e-07`, `1e-05`): its canonical form is `parse`'s to give.
        return None
    return doc


class Piece:
    """A JSON value with its canonical bytes computed once, to be embedded in larger
    documents without serialising it again. Canonically it *is* its value."""

    __slots__ = ("data", "fragment", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.data = canon(value)
        self.fragment = orjson.Fragment(self.data)


def _default(obj: Any) -> Any:
    if isinstance(obj, Piece):
        return obj.fragment
    if isinstance(obj, float):
        return orjson.Fragment(float.__repr__(obj).encode("ascii"))
    raise TypeError(f"{type(obj).__name__} is not JSON")


def _unpiece(obj: Any) -> Any:
    if isinstance(obj, Piece):
        return obj.value
    raise TypeError(f"{type(obj).__name__} is not JSON")


def _dumps(x: Any, option: int) -> bytes:
    try:
        return orjson.dumps(x, default=_default, option=option)
    except orjson.JSONEncodeError as e:
        if "surrogates" in str(e):
            raise UnicodeEncodeError("utf-8", "", 0, 1, "lone surrogate") from None
        # Integers past 64 bits: the reference encoder is exact for them.
        if option:
            return canonical_reference(x)
        return json.dumps(x, separators=(",", ":"), ensure_ascii=False, default=_unpiece).encode(
            "utf-8"
        )


def canonical_reference(x: Any) -> bytes:
    """canon(x) exactly as pith-format.md §1 writes it."""
    return json.dumps(
        x, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_unpiece
    ).encode("utf-8")


def canon(x: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no spaces, UTF-8 (pith-format.md §1).

    Floats must come from `parse` (as `JsonFloat`); pithcrawl builds no others.
    """
    return _dumps(x, orjson.OPT_SORT_KEYS)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def H(x: Any) -> str:
    """sha256 hex of the canonical JSON of `x`."""
    return hashlib.sha256(canon(x)).hexdigest()


def without(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    """A shallow copy of `obj` without `keys`: what most of the format's hashes cover."""
    return {k: v for k, v in obj.items() if k not in keys}
