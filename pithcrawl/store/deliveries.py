"""Deliveries of alerts to their sinks: what each sink has taken, and what is due.

Owns reading and updating the `deliveries` table: a row per alert, sink and phase (the
alert, then its closing notice), pending until its sink took it, retried on a schedule.
Queuing the rows as alerts open and close is the alert lifecycle's (`alerts`); talking
to a sink is `alert`'s. One instance per `Store` (`store.deliveries`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pithcrawl.store.alerts import SINKS, Alert, alert_from_row
from pithcrawl.store.connection import Database
from pithcrawl.store.rows import db_time, decoder, to_json_text


@dataclass(frozen=True, slots=True)
class Delivery:
    alert_id: int
    sink: str
    phase: str
    attempts: int
    next_attempt: datetime
    delivered_at: datetime | None
    last_error: str | None


@decoder("deliveries", "alert_id")
def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        row["alert_id"],
        row["sink"],
        row["phase"],
        row["attempts"],
        datetime.fromisoformat(row["next_attempt"]),
        datetime.fromisoformat(row["delivered_at"]) if row["delivered_at"] else None,
        row["last_error"],
    )


class DeliveryBook:
    """The archive's deliveries; one instance per `Store`, sharing its connection."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def queue_open(self, sinks: Sequence[str], now: datetime) -> int:
        """Queue every open alert for each of `sinks` that has never had it (a sink
        configured since it opened); how many deliveries were queued."""
        if not sinks:
            return 0
        async with self._db.write("queue open alerts for new sinks") as s:
            return await s.run_many(
                "INSERT INTO deliveries (alert_id, sink, phase, next_attempt)"
                " SELECT id, ?, 'open', ? FROM alerts WHERE closed_at IS NULL"
                " ON CONFLICT DO NOTHING",
                [(sink, db_time(now)) for sink in sinks],
            )

    async def due_deliveries(
        self, now: datetime, limit: int = 100, *, sinks: Sequence[str] = SINKS
    ) -> list[tuple[Delivery, Alert]]:
        """Deliveries to `sinks` not yet taken whose next attempt is due: the least tried
        first, then the oldest alert and phase.

        A closing notice waits for its sink to have taken the opening one: a sink must
        never hear last that a closed alert is open."""
        async with self._db.read("list due deliveries") as s:
            rows = await s.all(
                "SELECT d.*, a.* FROM deliveries AS d JOIN alerts AS a ON a.id = d.alert_id"
                " WHERE d.delivered_at IS NULL AND d.next_attempt <= ?"
                " AND d.sink IN (SELECT value FROM json_each(?))"
                " AND NOT (d.phase = 'close' AND EXISTS (SELECT 1 FROM deliveries AS o"
                "  WHERE o.alert_id = d.alert_id AND o.sink = d.sink AND o.phase = 'open'"
                "  AND o.delivered_at IS NULL))"
                # Untried first: one delivery its sink keeps refusing (a hook that exits
                # 1 on one alert, say) must not stand in front of every later one.
                " ORDER BY d.attempts, d.alert_id, d.phase DESC, d.sink LIMIT ?",
                (db_time(now), to_json_text(list(sinks)), limit),
            )
        return [(_delivery(r), alert_from_row(r)) for r in rows]

    async def rows(
        self, alert_id: int | None = None, *, alert_ids: Sequence[int] | None = None
    ) -> list[Delivery]:
        """The deliveries of one alert, of some (`alert_ids`), or of all."""
        ids = None if alert_ids is None else to_json_text(list(alert_ids))
        async with self._db.read("list deliveries") as s:
            rows = await s.all(
                "SELECT * FROM deliveries WHERE (?1 IS NULL OR alert_id = ?1)"
                " AND (?2 IS NULL"
                " OR alert_id IN (SELECT CAST(value AS INTEGER) FROM json_each(?2)))"
                " ORDER BY alert_id, phase DESC, sink",
                (alert_id, ids),
            )
        return [_delivery(r) for r in rows]

    async def undelivered_count(self, sinks: Sequence[str] = SINKS) -> int:
        """Deliveries to `sinks` not yet taken."""
        async with self._db.read("count undelivered") as s:
            row = await s.one(
                "SELECT count(*) FROM deliveries WHERE delivered_at IS NULL"
                " AND sink IN (SELECT value FROM json_each(?))",
                (to_json_text(list(sinks)),),
            )
        return 0 if row is None else int(row[0])

    async def take(self, d: Delivery, now: datetime, until: datetime) -> bool:
        """Take `d` for an attempt, when it is still due at `now` and nobody took it:
        its next attempt moves to `until` (the attempt records its own end before then;
        a node killed mid-attempt leaves it to be tried again then). Whether it was
        taken: with several nodes, each delivery is sent by one of them."""
        async with self._db.write("take a delivery") as s:
            taken = await s.run(
                "UPDATE deliveries SET next_attempt = ? WHERE alert_id = ? AND sink = ?"
                " AND phase = ? AND delivered_at IS NULL AND next_attempt <= ?",
                (db_time(until), d.alert_id, d.sink, d.phase, db_time(now)),
            )
        return taken == 1

    async def delivered(self, d: Delivery, at: datetime) -> None:
        async with self._db.write("record a delivery") as s:
            await s.run(
                "UPDATE deliveries SET delivered_at = ?, attempts = attempts + 1, last_error = NULL"
                " WHERE alert_id = ? AND sink = ? AND phase = ?",
                (db_time(at), d.alert_id, d.sink, d.phase),
            )

    async def failed(
        self, d: Delivery, error: str, retry_at: datetime, *, claimed: datetime | None = None
    ) -> bool:
        """Count a failed attempt and put the next one off until `retry_at`; only while
        the delivery is still taken until `claimed` (`take`), when given: an attempt that
        outran its claim, the delivery taken again by another node, leaves that node's
        claim alone. Whether it was recorded."""
        async with self._db.write("record a failed delivery") as s:
            done = await s.run(
                "UPDATE deliveries SET attempts = attempts + 1, last_error = ?, next_attempt = ?"
                " WHERE alert_id = ? AND sink = ? AND phase = ? AND delivered_at IS NULL"
                " AND (?6 IS NULL OR next_attempt = ?6)",
                (
                    error[:1000],
                    db_time(retry_at),
                    d.alert_id,
                    d.sink,
                    d.phase,
                    None if claimed is None else db_time(claimed),
                ),
            )
        return done == 1
