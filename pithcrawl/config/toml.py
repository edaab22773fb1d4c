"""Reading one TOML table of the configuration: each value checked by its type and form.

Owns the reader the section builders of `pithcrawl.config` use: refusing unknown keys
(with a "did you mean"), checking each value's TOML type (a bool is not an integer),
parsing durations, checking http(s) URLs, resolving paths against the config file's
directory, and the shape of a bad-value error, `bad`: "key: expected …, got 'value'",
the full key path and the value, cut to 80 characters.

It does not know which keys exist or what they default to (the caller passes the
dataclass a table fills and each default), does not parse TOML text, and reads no file
and no environment: a path is resolved, never opened, and `~` is refused, not expanded.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pithcrawl.errors import ConfigError
from pithcrawl.location import PgUrl, Where, archive_at
from pithcrawl.timestamps import parse_duration

#: The longest duration a key may hold: past it, adding one to a date overflows.
LONGEST = timedelta(days=36525)


@dataclass(frozen=True, slots=True)
class Table:
    """One TOML table being read, with the key path its errors name."""

    raw: dict[str, Any]
    where: str
    root: Path

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def section(self, name: str, cls: type[Any]) -> Table:
        return table(self.raw.get(name, {}), name, cls, self.root)

    def _get(self, name: str, kind: type[Any], expected: str) -> Any:
        value = self.raw.get(name)
        # bool is an int in Python, not in TOML.
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if value is not None and not ok:
            raise bad(self.key(name), f"expected {expected}", value)
        return value

    def string(self, name: str, default: str, *, nonempty: bool = False) -> str:
        value: str | None = self._get(name, str, "a string")
        if nonempty and value == "":
            raise ConfigError(f"{self.key(name)}: must not be empty")
        return default if value is None else value

    def boolean(self, name: str, default: bool) -> bool:
        value: bool | None = self._get(name, bool, "true or false")
        return default if value is None else value

    def integer(self, name: str, default: int, *, minimum: int, maximum: int = 2**31) -> int:
        value: int | None = self._get(name, int, "an integer")
        if value is not None and value < minimum:
            raise bad(self.key(name), f"expected at least {minimum}", value)
        if value is not None and value > maximum:
            raise bad(self.key(name), f"expected at most {maximum}", value)
        return default if value is None else value

    def duration(self, name: str, default: timedelta, *, allow_zero: bool = False) -> timedelta:
        expected = 'a duration like "30s", "5m", "6h", "2d" or "1h30m" (a string)'
        text: str | None = self._get(name, str, expected)
        if text is None:
            return default
        try:
            value = parse_duration(text)
        except ValueError:
            raise bad(self.key(name), f"expected {expected}", text) from None
        if not value and not allow_zero:
            raise bad(self.key(name), "expected a duration longer than zero", text)
        if value > LONGEST:
            raise bad(self.key(name), "expected at most 100 years", text)
        return value

    def url(self, name: str) -> str | None:
        value: str | None = self._get(name, str, "an http or https URL")
        return None if value is None else check_url(self.key(name), value)

    def path(self, name: str) -> Path | None:
        value: str | None = self._get(name, str, "a file path")
        return None if value is None else _resolve(self.key(name), value, self.root)

    def archive(self, name: str) -> Where | None:
        """A file path (SQLite), or a `postgresql://` URL libpq can read."""
        value: str | None = self._get(name, str, "a file path or a postgresql:// URL")
        if value is None:
            return None
        try:
            where = archive_at(value)
        except ValueError as e:
            raise ConfigError(f"{self.key(name)}: {e}") from None
        return where if isinstance(where, PgUrl) else _resolve(self.key(name), value, self.root)

    def strings(self, name: str) -> tuple[str, ...]:
        values: list[Any] = self._get(name, list, "a list of strings") or []
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise bad(f"{self.key(name)}[{i}]", "expected a string", value)
        return tuple(values)

    def paths(self, name: str) -> tuple[Path, ...]:
        return tuple(
            _resolve(f"{self.key(name)}[{i}]", value, self.root)
            for i, value in enumerate(self.strings(name))
        )


def table(raw: object, path: str, cls: type[Any], root: Path) -> Table:
    if not isinstance(raw, dict):
        raise bad(path, "expected a table", raw)
    known = [f.name for f in dataclasses.fields(cls)]
    for name in raw:
        if name not in known:
            key = f"{path}.{name}" if path else name
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(known)}"
            raise ConfigError(f"{key}: unknown key{hint}")
    return Table(raw, path, root)


def check_url(key: str, value: str, *, shown: str | None = None) -> str:
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        if ok and parts.hostname is not None:
            parts.hostname.encode("idna")  # a name DNS can be asked (labels of 1-63)
    except ValueError:  # a port that is not a number; a name IDNA cannot encode
        ok = False
    if not ok or any(c.isspace() for c in value):
        raise bad(key, "expected an http or https URL with a host", shown or value)
    return value


def _resolve(key: str, text: str, root: Path) -> Path:
    if not text or text.startswith("~"):  # expanding ~ would read the environment
        raise bad(key, "expected an absolute path or one relative to the config file", text)
    return Path(os.path.normpath(root / text))


def bad(key: str, expected: str, value: object) -> ConfigError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ConfigError(f"{key or 'config'}: {expected}, got {shown}")
