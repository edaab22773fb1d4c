"""pithcrawl's exception tree, drawn once, split by who is at fault.

    PithcrawlError
    ├── UsageError            the operator: a bad flag, config key or value   (exit 2)
    │   └── ConfigError
    └── OperationalError      the world: network, disk, a mirror that is down (exit 3)
        ├── FetchError        a URL could not be fetched (timeout, refused, reset, too large)
        │   ├── FetchTimeout      no complete answer within the timeout
        │   ├── ConnectionFailed  DNS, refused, reset or closed before an answer
        │   │   └── TLSError      handshake, certificate or fingerprint failure
        │   ├── IncompleteBody    the connection ended before the whole body arrived
        │   ├── TooLarge          the body, on the wire or decoded, exceeds max_bytes
        │   ├── BadResponse       not HTTP, an undecodable Content-Encoding, a bad Location
        │   └── RedirectError     too many redirects, a loop, a non-HTTP target
        │       └── RedirectRefused   the allow_url hook refused a redirect target
        └── StoreError        the database could not be read or written
            ├── StoreLocked       another pithcrawl holds the writers' lock on the database
            ├── StoreMisnamed     no archive, database or role there (exit 2: the operator's)
            └── StoreCorrupt      archived data fails its own check (a blob's sha256)

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


class FetchTimeout(FetchError):
    """No complete answer (headers and body) arrived within the timeout."""


class ConnectionFailed(FetchError):
    """The connection could not be made, or ended before the response headers."""


class TLSError(ConnectionFailed):
    """The TLS handshake failed: a bad certificate, protocol or pinned fingerprint."""


class IncompleteBody(FetchError):
    """The connection ended (reset, closed, cut short) before the whole body arrived."""


class TooLarge(FetchError):
    """The body, as declared, received or decoded, is larger than the byte cap."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status of the response whose body it was."""


class BadResponse(FetchError):
    """The server did not speak valid HTTP, or its body could not be decoded."""


class RedirectError(FetchError):
    """A redirect chain was too long, looped, or pointed outside HTTP(S)."""


class RedirectRefused(RedirectError):
    """The caller's `allow_url` hook refused a redirect target (e.g. a private address)."""


class StoreError(OperationalError):
    """The archive database could not be read or written."""


class StoreLocked(StoreError):
    """Another process holds the archive's writers' lock (e.g. a second `sync`)."""

    ours = False
    """This process holds it: the archive is one it has open already, under another name."""


class LeaseLost(StoreError):
    """A pair's lease is not this node's any more (the node was stopped past its end and
    another node took the pair): what this node fetched of it is not written."""


class StoreMisnamed(StoreError):
    """The archive named is not there to open: a database with no archive in it yet for
    a command that only reads, a database or role the server does not have, a password
    it refuses. The operator's to fix (exit 2): trying again changes nothing."""

    exit_code = EXIT_USAGE


class StoreCorrupt(StoreError):
    """Archived data no longer matches its own check: the database is damaged."""
