"""The PostgreSQL boundary: opening an archive in a PostgreSQL database, creating its
schema, and the connection the store's queries run on.

Driver: psycopg 3, its synchronous connection, used from one worker thread at a time,
exactly as aiosqlite uses sqlite3. The store runs batches of statements as plain
functions in the database's thread (`Session.call`, one hand-off for a whole fetch's
writes); with psycopg's synchronous API the very same functions run on PostgreSQL, and
no query exists twice. (asyncpg would need every batch rewritten as awaits, one round
trip of the event loop per statement.) `PgConnection` is the small part of aiosqlite's
face the store uses; `PgRaw` is the part of sqlite3's the batches use. Statements are
translated by `dialect`; a psycopg error becomes `BackendError`, which the store turns
into `StoreError` where it turns sqlite3's.

Writers take turns as on SQLite: every write transaction takes one transaction-level
advisory lock (`dialect.BEGIN`), and the archive's crawling process holds a session
lock (`dialect.WRITER_PROCESS_LOCK`) in place of SQLite's `DB.lock` file.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache, partial
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar
from urllib.parse import quote

import anyio

from pithcrawl.errors import StoreCorrupt, StoreError, StoreLocked, StoreMisnamed
from pithcrawl.location import PgUrl
from pithcrawl.store.dialect import NODE_LOCK, WRITER_PROCESS_LOCK, begin, translate
from pithcrawl.store.postgres_schema import BASE_VERSION, MIGRATIONS, SCHEMA, TABLES
from pithcrawl.store.schema import SCHEMA_VERSION
from pithcrawl.store.sqlite import BUSY_TIMEOUT_MS

#: How long a session may sit in a transaction doing nothing before the server ends it
#: (and lets go of its locks): well under `BUSY_TIMEOUT_MS`.
IDLE_IN_TRANSACTION_MS = BUSY_TIMEOUT_MS * 2 // 3

P = ParamSpec("P")
T = TypeVar("T")


class BackendError(Exception):
    """A PostgreSQL error, as text (psycopg's own exceptions stay in this module)."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class Row(tuple[Any, ...]):
    """A result row read as sqlite3.Row reads: by position or by column name."""

    _index: ClassVar[dict[str, int]] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._index[key])
            except KeyError:
                raise IndexError(f"no column {key!r}") from None  # as sqlite3.Row
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


@lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)  # as sqlite3.Row: the first of two equal names
    return type("Row", (Row,), {"_index": index})


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Any]:
    description = cursor.description
    if description is None:
        return tuple
    return _row_class(tuple(d.name for d in description))


def _error(e: Exception) -> BackendError:
    text = str(e).strip() or type(e).__name__
    return BackendError(text.splitlines()[0] if text else text, getattr(e, "sqlstate", None))


class PgRaw:
    """The part of sqlite3.Connection's face the store's batches use, on one psycopg
    connection; used from one thread at a time."""

    def __init__(self, conn: Any, reopen: Callable[[], PgRaw] | None = None) -> None:
        self._conn = conn
        self._reopen = reopen
        """How to connect again, for a read-only connection (see `execute`)."""
        self.schema_key = 0
        """`hashtext` of the archive's schema: the second half of its locks' keys."""
        self.writer_locks: list[str] = []
        """The session locks this connection holds (the statements letting go of them)."""
        """The key of the crawling process's lock, while this connection holds it."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        query, values = _bound(sql, params)
        try:
            return _Results(self._conn.execute(query, values if values else None))
        except Exception as e:
            if self._reopen is None or not (self._conn.closed or self._conn.broken):
                raise _error(e) from e
        # A read-only connection (`serve`, the reports) whose server restarted, or which
        # it dropped: each of its statements is a transaction of its own, so it connects
        # again and runs the statement once more (a writer's transaction cannot be).
        self._conn = self._connect_again()
        try:
            return _Results(self._conn.execute(query, values if values else None))
        except Exception as e:
            raise _error(e) from e

    def _connect_again(self) -> Any:
        assert self._reopen is not None
        with suppress(Exception):
            self._conn.close()
        try:
            return self._reopen()._conn
        except (_Refused, _Locked) as e:
            raise BackendError(str(e)) from e

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        """Each row's statement, in order (rows with the same NULLs share one call)."""
        import psycopg  # noqa: PLC0415 (only for PostgreSQL: `sync` on SQLite need not load it)

        cur = self._conn.cursor()
        total = 0
        try:
            for query, batch in _batches(sql, rows):
                cur.executemany(query, batch)
                total += max(cur.rowcount, 0)
        except psycopg.Error as e:
            raise _error(e) from e
        return _Done(total)

    def close(self) -> None:
        # The lock is let go of first, and waited for: a server ends a closed session's
        # backend (and its locks) a moment after the client has gone, and the next
        # crawl starting right away must not find it held.
        try:
            while self.writer_locks and not self._conn.closed:
                self._conn.execute(self.writer_locks.pop())
        except Exception:  # noqa: S110 (closing ends the session, and its locks, anyway)
            pass
        finally:
            self._conn.close()


class _Results:
    """A cursor's rows, its errors as `BackendError` (in pipeline mode a statement's
    error comes with its rows, not when it is sent)."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def fetchone(self) -> Any:
        try:
            return self._cursor.fetchone()
        except Exception as e:
            raise _error(e) from e

    def fetchall(self) -> list[Any]:
        try:
            return list(self._cursor.fetchall())
        except Exception as e:
            raise _error(e) from e

    def __iter__(self) -> Any:
        return iter(self.fetchall())


@dataclass
class _Done:
    rowcount: int
    lastrowid: None = None


def _bound(sql: str, params: Sequence[Any]) -> tuple[str, list[Any]]:
    """The translated statement with the NULL parameters written in as NULL (PostgreSQL
    cannot type a parameter that is only ever compared with IS NULL), and the rest. A
    NUL character in text, which PostgreSQL's text cannot hold, goes in as the visible
    escape `\\x00` (as `text.storable` keeps what a mirror says, on either database)."""
    nulls = tuple(i for i, p in enumerate(params) if p is None)
    values = [
        p.replace("\x00", "\\x00") if type(p) is str and "\x00" in p else p
        for p in params
        if p is not None
    ]
    return _with_nulls(sql, nulls, len(params)), values


@lru_cache(maxsize=4096)
def _with_nulls(sql: str, nulls: tuple[int, ...], count: int) -> str:
    text = translate(sql)
    if not nulls:
        return text
    numbers: dict[int, str] = {}
    kept = 0
    for i in range(count):
        if i in nulls:
            numbers[i + 1] = "NULL"
        else:
            kept += 1
            numbers[i + 1] = f"${kept}"
    return re.sub(r"\$(\d+)", lambda m: numbers.get(int(m.group(1)), m.group(0)), text)


def _batches(sql: str, rows: Sequence[Sequence[Any]]) -> list[tuple[str, list[list[Any]]]]:
    out: list[tuple[str, list[list[Any]]]] = []
    for row in rows:
        query, values = _bound(sql, row)
        if out and out[-1][0] == query:
            out[-1][1].append(values)
        else:
            out.append((query, [values]))
    return out


class PgConnection:
    """The part of aiosqlite.Connection's face the store uses, for one psycopg
    connection: each call runs in a worker thread, one at a time, and runs to its end
    even when its caller is cancelled (as aiosqlite's)."""

    def __init__(self, raw: PgRaw) -> None:
        self.raw = raw
        self._limiter = anyio.CapacityLimiter(1)

    async def call(
        self, fn: Callable[Concatenate[PgRaw, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await anyio.to_thread.run_sync(
            partial(fn, self.raw, *args, **kwargs), limiter=self._limiter
        )

    async def call_pipelined(
        self, fn: Callable[Concatenate[PgRaw, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`call`, with the statements of `fn` sent in pipeline mode: one that returns no
        rows is sent without waiting for the server's answer (a fetch of rows, or the
        end, waits for all sent before it). A fetch's write is a dozen statements: half
        of their round trips go."""
        return await anyio.to_thread.run_sync(
            partial(_pipelined, fn, self.raw, *args, **kwargs), limiter=self._limiter
        )

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> _Done:
        return await self.call(_execute, sql, params)

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self.call(_fetchall, sql, params)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> _Done:
        done: _Done = await self.call(PgRaw.executemany, sql, rows)
        return done

    async def close(self) -> None:
        await self.call(PgRaw.close)


def _pipelined(fn: Callable[..., T], raw: PgRaw, *args: Any, **kwargs: Any) -> T:
    if raw._reopen is not None:
        # A reader's batch needs each answer before its next statement anyway, and it
        # may connect again halfway (`PgRaw.execute`), which a pipeline cannot.
        return fn(raw, *args, **kwargs)
    try:
        with raw._conn.pipeline():
            return fn(raw, *args, **kwargs)
    except Exception as e:
        if isinstance(e, BackendError) or not _is_psycopg_error(e):
            raise
        raise _error(e) from e


def _is_psycopg_error(e: Exception) -> bool:
    return type(e).__module__.startswith("psycopg")


def _execute(raw: PgRaw, sql: str, params: Sequence[Any]) -> _Done:
    if sql == "COMMIT":
        try:
            status = raw._conn.execute("COMMIT").statusmessage
        except Exception as e:
            raise _error(e) from e
        if status != "COMMIT":
            # PostgreSQL answers COMMIT of a transaction a statement of which failed
            # with a ROLLBACK, and no error: nothing of it was written.
            raise BackendError(
                f"the transaction was rolled back at its commit ({status}):"
                " a statement of it had failed"
            )
        return _Done(0)
    if sql == "BEGIN IMMEDIATE":
        try:
            raw._conn.execute(begin(raw.schema_key))
        except Exception as e:
            # As SQLite's failed BEGIN IMMEDIATE: no transaction is left open (the lock
            # wait that timed out left this one aborted).
            with suppress(Exception):
                raw._conn.execute("ROLLBACK")
            raise _error(e) from e
        return _Done(0)
    cur = raw.execute(sql, params)
    return _Done(cur.rowcount)


def _fetchall(raw: PgRaw, sql: str, params: Sequence[Any]) -> list[Any]:
    cur = raw.execute(sql, params)
    try:
        return list(cur.fetchall())
    except Exception as e:
        raise _error(e) from e


# -- opening ---------------------------------------------------------------------------


def _adapted(conn: Any) -> None:
    """Values as the store's SQLite columns hold them: a bool is 0 or 1, a str is text
    (not psycopg's untyped default), a NUMERIC (what sum() of integers gives) an int."""
    from psycopg import adapt, postgres  # noqa: PLC0415 (as above)
    from psycopg.types.string import StrDumper  # noqa: PLC0415

    int8 = postgres.types["int8"].oid

    class BoolAsInt(adapt.Dumper):
        oid = int8

        def dump(self, obj: bool) -> bytes:
            return b"1" if obj else b"0"

    class Number(adapt.Loader):
        def load(self, data: Any) -> int | float:
            value = Decimal(bytes(data).decode())
            return int(value) if value == value.to_integral_value() else float(value)

    conn.adapters.register_dumper(str, StrDumper)
    conn.adapters.register_dumper(bool, BoolAsInt)
    conn.adapters.register_loader("numeric", Number)


def _connect(url: str, readonly: bool, exclusive: bool, node: str | None = None) -> PgRaw:
    import psycopg  # noqa: PLC0415 (only for PostgreSQL: `sync` on SQLite need not load it)

    try:
        conn = psycopg.connect(
            url,
            autocommit=True,
            cursor_factory=psycopg.RawCursor,
            row_factory=_row_factory,
            application_name=_application_name(),
            connect_timeout=30,
        )
    except psycopg.Error as e:
        raise _error(e) from e
    reopen = partial(_connect, url, readonly, exclusive, node) if readonly else None
    raw = PgRaw(conn, reopen)
    try:
        _adapted(conn)
        conn.execute("SET TIME ZONE 'UTC'")
        # The compatibility functions' bodies are read with the session's rules: a
        # database set to the old backslash escapes must not change what they mean.
        conn.execute("SET standard_conforming_strings = on")
        # As SQLite's busy timeout: a writer waits this long for another's turn, then
        # fails saying so, instead of hanging behind a stuck one.
        conn.execute(f"SET lock_timeout = '{BUSY_TIMEOUT_MS}ms'")
        # A transaction left open by a process that stopped (SIGSTOP, a paused machine,
        # a network cut off) holds the archive's write lock: the server ends that
        # session well before the others' lock timeout, so one stalled node costs the
        # others a wait, never their crawl. pithcrawl's own transactions never idle
        # this long (their statements follow each other in one thread).
        conn.execute(f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_MS}ms'")
        # The counterpart of the SQLite archive's `synchronous = NORMAL`: a commit does
        # not wait for its WAL to reach the disk (this session's only). A crash of the
        # server can lose the last fraction of a second of fetches, which are simply
        # fetched again; nothing is ever half-written. Pairs come twice as fast.
        conn.execute("SET synchronous_commit = off")
        if readonly:
            conn.execute("SET default_transaction_read_only = on")
        schema = _schema(conn)
        raw.schema_key = int(_one(conn, "SELECT hashtext($1)", schema))
        if exclusive:
            _lock_archive(raw, schema, node)
        _prepare(raw, readonly)
    except psycopg.Error as e:
        conn.close()
        raise _error(e) from e
    except BaseException:
        conn.close()
        raise
    return raw


def _lock_archive(raw: PgRaw, schema: str, node: str | None) -> None:
    """Take the crawling process's session locks: the archive's shared and the node's
    name alone (`node`: a crawling node; several of other names may share the archive),
    or the archive's alone (None: `migrate`). `_Locked`, naming a holder, when taken."""
    conn = raw._conn
    archive = (WRITER_PROCESS_LOCK, raw.schema_key)
    if node is None:
        _try_lock(raw, archive, "", "another pithcrawl is crawling {where} ({holder})")
        return
    _try_lock(
        raw, archive, "_shared", "another pithcrawl has {where} to itself ({holder}: a migrate)"
    )
    key = int(_one(conn, "SELECT hashtext($1)", f"{schema}/{node}"))
    _try_lock(
        raw,
        (NODE_LOCK, key),
        "",
        f"another pithcrawl is crawling {{where}} as node {node} ({{holder}}): each process"
        " crawling an archive needs a [node] name of its own (the default is the host name)",
    )


def _try_lock(raw: PgRaw, lock: tuple[int, int], mode: str, taken: str) -> None:
    conn = raw._conn
    args = f"{lock[0]}, {lock[1]}"
    if _one(conn, f"SELECT pg_try_advisory_lock{mode}({args})"):
        raw.writer_locks.append(f"SELECT pg_advisory_unlock{mode}({args})")
        return
    holders = [
        name or "another process"
        for (name,) in conn.execute(
            "SELECT DISTINCT a.application_name FROM pg_locks AS l"
            " JOIN pg_stat_activity AS a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.database = a.datid"
            " AND l.classid::bigint = $1 AND l.objid::bigint = $2"
            " ORDER BY 1",
            [lock[0], lock[1] & 0xFFFFFFFF],
        ).fetchall()
    ] or ["another process"]
    # Only an archive's own lock tells the same archive open twice under two names.
    ours = mode == "" and lock[0] == WRITER_PROCESS_LOCK and _application_name() in holders
    raise _Locked(", ".join(holders[:3]), ours=ours, taken=taken)


def _application_name() -> str:
    """How this process is named to the server (and in `StoreLocked` messages): its pid
    first, so that the 63 characters kept never lose it."""
    return f"pithcrawl pid {os.getpid()} on {socket.gethostname()}"[:63]


def _one(conn: Any, sql: str, *params: Any) -> Any:
    row = conn.execute(sql, list(params) or None).fetchone()
    return None if row is None else row[0]


def _schema(conn: Any) -> str:
    """The schema the archive is in: where its tables are, or for a new one, where they
    will be created (the first schema of `search_path` that exists). Refused when the
    two differ: a crawl there would lock one schema and write another's tables."""
    for name in _search_path(conn):
        if (
            _one(
                conn,
                "SELECT has_schema_privilege(oid, 'USAGE') FROM pg_namespace WHERE nspname = $1",
                name,
            )
            is False
        ):
            raise _Refused(
                f"has a schema {name!r} on its search_path that the role may not use"
                f" (GRANT USAGE ON SCHEMA {_ident(name)} TO the role, or take it off"
                " the search_path): the archive may be in it"
            )
    current = _one(conn, "SELECT current_schema()")
    if current is None:
        path = _one(conn, "SELECT current_setting('search_path')")
        raise _Refused(
            f"has none of the schemas of its search_path ({path}): create the schema"
            " first (CREATE SCHEMA …), or name one that exists"
        )
    found = _one(
        conn,
        "SELECT n.nspname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass('pithcrawl_schema')",
    )
    if found is not None and found != current:
        raise _Refused(
            f"keeps its archive in schema {found!r}, but its search_path puts {current!r}"
            f" first: put {found!r} first (options=-csearch_path%3D{quote(_ident(found))})",
            corrupt=False,
        )
    return str(current)


def _search_path(conn: Any) -> list[str]:
    """The schema names of the session's search_path, as written ("$user" is the role)."""
    names = []
    for item in str(_one(conn, "SELECT current_setting('search_path')")).split(","):
        name = item.strip()
        if name.startswith('"') and name.endswith('"') and len(name) > 1:
            name = name[1:-1].replace('""', '"')
        elif name:
            name = name.lower()
        if name == "$user":
            name = str(_one(conn, "SELECT current_user"))
        if name:
            names.append(name)
    return names


def _ident(name: str) -> str:
    """`name` as SQL writes a schema's name (quoted unless plain lower case)."""
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


class _Locked(Exception):
    def __init__(self, holder: str, *, ours: bool, taken: str = "") -> None:
        super().__init__(holder)
        self.ours = ours
        """Whether the holder is this process (the same archive under another name)."""
        self.taken = taken or "another pithcrawl is crawling {where} ({holder})"
        """What the holder does, `{where}` standing for the archive, `{holder}` for it."""


class _Refused(Exception):
    def __init__(self, message: str, corrupt: bool = False, *, misnamed: bool = False) -> None:
        super().__init__(message)
        self.corrupt = corrupt
        self.misnamed = misnamed
        """No archive there (`StoreMisnamed`): the operator named the wrong place."""


def _prepare(raw: PgRaw, readonly: bool) -> None:
    """Create the schema in a database that has none; refuse one this pithcrawl cannot
    read. Under the write lock: two processes opening a new database create it once."""
    conn = raw._conn
    if readonly:
        _check_version(_version(conn), readonly=True)
        return
    conn.execute(begin(raw.schema_key))
    try:
        version = _version(conn)
        if version is None:
            found = [
                t
                for (t,) in conn.execute(
                    "SELECT c.relname FROM pg_class AS c"
                    " WHERE c.relname = ANY($1) AND pg_table_is_visible(c.oid)",
                    [list(TABLES)],
                ).fetchall()
            ]
            if found:
                raise _Refused(
                    f"holds {', '.join(sorted(found)[:5])} but no pithcrawl schema version:"
                    " not an archive pithcrawl made, or damaged; use another database",
                    corrupt=True,
                )
            conn.execute(SCHEMA)
            conn.execute("INSERT INTO pithcrawl_schema (version) VALUES ($1)", [BASE_VERSION])
            version = BASE_VERSION
        _check_version(version, readonly=False)
        for number in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute(MIGRATIONS[number])
            conn.execute("UPDATE pithcrawl_schema SET version = $1", [number])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _version(conn: Any) -> int | None:
    if _one(conn, "SELECT to_regclass('pithcrawl_schema')") is None:
        return None
    columns = {
        str(name)
        for (name,) in conn.execute(
            "SELECT attname FROM pg_attribute"
            " WHERE attrelid = to_regclass('pithcrawl_schema') AND attnum > 0"
        ).fetchall()
    }
    if "version" not in columns:
        raise _Refused(
            "holds a table pithcrawl_schema that pithcrawl did not make; use another"
            " database or schema",
            corrupt=True,
        )
    row = conn.execute("SELECT version FROM pithcrawl_schema").fetchone()
    return None if row is None else int(row[0])


def _check_version(version: int | None, *, readonly: bool) -> None:
    if version is None:
        raise _Refused("holds no pithcrawl archive; run `pithcrawl sync` first", misnamed=True)
    if version > SCHEMA_VERSION:
        raise _Refused(
            f"has schema version {version}, newer than this pithcrawl ({SCHEMA_VERSION});"
            " upgrade pithcrawl"
        )
    if version < BASE_VERSION:
        raise _Refused(f"has schema version {version}, which this pithcrawl cannot migrate")
    if readonly and version < SCHEMA_VERSION:
        raise _Refused(
            f"has schema version {version}, older than this pithcrawl ({SCHEMA_VERSION});"
            " open it for writing once to upgrade it"
        )


async def connect(
    where: PgUrl, *, readonly: bool, exclusive: bool, node: str | None = None
) -> PgConnection:
    """Open the archive in the database `where` names (creating its schema unless
    `readonly`); `exclusive` takes the crawling process's locks (`StoreLocked`): as
    `node` (the archive shared with the other nodes), or alone (None)."""
    try:
        raw = await anyio.to_thread.run_sync(_connect, where.url, readonly, exclusive, node)
    except _Locked as e:
        if e.ours:
            locked = StoreLocked(
                f"{where} is held by this very process: it is an archive this command"
                " already has open, under another name"
            )
            locked.ours = True
            raise locked from None
        raise StoreLocked(e.taken.format(where=where, holder=e)) from None
    except _Refused as e:
        error = StoreCorrupt if e.corrupt else StoreMisnamed if e.misnamed else StoreError
        raise error(f"database {where} {e}") from None
    except BackendError as e:
        # No such database or role, a password refused: the configuration's to fix.
        misnamed = e.sqlstate in {"3D000", "28000", "28P01"} or bool(_MISNAMED.search(str(e)))
        error = StoreMisnamed if misnamed else StoreError
        raise error(describe(where, "open the database", e)) from e
    return PgConnection(raw)


#: What the server answers a connection for a database or role it does not have, or a
#: password it refuses (libpq reports it with no SQLSTATE).
_MISNAMED = re.compile(
    r'FATAL:\s+(?:(?:database|role) ".*" does not exist|password authentication failed)'
)


def describe(where: PgUrl, doing: str, e: BackendError) -> str:
    """A message for a PostgreSQL error that says what we were doing."""
    text = str(e)
    if e.sqlstate == "55P03":
        return (
            f"database {where} stayed locked by another pithcrawl for more than"
            f" {BUSY_TIMEOUT_MS // 1000}s: cannot {doing}"
        )
    if e.sqlstate == "25006":
        return f"database {where} is opened read-only: cannot {doing}"
    if e.sqlstate is None or e.sqlstate.startswith("08"):
        return f"cannot connect to database {where}: {text}"
    if e.sqlstate == "42501":
        return (
            f"database {where}: cannot {doing}: {text} (the role needs to own the archive's"
            " schema, or CREATE on it to make a new archive there; a read-only command"
            " needs USAGE on it and SELECT on its tables)"
        )
    return f"database {where}: cannot {doing}: {text}"


async def database_bytes(conn: PgConnection) -> int:
    """The size of the archive's tables, indexes and TOAST data."""
    rows = await conn.execute_fetchall(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class AS c"
        " WHERE c.relname IN (SELECT value FROM json_each(?)) AND c.relkind = 'r'"
        " AND pg_table_is_visible(c.oid)",
        (_json_list(TABLES),),
    )
    return int(rows[0][0])


def _json_list(names: Sequence[str]) -> str:
    return json.dumps(list(names))
