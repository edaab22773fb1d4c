"""The daemon: the scheduled rounds of `pithcrawl run`.

Owns which (record, mirror) pairs are crawled when, how long a round lasts (until a
reload, an hour, or the end of a window of judging unchanged bodies again), the
watchdog, and when the round's checks and deliveries run between fetches. Several
daemons (nodes) of one vantage may crawl one archive: each takes a pair's lease before
fetching it (`store.leases`), lets go of it once the pair is written, and cuts a pair
short that outruns it. What a round
is (`round.Round`) is shared with `sync`; each pair's work is `crawl.Crawler.sync_pair`.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from pithcrawl.alert import check_sinks
from pithcrawl.clock import Clock
from pithcrawl.config import Config
from pithcrawl.crawl import Crawler, PairResult
from pithcrawl.errors import LeaseLost, PithcrawlError, StoreError, UsageError
from pithcrawl.keys import TrustSet
from pithcrawl.location import Where, make_room
from pithcrawl.metrics import Metrics, serve_metrics
from pithcrawl.mirrors import Site
from pithcrawl.round import Round
from pithcrawl.sdnotify import Notifier
from pithcrawl.store import Alert, Store
from pithcrawl.store.archive import Due
from pithcrawl.store.leases import LEASED, Lease
from pithcrawl.sync import Summary

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
#: While due pairs read earlier wait for their mirror, the archive is read again for
#: the other mirrors' at most this often.
REREAD_EVERY = 1.0


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
        db: Where,
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
        self.pinged_at = 0.0
        self.inflight: set[tuple[str, str]] = set()
        self.done: list[tuple[str, str]] = []
        self.rand = random.Random()  # noqa: S311 (an order of work, not a secret)
        """Pairs whose work ended, their leases still to let go of (with the next take)."""
        self.totals = Summary()
        self.alerts_open = 0
        """Open alerts, as of the last periodic check."""
        self.metrics = Metrics()
        # Made in run(): anyio's primitives belong to a running event loop.
        self.wake: anyio.Event
        self.free: anyio.Semaphore
        """Workers not busy with a pair (the scheduler takes one before handing one out)."""
        self.round_scope: anyio.CancelScope | None = None
        self.reloaded = False
        """A reload ended the last round: the next one tells systemd it is done."""
        self.judged_under: tuple[str, float] | None = None
        """The trust set unchanged bodies are being judged again under, and until when."""
        self.store: Store  # set by run(), which owns it

    async def run(self) -> None:
        make_room(self.db)
        self.wake = anyio.Event()
        node = self.config.node
        self.clock.of(node.node_name, node.vantage_name, alive=self.config.vantage_alive)
        async with (
            await Store.open(self.db, exclusive=True, node=node.node_name) as store,
            anyio.create_task_group() as tg,
        ):
            self.store = store
            await self.clock.since_last_run(store)
            tg.start_soon(self._let_go_when_stopped)
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
        """One round: from the configuration of now until a reload, an hour (the mirror
        lists are read again) or the end of a re-judging window, whichever comes first."""
        config = self.config
        node = config.node
        # No worker is left from a round a reload cut short: nothing is in flight, and
        # the leases that round held are let go (its pairs are due again at once).
        self.inflight.clear()
        self.done.clear()
        await self.store.leases.let_go(node.node_name, vantage=node.vantage_name)
        async with Round.open(
            config,
            self.store,
            self.trust,
            self.clock,
            secret=self.secret,
            metrics=self.metrics,
        ) as rnd:
            ends = time.monotonic() + SITES_REFRESH
            judging_until = None
            if rnd.reverify:
                # Unchanged bodies are judged again for one interval (every pair comes due
                # in it), then the archive notes the keys its verdicts stand on.
                if self.judged_under is None or self.judged_under[0] != rnd.digest:
                    window = 1.2 * config.crawl.interval.total_seconds()
                    self.judged_under = (rnd.digest, time.monotonic() + window)
                judging_until = self.judged_under[1]
                ends = min(ends, judging_until)
            self.metrics.retain_mirrors({s.name for s in rnd.sites})
            tracked = await self.store.watchlist.tracked_count()
            status = f"watching {tracked} records on {len(rnd.sites)} mirrors"
            if self.reloaded:  # the reload is done: systemd waits for this READY=1
                self.notifier.ready(status)
                self.reloaded = False
            else:  # a new hour's round, or the end of a re-judging window: no news for it
                self.notifier.status(status)
            log.info("crawl_started", records=tracked, mirrors=len(rnd.sites))
            send, receive = anyio.create_memory_object_stream[tuple[Lease, Site]](0)
            self.free = anyio.Semaphore(config.crawl.concurrency)
            over = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._housekeeping, rnd, over)
                for sink in rnd.sinks.names:  # each its own task: a dead one delays no other
                    tg.start_soon(self._deliveries, rnd, sink, over)
                async with anyio.create_task_group() as workers:
                    for _ in range(config.crawl.concurrency):
                        workers.start_soon(self._worker, rnd.crawler, receive.clone())
                    receive.close()
                    async with send:
                        await self._schedule(send, rnd, ends)
                # Every pair of the round ended: none of its leases is needed any more.
                self.done.clear()
                await self.store.leases.let_go(node.node_name, vantage=node.vantage_name)
                # The round's pairs in flight are done: its checks and deliveries end
                # once what they are doing is done (a delivery cut short would be sent
                # again by the next round).
                over.set()
            if judging_until is not None and time.monotonic() >= judging_until:
                await rnd.judged_all()
                self.judged_under = None

    async def _let_go_when_stopped(self) -> None:
        """When the daemon stops (its pairs in flight cancelled, nothing of them written),
        let go of this node's leases: the other nodes of its vantage take those pairs now,
        not once the leases expire."""
        try:
            await anyio.sleep_forever()
        finally:
            node = self.config.node
            with anyio.CancelScope(shield=True), suppress(StoreError):
                await self.store.leases.let_go(node.node_name, vantage=node.vantage_name)

    async def _housekeeping(self, rnd: Round, over: anyio.Event) -> None:
        """Every few seconds, that the archive's file is still the one open; every minute,
        the rules that time alone can trigger (a lag turning stale, a mirror failing too
        long, an alert's hold-down ending). Until the round is `over`."""
        checked = 0.0
        while not over.is_set():
            self.store.check_file()  # deleted or replaced: stop, rather than write into it
            if time.monotonic() - checked > self.check_every:
                checked = time.monotonic()
                self._count_alerts(await rnd.check())
                await self.clock.seen(self.store)
                await rnd.seen()
                self.metrics.set_records(await self.store.watchlist.tracked_count())
                counts = await self.store.alerts.open_counts("kind")
                self.metrics.set_open_alerts(counts)
                self.alerts_open = sum(counts.values())
            with anyio.move_on_after(self.deliver_every):
                await over.wait()

    async def _deliveries(self, rnd: Round, sink: str, over: anyio.Event) -> None:
        """Deliver `sink`'s due alerts every few seconds, on its own, until the round is
        `over`."""
        while not over.is_set():
            await rnd.deliver(sink)
            with anyio.move_on_after(self.deliver_every):
                await over.wait()

    async def _schedule(self, send: Any, rnd: Round, ends: float) -> None:
        """Hand the due pairs of the round's mirrors to the workers, until `ends`
        (monotonic time)."""
        config = self.config
        sites = {s.name: s for s in rnd.sites}
        last_summary = time.monotonic()
        width = config.crawl.per_host
        # The due pairs read and not handed out yet, oldest first: handed out as workers
        # come free, the archive read again only once none of them can go (a read per
        # freed worker sorted every tracked pair each time: quadratic in a round). A
        # pair in it that another node took or fetched meanwhile is refused when its
        # lease is taken (`Leases.take`), and dropped: never fetched twice.
        queue: list[Due] = []
        held: list[Due] = []
        read_at = -REREAD_EVERY
        found = True  # the last read found pairs for the mirrors then open: maybe more
        while time.monotonic() < ends:
            self._ping()
            await self.clock.check(self.store)  # a step back moves the schedule with it
            now = self.clock.now()
            # A mirror with `per_host` pairs in flight gets no more now: a slow mirror's
            # pairs would take every worker, and the others' due pairs wait behind them.
            busy = Counter(mirror for _, mirror in self.inflight)
            pairs = self._ready(queue, busy, width)
            open_now = [name for name in sites if busy[name] < width]
            if (
                not pairs
                and open_now
                and (not queue or found or time.monotonic() - read_at >= REREAD_EVERY)
            ):
                read_at = time.monotonic()
                due = await self.store.due(
                    now,
                    limit=config.crawl.concurrency * 4,
                    mirrors=open_now,
                    vantage=config.node.vantage_name,
                )
                queued = {(d.suffix, d.mirror) for d in queue}
                fresh = [d for d in due if (d.suffix, d.mirror) not in queued]
                # In an order of this node's own: nodes of one vantage reading the same
                # due pairs at once then mostly take different ones.
                self.rand.shuffle(fresh)
                queue += fresh
                found = any(d.mirror in open_now for d in fresh)
                pairs = self._ready(queue, busy, width)
                # The lag counts the pairs held back with their mirror too: they are late.
                held = await self._held_back(now, open_now, sites)
            waiting = pairs + queue + held
            self._set_lag(waiting)
            handed, refused = await self._hand_out(send, pairs, waiting, sites)
            if time.monotonic() - last_summary > SUMMARY_EVERY:
                last_summary = time.monotonic()
                self._summary_line()
            if not handed and not refused:  # (refused: the next of the queue, at once)
                # While queued pairs wait for their mirror, the other mirrors' are read
                # again within a second; with every mirror at `per_host`, nothing is
                # read until a worker comes free (and wakes this loop): the scheduler
                # spun on a mirror that never answers, a core's worth of CPU.
                again = read_at + REREAD_EVERY - time.monotonic() if queue and open_now else None
                await self._idle(list(sites), ends, again)

    def _ready(self, queue: list[Due], busy: Counter[str], width: int) -> list[Due]:
        """The pairs of `queue` that may start now (their mirror below `width` pairs in
        flight, counted in `busy`), taken out of it; those already in flight dropped."""
        ready, kept = [], []
        for d in queue:
            if (d.suffix, d.mirror) in self.inflight:
                continue
            if busy[d.mirror] < width:
                busy[d.mirror] += 1
                ready.append(d)
            else:
                kept.append(d)
        queue[:] = kept
        return ready

    async def _hand_out(
        self, send: Any, pairs: list[Due], waiting: list[Due], sites: dict[str, Site]
    ) -> tuple[int, int]:
        """Hand `pairs` to the workers as they come free, each once its lease is taken
        (as many at once as workers are free: a lease starts running when taken). How
        many were handed out, and how many refused (taken by another node meanwhile, or
        fetched by one: no longer due)."""
        node, lease = self.config.node, self.config.lease
        handed = refused = i = 0
        while i < len(pairs):
            await self._free_worker(waiting[i:])
            batch = pairs[i : i + 1 + int(self.free.value)]
            i += len(batch)
            done, self.done = self.done, []
            now = self.clock.now()
            taken = await self.store.leases.take(
                [(d.suffix, d.mirror) for d in batch],
                vantage=node.vantage_name,
                node=node.node_name,
                now=now,
                until=now + lease,
                done=done,
            )
            refused += len(batch) - len(taken)
            if not taken:
                self.free.release()
                continue
            for k, held in enumerate(taken):
                if k:  # free when the batch was cut (only workers give slots back)
                    await self.free.acquire()
                pair = (held.suffix, held.mirror)
                self.inflight.add(pair)
                try:
                    await send.send((held, sites[held.mirror]))
                except BaseException:  # a reload or a stop: no worker has it
                    self.inflight.discard(pair)
                    raise
            handed += len(taken)
        return handed, refused

    async def _held_back(
        self, now: datetime, open_now: list[str], sites: dict[str, Site]
    ) -> list[Due]:
        """The oldest due pair of the mirrors held back (each with `per_host` in flight),
        for the lag: they wait as much as any."""
        held = [name for name in sites if name not in open_now]
        if not held:
            return []
        due = await self.store.due(
            now,
            limit=len(self.inflight) + 1,
            mirrors=held,
            vantage=self.config.node.vantage_name,
        )
        return [d for d in due if (d.suffix, d.mirror) not in self.inflight]

    async def _free_worker(self, waiting: list[Due]) -> None:
        """Wait until a worker is free. All may be busy for long (a mirror that never
        answers holds each until its timeout, and its fallback URL as long again): the
        scheduler is not stuck for that, so it keeps telling the watchdog, and the lag
        metric how late the `waiting` pairs are getting."""
        step = WAITING_STEP
        if self.notifier.watchdog is not None:
            step = min(step, self.notifier.watchdog.total_seconds() / 2)
        while True:
            # Before every wait, not only after a long one: pairs taken one by one every
            # half second never wait a whole step, and the lag would stand still.
            self._set_lag(waiting)
            self._ping()
            with anyio.move_on_after(step):
                await self.free.acquire()
                return

    def _set_lag(self, waiting: list[Due]) -> None:
        """How late the oldest due pair no worker has taken yet is (0: none is waiting)."""
        oldest = min((d.since for d in waiting), default=None)
        lag = (self.clock.now() - oldest).total_seconds() if oldest is not None else 0.0
        self.metrics.set_lag(lag)

    async def _idle(self, mirrors: list[str], ends: float, again: float | None = None) -> None:
        """Sleep until the next pair is due (at most `idle_poll`, and not past the round's
        end), a fetch ends or a reload; the leases of the pairs done let go of first."""
        if self.done:
            done, self.done = self.done, []
            node = self.config.node
            await self.store.leases.let_go(node.node_name, done, vantage=node.vantage_name)
        wait = min(self.idle_poll, max(0.0, ends - time.monotonic()))
        if again is not None:
            wait = min(wait, max(0.0, again))
        upcoming = await self.store.next_due(mirrors, vantage=self.config.node.vantage_name)
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
        lease = self.config.lease
        margin = self.config.lease_margin.total_seconds()
        node = self.config.node
        # What this task writes of a pair is written only while the pair's lease is ours.
        LEASED.set((node.vantage_name, node.node_name))
        async with jobs:
            async for held, site in jobs:
                suffix = held.suffix
                try:
                    left = (held.expires - self.clock.now()).total_seconds() - margin
                    with anyio.move_on_after(left) as scope:
                        result = await crawler.sync_pair(suffix, site)
                    if scope.cancelled_caught:
                        result = await crawler.cut_short(suffix, site, lease)
                except LeaseLost as e:
                    # Stopped or starved past the lease's end, and another node took the
                    # pair: that node's fetch is the pair's news, not this one's.
                    log.warning("lease_lost", suffix=suffix, mirror=site.name, detail=str(e))
                    result = PairResult(suffix, site.name)
                finally:
                    self.inflight.discard((suffix, site.name))
                    self.done.append((suffix, site.name))
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
            running, wanted = self.config.node, config.node
            if (wanted.node_name, wanted.vantage_name) != (running.node_name, running.vantage_name):
                # The node's name holds its lock, leases and clock: a new one is a restart.
                raise UsageError(
                    f"[node] name and vantage cannot change on a reload (running as"
                    f" {running.node_name} of {running.vantage_name}, configured"
                    f" {wanted.node_name} of {wanted.vantage_name}): restart pithcrawl"
                )
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
        self.reloaded = True
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
