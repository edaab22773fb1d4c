"""A share of a pass: its (record, mirror) pairs crawled with bounded concurrency, and
the worker processes a large `sync` pass is shared with.

Owns how many processes a pass uses, how records and fetch limits are dealt between
them, what a worker runs, and the tally each share sends back. `sync.sync_once` runs
one share itself and starts the others here.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import anyio
import structlog

from pithcrawl.config import Config
from pithcrawl.crawl import Crawler, PairResult
from pithcrawl.errors import PithcrawlError
from pithcrawl.fetch import user_agent
from pithcrawl.fetch.client import HttpFetcher
from pithcrawl.keys import TrustSet
from pithcrawl.log import configure as configure_logging
from pithcrawl.mirrors import Site
from pithcrawl.store import FetchState, Store

log = structlog.get_logger("pithcrawl.share")


class Steps(Protocol):
    """Something told of each pair done (a progress display)."""

    def step(self) -> None: ...


def fetcher_for(config: Config) -> HttpFetcher:
    """The one HTTP client of a pass or a round, as `[crawl]` configures it."""
    return HttpFetcher(
        user_agent=user_agent(config.crawl.contact),
        timeout=config.crawl.timeout.total_seconds(),
        max_bytes=config.crawl.max_bytes,
        concurrency=config.crawl.concurrency,
        per_host=config.crawl.per_host,
    )


async def crawl_share(
    crawler: Crawler,
    store: Store,
    records: Records,
    sites: list[Site],
    progress: Steps | None = None,
) -> Tally:
    """Every (record, mirror) pair of `records` × `sites`, `crawl.concurrency` at a time;
    what they found, counted as they end (memory stays flat however many there are)."""
    tally = Tally()
    crawler.mirrors = [s.name for s in sites]
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
            async for chunk in records.chunks(store):
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


@dataclass(frozen=True, slots=True)
class _Job:
    suffix: str
    site: Site
    bundle_state: FetchState | None
    state_state: FetchState | None


#: Records a pass reads (their suffixes, then their bookkeeping) at once.
PASS_CHUNK = 256


@dataclass(frozen=True, slots=True)
class Records:
    """The records of one share of a pass: the named ones, or the tracked ones whose
    suffix is in [low, high) (None: unbounded). Tracked ones are read from the archive a
    chunk at a time, so a pass holds one chunk of suffixes however many are tracked."""

    named: tuple[str, ...] | None = None
    low: str | None = None
    high: str | None = None

    def describe(self) -> str:
        """These records, in words (for a log line)."""
        if self.named is not None:
            return f"{len(self.named)} named records"
        low, high = self.low or "the first", self.high or "the last"
        return f"the tracked records from {low} up to {high}"

    async def chunks(self, store: Store) -> AsyncIterator[list[str]]:
        if self.named is not None:
            for start in range(0, len(self.named), PASS_CHUNK):
                yield list(self.named[start : start + PASS_CHUNK])
            return
        after: str | None = None
        while chunk := await store.watchlist.tracked_page(
            low=self.low, high=self.high, after=after, limit=PASS_CHUNK
        ):
            yield chunk
            after = chunk[-1]


async def plan(config: Config, store: Store, named: list[str]) -> tuple[list[Records], int]:
    """The shares of a pass over `named` records, or every tracked one, and how many
    records that is: one share per process (`workers_for`)."""
    if named:
        parts = workers_for(config, len(named))
        return [Records(named=tuple(share)) for share in split(named, parts)], len(named)
    count = await store.watchlist.tracked_count()
    edges = [None, *await store.watchlist.tracked_bounds(workers_for(config, count)), None]
    return [Records(low=lo, high=hi) for lo, hi in itertools.pairwise(edges)], count


async def _pair(crawler: Crawler, job: _Job) -> PairResult:
    """One pair, unless the mirror asked us (or failed enough) to come back later."""
    state = job.bundle_state
    now = crawler.clock()
    if state is not None and state.failures and state.next_due and state.next_due > now:
        return PairResult(
            job.suffix, job.site.name, error=state.last_error or "failing", deferred=True
        )
    return await crawler.sync_pair(
        job.suffix, job.site, bundle_state=state, state_state=job.state_state
    )


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
    """Pairs whose mirror serves a bundle that failed verification."""
    alerts_raised: int = 0
    """Alerts opened (of every severity)."""
    failed_share: bool = False
    """A worker process did not finish its share."""

    def add(self, r: PairResult) -> None:
        self.new_snapshots += r.new_snapshots
        self.events += len(r.events) + len(r.record_alerts)
        # A deferred pair (its mirror failing, in backoff) was not fetched: not an error
        # of this pass, though the pass still ends in 3 for it.
        self.errors += r.error is not None and not r.deferred
        self.deferred += r.deferred
        self.untrusted += r.serves_untrusted
        self.alerts_raised += r.alerts_raised + len(r.record_alerts)

    def absorb(self, other: Tally) -> None:
        """Count another share's tally in this one."""
        self.new_snapshots += other.new_snapshots
        self.events += other.events
        self.errors += other.errors
        self.deferred += other.deferred
        self.untrusted += other.untrusted
        self.alerts_raised += other.alerts_raised
        self.failed_share = self.failed_share or other.failed_share


@dataclass(frozen=True, slots=True)
class ShareJob:
    """Everything a worker process needs to crawl its share (pickled to it)."""

    config: Config
    db: Path
    records: Records
    sites: list[Site]
    trust: TrustSet
    log: tuple[str, int]
    parent: int
    """The pid of the process that started the worker."""
    reverify: bool = False
    """Judge unchanged bodies again (the trust set changed)."""


#: How a worker process starts: the parent's import path first (one pickle on stdin, read
#: before anything of pithcrawl is imported), then `worker_main` reads the job.
_WORKER = (
    "import pickle, sys\n"
    "sys.path[:] = pickle.load(sys.stdin.buffer)\n"
    "from pithcrawl.share import worker_main\n"
    "raise SystemExit(worker_main())\n"
)


async def run_share_in_worker(job: ShareJob, out: list[Tally]) -> None:
    """Run `job` in a worker process of its own; its tally goes to `out`.

    The worker inherits this process's stderr, so its logs and alerts go where these do,
    and answers on its stdout with its tally. A worker that fails (it raised, crashed or
    was killed) costs its share, not the pass: it counts as one error, told in the log,
    and the pass goes on to the rules across records and to alert delivery; what the
    worker archived before it failed is kept.
    """
    # On a cancel (SIGTERM or Ctrl-C on the pass), leaving this block kills the worker
    # like a crashed pass, which loses nothing archived: every fetch is recorded in one
    # transaction, or not at all.
    async with await anyio.open_process(
        [sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        await process.stdin.send(pickle.dumps(sys.path) + pickle.dumps(job))
        await process.stdin.aclose()
        answer = b"".join([chunk async for chunk in process.stdout])
        code = await process.wait()
    out.append(_tally_of(job, code, answer))


def _tally_of(job: ShareJob, code: int, answer: bytes) -> Tally:
    """What a worker process answered, or one error when it did not finish."""
    if code == 0:
        try:
            tally = pickle.loads(answer)  # noqa: S301 - our own child, over a pipe
        except Exception:  # any unreadable answer is a failed share
            tally = None
        if isinstance(tally, Tally):
            return tally
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    log.error(
        "worker_failed",
        detail=f"a worker process {how} before finishing its share of the pass",
        share=job.records.describe(),
    )
    return Tally(errors=1, failed_share=True)


def worker_main() -> int:
    """A worker process's life (started by `run_share_in_worker`): read the job from
    stdin, crawl the share, answer with the pickled tally on stdout. 0 when it did."""
    job: ShareJob = pickle.load(sys.stdin.buffer)  # noqa: S301 - from our own parent
    # The answer keeps the real stdout; anything else printed goes to stderr, with the logs.
    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        tally = run_share(job)
    except PithcrawlError as e:
        log.error("worker_failed", detail=str(e), share=job.records.describe())
        return 1
    except Exception:
        log.exception("worker_failed", detail="internal error (a bug: please report it)")
        return 1
    answer.write(pickle.dumps(tally))
    answer.close()
    return 0


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
        crawler.reverify = job.reverify
        return await crawl_share(crawler, store, job.records, job.sites)
