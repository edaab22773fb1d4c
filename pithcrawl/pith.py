"""Pith Numbers: how a number derives from a canonical hash, and how people name records.

Owns pith-format.md §2 (the 26-character suffix, the full number, the short aliases) and
the forms a record may be named by on the command line or in configuration (a full
number, a bare suffix, a bundle URL). Pure.
"""

from __future__ import annotations

import base64
import re


def pith_suffix(canonical_sha256: str) -> str:
    """The 26-character suffix: base32 of the canonical hash bytes (pith-format.md §2)."""
    # Base32 encodes each 5 bytes on its own, so the first 20 bytes give the first 32
    # characters of the full encoding, of which the suffix is the first 26.
    return base64.b32encode(bytes.fromhex(canonical_sha256)[:20]).decode("ascii")[:26]


def pith_number(canonical_sha256: str, submitted_at: str) -> str:
    return f"pith:{submitted_at[:4]}:{pith_suffix(canonical_sha256)}"


_SUFFIX = re.compile(r"[A-Z2-7]{26}")
_NUMBER = re.compile(r"pith:(\d{4}):([A-Z2-7]{26})")
_URL = re.compile(r"https?://[^\s]*/pith/([A-Z2-7]{26})/(?:bundle|state)\.json(?:[?#].*)?")


def parse_reference(text: str) -> str:
    """The 26-character suffix named by a full number, a bare suffix or a bundle URL."""
    for pattern in (_SUFFIX, _NUMBER, _URL):
        m = pattern.fullmatch(text.strip())
        if m is not None:
            return m.group(m.lastindex or 0)
    raise ValueError(
        "expected a Pith Number (pith:YYYY:SUFFIX), a 26-character suffix or a bundle URL"
    )


def short_aliases(suffix: str) -> dict[str, str]:
    return {f"pith_short_{n}": suffix[:n] for n in (8, 12, 16)}
