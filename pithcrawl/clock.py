"""The wall clock, watched: its steps noticed, and the schedule kept to elapsed time.

The schedule (when each pair is next due, when a delivery is retried) is kept in the
archive in wall-clock time, because it must outlive the process. A wall clock that steps
back (an NTP correction, a virtual machine restored from a snapshot) would then leave
every pair waiting until wall time caught up: crawling silently stopped for as long as
the step. `Clock` measures the wall clock against the monotonic one; when they part by
more than `STEP`, it logs `clock_stepped`, and when the wall clock went back it moves the
archive's running times with it: what was due in an hour is due in an hour, a failure
that began a minute ago began a minute ago, an alert clear for ten minutes has been
clear for ten minutes (the schedule, failure runs and hold-downs run on elapsed time).
Elapsed time counts sleep (CLOCK_BOOTTIME): a machine waking up has stepped nothing.

Between two runs there is no monotonic clock to compare with: the archive keeps the last
wall time a run saw (`SEEN_SETTING`), and a start earlier than that is a step back.

Several nodes may crawl one archive, each with its own clock: each keeps its own last
wall time (`SEEN_SETTING@NODE`). The archive's running times are shared by them (a
vantage's schedule, the deliveries, the hold-downs): a step of one node's clock moves
them only while no other node is crawling (the others' clocks are the reference then,
and what the stepped node wrote comes right with its next fetches).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog

from pithcrawl.store import Store
from pithcrawl.timestamps import format_timestamp

log = structlog.get_logger("pithcrawl.clock")

#: How far the wall clock may move against the monotonic one between two looks before
#: it counts as a step (NTP slews at most half a millisecond a second; it steps beyond
#: 128 ms).
STEP = timedelta(seconds=1)
#: The last wall time a pass or the daemon saw (RFC 3339).
SEEN_SETTING = "clock:seen"


def _wall() -> datetime:
    return datetime.now(UTC)


def _elapsed() -> float:
    """Seconds since boot, sleep included (CLOCK_BOOTTIME): a machine waking from sleep
    has not stepped its clock. The plain monotonic clock where there is none."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return time.monotonic()
    return time.clock_gettime(boottime)


class Clock:
    """Wall time for timestamps and the schedule; steps of it noticed (`check`)."""

    def __init__(
        self,
        wall: Callable[[], datetime] = _wall,
        monotonic: Callable[[], float] = _elapsed,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._offset = self._read()
        self._setting = SEEN_SETTING
        self._node: str | None = None
        self._vantage: str | None = None
        self._alive = timedelta(0)

    def of(self, node: str, vantage: str, *, alive: timedelta = timedelta(days=1)) -> Clock:
        """This clock as `node`'s (of `vantage`): its last wall time kept under its own
        name, a step moving only its vantage's schedule, and only while no other node
        was seen crawling within `alive` of the latest sighting. Itself, for chaining."""
        self._setting = f"{SEEN_SETTING}@{node}"
        self._node = node
        self._vantage = vantage
        self._alive = alive
        return self

    def now(self) -> datetime:
        return self._wall()

    def _read(self) -> float:
        """Wall time less monotonic time: constant while neither clock steps."""
        return self._wall().timestamp() - self._monotonic()

    async def check(self, store: Store) -> timedelta:
        """Notice a step of the wall clock since the last look; the step (zero if none).
        The archive's running times move with it (`Store.shift_clock`)."""
        offset = self._read()
        step = timedelta(seconds=offset - self._offset)
        self._offset = offset
        if abs(step) <= STEP:
            return timedelta(0)
        await self._stepped(store, step, "while running")
        return step

    async def since_last_run(self, store: Store) -> timedelta:
        """Notice a step back of the wall clock since the archive last saw it (by an
        earlier run); the step (zero if none)."""
        seen = await store.setting(self._setting)
        if seen is None and self._setting != SEEN_SETTING:
            # The archive's last wall time from before nodes kept their own.
            seen = await store.setting(SEEN_SETTING)
        if seen is None:
            return timedelta(0)
        try:
            last = datetime.fromisoformat(seen.replace("Z", "+00:00"))
        except ValueError:
            return timedelta(0)
        step = self.now() - last
        if step >= -STEP:
            return timedelta(0)
        await self._stepped(store, step, "since the archive was last written")
        return step

    async def seen(self, store: Store) -> None:
        """Keep the wall time of now in the archive, for the next run to compare with."""
        await store.set_setting(self._setting, format_timestamp(self.now()))

    async def _stepped(self, store: Store, step: timedelta, when: str) -> None:
        others = await self._others_crawling(store)
        if others:
            # The shared times are the other nodes' too, and their clocks did not step.
            await store.set_setting(self._setting, format_timestamp(self.now()))
            moved = 0
        else:
            moved = await store.maintenance.shift_clock(
                step, self._setting, format_timestamp(self.now()), vantage=self._vantage
            )
        log.warning(
            "clock_stepped",
            by_seconds=round(step.total_seconds(), 3),
            when=when,
            now=format_timestamp(self.now()),
            schedule_moved=moved,
            other_nodes_crawling=others,
        )

    async def _others_crawling(self, store: Store) -> int:
        """How many other nodes crawl the archive: seen within two of their intervals
        (or `alive`) of now, by this clock as it reads after the step (this node's own
        sightings, written by the clock that stepped, say nothing)."""
        if self._node is None:
            return 0
        now = self.now()
        nodes = await store.nodes.all()
        return sum(n.name != self._node and n.crawling(now, self._alive) for n in nodes)
