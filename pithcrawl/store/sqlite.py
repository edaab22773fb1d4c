"""The sqlite3 boundary: opening a connection, migrating it, translating its errors.

Owns everything between a path and a ready aiosqlite connection: the pragmas (WAL,
`busy_timeout`, foreign keys, `synchronous=NORMAL`), applying `schema.MIGRATIONS` under
`PRAGMA user_version` (each in its own `BEGIN IMMEDIATE` transaction, foreign keys off
and checked before the commit) and refusing a newer schema, and translating every sqlite3
error into `StoreError` (the one place where they are translated). It knows no table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import aiosqlite
import anyio

from pithcrawl.errors import StoreCorrupt, StoreError
from pithcrawl.store.schema import MIGRATIONS, SCHEMA_VERSION, statements

#: How long a statement waits for another process's write lock before failing. Writers
#: of one archive take turns in short transactions, but SQLite's wait is a sleep-and-retry
#: loop, not a queue: a generous bound keeps a busy neighbour from failing us.
BUSY_TIMEOUT_MS = 30_000

P = ParamSpec("P")
T = TypeVar("T")


def describe(db: Path, doing: str, e: sqlite3.Error) -> str:
    """A message for a sqlite3 error that says what we were doing and what to check."""
    text = str(e)
    hints = {
        "file is not a database": f"{db} is not a pithcrawl database (file is not a database)",
        "unable to open database file": (
            f"cannot open database {db}: unable to open database file"
            " (does its directory exist, and may pithcrawl write there?)"
        ),
        "readonly database": f"database {db} is read-only: cannot {doing}",
        "database is locked": (
            f"database {db} stayed locked by another process for more than"
            f" {BUSY_TIMEOUT_MS // 1000}s: cannot {doing}"
        ),
        "disk image is malformed": (
            f"database {db} is damaged ({text}): cannot {doing}; restore it from a backup"
            " (SQLite's own `.recover` may save what is left)"
        ),
    }
    for needle, message in hints.items():
        if needle in text:
            return message
    return f"database {db}: cannot {doing}: {text}"


@contextmanager
def translated(db: Path, doing: str) -> Iterator[None]:
    """Turn sqlite3 errors raised inside into `StoreError` (the only place this happens)."""
    try:
        yield
    except sqlite3.Error as e:
        raise StoreError(describe(db, doing, e)) from e


async def rollback(conn: aiosqlite.Connection) -> None:
    # Shielded so a cancelled task still ends its transaction; a ROLLBACK with no
    # transaction open (sqlite already rolled back, e.g. after SQLITE_FULL) is fine.
    with anyio.CancelScope(shield=True), suppress(sqlite3.OperationalError):
        await conn.execute("ROLLBACK")


async def in_thread(
    conn: aiosqlite.Connection,
    fn: Callable[Concatenate[sqlite3.Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """`fn(raw connection, *args)` in `conn`'s database thread: one hand-off for all the
    statements `fn` runs.

    aiosqlite runs each of its own calls this way (`Connection._execute`, how its
    `execute_fetchall` runs), but offers no public door to it; every statement awaited
    on its own costs a thread hand-off both ways, and recording a fetch runs about six.
    tests/test_store.py exercises this on every write, so an aiosqlite that drops the
    method fails the tests, not a user.
    """
    raw = conn._conn  # the sqlite3.Connection, used only from inside its thread
    result: T = await conn._execute(fn, raw, *args, **kwargs)  # type: ignore[no-untyped-call]
    return result


def file_bytes(db: Path) -> int:
    """The database's size on disk, with its WAL and shared-memory files."""
    # A few stat calls: too quick to be worth a worker thread.
    size = 0
    for extra in ("", "-wal", "-shm"):
        with suppress(FileNotFoundError):
            size += Path(f"{db}{extra}").stat().st_size
    return size


def _target(path: Path, *, readonly: bool) -> str:
    # SQLite's URI form is the only way to ask for mode=ro; as_uri() percent-encodes.
    return f"{path.absolute().as_uri()}?mode=ro" if readonly else str(path)


async def connect(path: Path, *, readonly: bool) -> aiosqlite.Connection:
    target = _target(path, readonly=readonly)
    with translated(path, "open the database"):
        # Open once without aiosqlite first: when aiosqlite's own connect fails, its
        # worker thread outlives the event loop and reports into a closed loop.
        await anyio.to_thread.run_sync(_probe, target, readonly)
        conn = await aiosqlite.connect(target, uri=readonly, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        with translated(path, "open the database"):
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA foreign_keys = ON")
            version = await _user_version(conn)
            _refuse_newer(version)
            if not readonly:
                # journal_mode is persistent in the file, so read-only users get WAL too.
                await conn.execute("PRAGMA journal_mode = WAL")
                await conn.execute("PRAGMA synchronous = NORMAL")
        if readonly:
            if version < SCHEMA_VERSION:
                raise StoreError(
                    f"database {path} has schema version {version}, older than this"
                    f" pithcrawl ({SCHEMA_VERSION}); open it for writing once to upgrade it"
                )
        else:
            await _migrate(conn, path, version)
    except BaseException:
        with anyio.CancelScope(shield=True), suppress(sqlite3.Error):
            await conn.close()
        raise
    return conn


def _probe(target: str, uri: bool) -> None:
    sqlite3.connect(target, uri=uri).close()


async def _user_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


def _refuse_newer(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {version} is newer than this pithcrawl"
            f" ({SCHEMA_VERSION}); upgrade pithcrawl"
        )


async def _migrate(conn: aiosqlite.Connection, path: Path, version: int) -> None:
    if version >= SCHEMA_VERSION:
        return
    # Foreign keys off while tables are rebuilt (SQLite's documented procedure; the
    # pragma is a no-op inside a transaction, so it is set around them), and every
    # reference checked before each commit instead.
    await _refuse_later_objects(conn, path, version)
    await conn.execute("PRAGMA foreign_keys = OFF")
    try:
        for number in range(version + 1, SCHEMA_VERSION + 1):
            with translated(path, f"migrate to schema version {number}"):
                await _migrate_one(conn, number)
    finally:
        with anyio.CancelScope(shield=True), translated(path, "open the database"):
            await conn.execute("PRAGMA foreign_keys = ON")


#: (table or index, column or None) pairs: the shape of a schema, names only.
Shape = set[tuple[str, str | None]]


def _shape_of(version: int) -> Shape:
    """What migrations 1 to `version` make, built in memory."""
    mem = sqlite3.connect(":memory:")
    try:
        for script in MIGRATIONS[:version]:
            for statement in statements(script):
                mem.execute(statement)
        return _shape(mem)
    finally:
        mem.close()


def _shape(db: sqlite3.Connection) -> Shape:
    found: Shape = set()
    for kind, name in db.execute(
        "SELECT type, name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'"
    ).fetchall():
        found.add((name, None))
        if kind == "table":
            found |= {(name, c[1]) for c in db.execute(f"PRAGMA table_info('{name}')")}
    return found


async def _refuse_later_objects(conn: aiosqlite.Connection, path: Path, version: int) -> None:
    """Refuse to migrate a database that already holds tables, indexes or columns of a
    later schema than its `user_version` says: the number was changed behind pithcrawl's
    back, and running a migration again (one rebuilds `blobs`) would destroy data."""

    now = await in_thread(conn, _shape)
    later = _shape_of(SCHEMA_VERSION) - _shape_of(version)
    found = sorted(f"{t}.{c}" if c else t for t, c in now & later)
    if found:
        raise StoreCorrupt(
            f"database {path} says schema version {version}, but already holds"
            f" {', '.join(found[:5])} of a later one: its version was changed; restore a"
            " backup rather than migrate it again"
        )


async def _migrate_one(conn: aiosqlite.Connection, number: int) -> None:
    await conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated while we waited for the write lock.
        current = await _user_version(conn)
        _refuse_newer(current)
        if current < number:
            for statement in statements(MIGRATIONS[number - 1]):
                await conn.execute(statement)
            async with conn.execute("PRAGMA foreign_key_check") as cur:
                broken = await cur.fetchone()
            if broken is not None:
                raise sqlite3.IntegrityError(
                    f"migration {number} would leave {broken[0]} row {broken[1]}"
                    f" referring to a missing {broken[2]} row"
                )
            await conn.execute(f"PRAGMA user_version = {number}")
    except BaseException:
        await rollback(conn)
        raise
    with anyio.CancelScope(shield=True):
        await conn.execute("COMMIT")
