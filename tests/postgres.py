"""A throwaway PostgreSQL cluster for the tests: one per test process, on a unix socket.

The server binaries (`initdb`, `pg_ctl`; PostgreSQL 15 on Debian) are found on PATH or
in /usr/lib/postgresql/*/bin; `make test` installs them when missing
(`.ci/install-postgresql`). They refuse to run as root, so as root the cluster runs as
the `postgres` user (`runuser`). Each test gets a schema of its own in the cluster's one
database (`Cluster.archive`): creating a schema takes milliseconds, and pithcrawl keeps
archives in two schemas of one database apart (their locks included).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from pithcrawl.location import PgUrl
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
