"""Leases: which node of a vantage is fetching which pair (record, mirror) now.

Owns the `leases` table. Nodes of one vantage share its schedule (`fetch_state`); before
a node fetches a due pair it takes the pair's lease until a time (`node.lease` ahead), and
lets it go once the pair's fetches are written. A pair is taken only while it is still
due and nobody else's lease on it is running, in a write transaction (writers take turns:
the write lock on SQLite, the archive's advisory write lock on PostgreSQL), so no pair is
fetched by two nodes of a vantage at once, and none twice in one interval. A node killed
mid-pair holds its leases until they expire; then its pairs are due for the others.

It decides nothing about when a pair is due (`fetch_state`, `Store.due`) or how long a
lease runs (`daemon`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime

from pithcrawl.store.connection import Database
from pithcrawl.store.rows import db_time

#: The (vantage, node) whose lease a task's fetches are written under (`run`'s workers
#: set it): `Store.record_fetches` writes a pair's fetches only while the pair's lease is
#: that node's, and raises `LeaseLost` otherwise. Unset (a `sync` pass): no lease.
LEASED: ContextVar[tuple[str, str] | None] = ContextVar("pithcrawl_leased", default=None)

#: Whether a pair's lease is the node's (?3, ?4: vantage, node), expired or not: a node
#: whose lease expired and that nobody took over still writes what it fetched.
HOLDS = "SELECT 1 FROM leases WHERE suffix = ? AND mirror = ? AND vantage = ? AND node = ?"

# A pair is taken when its record is still tracked, its bundle is not yet due again
# (another node's fetch of it written since the caller read it due) and nobody's lease
# on it is running.
_TAKE = """
INSERT INTO leases (suffix, mirror, vantage, node, expires)
SELECT ?1, ?2, ?3, ?4, ?6 WHERE EXISTS (SELECT 1 FROM records WHERE suffix = ?1)
  AND NOT EXISTS (
    SELECT 1 FROM fetch_state AS f WHERE f.suffix = ?1 AND f.mirror = ?2
      AND f.kind = 'bundle' AND f.vantage = ?3 AND f.next_due > ?5)
ON CONFLICT (suffix, mirror, vantage) DO UPDATE SET node = excluded.node,
    expires = excluded.expires
WHERE leases.expires <= ?5
RETURNING suffix
"""

_LET_GO = "DELETE FROM leases WHERE suffix = ? AND mirror = ? AND vantage = ? AND node = ?"

_HELD = """
SELECT node, count(*) FROM leases WHERE expires > ? GROUP BY node
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """A pair a node has taken, until when."""

    suffix: str
    mirror: str
    expires: datetime


class Leases:
    """The `leases` table of one archive (`Store.leases`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def take(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        vantage: str,
        node: str,
        now: datetime,
        until: datetime,
        done: Sequence[tuple[str, str]] = (),
    ) -> list[Lease]:
        """Take the leases of these (suffix, mirror) pairs for `node` of `vantage` until
        `until`, of those still due at `now` and leased to nobody; the ones taken, in
        order. First, in the same transaction, let go of the `done` pairs' (their
        fetches are written: the deferred bookkeeping is written before any write)."""
        if not pairs and not done:
            return []
        async with self._db.write("take leases") as s:
            return await s.call(
                _take,
                list(pairs),
                vantage=vantage,
                node=node,
                now=now,
                until=until,
                done=list(done),
            )

    async def let_go(
        self, node: str, pairs: Sequence[tuple[str, str]] = (), *, vantage: str
    ) -> int:
        """Let go of `node`'s leases on these pairs (all of them, when none is named): at
        the end of a round, and when it starts (a node killed left its own behind)."""
        async with self._db.write("let go of leases") as s:
            if pairs:
                return await s.run_many(_LET_GO, [(p, m, vantage, node) for p, m in pairs])
            return await s.run("DELETE FROM leases WHERE node = ?", (node,))

    async def held(self, now: datetime) -> dict[str, int]:
        """How many running leases each node holds at `now` (`status`)."""
        async with self._db.read("count leases") as s:
            rows = await s.all(_HELD, (db_time(now),))
        return {str(r[0]): int(r[1]) for r in rows}


def _take(
    conn: sqlite3.Connection,
    pairs: list[tuple[str, str]],
    *,
    vantage: str,
    node: str,
    now: datetime,
    until: datetime,
    done: list[tuple[str, str]],
) -> list[Lease]:
    at, expires = db_time(now), db_time(until)
    if done:
        conn.executemany(_LET_GO, [(p, m, vantage, node) for p, m in done])
    # The expired leases of nodes killed after their pairs were written (nobody takes
    # those pairs over): the table holds the work in flight, not every death's leftovers.
    conn.execute("DELETE FROM leases WHERE vantage = ? AND expires <= ?", (vantage, at))
    taken = []
    for suffix, mirror in pairs:
        if conn.execute(_TAKE, (suffix, mirror, vantage, node, at, expires)).fetchone():
            taken.append(Lease(suffix, mirror, until))
    return taken
