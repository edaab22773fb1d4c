"""Planning a pass: which records each process crawls, and with what share of the limits.

Owns how many processes a pass uses (`workers_for`), how the records are dealt between
them (`Records`, read from the archive a chunk at a time, and `plan`), and how the fetch
limits are divided so their sum stays the configured ones (`shared_limits`). It starts
no process (`worker`'s) and fetches nothing (`share`'s).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from pithcrawl.config import Config
from pithcrawl.store import Store

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
