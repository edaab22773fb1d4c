"""pithcrawl's exception tree, drawn once, split by who is at fault.

    PithcrawlError
    ├── UsageError            the operator: a bad flag, config key or value   (exit 2)
    │   └── ConfigError
    └── OperationalError      the world: network, disk, a mirror that is down (exit 3)
        ├── FetchError        a URL could not be fetched (timeout, refused, HTTP error, too large)
        └── StoreError        the database could not be read or written

Security findings are *not* exceptions: the verifier returns them as data in a report
and the CLI maps a critical finding to exit 1. Foreign exceptions (aiohttp, sqlite3,
nacl) are translated into these at exactly one boundary: `fetch`, `store`, `keys`.
Anything else that escapes is a bug in pithcrawl.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SECURITY = 1
EXIT_USAGE = 2
EXIT_OPERATIONAL = 3


class PithcrawlError(Exception):
    """Base of every error pithcrawl raises on purpose."""

    exit_code = EXIT_OPERATIONAL


class UsageError(PithcrawlError):
    """The operator asked for something that cannot be done as asked."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration key or value is invalid; the message names the key."""


class OperationalError(PithcrawlError):
    """The outside world failed us; retrying later may succeed."""

    exit_code = EXIT_OPERATIONAL


class FetchError(OperationalError):
    """A URL could not be fetched."""


class StoreError(OperationalError):
    """The archive database could not be read or written."""
