"""The nodes that crawl one archive: each `[node]`'s name, its vantage, and when it was
first and last seen (a `sync` pass or a round of `run` starting, and ending).

Owns the `nodes` table. It does not say which node fetched a snapshot (the snapshot does:
`fetches`) nor share work between nodes (leases are not part of it).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta

from pithcrawl.store.connection import Database
from pithcrawl.store.rows import db_time, decoder

_SEEN = """
INSERT INTO nodes (name, vantage, first_seen, last_seen, interval_s)
VALUES (?1, ?2, ?3, ?3, ?4)
ON CONFLICT (name) DO UPDATE SET vantage = excluded.vantage,
    last_seen = CASE WHEN excluded.last_seen > nodes.last_seen THEN excluded.last_seen
                     ELSE nodes.last_seen END,
    interval_s = excluded.interval_s
"""

# A node crawls still if seen within two of its own intervals, or `?3` seconds if longer
# (those of the node asking: `Config.vantage_alive`).
_LIVE = """
SELECT DISTINCT vantage FROM nodes
WHERE julianday(last_seen) >= julianday(?1) - (CASE WHEN 2 * coalesce(interval_s, ?2) > ?3
    THEN 2 * coalesce(interval_s, ?2) ELSE ?3 END) / 86400.0
"""


@dataclass(frozen=True, slots=True)
class Node:
    """A node as the archive knows it."""

    name: str
    vantage: str
    first_seen: datetime
    last_seen: datetime
    interval: timedelta | None = None
    """Its `crawl.interval`, as it last said."""

    def crawling(self, at: datetime, alive: timedelta) -> bool:
        """Whether it is still crawling at `at`: seen within two of its own intervals,
        or `alive` if longer (`Nodes.vantages_seen`)."""
        window = max(2 * self.interval, alive) if self.interval is not None else alive
        return self.last_seen >= at - window


class Nodes:
    """The `nodes` table of one archive (`Store.nodes`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def seen(
        self,
        name: str,
        vantage: str,
        at: datetime,
        *,
        interval: timedelta | None = None,
    ) -> None:
        """`name` (of `vantage`, crawling every `interval`) is crawling at `at`: its
        vantage is the latest one given; its last sighting never goes back (a clock
        stepped back does not rewind it)."""
        seconds = None if interval is None else max(1, int(interval.total_seconds()))
        async with self._db.write("record this node") as s:
            await s.run(_SEEN, (name, vantage, db_time(at), seconds))

    async def vantages_seen(
        self, now: datetime, *, interval: timedelta, alive: timedelta
    ) -> set[str]:
        """The vantages crawling at `now`: of the nodes seen within two of their own
        crawl intervals (`interval` for a node that did not say), or `alive` if longer."""
        args = (db_time(now), interval.total_seconds(), alive.total_seconds())
        async with self._db.read("list live vantages") as s:
            rows = await s.all(_LIVE, args)
        return {str(r[0]) for r in rows}

    async def all(self) -> list[Node]:
        """Every node, the one seen last first."""
        async with self._db.read("list nodes") as s:
            rows = await s.all("SELECT * FROM nodes ORDER BY last_seen DESC, name")
        return [node_from_row(r) for r in rows]


@decoder("nodes", "name")
def node_from_row(row: sqlite3.Row) -> Node:
    return Node(
        name=row["name"],
        vantage=row["vantage"],
        first_seen=datetime.fromisoformat(row["first_seen"]),
        last_seen=datetime.fromisoformat(row["last_seen"]),
        interval=None if row["interval_s"] is None else timedelta(seconds=row["interval_s"]),
    )
