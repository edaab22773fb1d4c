"""The daemon: the scheduled rounds of `pithcrawl run`.

Owns which (record, mirror) pairs are crawled when, reloads, the watchdog, and the
periodic checks and deliveries between fetches. One pass for `sync` is `sync`'s; each
pair's work is `crawl.Crawler.sync_pair`.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from pithcrawl.alert import Sinks, check_sinks, deliver_to, sink_names
from pithcrawl.clock import Clock
from pithcrawl.config import Config
from pithcrawl.crawl import Crawler
from pithcrawl.errors import PithcrawlError
from pithcrawl.fetch.client import HttpFetcher
from pithcrawl.keys import TrustSet
from pithcrawl.metrics import Metrics, serve_metrics
from pithcrawl.mirrors import Site, resolve
from pithcrawl.pith import parse_reference
from pithcrawl.sdnotify import Notifier
from pithcrawl.share import (
    fetcher_for,
)
from pithcrawl.store import Alert, Store
from pithcrawl.store.archive import Due
from pithcrawl.sync import Summary
from pithcrawl.trust import TRUST_DIGEST, with_learned

log = structlog.get_logger("pithcrawl.daemon")


#: How long the scheduler sleeps when nothing is due (it wakes early on a reload).
IDLE_POLL = 5.0
#: While every worker is busy, the scheduler updates the lag metric this often.
WAITING_STEP = 1.0
#: Mirror lists (manifests) are refreshed at most this often.
SITES_REFRESH = 3600.0
#: One summary line per this many seconds of crawling.
SUMMARY_EVERY = 60.0
#: Due alert deliveries are attempted this often.
DELIVER_EVERY = 5.0
#: Time-dependent rules (stale mirrors, unreachable mirrors) are re-checked this often.
CHECK_EVERY = 60.0


class Daemon:
    """`pithcrawl run`: crawl whatever is due, forever, until told to stop.

    One task group: a signal task (SIGTERM/SIGINT stop, SIGHUP reloads), a scheduler
    that hands due pairs to a bounded pool of workers, and a watchdog pinger under
    systemd. Stopping cancels in-flight fetches: each pair is stored in one transaction,
    so nothing is half-written.
    """

    def __init__(
        self,
        load: Callable[[], Config],
        db: Path,
        trust_for: Callable[[Config], TrustSet],
        notifier: Notifier,
        *,
        idle_poll: float = IDLE_POLL,
        deliver_every: float = DELIVER_EVERY,
        check_every: float = CHECK_EVERY,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.load = load
        self.config = load()
        self.trust_for = trust_for
        self.trust = trust_for(self.config)
        self.secret = check_sinks(self.config.alerts, os.environ)
        self.db = db
        self.notifier = notifier
        self.idle_poll = idle_poll
        self.deliver_every = deliver_every
        self.check_every = check_every
        self.sites: dict[str, Site] = {}
        self.sites_at = 0.0
        self.pinged_at = 0.0
        self.inflight: set[tuple[str, str]] = set()
        self.totals = Summary()
        self.alerts_open = 0
        """Open alerts, as of the last periodic check."""
        self.metrics = Metrics()
        # Made in run(): anyio's primitives belong to a running event loop.
        self.wake: anyio.Event
        self.free: anyio.Semaphore
        """Workers not busy with a pair (the scheduler takes one before handing one out)."""
        self.round_scope: anyio.CancelScope | None = None
        self.crawler: Crawler | None = None
        self.judged_under: tuple[str, float] | None = None
        """The trust set unchanged bodies are being judged again under, and until when."""
        self.store: Store  # set by run(), which owns it

    async def run(self) -> None:
        self.db.parent.mkdir(parents=True, exist_ok=True)
        self.wake = anyio.Event()
        async with (
            await Store.open(self.db, exclusive=True) as store,
            anyio.create_task_group() as tg,
        ):
            self.store = store
            await self.clock.since_last_run(store)
            await tg.start(self._signals, tg.cancel_scope)
            if self.config.metrics.bind:
                port = await tg.start(serve_metrics, self.metrics, self.config.metrics.bind)
                log.info("metrics_serving", bind=self.config.metrics.bind, port=port)
            tracked = await store.watchlist.tracked_count()
            self.metrics.set_records(tracked)
            self.notifier.ready(f"watching {tracked} records")
            log.info("daemon_ready", records=tracked, db=str(self.db))
            while True:
                with anyio.CancelScope() as round_scope:
                    self.round_scope = round_scope
                    await self._crawl()
                # A reload ended the round: start again with the new configuration.

    async def _crawl(self) -> None:
        config = self.config
        if config.watch.pith:
            await self.store.watchlist.track(
                [parse_reference(p) for p in config.watch.pith], self.clock.now()
            )
        # A sink configured since an alert opened is told of it (this round starts at
        # start and after each reload, when sinks can change).
        await self.store.alerts.queue_open(sink_names(config.alerts), self.clock.now())
        async with fetcher_for(config) as fetcher:
            trust = await with_learned(self.trust, self.store, config)
            crawler = Crawler(
                config, self.store, fetcher, trust, self.clock.now, metrics=self.metrics
            )
            self.crawler = crawler
            self.judged_under = None
            if await self.store.setting(TRUST_DIGEST) != trust.digest:
                # Unchanged bodies are judged again for one interval (every pair comes due
                # in it), then the archive notes the keys its verdicts stand on.
                crawler.reverify = True
                until = time.monotonic() + 1.2 * config.crawl.interval.total_seconds()
                self.judged_under = (trust.digest, until)
            await self._refresh_sites(fetcher)
            tracked = await self.store.watchlist.tracked_count()
            self.notifier.ready(f"watching {tracked} records on {len(self.sites)} mirrors")
            log.info("crawl_started", records=tracked, mirrors=len(self.sites))
            send, receive = anyio.create_memory_object_stream[tuple[str, Site]](0)
            self.free = anyio.Semaphore(config.crawl.concurrency)
            async with anyio.create_task_group() as tg:
                sinks = Sinks(config.alerts, fetcher, self.secret)
                tg.start_soon(self._housekeeping, crawler)
                for sink in sinks.names:  # each its own task: a dead one delays no other
                    tg.start_soon(self._deliveries, sinks, sink)
                for _ in range(config.crawl.concurrency):
                    tg.start_soon(self._worker, crawler, receive.clone())
                receive.close()
                async with send:
                    await self._schedule(send, fetcher)

    async def _housekeeping(self, crawler: Crawler) -> None:
        """Every few seconds, that the archive's file is still the one open; every minute,
        the rules that time alone can trigger (a lag turning stale, a mirror failing too
        long, an alert's hold-down ending)."""
        checked = 0.0
        while True:
            self.store.check_file()  # deleted or replaced: stop, rather than write into it
            if self.judged_under is not None and time.monotonic() > self.judged_under[1]:
                await self.store.set_setting(TRUST_DIGEST, self.judged_under[0])
                crawler.reverify, self.judged_under = False, None
            if time.monotonic() - checked > self.check_every:
                checked = time.monotonic()
                names = list(self.sites)
                opened = await crawler.conditions.recheck(None, names)
                opened += await crawler.conditions.check_mirrors(names)
                await crawler.conditions.close_cleared()
                self._count_alerts(opened)
                await self.clock.seen(self.store)
                self.metrics.set_records(await self.store.watchlist.tracked_count())
                counts = await self.store.alerts.open_counts("kind")
                self.metrics.set_open_alerts(counts)
                self.alerts_open = sum(counts.values())
            await anyio.sleep(self.deliver_every)

    async def _deliveries(self, sinks: Sinks, sink: str) -> None:
        """Deliver `sink`'s due alerts every few seconds, on its own."""
        rand = random.Random()  # noqa: S311 - jitter, not crypto
        while True:
            await deliver_to(self.store, sinks, sink, self.clock.now(), rand, metrics=self.metrics)
            await anyio.sleep(self.deliver_every)

    async def _schedule(self, send: Any, fetcher: HttpFetcher) -> None:
        config = self.config
        last_summary = time.monotonic()
        while True:
            self._ping()
            await self.clock.check(self.store)  # a step back moves the schedule with it
            if time.monotonic() - self.sites_at > SITES_REFRESH:
                await self._refresh_sites(fetcher)
            now = self.clock.now()
            due = await self.store.due(
                now, limit=config.crawl.concurrency * 4, mirrors=list(self.sites)
            )
            pairs = [d for d in due if (d.suffix, d.mirror) not in self.inflight]
            self._set_lag(pairs)
            for i, (suffix, name, _) in enumerate(pairs):
                await self._free_worker(pairs[i:])
                self.inflight.add((suffix, name))
                await send.send((suffix, self.sites[name]))
            if time.monotonic() - last_summary > SUMMARY_EVERY:
                last_summary = time.monotonic()
                self._summary_line()
            if not pairs:
                await self._idle()

    async def _free_worker(self, waiting: list[Due]) -> None:
        """Wait until a worker is free. All may be busy for long (a mirror that never
        answers holds each until its timeout, and its fallback URL as long again): the
        scheduler is not stuck for that, so it keeps telling the watchdog, and the lag
        metric how late the `waiting` pairs are getting."""
        step = WAITING_STEP
        if self.notifier.watchdog is not None:
            step = min(step, self.notifier.watchdog.total_seconds() / 2)
        while True:
            self._ping()
            with anyio.move_on_after(step):
                await self.free.acquire()
                return
            self._set_lag(waiting)

    def _set_lag(self, waiting: list[Due]) -> None:
        """How late the oldest due pair no worker has taken yet is (0: none is waiting)."""
        oldest = min((d.since for d in waiting), default=None)
        lag = (self.clock.now() - oldest).total_seconds() if oldest is not None else 0.0
        self.metrics.set_lag(lag)

    async def _idle(self) -> None:
        """Sleep until the next pair is due (at most `idle_poll`), a fetch ends or a reload."""
        wait = self.idle_poll
        upcoming = await self.store.next_due(list(self.sites))
        if upcoming is not None:
            ahead = (upcoming - self.clock.now()).total_seconds()
            if ahead > 0:  # (a pair already due is in flight: its worker will wake us)
                wait = min(wait, ahead)
        if self.notifier.watchdog is not None:
            wait = min(wait, self.notifier.watchdog.total_seconds() / 2)
        with anyio.move_on_after(wait):
            await self.wake.wait()
        self.wake = anyio.Event()

    async def _worker(self, crawler: Crawler, jobs: Any) -> None:
        async with jobs:
            async for suffix, site in jobs:
                try:
                    result = await crawler.sync_pair(suffix, site)
                finally:
                    self.inflight.discard((suffix, site.name))
                    self.free.release()
                    self.wake.set()
                self.metrics.snapshots(result.new_snapshots)
                t = self.totals
                t.records += 1
                t.new_snapshots += result.new_snapshots
                t.events += len(result.events)
                t.alerts_raised += result.alerts_raised
                self._count_alerts(result.record_alerts)
                t.errors += result.error is not None

    async def _refresh_sites(self, fetcher: HttpFetcher) -> None:
        now = self.clock.now()
        sites, _ = await resolve(self.config, self.store, fetcher, now)  # unread: logged
        for site in sites:
            if site.origin == "config":
                await self.store.watchlist.upsert_mirror(site.row(now))
        self.sites = {s.name: s for s in sites}
        if self.crawler is not None:
            self.crawler.mirrors = list(self.sites)
        self.metrics.retain_mirrors(self.sites)
        self.sites_at = time.monotonic()

    def _count_alerts(self, opened: list[Alert]) -> None:
        """Alerts the record- and mirror-level rules opened: entries of the log, and
        alerts raised, in `crawl_summary`."""
        self.totals.events += len(opened)
        self.totals.alerts_raised += len(opened)

    def _summary_line(self) -> None:
        """`crawl_summary` and systemd's status line: what was done since start, and the
        alerts open now (as of the last minute's count)."""
        t = self.totals
        log.info(
            "crawl_summary",
            pairs=t.records,
            new_snapshots=t.new_snapshots,
            events=t.events,
            alerts_raised=t.alerts_raised,
            alerts_open=self.alerts_open,
            errors=t.errors,
        )
        self.notifier.status(
            f"{self.alerts_open} alerts open; since start: {t.records} fetches, "
            f"{t.new_snapshots} new snapshots, {t.alerts_raised} alerts raised, "
            f"{t.errors} errors"
        )

    async def _signals(
        self, stop: anyio.CancelScope, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._reload()
                    continue
                log.info("daemon_stopping", signal=signal.Signals(signum).name)
                self.notifier.stopping()
                self._summary_line()
                stop.cancel()
                return

    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            config = self.load()
            trust = self.trust_for(config)
            secret = check_sinks(config.alerts, os.environ)
        except PithcrawlError as e:
            log.error("reload_refused", error=str(e))
            self.notifier.ready("reload refused; running with the previous configuration")
            return
        if config.metrics.bind != self.config.metrics.bind:
            log.warning(
                "reload_ignores_metrics_bind",
                running=self.config.metrics.bind,
                configured=config.metrics.bind,
            )
        if config.db is not None and config.db != self.config.db:
            log.warning("reload_ignores_db", running=str(self.db), configured=str(config.db))
        self.config, self.trust, self.secret = config, trust, secret
        self.sites_at = 0.0
        log.info("config_reloaded")
        self.wake.set()
        if self.round_scope is not None:
            self.round_scope.cancel()

    def _ping(self) -> None:
        """Tell systemd's watchdog the scheduler is alive.

        Pinged from the scheduler loop itself (not a task of its own), so a scheduler
        stuck on the archive or the network stops the pings and systemd restarts us. Its
        waits last at most half the interval; a ping is skipped only within a quarter of
        one, so a wait that ends a moment early never makes the gap a whole interval.
        """
        watchdog = self.notifier.watchdog
        if watchdog is None:
            return
        now = time.monotonic()
        if now - self.pinged_at >= watchdog.total_seconds() / 4:
            self.notifier.ping()
            self.pinged_at = now
