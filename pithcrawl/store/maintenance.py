"""The archive's upkeep: what `fsck`, `status` and the clock ask of it as a whole.

Owns the file's integrity check, the rows whose columns are not what pithcrawl writes
(JSON of the wrong shape, times that do not parse), the pages of evidence `fsck` reads
back, the counts of rows and bytes, and moving every time that runs on elapsed time when
the wall clock steps. One instance per `Store` (`store.maintenance`), sharing its
connection; the rest of the archive's queries are `archive`'s.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from pithcrawl.errors import StoreCorrupt
from pithcrawl.store.connection import Database
from pithcrawl.store.rows import Snapshot, db_time, snapshot_or_damage

_STATS = """
SELECT (SELECT count(*) FROM blobs) AS blobs, (SELECT count(*) FROM records) AS records,
       (SELECT count(*) FROM mirrors) AS mirrors,
       (SELECT count(*) FROM fetch_state) AS fetch_state,
       (SELECT count(*) FROM snapshots) AS snapshots, (SELECT count(*) FROM events) AS events,
       (SELECT count(*) FROM learned_keys) AS learned_keys,
       (SELECT coalesce(sum(size), 0) FROM blobs) AS blob_bytes_raw,
       (SELECT coalesce(sum(length(data)), 0) FROM blobs) AS blob_bytes_stored
"""

#: The times that run on elapsed time, by (table, column, key columns, which rows):
#: when the wall clock steps, each moves with it.
_RUNNING = (
    ("fetch_state", "next_due", ("suffix", "mirror", "kind", "vantage"), "next_due IS NOT NULL"),
    ("fetch_state", "first_failure_at", ("suffix", "mirror", "kind", "vantage"), "failures > 0"),
    ("deliveries", "next_attempt", ("alert_id", "sink", "phase"), "delivered_at IS NULL"),
    ("alerts", "cleared_at", ("id",), "closed_at IS NULL AND cleared_at IS NOT NULL"),
)


def _shift_clock(
    conn: sqlite3.Connection, by: timedelta, seen: tuple[str, str], vantage: str | None
) -> int:
    moved = 0
    for table, column, key, which in _RUNNING:
        where = " AND ".join(f"{k} = ?" for k in key)
        # Names come from the table above, never from data.
        rows = conn.execute(
            f"SELECT {column}, {', '.join(key)} FROM {table}"  # noqa: S608
            f" WHERE {which} AND {column} IS NOT NULL"
            + (" AND vantage = ?" if vantage is not None and "vantage" in key else ""),
            (vantage,) if vantage is not None and "vantage" in key else (),
        ).fetchall()
        conn.executemany(
            f"UPDATE {table} SET {column} = ? WHERE {where}",  # noqa: S608
            [(db_time(at + by), *r[1:]) for r in rows if (at := _time_or_none(r[0]))],
        )
        moved += len(rows)
    # With the shift, in one transaction: a restart then compares with the wall time
    # the shift was made at, and never shifts twice.
    conn.execute(
        "INSERT INTO settings (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        seen,
    )
    return moved


def _time_or_none(text: str) -> datetime | None:
    """A stored time, or None when it is damaged (a shift leaves it for fsck)."""
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None


class Maintenance:
    """The archive's upkeep; one instance per `Store`, sharing its connection."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def shift_clock(
        self, by: timedelta, seen_setting: str, seen: str, *, vantage: str | None = None
    ) -> int:
        """Move every time that runs on elapsed time (fetches due, failure runs,
        deliveries to retry, hold-downs) by `by`, and set `seen_setting` to `seen`, in
        one transaction: after the wall clock stepped, what was due in an hour is due
        in an hour again. Of `vantage`'s fetches only, when given (another vantage's
        nodes keep their own clocks). How many times were moved."""
        async with self._db.write("move the clock's times") as s:
            return await s.call(_shift_clock, by, (seen_setting, seen), vantage)

    async def stats(self) -> dict[str, int]:
        """Rows per table, blob bytes (raw and stored) and the file size with WAL and shm."""
        async with self._db.read("count rows") as s:
            row = await s.one(_STATS)
        assert row is not None
        out = {k: int(row[k]) for k in row.keys()}  # noqa: SIM118 (sqlite3.Row is not a dict)
        out["file_bytes"] = await self._db.size()
        return out

    async def size(self) -> int:
        """The archive's bytes on disk (the file with its WAL, or the tables)."""
        return await self._db.size()

    async def integrity_check(self) -> list[str]:
        """The database's own check of its storage: ["ok"] when it is sound."""
        return await self._db.integrity_check()

    async def malformed_rows(self) -> list[str]:
        """Rows whose JSON or time columns are not what pithcrawl writes (an object of
        evidence, a list of mirror names, findings, RFC 3339 times): damage `fsck`
        reports, row by row."""
        async with self._db.read("check JSON and time columns") as s:
            rows = await s.all(_MALFORMED_ROWS) + await s.all(_MALFORMED_TIMES)
        return [
            f"{r[0]} {r[1]}: its {r[2]} is not a {r[3]}"
            if r[3] == "time"
            else f"{r[0]} {r[1]}: its {r[2]} is not a JSON {r[3]}"
            for r in rows
        ]

    async def untrusted_snapshots(
        self, *, after_id: int = 0, limit: int = 500
    ) -> list[tuple[int, Snapshot | StoreCorrupt]]:
        """Snapshots of bodies that did not verify, in id order, a page at a time: the
        evidence behind alerts, which `fsck` reads back (a damaged row is its error, in
        its place, for fsck to report and go on)."""
        async with self._db.read("list untrusted snapshots") as s:
            rows = await s.all(
                "SELECT * FROM snapshots WHERE trusted = 0 AND id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
        return [snapshot_or_damage(r) for r in rows]


#: The columns holding times, checked by `fsck`: (table, the row's name, column).
_TIME_COLUMNS = (
    ("snapshots", "id", "fetched_at"),
    ("events", "id", "at"),
    ("alerts", "id", "opened_at"),
    ("alerts", "id", "closed_at"),
    ("alerts", "id", "cleared_at"),
    ("deliveries", "alert_id", "next_attempt"),
    ("deliveries", "alert_id", "delivered_at"),
    ("fetch_state", "suffix", "next_due"),
    ("fetch_state", "suffix", "last_fetch_at"),
    ("fetch_state", "suffix", "last_success_at"),
    ("fetch_state", "suffix", "first_failure_at"),
)

_MALFORMED_ROWS = """
SELECT 'alert', id, 'evidence', 'object' FROM alerts
  WHERE (CASE WHEN json_valid(evidence) THEN json_type(evidence) END) IS NOT 'object'
UNION ALL SELECT 'alert', id, 'mirrors', 'list' FROM alerts
  WHERE (CASE WHEN json_valid(mirrors) THEN json_type(mirrors) END) IS NOT 'array'
UNION ALL SELECT 'event', id, 'evidence', 'object' FROM events
  WHERE (CASE WHEN json_valid(evidence) THEN json_type(evidence) END) IS NOT 'object'
UNION ALL SELECT 'event', id, 'mirrors', 'list' FROM events
  WHERE (CASE WHEN json_valid(mirrors) THEN json_type(mirrors) END) IS NOT 'array'
UNION ALL SELECT 'alert', id, 'mirrors', 'list of names' FROM alerts
  WHERE json_valid(mirrors) AND json_type(mirrors) = 'array'
  AND EXISTS (SELECT 1 FROM json_each(alerts.mirrors) WHERE type <> 'text')
UNION ALL SELECT 'snapshot', id, 'findings', 'list of findings' FROM snapshots
  WHERE NOT json_valid(findings) OR json_type(findings) <> 'array' OR EXISTS (
    SELECT 1 FROM json_each(snapshots.findings) AS f WHERE f.type <> 'object'
    OR json_type(f.value, '$.code') IS NOT 'text' OR json_type(f.value, '$.path') IS NOT 'text'
    OR json_type(f.value, '$.message') IS NOT 'text'
    OR json_extract(f.value, '$.severity') NOT IN ('critical', 'warning'))
"""


def _damaged_times(table: str, key: str, column: str) -> str:
    """The rows of `table` whose `column` is not a time as pithcrawl writes it."""
    # Names from `_TIME_COLUMNS`, never from data.
    return (
        f"SELECT '{table}', CAST({key} AS TEXT), '{column}', 'time' FROM {table}"  # noqa: S608
        f" WHERE {column} IS NOT NULL AND (substr({column}, length({column})) <> 'Z'"
        f" OR julianday(substr({column}, 1, length({column}) - 1)) IS NULL)"
    )


_MALFORMED_TIMES = " UNION ALL ".join(_damaged_times(*names) for names in _TIME_COLUMNS)
