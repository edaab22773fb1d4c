"""Polling one document from one mirror, and what the archive keeps of each poll.

Owns the conditional GET (with the validators of what this URL served before), the
hash that identifies a 200's body, and the bookkeeping outcome of a poll: when it is
next due after a success (`crawl.interval` with jitter) and the backoff after a failure.
It does not judge documents: verifying and comparing them is `crawl`'s.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from pithcrawl.config import Config
from pithcrawl.errors import FetchError
from pithcrawl.fetch import Fetcher, FetchResult
from pithcrawl.findings import FINDINGS_KEPT
from pithcrawl.metrics import Metrics
from pithcrawl.mirrors import Site, public_url
from pithcrawl.schedule import next_due, retry_due
from pithcrawl.store import FetchOutcome, FetchState, NewEvent, Store
from pithcrawl.timestamps import format_timestamp
from pithcrawl.verify import Report

log = structlog.get_logger("pithcrawl.crawl")

#: Backoff after failures: 1 minute doubling up to 6 hours, with full jitter.
RETRY_BASE = 60.0
RETRY_CAP = 6 * 3600.0
#: Successful fetches come back after `crawl.interval` ± 10%.
JITTER = 0.1


class Unread:
    """The caller has not read the fetch bookkeeping (as opposed to: it read None)."""


UNREAD = Unread()


@dataclass(frozen=True, slots=True)
class Got:
    """One document fetched (or not) from one mirror, with what we knew before."""

    kind: str
    url: str
    before: FetchState | None
    result: FetchResult | None
    error: str | None
    body_sha256: str | None = None
    """Of the body of a 200 (hashed once: it keys the verdict, the evidence, the store)."""
    rejudged: bool = False
    """The archived body this fetch left unchanged, to be judged again as if new."""

    @property
    def changed(self) -> bool:
        """A 200 with a body other than the last one from this URL."""
        return (
            self.result is not None
            and self.result.status == 200
            and (
                self.rejudged or self.before is None or self.before.body_sha256 != self.body_sha256
            )
        )

    @property
    def unchanged(self) -> bool:
        return self.result is not None and (
            self.result.status == 304 or (self.result.status == 200 and not self.changed)
        )


@dataclass(slots=True)
class Poller:
    """Fetches documents for a `Crawler` and writes down how each poll went."""

    config: Config
    store: Store
    fetcher: Fetcher
    metrics: Metrics
    rand: random.Random
    _refused: set[tuple[str, str]] = field(default_factory=set)
    """(mirror, header) pairs already warned of: one warning each, not one per fetch."""

    async def fetch(
        self,
        suffix: str,
        site: Site,
        kind: str,
        url: str,
        *,
        conditional: bool = True,
        before: FetchState | Unread | None = UNREAD,
    ) -> Got:
        """GET one document, conditionally when this URL was fetched before."""
        if isinstance(before, Unread):
            before = await self.store.fetch_state(
                suffix, site.name, kind, vantage=self.config.node.vantage_name
            )
        same_url = conditional and before is not None and before.url == url
        try:
            # Nobody configured it: the guard on its addresses holds for every connection.
            guarded = site.origin != "config" and not self.config.crawl.allow_private_hosts
            result = await self.fetcher.get(
                url,
                allow_url=public_url if guarded else None,
                public_only=guarded,
                etag=before.etag if same_url and before else None,
                last_modified=before.last_modified if same_url and before else None,
            )
        except FetchError as e:
            return Got(kind, url, before, None, str(e))
        for header in result.refused:
            if (site.name, header) not in self._refused:
                self._refused.add((site.name, header))
                log.warning(
                    "header_refused",
                    header=header,
                    url=url,
                    detail="not fit to send back: fetched without it",
                )
        known = before if same_url else None
        if result.status == 304 and (known is None or known.body_sha256 is None):
            # "Not modified" since nothing: no body archived from this URL to stand for
            # (whatever the mirror says, it is not news of its content).
            return Got(kind, url, known, None, f"{url}: 304 Not Modified to a request for a body")
        sha = body_sha256(result.body) if result.status == 200 else None
        return Got(kind, url, known, result, None, sha)

    async def failed(self, suffix: str, mirror: str, got: Got, now: datetime) -> str:
        """Record a failed poll with its backoff; the error, as the pass reports it."""
        failures = (got.before.failures if got.before else 0) + 1
        status = got.result.status if got.result else None
        error = got.error or f"HTTP {status} from {got.url}"
        due = retry_due(
            now,
            failures,
            got.result.retry_after if got.result else None,
            base=RETRY_BASE,
            cap=RETRY_CAP,
            rand=self.rand.random(),
        )
        await self.store.record_fetch(
            FetchOutcome(
                suffix=suffix,
                mirror=mirror,
                kind=got.kind,
                url=got.url,
                fetched_at=now,
                status=status,
                next_due=due,
                error=error,
                node=self.config.node.node_name,
                vantage=self.config.node.vantage_name,
            )
        )
        self.metrics.fetch(mirror, got.kind, "failed")
        log.warning(
            "fetch_failed",
            kind=got.kind,
            url=got.url,
            error=error,
            failures=failures,
            retry_at=format_timestamp(due),
        )
        return error

    def outcome(
        self,
        suffix: str,
        mirror: str,
        got: Got,
        now: datetime,
        *,
        report: Report | None = None,
        events: list[NewEvent] | None = None,
        related_sha256: str | None = None,
    ) -> FetchOutcome:
        """What the archive keeps of a successful poll (200 or 304), due again later."""
        fetched = got.result
        assert fetched is not None
        if fetched.status == 304:
            self.metrics.fetch(mirror, got.kind, "not_modified")
        else:
            self.metrics.fetch(mirror, got.kind, "changed" if got.changed else "unchanged")
        if got.kind == "bundle":
            self.metrics.success(mirror, now)
        return FetchOutcome(
            suffix=suffix,
            mirror=mirror,
            kind=got.kind,
            url=got.url,
            fetched_at=now,
            status=fetched.status,
            body=fetched.body if got.changed else None,
            etag=fetched.etag,
            last_modified=fetched.last_modified,
            next_due=next_due(
                now, self.config.crawl.interval, jitter=JITTER, rand=self.rand.random()
            ),
            bundle_sha256=report.bundle_sha256 if report else None,
            built_at=report.built_at if report else None,
            event_count=len(report.events) if report and report.kind == "bundle" else None,
            trusted=bool(report and report.ok),
            findings=report.findings[:FINDINGS_KEPT] if report else (),
            events=events or (),
            related_sha256=related_sha256,
            node=self.config.node.node_name,
            vantage=self.config.node.vantage_name,
        )


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
