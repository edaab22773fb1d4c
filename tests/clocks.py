"""A wall clock the tests move by hand, so no test waits for real time to pass.

clock = TestClock()           # starts at the real time of now
await sync_once(..., clock=clock.clock)
clock.advance(timedelta(days=3))  # the next pass happens three days later

Each reading is a microsecond after the last, so the times of one pass stay in order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pithcrawl.clock import Clock


class TestClock:
    __test__ = False  # not a pytest class

    def __init__(self, start: datetime | None = None) -> None:
        self.at = start or datetime.now(UTC)
        self.clock = Clock(wall=self.now)
        """What pithcrawl's entry points take."""

    def now(self) -> datetime:
        self.at += timedelta(microseconds=1)
        return self.at

    def advance(self, by: timedelta) -> None:
        self.at += by
