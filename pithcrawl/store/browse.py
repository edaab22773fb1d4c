"""The reads behind the status pages (`serve`'s human interface): pages of records and
alerts, how far each mirror lags, what each mirror did over the last day.

Owns paged, bounded reads only: every list is cut to a page (by key where an index
orders it), so a page costs the same on an archive of 50,000 records as on one of ten.
It writes nothing and decides nothing; the pages shape what it returns
(`serve.views`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from pithcrawl.store.alerts import Alert, alert_from_row
from pithcrawl.store.connection import Database
from pithcrawl.store.rows import (
    EventRow,
    FetchState,
    Snapshot,
    event_from_row,
    fetch_state_from_row,
    snapshot_from_row,
)

# Each mirror's newest trusted bundle of each tracked record, against the newest
# trusted bundle of that record from any mirror (`built_at` as a time, as `serve` and the
# divergence rules compare it): how many records the mirror is behind on.
# A mirror's newest on a record: the best of what it serves each vantage now (a vantage
# kept behind is `vantage_split`'s to tell).
_LAG = """
WITH latest AS (
    SELECT suffix, mirror, max(id) AS id FROM snapshots
    WHERE kind = 'bundle' AND trusted = 1 GROUP BY suffix, mirror, vantage
),
best AS (
    SELECT l.suffix, l.mirror, max(julianday(s.built_at)) AS built
    FROM latest AS l JOIN snapshots AS s ON s.id = l.id GROUP BY l.suffix, l.mirror
),
newest AS (
    SELECT suffix, max(julianday(built_at)) AS built FROM snapshots
    WHERE kind = 'bundle' AND trusted = 1 GROUP BY suffix
)
SELECT b.mirror, count(*), sum(CASE WHEN b.built < n.built THEN 1 ELSE 0 END)
FROM best AS b JOIN newest AS n ON n.suffix = b.suffix
WHERE b.suffix IN (SELECT suffix FROM records)
GROUP BY b.mirror
"""

# What each mirror did from hour ?1 on (`mirror_hours`), by mirror or, of one mirror, by day.
_RECENT = """
SELECT mirror, sum(fetches), sum(changed), sum(failures), sum(untrusted)
FROM mirror_hours WHERE hour >= ?1 AND hour <= ?2 GROUP BY mirror
"""
_DAYS = """
SELECT substr(hour, 1, 10), sum(fetches), sum(changed), sum(failures), sum(untrusted)
FROM mirror_hours WHERE mirror = ?1 AND hour >= ?2 AND hour <= ?3 GROUP BY 1 ORDER BY 1
"""

_RECORDS_PAGE = """
SELECT r.suffix, r.pith_number, r.added_at,
       (SELECT count(*) FROM alerts AS a WHERE a.suffix = r.suffix AND a.closed_at IS NULL)
FROM records AS r WHERE r.suffix > ?1 ORDER BY r.suffix LIMIT ?2
"""

_ALERTS_PAGE = """
SELECT * FROM alerts
WHERE id < ?1 AND (?2 = 'all' OR (?2 = 'open') = (closed_at IS NULL))
  AND (?3 IS NULL OR EXISTS (SELECT 1 FROM json_each(alerts.mirrors) WHERE value = ?3))
ORDER BY id DESC LIMIT ?4
"""

_OPEN_BY_SEVERITY = "SELECT severity, count(*) FROM alerts WHERE closed_at IS NULL GROUP BY 1"
_OPEN_BY_MIRROR = """
SELECT m.value, count(*) FROM alerts AS a, json_each(a.mirrors) AS m
WHERE a.closed_at IS NULL GROUP BY 1
"""
# The open alerts most worth a look first: by severity, then the newest.
_TOP_OPEN = """
SELECT * FROM alerts WHERE closed_at IS NULL
ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'error' THEN 1 WHEN 'warning' THEN 2
         ELSE 3 END, id DESC
LIMIT ?1
"""

# A record once, however many of its documents and vantages fail: its latest failure.
_FAILING = """
SELECT * FROM (
    SELECT *, row_number() OVER (PARTITION BY suffix ORDER BY last_fetch_at DESC NULLS LAST) AS k
    FROM fetch_state WHERE mirror = ?1 AND failures > 0 AND suffix > ?2
) AS failing WHERE k = 1 ORDER BY suffix LIMIT ?3
"""

# A record's event log entries: those of its snapshots (by the indexes on both).
_RECORD_EVENTS = """
SELECT * FROM (
    SELECT * FROM events
    WHERE snapshot_id IN (SELECT id FROM snapshots WHERE suffix = ?1)
    ORDER BY at DESC, id DESC LIMIT ?2
) AS newest ORDER BY at, id
"""
_RECORD_EVENT_COUNT = """
SELECT count(*) FROM events WHERE snapshot_id IN (SELECT id FROM snapshots WHERE suffix = ?1)
"""

_RECORD_SNAPSHOTS = """
SELECT * FROM (
    SELECT * FROM snapshots WHERE suffix = ?1 AND kind = 'bundle' AND id < ?2
    ORDER BY id DESC LIMIT ?3
) AS newest ORDER BY id
"""

#: Sorts before every alert id and snapshot id: the first page's key.
FIRST = 2**62


@dataclass(frozen=True, slots=True)
class RecordRow:
    suffix: str
    pith_number: str | None
    added_at: datetime
    open_alerts: int


@dataclass(frozen=True, slots=True)
class Lag:
    """Of the tracked records a mirror served a trusted bundle of, on how many its
    newest is older than the newest any mirror served."""

    records: int
    behind: int


@dataclass(frozen=True, slots=True)
class Counts:
    """What a mirror did over some hours: documents fetched (answered or not), new
    bodies archived, failed fetches, bodies that failed verification."""

    fetches: int
    changed: int
    failures: int
    untrusted: int


def hour_of(at: datetime) -> str:
    """`mirror_hours.hour`: the UTC hour, `YYYY-MM-DDTHH`."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H")


class Browse:
    """The status pages' reads of one archive (`Store.browse`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def records(self, *, after: str, limit: int) -> list[RecordRow]:
        """Tracked records in suffix order after `after`, with their open alerts."""
        async with self._db.read("list a page of records") as s:
            rows = await s.all(_RECORDS_PAGE, (after, limit))
        return [RecordRow(r[0], r[1], datetime.fromisoformat(r[2]), int(r[3] or 0)) for r in rows]

    async def lag(self) -> dict[str, Lag]:
        async with self._db.read("measure each mirror's lag") as s:
            rows = await s.all(_LAG)
        return {r[0]: Lag(int(r[1]), int(r[2] or 0)) for r in rows}

    async def recent(self, since: datetime, until: datetime) -> dict[str, Counts]:
        """Each mirror's counts from the hour of `since` to that of `until` (hours after
        it, counted under a clock that ran ahead, are left out)."""
        async with self._db.read("sum up each mirror's recent fetches") as s:
            rows = await s.all(_RECENT, (hour_of(since), hour_of(until)))
        return {r[0]: Counts(*(int(v or 0) for v in r[1:])) for r in rows}

    async def days(self, mirror: str, since: datetime, until: datetime) -> list[tuple[str, Counts]]:
        """One mirror's counts by UTC day (`YYYY-MM-DD`), from the day of `since` to the
        hour of `until`; days it was not fetched are absent."""
        async with self._db.read("sum up a mirror's days") as s:
            rows = await s.all(_DAYS, (mirror, hour_of(since)[:10], hour_of(until)))
        return [(r[0], Counts(*(int(v or 0) for v in r[1:]))) for r in rows]

    async def alerts(
        self, *, state: str, before: int = FIRST, mirror: str | None = None, limit: int
    ) -> list[Alert]:
        """Alerts newest first with ids below `before`: `open`, `closed` or `all`; only
        those naming `mirror` when given."""
        if state not in ("open", "closed", "all"):
            raise ValueError(f"no alert state {state!r}")
        async with self._db.read("list a page of alerts") as s:
            rows = await s.all(_ALERTS_PAGE, (before, state, mirror, limit))
        return [alert_from_row(r) for r in rows]

    async def open_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """How many alerts are open, by severity and by each mirror they name."""
        async with self._db.read("count open alerts") as s:
            by_severity = await s.all(_OPEN_BY_SEVERITY)
            by_mirror = await s.all(_OPEN_BY_MIRROR)
        return {r[0]: int(r[1]) for r in by_severity}, {r[0]: int(r[1]) for r in by_mirror}

    async def top_open(self, limit: int) -> list[Alert]:
        """Up to `limit` open alerts, the most severe first, then the newest."""
        async with self._db.read("list the open alerts to look at first") as s:
            rows = await s.all(_TOP_OPEN, (limit,))
        return [alert_from_row(r) for r in rows]

    async def record_alerts(self, suffix: str, *, limit: int) -> list[Alert]:
        async with self._db.read("list a record's alerts") as s:
            rows = await s.all(
                "SELECT * FROM alerts WHERE suffix = ? ORDER BY id DESC LIMIT ?", (suffix, limit)
            )
        return [alert_from_row(r) for r in rows]

    async def record_events(self, suffix: str, *, limit: int) -> tuple[list[EventRow], int]:
        """The newest `limit` log entries of a record, in time order, and how many it has."""
        async with self._db.read("list a record's events") as s:
            rows = await s.all(_RECORD_EVENTS, (suffix, limit))
            count = await s.one(_RECORD_EVENT_COUNT, (suffix,))
        return [event_from_row(r) for r in rows], int(count[0]) if count else 0

    async def record_snapshots(
        self, suffix: str, *, before: int = FIRST, limit: int
    ) -> list[Snapshot]:
        """Up to `limit` of a record's bundle snapshots with ids below `before`, the
        newest of them, oldest first."""
        async with self._db.read("list a record's snapshots") as s:
            rows = await s.all(_RECORD_SNAPSHOTS, (suffix, before, limit))
        return [snapshot_from_row(r) for r in rows]

    async def failing(self, mirror: str, *, after: str, limit: int) -> list[FetchState]:
        """A mirror's pairs failing now, in suffix order after `after`."""
        async with self._db.read("list a mirror's failing pairs") as s:
            rows = await s.all(_FAILING, (mirror, after, limit))
        return [fetch_state_from_row(r) for r in rows]

    async def body_sizes(self, bodies: list[str]) -> dict[str, int]:
        """The size of each of these bodies, as fetched (before compression)."""
        async with self._db.read("read body sizes") as s:
            rows = await s.all(
                "SELECT sha256, size FROM blobs WHERE sha256 IN (SELECT value FROM json_each(?))",
                (json.dumps(bodies),),
            )
        return {r[0]: int(r[1]) for r in rows}

    async def has_body(self, sha256: str) -> bool:
        async with self._db.read("look for a body") as s:
            return await s.one("SELECT 1 FROM blobs WHERE sha256 = ?", (sha256,)) is not None
