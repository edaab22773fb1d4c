"""The worker processes a large `sync` pass is shared with.

Owns starting a worker (`run_share_in_worker`: the job pickled to its stdin, its tally
pickled back on its stdout, its stderr the pass's), what a worker runs (`worker_main`:
its share of the records, crawled with `share.crawl_share` into the same archive), its
life bound to its parent's, and what a worker that fails costs: its share, told in the
log, never the pass. Which records a worker gets is `plan`'s.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import subprocess
import sys
from dataclasses import dataclass

import anyio
import structlog

from pithcrawl.clock import Clock
from pithcrawl.config import Config
from pithcrawl.crawl import Crawler
from pithcrawl.errors import PithcrawlError
from pithcrawl.fetch.client import fetcher_for
from pithcrawl.keys import TrustSet
from pithcrawl.location import Where
from pithcrawl.log import configure as configure_logging
from pithcrawl.mirrors import Site
from pithcrawl.plan import Records
from pithcrawl.runtime import tune_gc
from pithcrawl.share import Tally, crawl_share
from pithcrawl.store import Store

log = structlog.get_logger("pithcrawl.worker")


@dataclass(frozen=True, slots=True)
class ShareJob:
    """Everything a worker process needs to crawl its share (pickled to it)."""

    config: Config
    db: Where
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
    "from pithcrawl.worker import worker_main\n"
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
    tune_gc()
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
    async with await Store.open(job.db) as store, fetcher_for(job.config.crawl) as fetcher:
        crawler = Crawler(
            job.config,
            store,
            fetcher,
            job.trust,
            Clock().now,
            reverify=job.reverify,
            mirrors=[s.name for s in job.sites],
        )
        return await crawl_share(crawler, store, job.records, job.sites)
