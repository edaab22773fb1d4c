"""RFC 3339 UTC timestamps and the format's way of comparing them (pith-format.md §5).

Owns parsing (`Z` only, up to microseconds) and the comparison rule: when either
side has second precision, both are truncated to the second. It never reads a clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

_RFC3339_UTC = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?Z\Z", re.ASCII
)


@dataclass(frozen=True, slots=True)
class Timestamp:
    """A parsed timestamp that remembers whether it had a fraction of a second."""

    at: datetime
    fractional: bool
    text: str
    seconds: datetime  # `at` truncated to the second


def parse_timestamp(value: object) -> Timestamp | None:
    """Parse an RFC 3339 UTC timestamp; None when it is not one."""
    if not isinstance(value, str):
        return None
    return parse_timestamp_text(value)


def parse_timestamp_text(value: str) -> Timestamp | None:
    """`parse_timestamp` of a value known to be a string (the schema says so)."""
    if len(value) > _LONGEST:  # not one; and the cache below holds short strings only
        return None
    return _parse_timestamp_text(value)


#: The longest timestamp the format has: `2026-11-27T12:00:00.123456Z`.
_LONGEST = 27


@lru_cache(maxsize=8192)
def _parse_timestamp_text(value: str) -> Timestamp | None:
    # Bundles repeat the same few timestamps many times; parsing is pure, so cache it.
    m = _RFC3339_UTC.match(value)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac = m.groups()
    try:
        at = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((frac or "0").ljust(6, "0")),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    return Timestamp(at, frac is not None, value, at.replace(microsecond=0))


def not_after(a: Timestamp, b: Timestamp) -> bool:
    """a ≤ b, truncating both to the second when either has second precision."""
    if a.fractional and b.fractional:
        return a.at <= b.at
    return a.seconds <= b.seconds


def format_timestamp(at: datetime) -> str:
    """RFC 3339 UTC with microseconds, the registry's style for `signed_at`."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_seconds(at: datetime) -> str:
    """RFC 3339 UTC to the second, the registry's style for `created_at` and `built_at`."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_DURATION_PART = r"(\d+(?:\.\d+)?)\s*([smhd])"
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """'30s', '5m', '6h', '2d', compounds of them ('1h30m', '2d 12h'), or a bare number
    of seconds, as a timedelta."""
    bare = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*", text)
    if bare is not None:
        parts = [(bare.group(1), "s")]
    elif re.fullmatch(rf"\s*(?:{_DURATION_PART}\s*)+", text):
        parts = re.findall(_DURATION_PART, text)
    else:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 6h, 2d or 1h30m")
    try:
        return timedelta(seconds=sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts))
    except OverflowError:
        raise ValueError(f"{text!r} is longer than a timedelta can hold") from None
