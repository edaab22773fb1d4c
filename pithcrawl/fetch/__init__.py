"""Fetching mirror documents: what a fetch is here, how one is made in `fetch.client`.

This module is pure (no aiohttp, no I/O), so the rules that only need a fetch's result
do not import the network.

Owns `FetchResult` (one answered GET, whatever its status), the `Fetcher` protocol that
`crawl`, `polling` and `mirrors` depend on, the `AllowUrl` hook type for vetting
redirect targets, the User-Agent string (`user_agent`) and `Retry-After` parsing
(`parse_retry_after`, with `now` a parameter). It does not talk to the network: the
real `Fetcher` over aiohttp, and the translation of aiohttp's errors into `FetchError`,
are `fetch.client`'s. It does not judge statuses, retry or schedule either.
"""

from __future__ import annotations

import email.utils
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from pithcrawl import __version__


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One answered GET, whatever its status (a 404 or a 503 is a result, not an error)."""

    url: str
    """The URL asked for."""
    final_url: str
    """The URL that answered, after redirects."""
    status: int
    body: bytes
    """Exactly the decoded bytes received; empty for 304."""
    etag: str | None
    last_modified: str | None
    content_type: str | None
    """The `Content-Type` header as sent, parameters included."""
    retry_after: float | None
    """`Retry-After` in seconds from `fetched_at` (either form), None when absent or invalid."""
    fetched_at: datetime
    """When the final response's headers arrived (UTC)."""
    elapsed: float
    """Seconds on the network, summed over redirect hops (waits for a slot excluded)."""
    framed: bool = True
    """The body's end was announced (`Content-Length`, or chunked): a body that simply
    ended with its connection may have been cut short, with nothing to tell."""
    refused: tuple[str, ...] = ()
    """Headers the mirror sent that were unfit to keep and left out (an `ETag` holding a
    control byte, say): their names, for the caller to log."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def not_modified(self) -> bool:
        return self.status == 304


AllowUrl = Callable[[str], bool | Awaitable[bool]]


class Fetcher(Protocol):
    """What `crawl` needs from the network: one GET, optionally conditional."""

    async def get(
        self,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        allow_url: AllowUrl | None = None,
        public_only: bool = False,
    ) -> FetchResult: ...


def user_agent(contact: str = "") -> str:
    """The User-Agent pithcrawl sends: its version, and how to reach the operator."""
    base = f"pithcrawl/{__version__}"
    return f"{base} (+{contact})" if contact else base


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """`Retry-After` as seconds from `now`: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).

    None when absent or unparseable; a date in the past gives 0.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)  # an absurd number of digits becomes inf, never an error
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):  # a year of 20 digits
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # RFC 850 and asctime forms are GMT by definition
    return max(0.0, (when - now).total_seconds())
