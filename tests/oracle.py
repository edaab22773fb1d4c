"""An oracle of pith-format.md §1 and §2, written from the spec's text for the tests.

It imports nothing of pithcrawl: the product's own `canonical_reference` and
`pith_suffix_reference` are what its fast paths fall back to, so a test comparing the
product with them compares it with itself.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def canon(data: bytes) -> bytes:
    """§1: `json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`
    in UTF-8, of the document as Python's json module reads `data`."""
    x = json.loads(data)
    return json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def suffix(canonical_sha256: str) -> str:
    """§2: the first 26 characters of the RFC 4648 base32 of the whole digest."""
    return base64.b32encode(bytes.fromhex(canonical_sha256)).decode()[:26]


def has_lone_surrogate(doc: Any) -> bool:
    """Whether a string of `doc` (a key or a value) holds half of a surrogate pair: text
    UTF-8 cannot carry, which a strict reader must refuse."""
    if isinstance(doc, str):
        return any(0xD800 <= ord(ch) <= 0xDFFF for ch in doc)
    if isinstance(doc, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in doc.items())
    if isinstance(doc, list):
        return any(has_lone_surrogate(v) for v in doc)
    return False
