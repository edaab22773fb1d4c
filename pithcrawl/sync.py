"""One pass: what `pithcrawl sync` does, and what a pass found.

Owns a pass over every tracked (or named) record and every mirror: sharing it with worker
processes (`share`), then the rules that span records and mirrors, then alert delivery,
and the pass's `Summary`. Each pair's work is `crawl.Crawler.sync_pair`; the daemon's
scheduled rounds are `daemon`'s.
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from pithcrawl.alert import Sinks, check_sinks, deliver_due, sink_names
from pithcrawl.clock import Clock
from pithcrawl.config import Config
from pithcrawl.crawl import Crawler
from pithcrawl.keys import TrustSet
from pithcrawl.log import settings as log_settings
from pithcrawl.mirrors import resolve
from pithcrawl.pith import parse_reference
from pithcrawl.share import (
    ShareJob,
    Tally,
    crawl_share,
    fetcher_for,
    plan,
    run_share_in_worker,
    shared_limits,
)
from pithcrawl.store import Store
from pithcrawl.trust import TRUST_DIGEST, with_learned


@dataclass(slots=True)
class Summary(Tally):
    """A pass: the tallies of its shares, and what it found in the end."""

    records: int = 0
    mirrors: int = 0
    alerts: int = 0
    """Critical alerts of these records whose condition holds now (the exit code's 1)."""
    warnings: int = 0
    """Alerts of error severity (a mirror stale or unreachable) whose condition holds now."""
    alerts_open: int = 0
    """Every open alert of these records, those held open while they stay clear too."""
    delivered: int = 0
    undelivered: int = 0
    """Deliveries to the configured sinks still pending after the pass."""
    manifests_unread: int = 0
    """Manifests that could not be read (their last listing was crawled instead)."""
    duration_s: float = 0.0

    def to_json(self) -> dict[str, float | int]:
        return {
            "records": self.records,
            "mirrors": self.mirrors,
            "new_snapshots": self.new_snapshots,
            "events": self.events,
            "alerts_open": self.alerts_open,
            "alerts_raised": self.alerts_raised,
            "alerts": self.alerts,
            "errors": self.errors,
            "deferred": self.deferred,
            "untrusted": self.untrusted,
            "warnings": self.warnings,
            "delivered": self.delivered,
            "undelivered": self.undelivered,
            "manifests_unread": self.manifests_unread,
            "duration_s": round(self.duration_s, 3),
        }


async def sync_once(
    config: Config, db: Path, named: list[str], trust: TrustSet, *, clock: Clock | None = None
) -> Summary:
    """One pass over every tracked (or named) record and every mirror; then the
    divergence and reachability rules, then alert delivery.

    A pass over many records is split across worker processes (`crawl.workers`), each
    crawling its share of the records with its share of the fetch limits and writing to
    the archive itself; this process keeps the writers' lock, crawls one share, and runs
    the rules that span records and mirrors once all are done.
    """
    db.parent.mkdir(parents=True, exist_ok=True)
    named = list(dict.fromkeys(named))  # a record named twice is crawled once
    secret = check_sinks(config.alerts, os.environ)  # before the pass, not after it
    summary = Summary()
    tallies: list[Tally] = []
    clock = clock or Clock()
    async with await Store.open(db, exclusive=True) as store:
        await clock.since_last_run(store)
        now = clock.now()
        if config.watch.pith:
            await store.watchlist.track([parse_reference(p) for p in config.watch.pith], now)
        sinks = sink_names(config.alerts)
        await store.alerts.queue_open(sinks, now)  # a sink added since they opened
        shares, count = await plan(config, store, named)
        share = shared_limits(config, len(shares))
        async with fetcher_for(share) as fetcher:
            sites, unread = await resolve(config, store, fetcher, now)
            summary.records, summary.mirrors = count, len(sites)
            summary.manifests_unread = len(unread)
            trust = await with_learned(trust, store, config)
            # Verdicts reached under other keys are reached again for unchanged bodies.
            reverify = await store.setting(TRUST_DIGEST) != trust.digest
            crawler = Crawler(share, store, fetcher, trust, clock.now)
            crawler.reverify = reverify
            async with anyio.create_task_group() as tg:
                for others in shares[1:]:
                    job = ShareJob(
                        share, db, others, sites, trust, log_settings(), os.getpid(), reverify
                    )
                    tg.start_soon(run_share_in_worker, job, tallies)
                progress = Progress(count * len(sites), weight=len(shares))
                tallies.append(await crawl_share(crawler, store, shares[0], sites, progress))
            progress.done()
            if len(shares) > 1:
                crawler.conditions.forget_open_scopes()  # workers opened and closed some
            if reverify and not any(t.failed_share for t in tallies):
                await store.set_setting(TRUST_DIGEST, trust.digest)  # every body judged
            names = [s.name for s in sites]
            # Alerts these open are entries of the pass's log too.
            opened = await crawler.conditions.recheck(named or None, names)
            opened += await crawler.conditions.check_mirrors(names)
            summary.events += len(opened)
            summary.alerts_raised += len(opened)
            await crawler.conditions.close_cleared()
            summary.delivered, _ = await deliver_due(
                store,
                Sinks(config.alerts, fetcher, secret),
                clock.now(),
                random.Random(),  # noqa: S311 - jitter, not crypto
            )
            summary.undelivered = await store.alerts.undelivered_count(sinks)
        these, tracked = named or None, not named
        firing = await store.alerts.open_counts(
            "severity", suffixes=these, tracked=tracked, firing=True
        )
        held = await store.alerts.open_counts("severity", suffixes=these, tracked=tracked)
        summary.alerts_open = sum(held.values())
        await clock.seen(store)
        store.check_file()  # written into a file deleted meanwhile: nothing was kept
    for t in tallies:
        summary.absorb(t)
    summary.alerts = firing.pop("critical", 0)
    summary.warnings = sum(firing.values())
    return summary


class Progress:
    """records done/total and rate on a terminal; silent otherwise.

    `weight`: pairs each step stands for (a pass shared by N processes counts this
    one's share N times: an estimate of the whole, which ends at the total)."""

    def __init__(self, total: int, weight: int = 1) -> None:
        self.total, self.count, self.weight = total, 0, weight
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()

    def step(self) -> None:
        self.count = min(self.total, self.count + self.weight)
        if self.tty and (self.count % 50 < self.weight or self.count == self.total):
            rate = self.count / max(time.monotonic() - self.started, 1e-9)
            print(f"\r{self.count}/{self.total} ({rate:.0f}/s)", end="", file=sys.stderr)

    def done(self) -> None:
        if self.tty and self.total:
            print(file=sys.stderr)
