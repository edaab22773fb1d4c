"""The crawl loop: one pass for `sync`, the scheduled rounds of `run`.

Owns which (record, mirror) pairs are crawled when, with bounded concurrency, and the
summary of a pass. Each pair's work is `crawl.Crawler.sync_pair`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio

from pithcrawl.config import Config
from pithcrawl.crawl import Crawler, PairResult
from pithcrawl.fetch import HttpFetcher, user_agent
from pithcrawl.keys import TrustSet
from pithcrawl.mirrors import Site, resolve
from pithcrawl.store import Store
from pithcrawl.verify import parse_reference


@dataclass(slots=True)
class Summary:
    records: int = 0
    mirrors: int = 0
    new_snapshots: int = 0
    events: int = 0
    alerts: int = 0
    errors: int = 0
    deferred: int = 0
    untrusted: int = 0
    """Pairs whose mirror serves a bundle that failed verification."""
    duration_s: float = 0.0

    def to_json(self) -> dict[str, float | int]:
        return {
            "records": self.records,
            "mirrors": self.mirrors,
            "new_snapshots": self.new_snapshots,
            "events": self.events,
            "alerts": self.alerts,
            "errors": self.errors,
            "deferred": self.deferred,
            "untrusted": self.untrusted,
            "duration_s": round(self.duration_s, 3),
        }


async def sync_once(config: Config, db: Path, named: list[str], trust: TrustSet) -> Summary:
    db.parent.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    results: list[PairResult] = []
    async with await Store.open(db, exclusive=True) as store:
        now = datetime.now(UTC)
        if config.watch.pith:
            await store.track([parse_reference(p) for p in config.watch.pith], now)
        suffixes = named or [r.suffix for r in await store.tracked()]
        async with HttpFetcher(
            user_agent=user_agent(config.crawl.contact),
            timeout=config.crawl.timeout.total_seconds(),
            max_bytes=config.crawl.max_bytes,
            concurrency=config.crawl.concurrency,
            per_host=config.crawl.per_host,
        ) as fetcher:
            sites = await resolve(config, store, fetcher, now)
            summary.records, summary.mirrors = len(suffixes), len(sites)
            crawler = Crawler(config, store, fetcher, trust, lambda: datetime.now(UTC))
            progress = Progress(len(suffixes) * len(sites))
            send, receive = anyio.create_memory_object_stream[tuple[str, Site]](
                config.crawl.concurrency
            )

            async def worker() -> None:
                async with receive.clone() as jobs:
                    async for suffix, site in jobs:
                        results.append(await _pair(crawler, store, suffix, site))
                        progress.step()

            async with anyio.create_task_group() as tg:
                for _ in range(config.crawl.concurrency):
                    tg.start_soon(worker)
                async with send:
                    for suffix in suffixes:
                        for site in sites:
                            await send.send((suffix, site))
                receive.close()
            progress.done()
    for r in results:
        summary.new_snapshots += r.new_snapshots
        summary.events += len(r.events)
        summary.alerts += sum(1 for e in r.events if e.severity == "critical")
        summary.untrusted += r.serves_untrusted
        summary.errors += r.error is not None
        summary.deferred += r.deferred
    return summary


async def _pair(crawler: Crawler, store: Store, suffix: str, site: Site) -> PairResult:
    """One pair, unless the mirror asked us (or failed enough) to come back later."""
    state = await store.fetch_state(suffix, site.name, "bundle")
    now = datetime.now(UTC)
    if state is not None and state.failures and state.next_due and state.next_due > now:
        return PairResult(suffix, site.name, error=state.last_error or "failing", deferred=True)
    return await crawler.sync_pair(suffix, site)


class Progress:
    """records done/total and rate on a terminal; silent otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.count = total, 0
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()

    def step(self) -> None:
        self.count += 1
        if self.tty and (self.count % 50 == 0 or self.count == self.total):
            rate = self.count / max(time.monotonic() - self.started, 1e-9)
            print(f"\r{self.count}/{self.total} ({rate:.0f}/s)", end="", file=sys.stderr)

    def done(self) -> None:
        if self.tty and self.total:
            print(file=sys.stderr)
