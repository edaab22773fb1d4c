"""Where an archive is: a SQLite file (a path) or a PostgreSQL database (a libpq URL).

Owns telling the two apart (`locate`), and printing a URL without its password. It
opens nothing (and imports no database driver until a URL is checked);
`store.Store.open` takes either.
"""

from __future__ import annotations

import re
from argparse import ArgumentTypeError
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

SCHEMES = ("postgresql://", "postgres://")

#: user:password@host: libpq ends a password at the last @ before the path (a ? or #
#: may be in it).
_AUTHORITY_PASSWORD = re.compile(r"(?<=://)([^/?#@:]*):[^/]*@")
#: The parameters that hold a secret (libpq decodes %-escapes in a parameter's name too).
_SECRETS = {"password", "sslpassword"}


def is_url(text: str) -> bool:
    """Whether `text` (a `db` setting, a `--db` argument) names a PostgreSQL database."""
    return text.startswith(SCHEMES)


@dataclass(frozen=True)
class PgUrl:
    """A libpq URL naming an archive's database; printed without its password."""

    url: str

    def __str__(self) -> str:
        return redacted(self.url)


#: Where an archive is.
Where = Path | PgUrl


def locate(text: str) -> Where:
    """A `--db` argument or `db` setting: a URL as given, else a path."""
    return PgUrl(text) if is_url(text) else Path(text)


def redacted(url: str) -> str:
    """`url` with any password (in the authority, or as `password=` or `sslpassword=`,
    however spelled) replaced by `***`."""
    secrets = _secrets_of(url)
    url = _AUTHORITY_PASSWORD.sub(r"\1:***@", url)
    head, mark, query = url.partition("?")
    if mark:
        parts = []
        for part in query.split("&"):
            key, eq, _ = part.partition("=")
            hidden = bool(eq) and unquote(key).strip().lower() in _SECRETS
            parts.append(f"{key}=***" if hidden else part)
        url = f"{head}?{'&'.join(parts)}"
    # And whatever libpq itself reads as a secret, wherever it hides in the text.
    for secret in secrets:
        for spelling in {secret, quote(secret, safe=""), quote(secret)}:
            url = url.replace(spelling, "***")
    return url


def _secrets_of(url: str) -> list[str]:
    """The passwords libpq reads in `url` (none if it cannot read it)."""
    try:
        from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415 (only for a URL)

        parsed = conninfo_to_dict(url)
    except Exception:  # not a URL libpq reads: nothing it would use
        return []
    return [str(parsed[k]) for k in _SECRETS if parsed.get(k)]


#: A URL of any scheme: not a file name anyone means (`postgresq://…` would otherwise be
#: a directory `postgresq:` beside the configuration).
_ANY_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def archive_at(text: str) -> Where:
    """A `db` setting or `--db` argument: a path, or a URL libpq can read; `ValueError`
    saying why for a URL of another scheme, or one libpq cannot read."""
    if is_url(text):
        return checked(text)
    if _ANY_URL.match(text):
        scheme = text.partition("://")[0]
        raise ValueError(
            f"{redacted(text)} is a URL of scheme {scheme!r}: an archive is a file path, or"
            " a postgresql:// (or postgres://) URL"
        )
    return Path(text)


def checked(url: str) -> PgUrl:
    """`url` if libpq can read it; else `ValueError` saying why (without the password)."""
    from psycopg import Error  # noqa: PLC0415 (only for a URL: a path need not load it)
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

    try:
        conninfo_to_dict(url)
    except Error as e:
        why = str(e).split(" in URI:", 1)[0].strip() or "not a libpq URL"
        raise ValueError(
            f"{redacted(url)} is not a PostgreSQL URL libpq can read ({why})"
        ) from None
    return PgUrl(url)


def make_room(where: Where) -> None:
    """Create the directory a new SQLite file goes in (a database needs nothing)."""
    if isinstance(where, Path):
        where.parent.mkdir(parents=True, exist_ok=True)


def absolute(where: Where) -> Where:
    """`where` independent of the working directory (a URL is already)."""
    return where.resolve() if isinstance(where, Path) else where


def archive_argument(text: str) -> Where:
    """An argparse type for `--db`: a path, or a URL libpq can read."""
    try:
        return archive_at(text)
    except ValueError as e:
        raise ArgumentTypeError(str(e)) from None
