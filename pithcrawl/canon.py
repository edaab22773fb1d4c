"""Strict JSON parsing, canonical JSON and the format's hashes (pith-format.md §1).

Owns the one definition of `canon(x)` and `H(x)` and the parser that refuses every
document two JSON parsers could read differently (duplicate keys, NaN/Infinity,
invalid UTF-8, a lone surrogate, absurd depth or size). It does not know what a
bundle is: `verify` decides what to hash.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any



class MalformedJSON(ValueError):
    """The bytes are not one strict JSON document; the message says why."""


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


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise MalformedJSON(f"number {text[:40]!r} is out of range")
    return value


def _surrogate_free(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MalformedJSON(f"string holds a lone surrogate at offset {e.start}") from None


def parse(data: bytes, *, max_bytes: int | None = None) -> Any:
    """Parse one strict JSON document from raw bytes, or raise `MalformedJSON`."""
    if max_bytes is not None and len(data) > max_bytes:
        raise MalformedJSON(f"document of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedJSON(f"invalid UTF-8 at byte {e.start}") from None
    if text.startswith("\ufeff"):
        raise MalformedJSON("byte order mark before the document")
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_constant,
            parse_float=_float,
        )
    except MalformedJSON:
        raise
    except RecursionError:
        # The C parser guards its own recursion; past the interpreter's limit the
        # document is refused whole, so no later code walks an unbounded tree.
        raise MalformedJSON("nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError, and int()'s digit cap
        raise MalformedJSON(f"not JSON: {e}") from None
    if "\\ud" in text or "\\uD" in text:
        # Only an escape can smuggle a lone surrogate past the UTF-8 decoder.
        _surrogate_free(json.dumps(doc, ensure_ascii=False))
    return doc


def canon(x: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no spaces, UTF-8 (pith-format.md §1)."""
    return json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def H(x: Any) -> str:  # noqa: N802 - the spec's name for it
    """sha256 hex of the canonical JSON of `x`."""
    return hashlib.sha256(canon(x)).hexdigest()


def without(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    """A shallow copy of `obj` without `keys`: what most of the format's hashes cover."""
    return {k: v for k, v in obj.items() if k not in keys}
