"""The crawl loop: one pass for `sync`, the scheduled rounds of `run`.

Owns which (record, mirror) pairs are crawled when, with bounded concurrency, and the
summary of a pass. Each pair's work is `crawl.Crawler.sync_pair`.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_process
import structlog
from anyio.abc import TaskStatus

from pithcrawl.alert import Sinks, deliver_due, read_secret
from pithcrawl.config import Config
from pithcrawl.crawl import Crawler, PairResult
from pithcrawl.errors import PithcrawlError
from pithcrawl.fetch import HttpFetcher, user_agent
from pithcrawl.keys import TrustSet
from pithcrawl.log import configure as configure_logging
from pithcrawl.log import settings as log_settings
from pithcrawl.metrics import Metrics, serve_metrics
from pithcrawl.mirrors import Site, resolve
from pithcrawl.pith import parse_reference
from pithcrawl.sdnotify import Notifier
from pithcrawl.store import FetchState, Store
from pithcrawl.trust import with_learned

log = structlog.get_logger("pithcrawl.daemon")


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
    warnings: int = 0
    """Open alerts of error severity (a mirror stale or unreachable) for these records."""
    delivered: int = 0
    undelivered: int = 0
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
            "warnings": self.warnings,
            "delivered": self.delivered,
            "undelivered": self.undelivered,
            "duration_s": round(self.duration_s, 3),
        }


def fetcher_for(config: Config) -> HttpFetcher:
    """The one HTTP client of a pass or a round, as `[crawl]` configures it."""
    return HttpFetcher(
        user_agent=user_agent(config.crawl.contact),
        timeout=config.crawl.timeout.total_seconds(),
        max_bytes=config.crawl.max_bytes,
        concurrency=config.crawl.concurrency,
        per_host=config.crawl.per_host,
    )


async def sync_once(config: Config, db: Path, named: list[str], trust: TrustSet) -> Summary:
    """One pass over every tracked (or named) record and every mirror; then the
    divergence and reachability rules, then alert delivery.

    A pass over many records is split across worker processes (`crawl.workers`), each
    crawling its share of the records with its share of the fetch limits and writing to
    the archive itself; this process keeps the writers' lock, crawls one share, and runs
    the rules that span records and mirrors once all are done.
    """
    db.parent.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    tallies: list[Tally] = []
    async with await Store.open(db, exclusive=True) as store:
        now = datetime.now(UTC)
        if config.watch.pith:
            await store.track([parse_reference(p) for p in config.watch.pith], now)
        suffixes = named or await store.tracked_suffixes()
        shares = split(suffixes, workers_for(config, len(suffixes)))
        share = shared_limits(config, len(shares))
        async with fetcher_for(share) as fetcher:
            sites = await resolve(config, store, fetcher, now)
            summary.records, summary.mirrors = len(suffixes), len(sites)
            trust = await with_learned(trust, store, config)
            crawler = Crawler(share, store, fetcher, trust, lambda: datetime.now(UTC))
            async with anyio.create_task_group() as tg:
                limiter = anyio.CapacityLimiter(max(1, len(shares) - 1))
                for others in shares[1:]:
                    job = ShareJob(share, db, others, sites, trust, log_settings(), os.getpid())
                    tg.start_soon(_run_share, job, limiter, tallies)
                progress = Progress(len(suffixes) * len(sites), weight=len(shares))
                tallies.append(await crawl_share(crawler, store, shares[0], sites, progress))
            progress.done()
            if len(shares) > 1:
                crawler.forget_open_scopes()  # the other processes opened and closed some
            names = [s.name for s in sites]
            await crawler.recheck(suffixes, names)
            await crawler.check_mirrors(names)
            sinks = Sinks(
                config.alerts, fetcher, read_secret(config.alerts.webhook_secret_file, os.environ)
            )
            summary.delivered, summary.undelivered = await deliver_due(
                store,
                sinks,
                datetime.now(UTC),
                random.Random(),  # noqa: S311 - jitter, not crypto
            )
        open_alerts = await store.alerts.open_alerts(suffixes=suffixes)
    for t in tallies:
        summary.new_snapshots += t.new_snapshots
        summary.events += t.events
        summary.errors += t.errors
        summary.deferred += t.deferred
        summary.untrusted += t.untrusted
    summary.alerts = sum(1 for a in open_alerts if a.severity == "critical")
    summary.warnings = sum(1 for a in open_alerts if a.severity != "critical")
    return summary


async def crawl_share(
    crawler: Crawler,
    store: Store,
    suffixes: list[str],
    sites: list[Site],
    progress: Progress | None = None,
) -> Tally:
    """Every (record, mirror) pair of `suffixes` × `sites`, `crawl.concurrency` at a time;
    what they found, counted as they end (memory stays flat however many there are)."""
    tally = Tally()
    concurrency = crawler.config.crawl.concurrency
    send, receive = anyio.create_memory_object_stream[_Job](concurrency)

    async def worker() -> None:
        async with receive.clone() as jobs:
            async for job in jobs:
                tally.add(await _pair(crawler, job))
                if progress is not None:
                    progress.step()

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
        async with send:
            # The bookkeeping of a chunk of records in one read, not one per fetch.
            for start in range(0, len(suffixes), PASS_CHUNK):
                chunk = suffixes[start : start + PASS_CHUNK]
                known = await store.fetch_states_of(chunk)
                for suffix in chunk:
                    for site in sites:
                        await send.send(
                            _Job(
                                suffix,
                                site,
                                known.get((suffix, site.name, "bundle")),
                                known.get((suffix, site.name, "state")),
                            )
                        )
        receive.close()
    return tally


# -- sharing a pass between processes ------------------------------------------------------

#: A pass gives a worker process a share only if each gets at least this many records:
#: below it, starting a process (about half a second) costs more than it saves.
SHARE_MIN = 512
#: Never more processes than this, whatever the CPU count.
WORKERS_MAX = 8


def workers_for(config: Config, records: int) -> int:
    """How many processes a pass over `records` records uses."""
    wanted = config.crawl.workers or _usable_cpus()
    # Each process gets at least one fetch in flight, per host too, so the shared limits
    # stay the configured ones.
    limit = min(WORKERS_MAX, config.crawl.per_host, config.crawl.concurrency)
    return max(1, min(wanted, limit, records // SHARE_MIN))


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def split(suffixes: list[str], parts: int) -> list[list[str]]:
    """`suffixes` dealt into `parts` shares (every part non-empty when there are enough)."""
    return [suffixes[i::parts] for i in range(parts)]


def shared_limits(config: Config, parts: int) -> Config:
    """`config` with each process's share of the fetch limits (their sum never exceeds
    the configured ones)."""
    if parts == 1:
        return config
    crawl = replace(
        config.crawl,
        concurrency=config.crawl.concurrency // parts,
        per_host=config.crawl.per_host // parts,
    )
    return replace(config, crawl=crawl)


@dataclass(slots=True)
class Tally:
    """What a share of a pass found, in numbers (sent back from a worker process)."""

    new_snapshots: int = 0
    events: int = 0
    errors: int = 0
    deferred: int = 0
    untrusted: int = 0

    def add(self, r: PairResult) -> None:
        self.new_snapshots += r.new_snapshots
        self.events += len(r.events)
        self.errors += r.error is not None
        self.deferred += r.deferred
        self.untrusted += r.serves_untrusted


@dataclass(frozen=True, slots=True)
class ShareJob:
    """Everything a worker process needs to crawl its share (pickled to it)."""

    config: Config
    db: Path
    suffixes: list[str]
    sites: list[Site]
    trust: TrustSet
    log: tuple[str, int]
    parent: int
    """The pid of the process that started the worker."""


async def _run_share(job: ShareJob, limiter: anyio.CapacityLimiter, out: list[Tally]) -> None:
    # cancellable: on SIGTERM the worker is killed like a crashed pass, which loses
    # nothing archived (every fetch is recorded in one transaction, or not at all).
    out.append(await anyio.to_process.run_sync(run_share, job, cancellable=True, limiter=limiter))


def run_share(job: ShareJob) -> Tally:
    """A worker process's share of a pass (runs in the worker)."""
    _bound_to_parent(job.parent)
    configure_logging(*job.log)
    return anyio.run(_share, job)


def _bound_to_parent(parent: int) -> None:
    """A worker lives and dies with the process that started it: Ctrl-C is for that
    process (which stops the workers itself), and on Linux the kernel kills the worker
    if its parent dies, so no orphan keeps crawling once the pass is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # it died before prctl took effect
            os._exit(1)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


async def _share(job: ShareJob) -> Tally:
    # Not the writers' lock: the process that started this one holds it for the pass.
    async with await Store.open(job.db) as store, fetcher_for(job.config) as fetcher:
        crawler = Crawler(job.config, store, fetcher, job.trust, lambda: datetime.now(UTC))
        return await crawl_share(crawler, store, job.suffixes, job.sites)


@dataclass(frozen=True, slots=True)
class _Job:
    suffix: str
    site: Site
    bundle_state: FetchState | None
    state_state: FetchState | None


#: Records whose bookkeeping a pass reads at once.
PASS_CHUNK = 256


async def _pair(crawler: Crawler, job: _Job) -> PairResult:
    """One pair, unless the mirror asked us (or failed enough) to come back later."""
    state = job.bundle_state
    now = datetime.now(UTC)
    if state is not None and state.failures and state.next_due and state.next_due > now:
        return PairResult(
            job.suffix, job.site.name, error=state.last_error or "failing", deferred=True
        )
    return await crawler.sync_pair(
        job.suffix, job.site, bundle_state=state, state_state=job.state_state
    )


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


#: How long the scheduler sleeps when nothing is due (it wakes early on a reload).
IDLE_POLL = 5.0
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
    ) -> None:
        self.load = load
        self.config = load()
        self.trust_for = trust_for
        self.trust = trust_for(self.config)
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
        self.metrics = Metrics()
        # Made in run(): anyio's primitives belong to a running event loop.
        self.wake: anyio.Event
        self.round_scope: anyio.CancelScope | None = None
        self.store: Store  # set by run(), which owns it

    async def run(self) -> None:
        self.db.parent.mkdir(parents=True, exist_ok=True)
        self.wake = anyio.Event()
        async with (
            await Store.open(self.db, exclusive=True) as store,
            anyio.create_task_group() as tg,
        ):
            self.store = store
            await tg.start(self._signals, tg.cancel_scope)
            if self.config.metrics.bind:
                port = await tg.start(serve_metrics, self.metrics, self.config.metrics.bind)
                log.info("metrics_serving", bind=self.config.metrics.bind, port=port)
            tracked = await store.tracked_count()
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
            await self.store.track([parse_reference(p) for p in config.watch.pith], _now())
        async with fetcher_for(config) as fetcher:
            trust = await with_learned(self.trust, self.store, config)
            crawler = Crawler(config, self.store, fetcher, trust, _now, metrics=self.metrics)
            await self._refresh_sites(fetcher)
            tracked = await self.store.tracked_count()
            self.notifier.ready(f"watching {tracked} records on {len(self.sites)} mirrors")
            log.info("crawl_started", records=tracked, mirrors=len(self.sites))
            secret = read_secret(config.alerts.webhook_secret_file, os.environ)
            send, receive = anyio.create_memory_object_stream[tuple[str, Site]](0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._housekeeping, crawler, Sinks(config.alerts, fetcher, secret))
                for _ in range(config.crawl.concurrency):
                    tg.start_soon(self._worker, crawler, receive.clone())
                receive.close()
                async with send:
                    await self._schedule(send, fetcher)

    async def _housekeeping(self, crawler: Crawler, sinks: Sinks) -> None:
        """Deliver due alerts every few seconds; every minute, the rules that time alone
        can trigger (a lag turning stale, a mirror failing too long)."""
        rand = random.Random()  # noqa: S311 - jitter, not crypto
        checked = 0.0
        while True:
            if time.monotonic() - checked > self.check_every:
                checked = time.monotonic()
                names = list(self.sites)
                tracked = await self.store.tracked_suffixes()
                await crawler.recheck(tracked, names)
                await crawler.check_mirrors(names)
                self.metrics.set_records(len(tracked))
                open_alerts = await self.store.alerts.open_alerts()
                self.metrics.set_open_alerts(Counter(a.kind for a in open_alerts))
            await deliver_due(self.store, sinks, _now(), rand, metrics=self.metrics)
            await anyio.sleep(self.deliver_every)

    async def _schedule(self, send: Any, fetcher: HttpFetcher) -> None:
        config = self.config
        last_summary = time.monotonic()
        while True:
            self._ping()
            if time.monotonic() - self.sites_at > SITES_REFRESH:
                await self._refresh_sites(fetcher)
            now = _now()
            due = await self.store.due(
                now, limit=config.crawl.concurrency * 4, mirrors=list(self.sites)
            )
            pairs = [p for p in due if p not in self.inflight]
            for suffix, name in pairs:
                self.inflight.add((suffix, name))
                await send.send((suffix, self.sites[name]))
            if time.monotonic() - last_summary > SUMMARY_EVERY:
                last_summary = time.monotonic()
                self._summary_line()
            if not pairs:
                await self._idle()

    async def _idle(self) -> None:
        """Sleep until the next pair is due (at most `idle_poll`), a fetch ends or a reload."""
        wait = self.idle_poll
        upcoming = await self.store.next_due(list(self.sites))
        lag = (_now() - upcoming).total_seconds() if upcoming is not None else 0.0
        self.metrics.set_lag(lag if not self.inflight else 0.0)
        if upcoming is not None:
            ahead = (upcoming - _now()).total_seconds()
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
                    self.wake.set()
                self.metrics.snapshots(result.new_snapshots)
                t = self.totals
                t.records += 1
                t.new_snapshots += result.new_snapshots
                t.events += len(result.events)
                t.alerts += sum(1 for e in result.events if e.severity == "critical")
                t.errors += result.error is not None

    async def _refresh_sites(self, fetcher: HttpFetcher) -> None:
        sites = await resolve(self.config, self.store, fetcher, _now())
        for site in sites:
            if site.origin == "config":
                await self.store.upsert_mirror(site.row(_now()))
        self.sites = {s.name: s for s in sites}
        self.metrics.retain_mirrors(self.sites)
        self.sites_at = time.monotonic()

    def _summary_line(self) -> None:
        t = self.totals
        log.info(
            "crawl_summary",
            pairs=t.records,
            new_snapshots=t.new_snapshots,
            events=t.events,
            alerts=t.alerts,
            errors=t.errors,
        )
        self.notifier.status(
            f"{t.records} fetches, {t.new_snapshots} new snapshots, {t.alerts} alerts, "
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
        self.config, self.trust = config, trust
        self.sites_at = 0.0
        log.info("config_reloaded")
        self.wake.set()
        if self.round_scope is not None:
            self.round_scope.cancel()

    def _ping(self) -> None:
        """Tell systemd's watchdog the scheduler is alive, at half its interval.

        Pinged from the scheduler loop itself (not a task of its own), so a scheduler
        stuck on the archive or the network stops the pings and systemd restarts us.
        """
        watchdog = self.notifier.watchdog
        if watchdog is None:
            return
        now = time.monotonic()
        if now - self.pinged_at >= watchdog.total_seconds() / 2:
            self.notifier.ping()
            self.pinged_at = now


def _now() -> datetime:
    return datetime.now(UTC)
