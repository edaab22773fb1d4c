"""A throwaway PostgreSQL cluster for the tests: one per test process, on a unix socket.

The server binaries (`initdb`, `pg_ctl`; PostgreSQL 15 on Debian) are found on PATH or
in /usr/lib/postgresql/*/bin; `make test` installs them when missing
(`.ci/install-postgresql`). They refuse to run as root, so as root the cluster runs as
the `postgres` user (`runuser`). Each test gets a schema of its own in the cluster's one
database (`Cluster.archive`): creating a schema takes milliseconds, and pithcrawl keeps
archives in two schemas of one database apart (their locks included).

Creating an archive in a schema is not cheap: its DDL costs the server about 0.15 s of
CPU, a few hundred times a run. So `archive_at`'s schemas are lent (`Cluster.lend`) and
taken back (`Cluster.give_back`): a schema whose archive still has the structure of a
new one, with nothing connected to the cluster, is emptied to exactly what a new archive
holds (its rows and sequences copied from one pithcrawl made) and lent again. Anything
else is left where it is, and the next test gets a new schema.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from pithcrawl.location import PgUrl
from pithcrawl.store import Store
from pithcrawl.store.dialect import WRITER_PROCESS_LOCK
from pithcrawl.store.lock import WriterLock
from pithcrawl.store.postgres import PgRaw, _adapted, _row_factory


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return candidate
    raise RuntimeError(
        f"the PostgreSQL tests need {name} (Debian: apt-get install postgresql;"
        " `make test` installs it)"
    )


class Cluster:
    """initdb + pg_ctl start in a temporary directory; `stop` removes it all."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pithcrawl-pg-"))
        self.data = self.dir / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._names = itertools.count(1)
        self._free: list[str] = []
        """Schemas holding an emptied archive, free to lend again."""
        self._pristine: tuple[str, str] | None = None
        """A schema holding a new archive as pithcrawl makes it, and its structure."""
        self._run(
            _binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        self._options = (
            f"-k {self.dir} -c listen_addresses='' -c fsync=off -c synchronous_commit=off"
            " -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            _binary("pg_ctl"), "-D", str(self.data), "-o", self._options,
            "-l", str(self.dir / "log"), "-w", "start",
        )  # fmt: skip
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE pithcrawl")

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as, *argv], check=True, capture_output=True, timeout=120)

    def url(self, database: str = "pithcrawl", schema: str | None = None) -> str:
        url = f"postgresql:///{database}?host={self.dir}&user=postgres"
        if schema is not None:
            url += f"&options=-csearch_path%3D{schema}"
        return url

    def archive(self) -> PgUrl:
        """A new, empty schema of its own: where a test's archive goes."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return PgUrl(self.url(schema=name))

    def lend(self) -> PgUrl:
        """Where a test's archive goes: a schema taken back from an earlier test (holding
        what a new archive holds) when one is free, else a new empty one."""
        if self._free:
            return PgUrl(self.url(schema=self._free.pop()))
        return self.archive()

    def give_back(self, where: PgUrl) -> None:
        """Take back the schema `where` names, to lend again once emptied: only while
        nothing else is connected to the cluster (a process the test left running could
        still write to it) and its archive has the structure of a new one. Not taken
        back (a lock held, the server restarting): left where it is."""
        schema = _schema_of(where)
        pristine, structure = self._pristine or self._make_pristine()
        try:
            with psycopg.connect(self.url(), autocommit=True) as conn:
                if not _alone(conn) or _structure(conn, schema) != structure:
                    return  # never made an archive, or the test changed its tables
                with conn.transaction():
                    conn.execute("SET LOCAL lock_timeout = '1s'")
                    conn.execute("SET LOCAL session_replication_role = replica")  # no FKs
                    for (table,) in conn.execute(_TABLES, {"s": pristine}).fetchall():
                        conn.execute(f"DELETE FROM {schema}.{table}")
                        conn.execute(
                            f"INSERT INTO {schema}.{table} SELECT * FROM {pristine}.{table}"
                        )
                    for name, value, called in conn.execute(_SEQUENCES, {"s": pristine}):
                        conn.execute(
                            "SELECT setval(%s::regclass, %s, %s)",
                            [f"{schema}.{name}", value, called],
                        )
        except psycopg.Error:
            return
        self._free.append(schema)

    def _make_pristine(self) -> tuple[str, str]:
        """A schema holding a new archive (pithcrawl's `Store.open`), and its structure."""
        where = self.archive()
        failed: list[BaseException] = []

        def made() -> None:
            async def opened() -> None:
                store = await Store.open(where)
                await store.close()

            try:
                asyncio.run(opened())
            except BaseException as e:
                failed.append(e)

        # In a thread of its own: the caller may be inside a running event loop.
        t = threading.Thread(target=made)
        t.start()
        t.join()
        if failed:
            raise failed[0]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            self._pristine = (_schema_of(where), _structure(conn, _schema_of(where)))
        return self._pristine

    def restart(self) -> None:
        """Stop the server and start it again (every session it had is gone)."""
        self._run(
            _binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-o", self._options,
            "-l", str(self.dir / "log"), "-w", "restart",
        )  # fmt: skip

    def stop(self) -> None:
        try:
            self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


_TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = %(s)s ORDER BY 1"
_SEQUENCES = (
    "SELECT sequencename, coalesce(last_value, start_value), last_value IS NOT NULL"
    " FROM pg_sequences WHERE schemaname = %(s)s ORDER BY 1"
)
# What a schema's archive is made of, its own name taken out: relations and their
# columns, constraints, indexes, defaults, functions and triggers.
_STRUCTURE = """
SELECT coalesce(string_agg(replace(x, %(s)s || '.', ''), E'\n' ORDER BY x), '') FROM (
    SELECT concat_ws(' ', c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod),
                     a.attnotnull, a.attcollation, pg_get_expr(d.adbin, d.adrelid)) AS x
    FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
    LEFT JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef AS d ON d.adrelid = c.oid AND d.adnum = a.attnum
    WHERE n.nspname = %(s)s
    UNION ALL
    SELECT concat_ws(' ', conname, conrelid::regclass::text, pg_get_constraintdef(c.oid))
    FROM pg_constraint AS c JOIN pg_namespace AS n ON n.oid = c.connamespace WHERE n.nspname = %(s)s
    UNION ALL
    SELECT indexdef FROM pg_indexes WHERE schemaname = %(s)s
    UNION ALL
    SELECT pg_get_functiondef(p.oid)
    FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace WHERE n.nspname = %(s)s
    UNION ALL
    SELECT concat_ws(' ', t.tgname, t.tgenabled, c.relname)
    FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = %(s)s AND NOT t.tgisinternal
) AS parts
"""


def _structure(conn: psycopg.Connection[Any], schema: str) -> str:
    row = conn.execute(_STRUCTURE, {"s": schema}).fetchone()
    return str(row[0]) if row else ""


def _alone(conn: psycopg.Connection[Any]) -> bool:
    """Whether `conn` is the cluster's only client session (a session just closed ends
    its server process a moment later: waited for, briefly)."""
    for _ in range(20):
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
        if row and row[0] == 0:
            return True
        time.sleep(0.01)
    return False


def _schema_of(where: PgUrl) -> str:
    """The schema `Cluster.url` put in `where`'s search_path."""
    return where.url.rsplit("search_path%3D", 1)[1]


@contextmanager
def raw(where: Path | PgUrl) -> Iterator[Any]:
    """A plain connection to the archive at `where`, to look behind the store's back (or
    tamper): sqlite3's, or for PostgreSQL one that reads the store's SQL the same way
    (`postgres.PgRaw`, autocommitting)."""
    if isinstance(where, PgUrl):
        conn = psycopg.connect(
            where.url, autocommit=True, cursor_factory=psycopg.RawCursor, row_factory=_row_factory
        )
        _adapted(conn)
        try:
            yield PgRaw(conn)
        finally:
            conn.close()
        return
    lite = sqlite3.connect(where, isolation_level=None)
    try:
        yield lite
    finally:
        lite.close()


@contextmanager
def writer_lock_held(where: Path | PgUrl) -> Iterator[None]:
    """The archive's crawling lock, held by someone else (another process's `run`) while
    the block runs: the lock file's flock, or PostgreSQL's session lock."""
    if isinstance(where, Path):
        lock = WriterLock.acquire(where)
        try:
            yield
        finally:
            lock.release()
        return
    with psycopg.connect(where.url, autocommit=True) as conn:
        conn.execute(f"SELECT pg_advisory_lock({WRITER_PROCESS_LOCK}, hashtext(current_schema()))")
        yield


def shown(where: Path | PgUrl) -> str:
    """`where` as a `--db` argument: a path, or the URL with its password."""
    return str(where) if isinstance(where, Path) else where.url
