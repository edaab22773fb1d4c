"""Alerts and their delivery: the lifecycle of a condition, kept in the archive.

Owns the `alerts` and `deliveries` tables: at most one open alert per `dedup_key`,
opened when a condition is first seen, held open while it keeps coming back, and closed
once the code that watches its scope has not reported it for the hold-down
(`alerts.resolve_after`): a condition that clears and returns within it is the same
alert (`recurrences` counts the returns), so a flapping mirror is one alert, not one per
flip. Each sink has its own delivery rows, per phase (the alert, then its closing
notice), pending until the sink took them: an alert still open when a sink is added is
queued for it (`queue_open`), and a closing notice goes only to the sinks that were
sent the alert. Nothing here decides what a condition is (`crawl`, `divergence`) or
talks to a sink (`alert`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from pithcrawl.entries import NewEvent
from pithcrawl.store.connection import Database, Session
from pithcrawl.store.fetches import INSERT_EVENT, event_params
from pithcrawl.store.rows import (
    EventRow,
    db_time,
    decoder,
    json_column,
    to_json_text,
)
from pithcrawl.timestamps import format_timestamp

SINKS = ("hook", "webhook")
PHASES = ("open", "close")


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    dedup_key: str
    scope: str
    kind: str
    severity: str
    pith_number: str | None
    suffix: str | None
    mirrors: tuple[str, ...]
    summary: str
    evidence: dict[str, Any]
    opened_at: datetime
    closed_at: datetime | None
    cleared_at: datetime | None = None
    """Open, but its condition has not been reported since then (the hold-down)."""
    recurrences: int = 0
    """How many times the condition came back while the alert was being held open."""

    @property
    def open(self) -> bool:
        return self.closed_at is None

    @property
    def firing(self) -> bool:
        """Open, and its condition reported the last time its scope was checked."""
        return self.closed_at is None and self.cleared_at is None

    def to_json(self) -> dict[str, Any]:
        """The contract's alert object, with its status."""
        return {
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity,
            "at": format_timestamp(self.opened_at),
            "pith_number": self.pith_number,
            "mirrors": list(self.mirrors),
            "summary": self.summary,
            "evidence": self.evidence,
            "dedup_key": self.dedup_key,
            "status": "open" if self.open else "closed",
            "closed_at": format_timestamp(self.closed_at) if self.closed_at else None,
            "cleared_at": format_timestamp(self.cleared_at) if self.cleared_at else None,
            "recurrences": self.recurrences,
        }


@decoder("alerts", "id")
def alert_from_row(row: sqlite3.Row) -> Alert:
    return Alert(
        row["id"],
        row["dedup_key"],
        row["scope"],
        row["kind"],
        row["severity"],
        row["pith_number"],
        row["suffix"],
        json_column(row, "mirrors", list, f"alert {row['id']}"),
        row["summary"],
        json_column(row, "evidence", dict, f"alert {row['id']}"),
        datetime.fromisoformat(row["opened_at"]),
        datetime.fromisoformat(row["closed_at"]) if row["closed_at"] else None,
        datetime.fromisoformat(row["cleared_at"]) if row["cleared_at"] else None,
        row["recurrences"],
    )


@dataclass(slots=True)
class Reconciled:
    """What reconciling a scope did."""

    opened: list[Alert] = field(default_factory=list)
    closed: list[Alert] = field(default_factory=list)
    recurred: list[Alert] = field(default_factory=list)
    """Alerts held open whose condition came back (no new alert, no delivery)."""
    still_open: bool = False
    """The scope has open alerts left (firing, or held)."""


_INSERT_ALERT = """
INSERT INTO alerts (dedup_key, scope, kind, severity, pith_number, suffix, mirrors, summary,
                    evidence, opened_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING RETURNING id
"""
_INSERT_DELIVERY = """
INSERT INTO deliveries (alert_id, sink, phase, next_attempt) VALUES (?, ?, ?, ?)
ON CONFLICT DO NOTHING
"""


_FAILING = """
SELECT suffix, first_failure_at, last_error, count(*) OVER () AS n FROM (
    SELECT f.suffix, f.first_failure_at, f.last_error,
           row_number() OVER (PARTITION BY f.suffix ORDER BY f.first_failure_at, f.vantage) AS k
    FROM fetch_state AS f JOIN records AS r ON r.suffix = f.suffix
    WHERE f.mirror = ?1 AND f.kind = 'bundle' AND f.failures > 0 AND f.first_failure_at <= ?2
      AND (f.vantage = '' OR f.vantage IN (SELECT vantage FROM nodes WHERE last_seen >= ?2))
) AS failing WHERE k = 1
ORDER BY first_failure_at, suffix LIMIT 10
"""


class AlertBook:
    """The archive's alerts; one instance per `Store`, sharing its connection."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def reconcile(
        self,
        scope: str,
        current: Sequence[NewEvent],
        *,
        now: datetime,
        sinks: Sequence[str] = (),
        hold: timedelta = timedelta(0),
        log: bool = True,
    ) -> Reconciled:
        """Make the open alerts of `scope` the conditions in `current`.

        New conditions open an alert (and, with `log`, an event-log entry), queued for
        every sink in `sinks`. An open alert no longer reported is held open for `hold`
        (`cleared_at` set), then closes with an `alert_closed` entry; reported again
        meanwhile, it is the same alert (`recurrences` + 1). One transaction.
        """
        async with self._db.write("reconcile alerts") as s:
            return await self.reconcile_in(
                s, scope, current, now=now, sinks=sinks, hold=hold, log=log
            )

    async def reconcile_in(
        self,
        s: Session,
        scope: str,
        current: Sequence[NewEvent],
        *,
        now: datetime,
        sinks: Sequence[str],
        hold: timedelta,
        log: bool,
    ) -> Reconciled:
        """`reconcile`, inside a transaction the caller holds (see `Store.record_fetch`)."""
        keys = {c.dedup_key: c for c in current if c.dedup_key}
        done = Reconciled()
        rows = await s.all("SELECT * FROM alerts WHERE scope = ? AND closed_at IS NULL", (scope,))
        already = {r["dedup_key"]: alert_from_row(r) for r in rows}
        for key, alert in list(already.items()):
            if key in keys and alert.cleared_at is not None and now - alert.cleared_at >= hold:
                # Clear for the whole hold-down before it came back (a pass seeing it only
                # now): that one is over, and this is a new incident.
                done.closed.append(await self._close(s, alert, now, sinks))
                del already[key]
                continue
            if key in keys:
                if alert.cleared_at is not None:  # back within the hold-down: the same one
                    await s.run(
                        "UPDATE alerts SET cleared_at = NULL, recurrences = recurrences + 1"
                        " WHERE id = ?",
                        (alert.id,),
                    )
                    done.recurred.append(replace(alert, recurrences=alert.recurrences + 1))
                done.still_open = True
                continue
            cleared = alert.cleared_at or now
            if now - cleared >= hold:
                done.closed.append(await self._close(s, alert, now, sinks))
                continue
            if alert.cleared_at is None:
                await s.run(
                    "UPDATE alerts SET cleared_at = ? WHERE id = ?", (db_time(now), alert.id)
                )
            done.still_open = True
        for key, c in keys.items():
            if key in already:
                continue
            new = await self._open(s, scope, c, now=now, sinks=sinks, log=log)
            if new is not None:
                done.opened.append(new)
                done.still_open = True
        return done

    async def close_cleared(
        self, now: datetime, hold: timedelta, sinks: Sequence[str] = ()
    ) -> list[Alert]:
        """Close every alert whose condition has stayed clear for `hold` (the hold-down
        ends with time, not only when its scope is checked again), queuing the closing
        notices for `sinks`; the alerts closed."""
        async with self._db.write("close cleared alerts") as s:
            rows = await s.all(
                "SELECT * FROM alerts WHERE closed_at IS NULL AND cleared_at IS NOT NULL"
                " AND cleared_at <= ? ORDER BY id",
                (db_time(now - hold),),
            )
            return [await self._close(s, alert_from_row(r), now, sinks) for r in rows]

    async def _open(
        self,
        s: Session,
        scope: str,
        c: NewEvent,
        *,
        now: datetime,
        sinks: Sequence[str],
        log: bool,
    ) -> Alert | None:
        inserted = await s.one(
            _INSERT_ALERT,
            (
                c.dedup_key,
                scope,
                c.kind,
                c.severity,
                c.pith_number,
                c.suffix,
                to_json_text(list(c.mirrors)),
                c.summary,
                to_json_text(c.evidence),
                db_time(now),
            ),
        )
        if inserted is None:
            return None  # open already, under another scope
        rowid = int(inserted[0])
        await s.run_many(_INSERT_DELIVERY, [(rowid, sink, "open", db_time(now)) for sink in sinks])
        if log:
            await s.run(INSERT_EVENT, event_params(c, c.suffix, None))
        row = await s.one("SELECT * FROM alerts WHERE id = ?", (rowid,))
        assert row is not None
        return alert_from_row(row)

    async def _close(self, s: Session, alert: Alert, now: datetime, sinks: Sequence[str]) -> Alert:
        await s.run("UPDATE alerts SET closed_at = ? WHERE id = ?", (db_time(now), alert.id))
        configured = to_json_text(list(sinks))
        # A sink taken out of the configuration that never took the alert is told of it
        # neither now nor if it comes back: what it would hear is over.
        await s.run(
            "DELETE FROM deliveries WHERE alert_id = ? AND phase = 'open'"
            " AND delivered_at IS NULL AND sink NOT IN (SELECT value FROM json_each(?))",
            (alert.id, configured),
        )
        # The closing notice goes to the configured sinks the alert was queued for: a
        # sink never hears of the end of an alert it was never told of.
        await s.run(
            "INSERT INTO deliveries (alert_id, sink, phase, next_attempt)"
            " SELECT alert_id, sink, 'close', ? FROM deliveries"
            " WHERE alert_id = ? AND phase = 'open'"
            " AND sink IN (SELECT value FROM json_each(?)) ON CONFLICT DO NOTHING",
            (db_time(now), alert.id, configured),
        )
        notice = NewEvent(
            kind="alert_closed",
            severity="info",
            at=now,
            pith_number=alert.pith_number,
            mirrors=alert.mirrors,
            summary=f"cleared: {alert.summary}",
            evidence={"alert_id": alert.id, "kind": alert.kind, "dedup_key": alert.dedup_key},
            dedup_key=alert.dedup_key,
            suffix=alert.suffix,
        )
        await s.run(INSERT_EVENT, event_params(notice, alert.suffix, None))
        return replace(alert, closed_at=now)

    async def failing(self, mirror: str, since: datetime) -> tuple[int, list[dict[str, Any]]]:
        """How many tracked records have failed from `mirror` since before `since`, with
        up to ten examples (suffix, first failure, last error). From any vantage with a
        node seen crawling since then (one that stopped tells nothing of the mirror now),
        the earliest failure of each record."""
        async with self._db.read("count failing records") as s:
            rows = await s.all(_FAILING, (mirror, db_time(since)))
        if not rows:
            return 0, []
        examples = [{"suffix": r[0], "failing_since": r[1], "last_error": r[2]} for r in rows]
        return int(rows[0][3]), examples

    async def of_entries(self, entries: Sequence[EventRow]) -> dict[int, Alert]:
        """The alert behind each event-log entry that has one, by the entry's id.

        A dedup_key names a condition, and a condition can clear and come back: each
        time is an alert of its own. An `alert_closed` entry names its alert; any other
        entry (stamped when its alert opened) belongs to the latest alert of its key
        opened by then, so an alert opened at the very moment another closed is its own.
        """
        keys = sorted({e.dedup_key for e in entries if e.dedup_key})
        if not keys:
            return {}
        async with self._db.read("find alerts") as s:
            rows = await s.all(
                "SELECT * FROM alerts WHERE dedup_key IN (SELECT value FROM json_each(?))"
                " ORDER BY opened_at, id",
                (to_json_text(keys),),
            )
        by_id = {r["id"]: alert_from_row(r) for r in rows}
        by_key: dict[str, list[Alert]] = {}
        for a in by_id.values():
            by_key.setdefault(a.dedup_key, []).append(a)
        found: dict[int, Alert] = {}
        for e in entries:
            if not e.dedup_key or e.dedup_key not in by_key:
                continue
            named = e.evidence.get("alert_id") if e.kind == "alert_closed" else None
            if isinstance(named, int) and named in by_id:
                found[e.id] = by_id[named]
                continue
            series = by_key[e.dedup_key]
            opened = [a for a in series if a.opened_at <= e.at]
            found[e.id] = opened[-1] if opened else series[0]
        return found

    async def get(self, alert_id: int) -> Alert | None:
        async with self._db.read("read an alert") as s:
            row = await s.one("SELECT * FROM alerts WHERE id = ?", (alert_id,))
        return None if row is None else alert_from_row(row)

    async def open_alerts(
        self, *, suffixes: Sequence[str] | None = None, tracked: bool = False
    ) -> list[Alert]:
        """Open alerts, newest first; only of `suffixes` when given, only of tracked
        records when `tracked` (record-less alerts, of mirrors, either way)."""
        names = None if suffixes is None else to_json_text(list(suffixes))
        async with self._db.read("list open alerts") as s:
            rows = await s.all(
                "SELECT * FROM alerts WHERE closed_at IS NULL AND (suffix IS NULL OR ("
                " (?1 IS NULL OR suffix IN (SELECT value FROM json_each(?1)))"
                " AND (?2 = 0 OR suffix IN (SELECT suffix FROM records))"
                ")) ORDER BY opened_at DESC, id DESC",
                (names, tracked),
            )
        return [alert_from_row(r) for r in rows]

    async def open_scopes(self) -> set[str]:
        """The scopes that have an open alert (their scopes only: however many are open,
        no alert's evidence is read)."""
        async with self._db.read("list open alert scopes") as s:
            rows = await s.all("SELECT DISTINCT scope FROM alerts WHERE closed_at IS NULL")
        return {r[0] for r in rows}

    async def open_counts(
        self,
        by: Literal["severity", "kind"],
        *,
        suffixes: Sequence[str] | None = None,
        tracked: bool = False,
        firing: bool = False,
    ) -> dict[str, int]:
        """How many alerts are open, by `severity` or `kind`, of the alerts `open_alerts`
        would list with the same arguments; with `firing`, only those whose condition
        holds (not those held open while it stays clear)."""
        if by not in ("severity", "kind"):
            raise ValueError(f"cannot count open alerts by {by!r}")
        names = None if suffixes is None else to_json_text(list(suffixes))
        # `by` is one of two column names (checked above), not a value to bind.
        query = (
            f"SELECT {by}, count(*) FROM alerts WHERE closed_at IS NULL"  # noqa: S608
            " AND (?3 = 0 OR cleared_at IS NULL)"
            " AND (suffix IS NULL OR ((?1 IS NULL OR suffix IN (SELECT value FROM json_each(?1)))"
            " AND (?2 = 0 OR suffix IN (SELECT suffix FROM records)))) GROUP BY 1"
        )
        async with self._db.read("count open alerts") as s:
            rows = await s.all(query, (names, tracked, firing))
        return {r[0]: r[1] for r in rows}
