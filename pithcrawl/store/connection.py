"""The one connection to the archive: opening, locking, migrating, transactions.

Owns everything between a path and a ready aiosqlite connection: the writers' advisory
lock (`flock` on `DB.lock`), the pragmas (WAL, `busy_timeout`, foreign keys,
`synchronous=NORMAL`), applying `schema.MIGRATIONS` under `PRAGMA user_version` (each in
its own `BEGIN IMMEDIATE` transaction) and refusing a newer schema, serialising the tasks
that share the connection, group commit and deferred bookkeeping (see `Database`), and
translating every sqlite3 and OS error into `StoreError` (the one boundary where they are
translated). It knows no table: queries are `archive`'s.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from pithcrawl.errors import StoreError, StoreLocked
from pithcrawl.store.schema import MIGRATIONS, SCHEMA_VERSION, statements

#: How long a statement waits for another process's write lock before failing. Writers
#: of one archive take turns in short transactions, but SQLite's wait is a sleep-and-retry
#: loop, not a queue: a generous bound keeps a busy neighbour from failing us.
BUSY_TIMEOUT_MS = 30_000


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


class WriterLock:
    """An exclusive, non-blocking `flock` on `DB.lock`: one writer process per archive.

    flock locks belong to the open file description, so a second acquisition fails even
    from the same process, and the kernel drops the lock when the process dies (a crash
    leaves no stale lock). The file holds the holder's pid, for the error message only.
    The file is never deleted: unlinking a lock file races with its next opener.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, db: Path) -> WriterLock:
        path = lock_path(db)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StoreError(f"cannot create the lock file {path}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            raise StoreLocked(f"another pithcrawl is using {db} (pid {holder})") from e
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            os.close(fd)
            raise StoreError(f"cannot write the lock file {path}: {e.strerror or e}") from e
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the last descriptor releases the flock


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


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
        "disk image is malformed": f"database {db} is damaged ({text}); run `pithcrawl fsck`",
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


#: Deferred statements (`Database.defer`) written together at the latest.
DEFER_MAX = 512
#: A group is committed after this many `write` blocks, or once open this long: other
#: processes writing the same archive (a pass shared by workers, `track`) get their turn.
GROUP_MAX = 64
GROUP_SECONDS = 0.05


class _Group:
    """One open transaction shared by the `write` blocks that queued up for it."""

    def __init__(self) -> None:
        self.blocks = 0
        self.started = time.monotonic()
        self.ended = anyio.Event()
        self.error: BaseException | None = None

    @property
    def full(self) -> bool:
        return self.blocks >= GROUP_MAX or time.monotonic() - self.started >= GROUP_SECONDS


class Database:
    """One aiosqlite connection shared by the tasks of one process, one task at a time.

    Tasks take turns (`read`, `write`) because a transaction spans several awaits: two
    tasks interleaving statements on one connection would share one transaction.

    Group commit: `write` blocks that queue up behind each other share one transaction
    (at most `GROUP_MAX`), committed by the last of them; each block returns only once it
    is committed. Under load this takes SQLite's write lock once per group, not once per
    block (what other processes writing the same archive wait for) and commits once.
    The price: a block that fails rolls back its whole group, and the other blocks of
    the group raise `StoreError` too. Nothing is ever half-written.

    Statements that only keep bookkeeping may be deferred (`defer`): they are written
    together, in a few `executemany` calls, before any other use of the connection (so
    every read sees them), at `DEFER_MAX`, on `flush` and on close. A crash loses at most
    the deferred ones, which is the same as those fetches not having happened.
    """

    def __init__(
        self, conn: aiosqlite.Connection, path: Path, lock: WriterLock | None, readonly: bool
    ) -> None:
        self._conn: aiosqlite.Connection | None = conn
        self.path = path
        self.readonly = readonly
        self._writer_lock = lock
        # fast_acquire: a free turn is taken without a trip through the event loop; every
        # statement awaits the database thread right after, so no task is starved.
        self._turn = anyio.Lock(fast_acquire=True)
        self._deferred: list[tuple[str, Sequence[Any]]] = []
        self._group: _Group | None = None
        self._writers_waiting = 0
        self.commits = 0
        """Transactions committed (groups, and deferred statements on their own)."""

    @classmethod
    async def open(cls, path: Path, *, exclusive: bool, readonly: bool) -> Database:
        if exclusive and readonly:
            raise ValueError("a read-only store cannot take the writers' lock")
        lock = WriterLock.acquire(path) if exclusive else None
        try:
            conn = await _connect(path, readonly=readonly)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return cls(conn, path, lock, readonly)

    async def close(self) -> None:
        # Shielded: closing is what a cancelled task (a daemon shutting down) does last,
        # and it must still end the connection and release the writers' lock.
        with anyio.CancelScope(shield=True):
            async with self._turn:
                try:
                    await self._write_deferred()
                    await self._end_group()
                finally:
                    await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                with translated(self.path, "close"):
                    if self._writer_lock is not None:
                        # Only the archive's one writer process: PRAGMA optimize may write,
                        # and is not worth waiting for another writer's lock.
                        with suppress(sqlite3.OperationalError):
                            await conn.execute("PRAGMA optimize")
                    await conn.close()
        finally:
            if self._writer_lock is not None:
                self._writer_lock.release()
                self._writer_lock = None

    def _live(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreError(f"the store {self.path} is closed")
        return self._conn

    @asynccontextmanager
    async def read(self, doing: str) -> AsyncIterator[Session]:
        """Statements that see everything written so far (including an open group)."""
        async with self._turn:
            try:
                await self._write_deferred()
                with translated(self.path, doing):
                    yield Session(self._live())
            finally:
                await self._end_group_if_idle()

    def defer(self, sql: str, params: Sequence[Any]) -> bool:
        """Queue one bookkeeping statement (see the class); True when the queue is full
        and the caller should `flush`."""
        self._live()
        self._deferred.append((sql, params))
        return len(self._deferred) >= DEFER_MAX

    async def flush(self) -> None:
        """Write the deferred statements (and end an open group) now."""
        async with self._turn:
            try:
                await self._write_deferred()
            finally:
                await self._end_group_if_idle()

    @asynccontextmanager
    async def write(self, doing: str) -> AsyncIterator[Session]:
        """A transaction (shared with the blocks queued behind it, see the class): it is
        committed when the block returns; if the block raises, it is rolled back."""
        self._writers_waiting += 1
        try:
            await self._turn.acquire()
        except BaseException:
            self._writers_waiting -= 1
            if not self._writers_waiting and self._group is not None:
                # The group was left open for this block, which is not coming: end it.
                with anyio.CancelScope(shield=True):
                    async with self._turn:
                        await self._end_group_if_idle()
            raise
        self._writers_waiting -= 1
        try:
            with translated(self.path, doing):
                await self._write_deferred()
                group = await self._join_group()
                try:
                    yield Session(self._live())
                except BaseException as e:
                    await self._fail_group(e)
                    raise
                if group.full:
                    await self._end_group()
                else:
                    await self._end_group_if_idle()
        finally:
            self._turn.release()
        if not group.ended.is_set():
            await group.ended.wait()  # committed by the last block of the group
        if group.error is not None:
            raise StoreError(
                f"database {self.path}: cannot {doing}: another write of the same"
                f" transaction failed ({group.error})"
            ) from group.error

    # -- the transaction of a group (the caller holds the turn) -------------------------

    async def _join_group(self) -> _Group:
        if self._group is None:
            # Shielded: aiosqlite runs a statement even when its caller is cancelled, and
            # a BEGIN nobody knows about would break every later transaction.
            with anyio.CancelScope(shield=True):
                await self._live().execute("BEGIN IMMEDIATE")
            self._group = _Group()
        self._group.blocks += 1
        return self._group

    async def _end_group_if_idle(self) -> None:
        """Commit the open group unless a `write` block is queued to join it."""
        if not self._writers_waiting:
            await self._end_group()

    async def _end_group(self) -> None:
        group, self._group = self._group, None
        if group is None:
            return
        # Shielded: a cancel arriving during COMMIT must not leave us unsure whether it
        # happened (and aiosqlite would run it anyway).
        with anyio.CancelScope(shield=True):
            try:
                with translated(self.path, "commit"):
                    await self._live().execute("COMMIT")
                self.commits += 1
            except BaseException as e:
                group.error = e
                await _rollback(self._live())
                raise
            finally:
                group.ended.set()

    async def _fail_group(self, error: BaseException) -> None:
        group, self._group = self._group, None
        if group is not None:
            group.error = error
            with anyio.CancelScope(shield=True):
                await _rollback(self._live())
            group.ended.set()

    async def _write_deferred(self) -> None:
        """The deferred statements, a run of equal SQL per call, in the open group or a
        transaction of their own. Shielded: a cancel must not split them. On an error
        they are dropped (and the error raised): they only recorded fetches, which will
        simply happen again."""
        if not self._deferred:
            return
        queued, self._deferred = self._deferred, []
        runs: list[tuple[str, list[Sequence[Any]]]] = []
        for sql, params in queued:
            if runs and runs[-1][0] == sql:
                runs[-1][1].append(params)
            else:
                runs.append((sql, [params]))
        conn = self._live()
        with anyio.CancelScope(shield=True), translated(self.path, "record fetches"):
            if self._group is not None:
                for sql, rows in runs:
                    await conn.executemany(sql, rows)
                return
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in runs:
                    await conn.executemany(sql, rows)
            except BaseException:
                await _rollback(conn)
                raise
            await conn.execute("COMMIT")
            self.commits += 1


class Session:
    """The statements a `read` or `write` block runs, typed for the archive's queries."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return list(await self._conn.execute_fetchall(sql, params))

    async def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        # One trip to the database thread (execute_fetchall), not three (execute,
        # fetchone, close): every statement is a hand-off between threads.
        rows = list(await self._conn.execute_fetchall(sql, params))
        return rows[0] if rows else None

    async def run(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, int | None]:
        """Execute one statement; (rows changed, last inserted rowid).

        One trip to the database thread: the cursor holds no result rows, so it is left
        to be freed with its object rather than closed with a second trip.
        """
        cur = await self._conn.execute(sql, params)
        return cur.rowcount, cur.lastrowid

    async def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        cur = await self._conn.executemany(sql, rows)
        return cur.rowcount


async def _rollback(conn: aiosqlite.Connection) -> None:
    # Shielded so a cancelled task still ends its transaction; a ROLLBACK with no
    # transaction open (sqlite already rolled back, e.g. after SQLITE_FULL) is fine.
    with anyio.CancelScope(shield=True), suppress(sqlite3.OperationalError):
        await conn.execute("ROLLBACK")


def _target(path: Path, *, readonly: bool) -> str:
    # SQLite's URI form is the only way to ask for mode=ro; as_uri() percent-encodes.
    return f"{path.absolute().as_uri()}?mode=ro" if readonly else str(path)


async def _connect(path: Path, *, readonly: bool) -> aiosqlite.Connection:
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
    await conn.execute("PRAGMA foreign_keys = OFF")
    try:
        for number in range(version + 1, SCHEMA_VERSION + 1):
            with translated(path, f"migrate to schema version {number}"):
                await _migrate_one(conn, number)
    finally:
        with anyio.CancelScope(shield=True), translated(path, "open the database"):
            await conn.execute("PRAGMA foreign_keys = ON")


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
        await _rollback(conn)
        raise
    with anyio.CancelScope(shield=True):
        await conn.execute("COMMIT")
