"""A share of a pass: its (record, mirror) pairs crawled with bounded concurrency.

Owns the loop over a share's pairs (`crawl_share`: records read a chunk at a time with
their bookkeeping, a lane per mirror, a pair put off while its mirror asked us to come
back later or keeps failing), and what a share found, in numbers
(`Tally`, which a worker process sends back). Which records make a share is `plan`'s;
the worker processes are `worker`'s.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from pithcrawl.crawl import Crawler, PairResult, RecordTurn
from pithcrawl.log import pair
from pithcrawl.mirrors import Site
from pithcrawl.plan import PASS_CHUNK, Records
from pithcrawl.store import FetchState, Store


class Steps(Protocol):
    """Something told of each pair done (a progress display)."""

    def step(self) -> None: ...


async def crawl_share(
    crawler: Crawler,
    store: Store,
    records: Records,
    sites: list[Site],
    progress: Steps | None = None,
) -> Tally:
    """Every (record, mirror) pair of `records` × `sites`; what they found, counted as
    they end (memory stays flat however many there are).

    Each mirror has a lane of its own, `crawl.per_host` of its pairs at a time (the
    fetcher holds the whole to `crawl.concurrency`): a mirror that answers slowly, or
    never, holds its own lane, not the workers of the others. The lanes are fed the same
    records, a chunk at a time, so a fast mirror runs at most a chunk ahead of a slow one.
    """
    tally = Tally()
    crawl = crawler.config.crawl
    vantage = crawler.config.node.vantage_name
    width = max(1, min(crawl.per_host, crawl.concurrency))
    lanes = [anyio.create_memory_object_stream[_Job](PASS_CHUNK) for _ in sites]

    async def worker(jobs: MemoryObjectReceiveStream[_Job]) -> None:
        async with jobs:
            while True:
                # A job already queued is taken without a trip through the event loop
                # (the pair awaits its fetches soon enough); only an empty lane waits.
                try:
                    job = jobs.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        job = await jobs.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                tally.add(await _pair(crawler, job))
                if progress is not None:
                    progress.step()

    async with anyio.create_task_group() as tg:
        for _, receive in lanes:
            for _ in range(width):
                tg.start_soon(worker, receive.clone())
            receive.close()
        async with AsyncExitStack() as senders:
            for send, _ in lanes:
                await senders.enter_async_context(send)
            # The bookkeeping of a chunk of records in one read, not one per fetch, and
            # which pairs have a history to compare with.
            async for chunk in records.chunks(store):
                known = await store.fetch_states_of(chunk, vantage=vantage)
                served = await store.served_trusted(chunk)
                for suffix in chunk:
                    # The record-level rules run once its last pair ends (`RecordTurn`).
                    turn = RecordTurn(len(sites))
                    for (send, _), site in zip(lanes, sites, strict=True):
                        job = _Job(
                            suffix,
                            site,
                            known.get((suffix, site.name, "bundle")),
                            known.get((suffix, site.name, "state")),
                            (suffix, site.name) in served,
                            turn,
                        )
                        try:
                            send.send_nowait(job)  # room in the lane: no trip through the loop
                        except anyio.WouldBlock:
                            await send.send(job)
    return tally


@dataclass(frozen=True, slots=True)
class _Job:
    suffix: str
    site: Site
    bundle_state: FetchState | None
    state_state: FetchState | None
    served_trusted: bool
    turn: RecordTurn


async def _pair(crawler: Crawler, job: _Job) -> PairResult:
    """One pair, unless the mirror asked us (or failed enough) to come back later."""
    state = job.bundle_state
    now = crawler.clock()
    if state is not None and state.failures and state.next_due and state.next_due > now:
        result = PairResult(
            job.suffix, job.site.name, error=state.last_error or "failing", deferred=True
        )
        with pair(job.suffix, job.site.name):
            await crawler.end_turn(result, job.turn)  # the record's other pairs may be done
        # A lane of put-off pairs awaits nothing else: let the others run, and a cancel in.
        await anyio.lowlevel.checkpoint()
        return result
    return await crawler.sync_pair(
        job.suffix,
        job.site,
        bundle_state=state,
        state_state=job.state_state,
        served_trusted=job.served_trusted,
        turn=job.turn,
    )


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
        self.errors += (r.error is not None and not r.deferred) or r.rules_failed
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
