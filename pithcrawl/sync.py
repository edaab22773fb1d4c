"""One pass: what `pithcrawl sync` does, and what a pass found.

Owns a pass over every tracked (or named) record and every mirror: one round
(`round.Round`), its records shared with worker processes (`plan`, `worker`), then the
rules that span records and mirrors and alert delivery, and the pass's `Summary`. Each
pair's work is `crawl.Crawler.sync_pair`; the daemon's scheduled rounds are `daemon`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from pithcrawl.alert import check_sinks
from pithcrawl.clock import Clock
from pithcrawl.config import Config
from pithcrawl.keys import TrustSet
from pithcrawl.location import Where, make_room
from pithcrawl.log import settings as log_settings
from pithcrawl.pith import parse_reference
from pithcrawl.plan import plan, shared_limits
from pithcrawl.round import Round
from pithcrawl.share import Steps, Tally, crawl_share
from pithcrawl.store import Store
from pithcrawl.worker import ShareJob, run_share_in_worker


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
    config: Config,
    db: Where,
    named: list[str],
    trust: TrustSet,
    *,
    clock: Clock | None = None,
    progress: Callable[[int, int], Steps] | None = None,
) -> Summary:
    """One pass over every tracked (or named) record and every mirror; then the
    divergence and reachability rules, then alert delivery.

    A pass over many records is split across worker processes (`crawl.workers`), each
    crawling its share of the records with its share of the fetch limits and writing to
    the archive itself; this process keeps the writers' lock, crawls one share, and runs
    the rules that span records and mirrors once all are done. `progress(total,
    weight)`: something told of each pair this process does.
    """
    make_room(db)
    named = list(dict.fromkeys(named))  # a record named twice is crawled once
    secret = check_sinks(config.alerts, os.environ)  # before the pass, not after it
    summary = Summary()
    tallies: list[Tally] = []
    node = config.node
    clock = (clock or Clock()).of(node.node_name, node.vantage_name, alive=config.vantage_alive)
    async with await Store.open(db, exclusive=True, node=config.node.node_name) as store:
        await clock.since_last_run(store)
        if config.watch.pith and not named:  # tracked before the pass counts its records
            refs = [parse_reference(p) for p in config.watch.pith]
            await store.watchlist.track(refs, clock.now())
        shares, count = await plan(config, store, named)
        limits = shared_limits(config, len(shares))
        async with Round.open(config, store, trust, clock, secret=secret, limits=limits) as rnd:
            summary.records, summary.mirrors = count, len(rnd.sites)
            summary.manifests_unread = len(rnd.unread)
            sites = list(rnd.sites)
            async with anyio.create_task_group() as tg:
                for others in shares[1:]:
                    job = ShareJob(
                        limits, db, others, sites, rnd.trust, log_settings(), os.getpid(),
                        rnd.reverify,
                    )  # fmt: skip
                    tg.start_soon(run_share_in_worker, job, tallies)
                steps = progress(count * len(sites), len(shares)) if progress else None
                tallies.append(await crawl_share(rnd.crawler, store, shares[0], sites, steps))
            if len(shares) > 1:
                rnd.others_wrote()
            if rnd.reverify and not any(t.failed_share for t in tallies):
                await rnd.judged_all()
            # Alerts these open are entries of the pass's log too.
            opened = await rnd.check(named)
            summary.events += len(opened)
            summary.alerts_raised += len(opened)
            summary.delivered = await rnd.deliver()
            summary.undelivered = await store.deliveries.undelivered_count(rnd.sinks.names)
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
