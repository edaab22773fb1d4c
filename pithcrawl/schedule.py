"""Scheduling maths: when to fetch a record from a mirror again.

Owns the three rules the daemon schedules by: the interval after a success (with
jitter, so records tracked together drift apart), capped exponential backoff with
full jitter after a failure, and honouring a server's `Retry-After`. Pure: it reads
no clock and holds no random state; `now` and a uniform draw `rand` in [0, 1) are
parameters (pass `random.Random.random()`). It does not decide what counts as a
failure, keep failure counts, or sleep: that is `crawl`'s and `daemon`'s work.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

RETRY_AFTER_MAX = 86_400.0
"""Seconds: the longest `Retry-After` we honour (a day), whatever the server asks."""

# 2.0 ** 1024 overflows a float; any exponent this large is past every sane cap anyway.
_MAX_EXPONENT = 1023


def _check_rand(rand: float) -> None:
    if not 0.0 <= rand < 1.0:
        raise ValueError(f"rand must be in [0, 1), got {rand!r}")


def backoff_delay(failures: int, *, base: float, cap: float, rand: float) -> float:
    """Seconds to wait after `failures` consecutive failures: full-jitter backoff.

    uniform(0, min(cap, base * 2**failures)), the draw being `rand` in [0, 1) (AWS's
    "full jitter": spreads retries of many records that failed together).
    """
    if failures < 0:
        raise ValueError(f"failures must be >= 0, got {failures}")
    if not (base >= 0 and cap >= 0 and math.isfinite(base) and math.isfinite(cap)):
        raise ValueError(f"base and cap must be finite and >= 0, got base={base!r} cap={cap!r}")
    _check_rand(rand)
    ceiling = min(cap, base * 2.0 ** min(failures, _MAX_EXPONENT))
    return rand * ceiling


def next_due(now: datetime, interval: timedelta, *, jitter: float, rand: float) -> datetime:
    """When to fetch again after a success: `interval` ± `jitter` (a fraction, e.g. 0.1).

    The draw `rand` in [0, 1) maps linearly onto [interval·(1−jitter), interval·(1+jitter)).
    """
    if interval <= timedelta(0):
        raise ValueError(f"interval must be positive, got {interval}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
    _check_rand(rand)
    return now + interval * (1.0 + jitter * (2.0 * rand - 1.0))


def retry_due(
    now: datetime,
    failures: int,
    retry_after: float | None,
    *,
    base: float,
    cap: float,
    rand: float,
    max_retry_after: float = RETRY_AFTER_MAX,
) -> datetime:
    """When to try again after a failure.

    Never earlier than the server's `retry_after` seconds (clamped to
    `max_retry_after`, so a hostile or broken server cannot park a mirror for a
    year), and never earlier than our own backoff: `Retry-After: 0` from a server
    that keeps failing must not make us hammer it.
    """
    delay = backoff_delay(failures, base=base, cap=cap, rand=rand)
    if retry_after is not None:
        if math.isnan(retry_after):
            raise ValueError("retry_after must be a number of seconds, got NaN")
        if not (max_retry_after >= 0 and math.isfinite(max_retry_after)):
            raise ValueError(f"max_retry_after must be finite and >= 0, got {max_retry_after!r}")
        # A negative value is an HTTP-date in the past: "now" is what the server meant.
        floor = min(max(retry_after, 0.0), max_retry_after)
        delay = max(delay, floor)
    return now + timedelta(seconds=delay)
