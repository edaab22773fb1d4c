"""Scheduling maths: backoff with full jitter, the success interval, Retry-After."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pithcrawl.schedule import RETRY_AFTER_MAX, backoff_delay, next_due, retry_due

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)

rands = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
failures = st.integers(min_value=0, max_value=5000)
positive = st.floats(min_value=0.0, max_value=1e6)


# --- backoff_delay -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "rand", "expected"),
    [
        (0, 0.5, 0.5),  # base * 2**0 = 1, half of it
        (1, 0.5, 1.0),
        (3, 0.5, 4.0),
        (3, 0.0, 0.0),  # full jitter reaches down to zero
        (10, 0.5, 30.0),  # 1024 is past the cap of 60
        (10_000, 0.25, 15.0),  # no overflow for absurd counts
    ],
)
def test_backoff_delay_values(n: int, rand: float, expected: float) -> None:
    """uniform(0, min(cap, base·2ⁿ)), with the draw given as rand."""
    assert backoff_delay(n, base=1.0, cap=60.0, rand=rand) == expected


def test_backoff_delay_grows_until_the_cap() -> None:
    """The ceiling doubles with each failure until the cap holds it."""
    ceilings = [backoff_delay(n, base=2.0, cap=100.0, rand=0.999999) for n in range(8)]
    assert ceilings == sorted(ceilings)
    assert ceilings[-1] == pytest.approx(100.0, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failures": -1},
        {"rand": 1.0},
        {"rand": -0.1},
        {"rand": math.nan},
        {"base": -1.0},
        {"cap": math.inf},
    ],
)
def test_backoff_delay_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    """Out-of-range arguments are bugs in the caller and say which one."""
    args: dict[str, float] = {"failures": 1, "base": 1.0, "cap": 60.0, "rand": 0.5}
    args.update(kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        backoff_delay(int(args["failures"]), base=args["base"], cap=args["cap"], rand=args["rand"])


@given(failures, positive, positive, rands)
def test_backoff_delay_within_zero_and_cap(n: int, base: float, cap: float, rand: float) -> None:
    """Every delay is in [0, cap] and never above base·2ⁿ."""
    delay = backoff_delay(n, base=base, cap=cap, rand=rand)
    assert 0.0 <= delay <= cap
    if n < 1000:
        assert delay <= base * 2.0**n


# --- next_due ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rand", "hours"),
    [(0.0, 5.4), (0.5, 6.0), (0.75, 6.3)],
)
def test_next_due_spreads_the_interval(rand: float, hours: float) -> None:
    """rand maps linearly onto interval·(1 ± jitter)."""
    due = next_due(NOW, timedelta(hours=6), jitter=0.1, rand=rand)
    assert (due - NOW).total_seconds() == pytest.approx(hours * 3600)


def test_next_due_without_jitter_is_exact() -> None:
    """jitter=0 gives exactly the interval whatever the draw."""
    assert next_due(NOW, timedelta(hours=6), jitter=0.0, rand=0.9) == NOW + timedelta(hours=6)


@pytest.mark.parametrize(
    ("interval", "jitter", "rand", "word"),
    [
        (timedelta(0), 0.1, 0.5, "interval"),
        (timedelta(hours=1), 1.0, 0.5, "jitter"),
        (timedelta(hours=1), -0.1, 0.5, "jitter"),
        (timedelta(hours=1), 0.1, 1.0, "rand"),
    ],
)
def test_next_due_rejects_bad_arguments(
    interval: timedelta, jitter: float, rand: float, word: str
) -> None:
    """A zero interval, jitter outside [0, 1) or a bad draw are refused by name."""
    with pytest.raises(ValueError, match=word):
        next_due(NOW, interval, jitter=jitter, rand=rand)


@given(
    st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=30)),
    st.floats(min_value=0.0, max_value=0.99),
    rands,
)
def test_next_due_within_jitter_band(interval: timedelta, jitter: float, rand: float) -> None:
    """The next fetch always lies in [interval·(1−jitter), interval·(1+jitter)] from now."""
    delay = (next_due(NOW, interval, jitter=jitter, rand=rand) - NOW).total_seconds()
    seconds = interval.total_seconds()
    tolerance = 1e-6  # timedelta rounds to microseconds
    assert seconds * (1 - jitter) - tolerance <= delay <= seconds * (1 + jitter) + tolerance
    assert delay > 0


# --- retry_due ---------------------------------------------------------------------


def test_retry_due_without_retry_after_is_backoff() -> None:
    """With no Retry-After, the retry is the jittered backoff from now."""
    assert retry_due(NOW, 3, None, base=1.0, cap=60.0, rand=0.5) == NOW + timedelta(seconds=4)


def test_retry_due_honours_a_longer_retry_after() -> None:
    """A Retry-After longer than the backoff wins."""
    due = retry_due(NOW, 1, 600.0, base=1.0, cap=60.0, rand=0.5)
    assert due == NOW + timedelta(seconds=600)


def test_retry_due_keeps_backoff_over_a_shorter_retry_after() -> None:
    """Retry-After is a floor: "Retry-After: 0" does not cancel our own backoff."""
    due = retry_due(NOW, 5, 0.0, base=1.0, cap=60.0, rand=0.5)
    assert due == NOW + timedelta(seconds=16)


@pytest.mark.parametrize("retry_after", [10 * 86_400.0, math.inf])
def test_retry_due_caps_retry_after_at_a_day(retry_after: float) -> None:
    """A server cannot park a mirror for longer than a day."""
    due = retry_due(NOW, 1, retry_after, base=1.0, cap=60.0, rand=0.5)
    assert due == NOW + timedelta(seconds=RETRY_AFTER_MAX) == NOW + timedelta(days=1)


def test_retry_due_custom_cap_on_retry_after() -> None:
    """The Retry-After ceiling can be set by the caller."""
    due = retry_due(NOW, 0, 7200.0, base=1.0, cap=60.0, rand=0.0, max_retry_after=3600.0)
    assert due == NOW + timedelta(hours=1)


def test_retry_due_negative_retry_after_means_now() -> None:
    """A Retry-After in the past imposes no wait beyond the backoff."""
    due = retry_due(NOW, 0, -30.0, base=1.0, cap=60.0, rand=0.0)
    assert due == NOW


def test_retry_due_rejects_nan() -> None:
    """NaN is not a number of seconds."""
    with pytest.raises(ValueError, match="NaN"):
        retry_due(NOW, 1, math.nan, base=1.0, cap=60.0, rand=0.5)


@given(failures, st.none() | st.floats(min_value=0.0, allow_nan=False), positive, rands)
def test_retry_never_before_retry_after(
    n: int, retry_after: float | None, cap: float, rand: float
) -> None:
    """The retry is never before Retry-After (up to a day), nor later than both bounds."""
    due = retry_due(NOW, n, retry_after, base=1.0, cap=cap, rand=rand)
    delay = (due - NOW).total_seconds()
    floor = 0.0 if retry_after is None else min(retry_after, RETRY_AFTER_MAX)
    tolerance = 1e-6  # timedelta rounds to microseconds
    assert delay >= floor - tolerance
    assert delay <= max(floor, cap) + tolerance


@given(failures, rands)
def test_retry_due_is_a_pure_function(n: int, rand: float) -> None:
    """The same inputs give the same answer: no clock, no hidden randomness."""
    first = retry_due(NOW, n, 5.0, base=0.5, cap=300.0, rand=rand)
    assert first == retry_due(NOW, n, 5.0, base=0.5, cap=300.0, rand=rand)
