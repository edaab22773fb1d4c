"""Pith Numbers: how a number derives from a canonical hash, and how people name records.

Owns pith-format.md §2 (the 26-character suffix, the full number, the short aliases) and
the forms a record may be named by on the command line or in configuration (a full
number, a bare suffix, a bundle URL). Pure.
"""

from __future__ import annotations

import base64
import re

_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # RFC 4648 §6

#: Every pair of RFC 4648 base32 characters, indexed by the 10 bits they encode.
_B32_PAIRS = tuple(a + b for a in _B32 for b in _B32)
#: Shifts that cut the suffix's 130 bits into 13 pairs of base32 characters, first first.
_PAIR_SHIFTS = tuple(range(120, -1, -10))


def pith_suffix(canonical_sha256: str) -> str:
    """The 26-character suffix of a sha256 hex digest (pith-format.md §2).

    That is the first 130 bits of the hash, 5 to a character. Computed from the hex
    text as an integer: `base64.b32encode` (the definition, `pith_suffix_reference`)
    is a Python loop in 3.11, and every verification computes a suffix.
    """
    bits = int(canonical_sha256[:34], 16) >> 6  # 34 hex digits are 136 bits
    return "".join([_B32_PAIRS[(bits >> shift) & 0x3FF] for shift in _PAIR_SHIFTS])


#: Base32 characters as the digits int(..., 32) reads.
_B32_AS_DIGITS = str.maketrans(_B32, "0123456789abcdefghijklmnopqrstuv")


def is_suffix_of(suffix: str, canonical_sha256: str) -> bool:
    """Whether `suffix` == pith_suffix(canonical_sha256), by reading the suffix back.

    Encoding is a loop in Python; reading is one translate and one int() in C. Base32
    maps 26-character strings of its alphabet one to one onto 130-bit numbers, so the
    strings are equal exactly when the suffix has that form and the numbers are equal.
    """
    return _SUFFIX.fullmatch(suffix) is not None and int(suffix.translate(_B32_AS_DIGITS), 32) == (
        int(canonical_sha256[:34], 16) >> 6
    )


def pith_suffix_reference(canonical_sha256: str) -> str:
    """pith_suffix exactly as pith-format.md §2 writes it."""
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
    return {"pith_short_8": suffix[:8], "pith_short_12": suffix[:12], "pith_short_16": suffix[:16]}
