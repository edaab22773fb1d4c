"""Shared fixtures: the real signed data, a test registry key, a fixed clock."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from builder import BundleBuilder, TestSigner
from mirror import TestMirror
from postgres import Cluster

from pithcrawl.config import host_name
from pithcrawl.keys import TrustSet, load_key
from pithcrawl.location import PgUrl

REAL = Path(__file__).parent / "fixtures" / "real"
REAL_SUFFIX = "2SZ3GMWFCMMCUPZJQTONOWSJZ2"
#: A moment after every fixture was built, before any test bundle's clock runs out.
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
#: The vantage a node of the tests' configurations crawls from (`[node]` unset: its host).
VANTAGE = host_name()


@pytest.fixture(scope="session")
def real_bundle_bytes() -> bytes:
    return (REAL / f"{REAL_SUFFIX}.bundle.json").read_bytes()


@pytest.fixture(scope="session")
def real_state_bytes() -> bytes:
    return (REAL / f"{REAL_SUFFIX}.state.json").read_bytes()


@pytest.fixture(scope="session")
def real_trust() -> TrustSet:
    return TrustSet([load_key(json.loads((REAL / "pith-v1-2026-05.key.json").read_bytes()))])


@pytest.fixture(scope="session")
def signer() -> TestSigner:
    return TestSigner("test-key-1")


@pytest.fixture(scope="session")
def test_trust(signer: TestSigner) -> TrustSet:
    return TrustSet([load_key(signer.public_key())])


@pytest.fixture
def builder(signer: TestSigner) -> BundleBuilder:
    """A record with a record_created and two graph snapshots."""
    b = BundleBuilder(signer)
    b.add_event()
    b.add_event()
    return b


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """This test process's PostgreSQL cluster (started on first use)."""
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def archive_at(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | PgUrl]:
    """Where a test's archive goes, once on each backend: a SQLite file, or a schema of
    a PostgreSQL database (empty, or holding what a new archive holds: `Cluster.lend`)."""
    if request.param == "sqlite":
        yield tmp_path / "archive.db"
        return
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    where = cluster.lend()
    yield where
    cluster.give_back(where)


@pytest.fixture
def mirror() -> Iterator[TestMirror]:
    """A loopback TestMirror in its own event-loop thread, for tests that run the CLI."""
    with in_thread(TestMirror()) as m:
        yield m


M = TypeVar("M", bound=TestMirror)


@contextmanager
def in_thread(m: M) -> Iterator[M]:
    """Serve `m` from an event loop of its own thread while the block runs."""
    started = threading.Event()
    stop = threading.Event()

    async def serve() -> None:
        async with m:
            started.set()
            await anyio.to_thread.run_sync(stop.wait)

    t = threading.Thread(target=anyio.run, args=(serve,), daemon=True)
    t.start()
    assert started.wait(10), "the loopback mirror did not start"
    try:
        yield m
    finally:
        stop.set()
        t.join(10)


def load_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def db_setting(db: Path | PgUrl | None) -> str:
    """The `db` value of a test configuration: the archive's path or URL."""
    if db is None:
        return "archive.db"
    return db.url if isinstance(db, PgUrl) else str(db)


def write_config(
    tmp_path: Path, signer: TestSigner, *bases: str, db: Path | PgUrl | None = None
) -> Path:
    """A config file trusting `signer`'s key, with one mirror per base URL (m0, m1, …),
    and its archive at `db` (`archive_at`: either backend), else `archive.db` beside it."""
    key = tmp_path / "test.key.json"
    key.write_text(json.dumps(signer.public_key()))
    mirrors = "".join(
        f'[[mirrors]]\nname = "m{i}"\nbase_url = "{b}"\n\n' for i, b in enumerate(bases)
    )
    cfg = tmp_path / "pithcrawl.toml"
    cfg.write_text(
        f"db = {json.dumps(db_setting(db))}\n"
        f'[trust]\nkeys = ["{key.name}"]\nclock_skew = "3650d"\n'
        f'[crawl]\ntimeout = "5s"\n\n{mirrors}'
    )
    return cfg
