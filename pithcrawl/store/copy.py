"""Copying a whole archive into another one (`pithcrawl migrate --to`), either backend to
either backend.

Owns the order the tables are copied in (every row's references before it), reading
each table a page at a time by its key, the mark an unfinished copy leaves in its
target (`UNFINISHED`: every other open of the target refuses it until a copy completes),
and the check at the end: every table's row count, and every body read back against its
sha256. It decides nothing about what to copy: everything is.

An interrupted copy (SIGKILL, a full disk, a lost server) leaves the mark: the target
is refused, never half-trusted. Running the copy again from the same source empties the
target and copies it all again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pithcrawl.errors import StoreCorrupt, UsageError
from pithcrawl.store.archive import UNFINISHED, Store
from pithcrawl.store.connection import Database

#: Every table, in an order its rows can be inserted in (what a row refers to first), with
#: the key it is read by, a page at a time, in that order (blobs: a delta's base first).
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("blobs", ("depth", "id")),
    ("records", ("suffix",)),
    ("mirrors", ("name",)),
    ("snapshots", ("id",)),
    ("events", ("id",)),
    ("learned_keys", ("key_id",)),
    ("histories", ("body_sha256",)),
    ("alerts", ("id",)),
    ("deliveries", ("alert_id", "sink", "phase")),
    ("settings", ("name",)),
    ("nodes", ("name",)),
    ("rules_due", ("suffix",)),
    ("mirror_hours", ("mirror", "hour")),
    ("fetch_state", ("suffix", "mirror", "kind", "vantage")),
    ("vantage_heirs", ("vantage",)),
    ("leases", ("suffix", "mirror", "vantage")),
)
#: Rows a page holds (blobs: fewer, they are the large ones).
PAGE = 500
BLOB_PAGE = 50


@dataclass(frozen=True, slots=True)
class Copied:
    """What a copy moved and checked."""

    rows: dict[str, int]
    bodies_checked: int
    nul_escaped: int = 0
    """Text values holding NUL, which PostgreSQL's text cannot: kept as `\\x00` there."""


async def unfinished(store: Store) -> str | None:
    """The source an unfinished copy into `store` came from, or None."""
    return await store.setting(UNFINISHED)


async def holds_anything(store: Store) -> list[str]:
    """The tables of `store` that hold rows (a target must hold none)."""
    found = []
    async with store._db.read("look for rows") as s:
        for table, _ in TABLES:
            if await s.one(f"SELECT 1 FROM {table} LIMIT 1") is not None:  # noqa: S608
                found.append(table)
    return found


async def copy_archive(
    source: Store, target: Store, source_name: str, progress: Callable[[str, int], None]
) -> Copied:
    """Copy every row of `source` into `target` (empty, or an unfinished copy of the
    same source: emptied first), then check it; `progress(table, rows)` after each page."""
    await _begin(target, source_name)
    rows: dict[str, int] = {}
    escaped = [0]
    for table, key in TABLES:
        rows[table] = await _copy_table(
            source._db, target._db, table, key, progress=progress, escaped=escaped
        )
    await target._db.flush()
    async with target._db.write("finish the copy's numbering") as s:
        await s.call(_continue_numbering)
    checked = await _check(source, target, rows)
    async with target._db.write("mark the copy complete") as s:
        await s.run("DELETE FROM settings WHERE name = ?", (UNFINISHED,))
    return Copied(rows, checked, escaped[0])


async def _begin(target: Store, source_name: str) -> None:
    """Mark the target unfinished (before any row goes in), emptying an unfinished copy
    of the same source; refuse anything else that holds rows."""
    left = await unfinished(target)
    if left is not None and left != source_name:
        raise UsageError(
            f"--to: {target.path} holds an unfinished copy of another archive ({left});"
            " empty it, or name another target"
        )
    if left is None:
        tables = await holds_anything(target)
        if tables:
            raise UsageError(
                f"--to: {target.path} is not empty (it holds {', '.join(tables[:4])});"
                " migrate copies into an empty archive only"
            )
    async with target._db.write("start a copy") as s:
        for table, _ in reversed(TABLES):
            await s.run(f"DELETE FROM {table}")  # noqa: S608 (names from TABLES)
        await s.run("INSERT INTO settings (name, value) VALUES (?, ?)", (UNFINISHED, source_name))


async def _copy_table(
    source: Database,
    target: Database,
    table: str,
    key: tuple[str, ...],
    *,
    progress: Callable[[str, int], None],
    escaped: list[int],
) -> int:
    order = ", ".join(key)
    to_postgresql = not isinstance(target.path, Path)
    page = BLOB_PAGE if table == "blobs" else PAGE
    after: tuple[Any, ...] | None = None
    copied = 0
    while True:
        if after is None:
            query, params = f"SELECT * FROM {table} ORDER BY {order} LIMIT ?", (page,)  # noqa: S608
        else:
            marks = ", ".join("?" for _ in key)
            query = f"SELECT * FROM {table} WHERE ({order}) > ({marks}) ORDER BY {order} LIMIT ?"  # noqa: S608
            params = (*after, page)
        async with source.read(f"read {table} to copy") as s:
            found = await s.all(query, params)
        if not found:
            return copied
        names = list(found[0].keys())
        insert = (
            f"INSERT INTO {table} ({', '.join(names)})"  # noqa: S608 (names from the table)
            f" VALUES ({', '.join('?' for _ in names)})"
        )
        values = [tuple(row[n] for n in names) for row in found]
        if table == "settings":
            values = [v for v in values if v[names.index("name")] != UNFINISHED]
        if to_postgresql:
            escaped[0] += sum(1 for v in values for x in v if type(x) is str and "\x00" in x)
        async with target.write(f"copy {table}") as s:
            await s.run_many(insert, values)
        copied += len(values)
        progress(table, copied)
        last = found[-1]
        after = tuple(last[k] for k in key)


def _continue_numbering(conn: sqlite3.Connection) -> None:
    """After rows went in with their ids, new rows take the next ones (PostgreSQL's
    identity columns count on their own; SQLite's take max(id) + 1 anyway)."""
    if isinstance(conn, sqlite3.Connection):
        return
    for table in ("blobs", "snapshots", "events", "alerts"):
        conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"  # noqa: S608
            f" coalesce((SELECT max(id) FROM {table}), 1),"
            f" (SELECT max(id) FROM {table}) IS NOT NULL)"
        )


async def _check(source: Store, target: Store, copied: dict[str, int]) -> int:
    """Every table holds as many rows as the source's; every body reads back whole."""
    theirs = await _counts(source)
    ours = await _counts(target)
    ours["settings"] -= 1  # the mark, still there
    for table, _ in TABLES:
        if not theirs[table] == ours[table] == copied[table]:
            raise StoreCorrupt(
                f"the copy's {table} holds {ours[table]} rows, the source {theirs[table]}"
                f" ({copied[table]} copied): not complete; run migrate again"
            )
    checked, after = 0, 0
    while True:
        async with target._db.read("list bodies") as s:
            rows = await s.all(
                "SELECT id, sha256 FROM blobs WHERE id > ? ORDER BY id LIMIT 1000", (after,)
            )
        if not rows:
            return checked
        for row in rows:
            await target.get_blob(str(row[1]))  # StoreCorrupt unless it hashes to sha256
            checked += 1
        after = int(rows[-1][0])


async def _counts(store: Store) -> dict[str, int]:
    out = {}
    async with store._db.read("count rows") as s:
        for table, _ in TABLES:
            row = await s.one(f"SELECT count(*) FROM {table}")  # noqa: S608
            assert row is not None
            out[table] = int(row[0])
    return out
