"""The watch list: the records tracked and the mirrors they are polled from.

Owns the rows of `records` and `mirrors`: tracking and untracking records, reading them
whole or a page at a time (with the bounds that cut them into ranges for a pass's
workers), a record's Pith Number, and adding, updating and removing mirrors. Untracking
a record or removing a mirror drops its fetch bookkeeping too; what was archived from it
stays. It does not say what is due (`Store.due`), record a fetch (`fetches`, which also
sets the Pith Number a verified bundle states), or choose the mirrors (`mirrors`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pithcrawl.store.connection import Database
from pithcrawl.store.rows import Mirror, Record, db_time, mirror_from_row, record_from_row

_UPSERT_MIRROR = """
INSERT INTO mirrors (name, base_url, bundle_pattern, state_pattern, well_known_pattern,
                     origin, added_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET
    base_url = excluded.base_url, bundle_pattern = excluded.bundle_pattern,
    state_pattern = excluded.state_pattern, well_known_pattern = excluded.well_known_pattern,
    origin = excluded.origin
"""

# A page of tracked suffixes in [?1, ?3), or after ?1: keyset pagination on the primary key.
_PAGE_FROM = (
    "SELECT suffix FROM records WHERE suffix >= ?1 AND suffix < ?3 ORDER BY suffix LIMIT ?2"
)
_PAGE_AFTER = (
    "SELECT suffix FROM records WHERE suffix > ?1 AND suffix < ?3 ORDER BY suffix LIMIT ?2"
)
#: Sorts after every suffix (ASCII) in SQLite's binary collation: the open upper bound.
_PAST_EVERY_SUFFIX = "\U0010ffff"


class Watchlist:
    """The tracked records and known mirrors of one archive (`Store.watchlist`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- records ------------------------------------------------------------------------

    async def track(self, suffixes: Iterable[str], now: datetime) -> int:
        """Start watching records; returns how many were not tracked before."""
        rows = [(s, db_time(now)) for s in dict.fromkeys(suffixes)]
        async with self._db.write("track records") as s:
            return await s.run_many(
                "INSERT INTO records (suffix, added_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                rows,
            )

    async def untrack(self, suffixes: Iterable[str]) -> int:
        """Stop watching records (their archive stays); returns how many were tracked."""
        rows = [(s,) for s in dict.fromkeys(suffixes)]
        async with self._db.write("untrack records") as s:
            await s.run_many("DELETE FROM fetch_state WHERE suffix = ?", rows)
            await s.run_many("DELETE FROM rules_due WHERE suffix = ?", rows)
            return await s.run_many("DELETE FROM records WHERE suffix = ?", rows)

    async def tracked(self) -> list[Record]:
        async with self._db.read("list tracked records") as s:
            rows = await s.all("SELECT * FROM records ORDER BY added_at, suffix")
        return [record_from_row(r) for r in rows]

    async def record(self, suffix: str) -> Record | None:
        """One tracked record, or None."""
        async with self._db.read("read a tracked record") as s:
            row = await s.one("SELECT * FROM records WHERE suffix = ?", (suffix,))
        return None if row is None else record_from_row(row)

    async def tracked_page(
        self, *, low: str | None, high: str | None, after: str | None, limit: int
    ) -> list[str]:
        """Up to `limit` tracked suffixes in [low, high) (None: unbounded) after `after`, in
        suffix order: a pass reads the tracked records a page at a time."""
        sql, start = (_PAGE_FROM, low or "") if after is None else (_PAGE_AFTER, after)
        async with self._db.read("list tracked records") as s:
            rows = await s.all(sql, (start, limit, _PAST_EVERY_SUFFIX if high is None else high))
        return [r[0] for r in rows]

    async def tracked_bounds(self, parts: int) -> list[str]:
        """The suffixes that cut the tracked records, in suffix order, into `parts` ranges
        of nearly equal size (`parts` - 1 of them, fewer when there are fewer records)."""
        count = await self.tracked_count()
        bounds: list[str] = []
        async with self._db.read("split tracked records") as s:
            for k in range(1, parts):
                row = await s.one(
                    "SELECT suffix FROM records ORDER BY suffix LIMIT 1 OFFSET ?",
                    (k * count // parts,),
                )
                if row is not None and (not bounds or row[0] > bounds[-1]):
                    bounds.append(row[0])
        return bounds

    async def tracked_count(self) -> int:
        async with self._db.read("count tracked records") as s:
            row = await s.one("SELECT count(*) FROM records")
        return int(row[0]) if row is not None else 0

    async def pith_number(self, suffix: str) -> str | None:
        """A tracked record's verified Pith Number, once one is known."""
        async with self._db.read("read a pith number") as s:
            row = await s.one("SELECT pith_number FROM records WHERE suffix = ?", (suffix,))
        return None if row is None else row[0]

    async def set_pith_number(self, suffix: str, pith_number: str) -> None:
        async with self._db.write("set a pith number") as s:
            await s.run(
                "UPDATE records SET pith_number = ? WHERE suffix = ?", (pith_number, suffix)
            )

    # -- mirrors ------------------------------------------------------------------------

    async def upsert_mirror(self, mirror: Mirror) -> None:
        """Add a mirror or update its URLs and origin (its `added_at` stays the first)."""
        async with self._db.write("save a mirror") as s:
            await s.run(
                _UPSERT_MIRROR,
                (
                    mirror.name,
                    mirror.base_url,
                    mirror.bundle_pattern,
                    mirror.state_pattern,
                    mirror.well_known_pattern,
                    mirror.origin,
                    db_time(mirror.added_at),
                ),
            )

    async def remove_mirror(self, name: str) -> bool:
        """Forget a mirror and its fetch bookkeeping (its snapshots stay); True if known."""
        async with self._db.write("remove a mirror") as s:
            await s.run("DELETE FROM fetch_state WHERE mirror = ?", (name,))
            changed = await s.run("DELETE FROM mirrors WHERE name = ?", (name,))
        return changed > 0

    async def mirrors(self) -> list[Mirror]:
        async with self._db.read("list mirrors") as s:
            rows = await s.all("SELECT * FROM mirrors ORDER BY name")
        return [mirror_from_row(r) for r in rows]
