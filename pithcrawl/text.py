"""Text from outside: what a mirror, a manifest or a bundle says, made safe to keep,
print, send back and name things by.

Every string that came over the network is hostile until it passes through here: a
mirror's headers and error text, a manifest's mirror names, a bundle's titles. Owns
`escaped` (for a terminal, a log or an environment variable: every character that is
not printable becomes a visible escape, so nothing can move the cursor, clear the
screen, fake a new line or reorder text), `storable` (for either database and JSON: the
lone surrogates that undecodable header bytes arrive as, and NUL, become escapes), `json_text` (JSON
whose every non-printable character is a `\\u` escape), `header_token` (a validator
fit to be sent back, or None) and `mirror_name` (a name from the network, or None).

Pure: it decides what text looks like, not where it goes or what is logged about it.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: What an archive cannot keep as text: lone surrogates (how Python holds bytes that were
#: not valid UTF-8: surrogateescape gives U+DC80 to U+DCFF for the bytes 0x80 to 0xFF),
#: and NUL, which PostgreSQL's text cannot hold.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"  # the byte it stood for
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escaped(text: str) -> str:
    """`text` with every character that is not printable shown as an escape (`\\x1b`,
    `\\u202e`, `\\x0a`): control codes, line breaks, bidirectional and zero-width
    marks, lone surrogates. Printable text, any script, is unchanged."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def bounded(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with a closing "…" when it is longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def storable(text: str) -> str:
    """`text` fit for UTF-8 and either database (SQLite, PostgreSQL) and JSON: lone
    surrogates and NUL become escapes; nothing else changes."""
    if not _UNSTORABLE.search(text):
        return text
    return _UNSTORABLE.sub(lambda m: _escape(m.group()), text)


def json_text(doc: Any, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """`doc` as JSON for a terminal or a pipe: readable (non-ASCII letters as they are),
    with every non-printable character a `\\u` escape, which JSON allows in any string
    (outside strings, JSON has only printable ASCII and the line breaks of `indent`)."""
    text = json.dumps(doc, ensure_ascii=False, indent=indent, sort_keys=sort_keys)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == "\n" else json_escape(ch) for ch in text)


def json_escape(ch: str) -> str:
    """One character as JSON's `\\u` escape (a surrogate pair past U+FFFF)."""
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


#: An entity tag: visible ASCII only (obs-text, bytes past 0x7F, is refused: sent back,
#: it would not be the same bytes). RFC 9110 §8.8.3 quotes it; some servers do not, and
#: what they sent is what they compare, so an unquoted one is sent back as it came.
_ETAG = re.compile(r'(?:W/)?"[\x21\x23-\x7e]*"\Z|[\x21\x23-\x7e]+\Z')
_MAX_HEADER = 256


def header_token(value: str | None, *, etag: bool) -> str | None:
    """A validator (`ETag` or `Last-Modified`) a mirror sent, as it may be sent back in
    `If-None-Match` or `If-Modified-Since`; None when it is absent or not fit: a byte
    that is not visible ASCII (a Latin-1 letter, a control code), or more than 256
    characters."""
    if value is None or len(value) > _MAX_HEADER:
        return None
    if etag:
        return value if _ETAG.match(value) else None
    ok = value.isascii() and value.isprintable() and value.strip() == value and value != ""
    return value if ok else None


#: A mirror's name as a manifest or a bundle's hint may give it: letters and digits of
#: ASCII, and a few marks, up to 64 characters. It names the mirror in every alert,
#: hook environment, log line and table, so anything else is refused, not shown.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:@+()\[\]-]{0,63}\Z")


def mirror_name(value: object) -> str | None:
    """`value` if it is fit to name a mirror (`_NAME`, no trailing space), else None."""
    if isinstance(value, str) and _NAME.match(value) and not value.endswith(" "):
        return value
    return None
