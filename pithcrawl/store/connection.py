"""The one connection to the archive, shared by the tasks of a process.

Owns serialising those tasks, the transactions of `write` blocks with group commit, and
the deferred bookkeeping statements (see `Database`), on either database: SQLite (a
file, through aiosqlite) or PostgreSQL (a libpq URL, through `postgres`, whose
connection has the same face). Opening, migrating and the errors' wording are
`sqlite`'s and `postgres`'s; turning either's errors into `StoreError` happens here
(`translated`); the writers' lock file is `lock`'s. It knows no table: queries are
`archive`'s.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import aiosqlite
import anyio

from pithcrawl.errors import StoreError
from pithcrawl.location import PgUrl, Where
from pithcrawl.store import postgres, sqlite
from pithcrawl.store.lock import WriterLock
from pithcrawl.store.postgres import BackendError, PgConnection

Connection = aiosqlite.Connection | PgConnection
#: The errors either database raises (turned into `StoreError` by `translated`).
DB_ERRORS = (sqlite3.Error, BackendError)


def describe(where: Where, doing: str, e: Exception) -> str:
    """The message for a database's error: what we were doing, and what to check."""
    if isinstance(e, BackendError):
        assert isinstance(where, PgUrl)
        return postgres.describe(where, doing, e)
    assert isinstance(e, sqlite3.Error) and isinstance(where, Path)
    return sqlite.describe(where, doing, e)


@contextmanager
def translated(where: Where, doing: str) -> Iterator[None]:
    """Turn the database's errors raised inside into `StoreError` (the only place)."""
    try:
        yield
    except DB_ERRORS as e:
        raise StoreError(describe(where, doing, e)) from e


async def in_thread(
    conn: Connection,
    fn: Callable[Concatenate[sqlite3.Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """`fn(raw connection, *args)` in the database's thread (one hand-off for all of
    its statements). On PostgreSQL the raw connection is a `postgres.PgRaw`, which
    answers the part of sqlite3.Connection's face the store's batches use."""
    if isinstance(conn, PgConnection):
        return await conn.call_pipelined(fn, *args, **kwargs)  # type: ignore[arg-type]
    return await sqlite.in_thread(conn, fn, *args, **kwargs)


async def rollback(conn: Connection) -> None:
    # Shielded so a cancelled task still ends its transaction; a ROLLBACK with no
    # transaction open (sqlite already rolled back, e.g. after SQLITE_FULL) is fine.
    with anyio.CancelScope(shield=True), suppress(sqlite3.OperationalError, BackendError):
        await conn.execute("ROLLBACK")


#: Deferred statements (`Database.defer`) written together at the latest.
DEFER_MAX = 512
#: A group is committed after this many `write` blocks, or once open this long: other
#: processes writing the same archive (a pass shared by workers, `track`) get their turn.
GROUP_MAX = 64
GROUP_SECONDS = 0.05

P = ParamSpec("P")
T = TypeVar("T")


class Later(Generic[T]):
    """What a read queued for the end of a write group (`Session.at_commit`) found: its
    `value` once the group committed (or the exception the read raised, raised again)."""

    __slots__ = ("_done", "_error", "_fn", "_value")

    def __init__(self, fn: Callable[[sqlite3.Connection], T]) -> None:
        self._fn: Callable[[sqlite3.Connection], T] | None = fn
        self._done = False
        self._value: T | None = None
        self._error: Exception | None = None

    def _run(self, conn: sqlite3.Connection, path: Where) -> None:
        fn, self._fn = self._fn, None
        assert fn is not None  # run once
        try:
            self._value = fn(conn)
        except DB_ERRORS as e:  # as every other statement's: a `StoreError`
            self._error = StoreError(describe(path, "read what a write left", e))
            self._error.__cause__ = e
        except Exception as e:  # the reader's to see, not the group's to fail on
            self._error = e
        self._done = True

    @property
    def value(self) -> T:
        if self._error is not None:
            raise self._error
        if not self._done:
            raise StoreError("a read at the end of a write was asked for before it ran")
        return self._value  # type: ignore[return-value] # set by _run when done


def _run_reads(conn: sqlite3.Connection, reads: Sequence[Later[Any]], path: Where) -> None:
    # On PostgreSQL a failing statement aborts its whole transaction (on SQLite it fails
    # alone): each read gets a savepoint, so that one that fails (a lock it waited too
    # long for) is the reader's error, as on SQLite, and the group still commits.
    guarded = not isinstance(conn, sqlite3.Connection)
    for read in reads:
        if guarded:
            conn.execute("SAVEPOINT pithcrawl_read")
        read._run(conn, path)
        if guarded:
            conn.execute(
                "ROLLBACK TO SAVEPOINT pithcrawl_read"
                if read._error is not None
                else "RELEASE SAVEPOINT pithcrawl_read"
            )


async def _run_reads_in_thread(conn: Connection, reads: Sequence[Later[Any]], path: Where) -> None:
    """`_run_reads` in the database thread; on PostgreSQL outside a pipeline (a failed
    read must be rolled back to its savepoint before the next statement is sent)."""
    if isinstance(conn, PgConnection):
        await conn.call(_run_reads, reads, path)  # type: ignore[arg-type]
    else:
        await sqlite.in_thread(conn, _run_reads, reads, path)


class _Group:
    """One open transaction shared by the `write` blocks that queued up for it."""

    def __init__(self) -> None:
        self.blocks = 0
        self.started = time.monotonic()
        self.ended = anyio.Event()
        self.error: BaseException | None = None
        self.reads: list[Later[Any]] = []
        """Reads to run after the group's last block, before it commits."""

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

    A block may queue a read for the end of its group (`Session.at_commit`): it runs
    after the group's last block, just before the commit, so it sees what the group
    commits, as a read right after the commit would, without a hand-off of its own (the
    reads of a group run together in one).

    Statements that only keep bookkeeping may be deferred (`defer`): they are written
    together, in a few `executemany` calls, before any other use of the connection (so
    every read sees them), at `DEFER_MAX`, on `flush` and on close. A crash loses at most
    the deferred ones, which is the same as those fetches not having happened.
    """

    def __init__(
        self, conn: Connection, path: Where, lock: WriterLock | None, readonly: bool
    ) -> None:
        self._conn: Connection | None = conn
        self.path = path
        self._identity = _identity(path) if isinstance(path, Path) else None
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
    async def open(
        cls, path: Where, *, exclusive: bool, readonly: bool, node: str | None = None
    ) -> Database:
        if exclusive and readonly:
            raise ValueError("a read-only store cannot take the writers' lock")
        if isinstance(path, PgUrl):
            # The writers' lock is a session lock of this connection there.
            pg = await postgres.connect(path, readonly=readonly, exclusive=exclusive, node=node)
            return cls(pg, path, None, readonly)
        lock = WriterLock.acquire(path) if exclusive else None
        try:
            conn = await sqlite.connect(path, readonly=readonly)
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
                    if self._writer_lock is not None and isinstance(conn, aiosqlite.Connection):
                        # Only the archive's one writer process: PRAGMA optimize may write,
                        # and is not worth waiting for another writer's lock.
                        with suppress(sqlite3.OperationalError):
                            await conn.execute("PRAGMA optimize")
                    await conn.close()
        finally:
            if self._writer_lock is not None:
                self._writer_lock.release()
                self._writer_lock = None

    def check_file(self) -> None:
        """`StoreError` when the archive's file is gone or another file now has its name
        (deleted, or moved aside by hand): what this connection writes from then on goes
        into a file nobody can open again, lost when the process ends. (A PostgreSQL
        archive has no file to lose.)"""
        if not isinstance(self.path, Path):
            return
        now = _identity(self.path)
        if now != self._identity:
            what = "was deleted" if now is None else "was replaced by another file"
            raise StoreError(
                f"the archive {self.path} {what} while pithcrawl had it open; stopping"
                " rather than writing into a file no one can open (start again to carry on"
                " in the file now at that path)"
            )

    async def size(self) -> int:
        """The archive's bytes on disk: the SQLite file with its WAL and shared memory,
        or the PostgreSQL tables with their indexes."""
        conn = self._live()
        if isinstance(conn, PgConnection):
            async with self._turn:
                with translated(self.path, "measure the archive"):
                    return await postgres.database_bytes(conn)
        assert isinstance(self.path, Path)
        return sqlite.file_bytes(self.path)

    async def integrity_check(self) -> list[str]:
        """SQLite's `PRAGMA integrity_check` lines, ["ok"] when the file is sound. A
        PostgreSQL server checks its own pages (with data checksums, when the cluster
        has them on): the answer there is that the archive's tables can be read."""
        async with self.read("check integrity") as s:
            if isinstance(self._live(), PgConnection):
                await s.all("SELECT count(*) FROM pithcrawl_schema")
                return ["ok"]
            rows = await s.all("PRAGMA integrity_check")
        return [str(r[0]) for r in rows]

    def _live(self) -> Connection:
        if self._conn is None:
            raise StoreError(f"the store {self.path} is closed")
        return self._conn

    def read(self, doing: str) -> _Read:
        """Statements that see everything written so far (including an open group):
        `async with db.read("what it does") as s`."""
        return _Read(self, doing)

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

    def write(self, doing: str) -> _Write:
        """A transaction (shared with the blocks queued behind it, see the class): it is
        committed when the block returns; if the block raises, it is rolled back.
        `async with db.write("what it does") as s`."""
        return _Write(self, doing)

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
                    if group.reads:
                        await _run_reads_in_thread(self._live(), group.reads, self.path)
                    await self._live().execute("COMMIT")
                self.commits += 1
            except BaseException as e:
                group.error = e
                await rollback(self._live())
                raise
            finally:
                group.ended.set()

    async def _fail_group(self, error: BaseException) -> None:
        group, self._group = self._group, None
        if group is not None:
            group.error = error
            with anyio.CancelScope(shield=True):
                await rollback(self._live())
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
                try:
                    for sql, rows in runs:
                        await conn.executemany(sql, rows)
                except BaseException as e:
                    await self._fail_group(e)  # its blocks must not wait, nor half-commit
                    raise
                return
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in runs:
                    await conn.executemany(sql, rows)
                await conn.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT: SQLite may leave the transaction open.
                await rollback(conn)
                raise
            self.commits += 1


class _Read:
    """`Database.read`'s block: a class, not a generator (a pass enters hundreds of
    thousands of them)."""

    __slots__ = ("_db", "_doing", "_translated")

    def __init__(self, db: Database, doing: str) -> None:
        self._db = db
        self._doing = doing

    async def __aenter__(self) -> Session:
        db = self._db
        await db._turn.acquire()
        try:
            await db._write_deferred()
            session = Session(db._live())
        except BaseException:
            try:
                await db._end_group_if_idle()
            finally:
                db._turn.release()
            raise
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        db = self._db
        try:
            await db._end_group_if_idle()
        finally:
            db._turn.release()
        if isinstance(exc, DB_ERRORS):
            raise StoreError(describe(db.path, self._doing, exc)) from exc


class _Write:
    """`Database.write`'s block (see `Database`: group commit)."""

    __slots__ = ("_db", "_doing", "_group")

    def __init__(self, db: Database, doing: str) -> None:
        self._db = db
        self._doing = doing
        self._group: _Group | None = None

    async def __aenter__(self) -> Session:
        db = self._db
        db._writers_waiting += 1
        try:
            await db._turn.acquire()
        except BaseException:
            db._writers_waiting -= 1
            if not db._writers_waiting and db._group is not None:
                # The group was left open for this block, which is not coming: end it.
                with anyio.CancelScope(shield=True):
                    async with db._turn:
                        await db._end_group_if_idle()
            raise
        db._writers_waiting -= 1
        try:
            with translated(db.path, self._doing):
                await db._write_deferred()
                self._group = await db._join_group()
        except BaseException:
            db._turn.release()
            raise
        return Session(db._live(), self._group)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        db, group = self._db, self._group
        assert group is not None  # entered
        try:
            with translated(db.path, self._doing):
                if exc is not None:
                    await db._fail_group(exc)
                    if isinstance(exc, DB_ERRORS):
                        raise StoreError(describe(db.path, self._doing, exc)) from exc
                    return  # the block's own exception goes on
                if group.full:
                    await db._end_group()
                else:
                    await db._end_group_if_idle()
        finally:
            db._turn.release()
        if not group.ended.is_set():
            await group.ended.wait()  # committed by the last block of the group
        if group.error is not None:
            raise StoreError(
                f"database {db.path}: cannot {self._doing}: another write of the same"
                f" transaction failed ({group.error})"
            ) from group.error


def _identity(path: Path) -> tuple[int, int] | None:
    """The file at `path` as the kernel knows it (device, inode), or None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Session:
    """The statements a `read` or `write` block runs, typed for the archive's queries."""

    def __init__(self, conn: Connection, group: _Group | None = None) -> None:
        self._conn = conn
        self._group = group

    def at_commit(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> Later[T]:
        """`fn(connection, *args)` in the database thread once every block of this write's
        group has run, just before it commits (see `Database`); its result is the
        returned `Later`'s `value` once the write block has returned. An exception `fn`
        raises fails no write: it is raised by `value`. Only in a `write` block."""
        if self._group is None:
            raise TypeError("at_commit is for write blocks")
        read: Later[T] = Later(lambda conn: fn(conn, *args, **kwargs))
        self._group.reads.append(read)
        return read

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return list(await self._conn.execute_fetchall(sql, params))

    async def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        # One trip to the database thread (execute_fetchall), not three (execute,
        # fetchone, close): every statement is a hand-off between threads.
        rows = list(await self._conn.execute_fetchall(sql, params))
        return rows[0] if rows else None

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute one statement; how many rows it changed (an INSERT's new id is read
        with `RETURNING id`, which both databases speak).

        One trip to the database thread: the cursor holds no result rows, so it is left
        to be freed with its object rather than closed with a second trip.
        """
        cur = await self._conn.execute(sql, params)
        return int(cur.rowcount)

    async def call(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """`fn(connection, *args)`, a plain function running its statements on the raw
        sqlite3 connection, in the database thread: one hand-off for all of them."""
        return await in_thread(self._conn, fn, *args, **kwargs)

    async def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        cur = await self._conn.executemany(sql, rows)
        return cur.rowcount
