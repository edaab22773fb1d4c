"""The archive: migrations, locking, blobs, atomic fetch records, reads (real SQLite files)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from conftest import NOW, REAL_SUFFIX
from hypothesis import given
from hypothesis import strategies as st
from postgres import raw

from pithcrawl.errors import StoreCorrupt, StoreError, StoreLocked
from pithcrawl.findings import Finding, finding
from pithcrawl.keys import TrustSet
from pithcrawl.location import PgUrl
from pithcrawl.store import (
    SCHEMA_VERSION,
    FetchOutcome,
    Mirror,
    NewEvent,
    Store,
)
from pithcrawl.store.blobs import packed, unpack
from pithcrawl.store.connection import Database
from pithcrawl.store.rows import db_time
from pithcrawl.timestamps import format_timestamp

pytestmark = pytest.mark.anyio

SUFFIX_B = "A" * 26
SUFFIX_C = "B" * 26
URL = f"https://pith.example/pith/{REAL_SUFFIX}/bundle.json"


def mirror(name: str) -> Mirror:
    return Mirror(
        name=name,
        base_url=f"https://{name}.example",
        bundle_pattern="{base_url}/pith/{suffix}/bundle.json",
        state_pattern="{base_url}/pith/{suffix}/state.json",
        origin="config",
        added_at=NOW,
    )


def ok(body: bytes, *, at: int = 0, mirror: str = "main", **kw: object) -> FetchOutcome:
    """A 200 of `body`, `at` minutes after NOW."""
    fields: dict[str, object] = {
        "suffix": REAL_SUFFIX,
        "mirror": mirror,
        "kind": "bundle",
        "url": URL,
        "fetched_at": NOW + timedelta(minutes=at),
        "status": 200,
        "body": body,
        "etag": f'"{at}"',
        "next_due": NOW + timedelta(minutes=at, hours=6),
        "trusted": True,
        "built_at": "2026-11-01T00:00:00Z",
        "event_count": 3,
    }
    fields.update(kw)
    return FetchOutcome(**fields)  # type: ignore[arg-type]  # a test's keyword bag


def failed(at: int, error: str = "timeout") -> FetchOutcome:
    return FetchOutcome(
        suffix=REAL_SUFFIX,
        mirror="main",
        kind="bundle",
        url=URL,
        fetched_at=NOW + timedelta(minutes=at),
        error=error,
        next_due=NOW + timedelta(minutes=at + 5),
    )


def event(kind: str = "event_added", severity: str = "info", at: int = 0) -> NewEvent:
    return NewEvent(
        kind=kind,
        severity=severity,
        at=NOW + timedelta(minutes=at),
        pith_number=f"pith:2026:{REAL_SUFFIX}",
        mirrors=("main",),
        summary=f"{kind} at +{at}m",
        evidence={"urls": [URL]},
        dedup_key=f"{kind}:{REAL_SUFFIX}",
    )


@pytest.fixture
async def store(archive_at: Path | PgUrl) -> AsyncIterator[Store]:
    async with await Store.open(archive_at, exclusive=True) as s:
        await s.watchlist.track([REAL_SUFFIX], NOW)
        await s.watchlist.upsert_mirror(mirror("main"))
        yield s


# -- opening, migrations, locking ------------------------------------------------------


async def test_migrations_create_schema_and_set_user_version(tmp_path: Path) -> None:
    """A new file gets every table, the current user_version and WAL mode."""
    db = tmp_path / "new.db"
    async with await Store.open(db):
        pass
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
    assert {"blobs", "records", "mirrors", "fetch_state", "snapshots", "events"} <= tables


async def test_reopening_is_idempotent(tmp_path: Path) -> None:
    """Opening a current database again migrates nothing and keeps its rows."""
    db = tmp_path / "a.db"
    async with await Store.open(db) as s:
        await s.watchlist.track([REAL_SUFFIX], NOW)
    async with await Store.open(db) as s:
        assert [r.suffix for r in await s.watchlist.tracked()] == [REAL_SUFFIX]
        assert await s.maintenance.integrity_check() == ["ok"]
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database from a newer pithcrawl is refused, naming both versions."""
    db = tmp_path / "future.db"
    with raw(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 7}")
    expected = (
        f"database schema version {SCHEMA_VERSION + 7} is newer than this pithcrawl"
        f" \\({SCHEMA_VERSION}\\); upgrade pithcrawl"
    )
    with pytest.raises(StoreError, match=expected):
        await Store.open(db)


async def test_non_database_file_is_refused(tmp_path: Path) -> None:
    """A file that is not SQLite raises StoreError, not sqlite3.DatabaseError."""
    db = tmp_path / "notes.txt"
    db.write_bytes(b"these are my notes, not a database\n" * 200)
    with pytest.raises(StoreError, match="is not a pithcrawl database"):
        await Store.open(db, exclusive=True)
    # The failed open released the writers' lock.
    with pytest.raises(StoreError, match="is not a pithcrawl database"):
        await Store.open(db, exclusive=True)


async def test_second_exclusive_open_is_refused(tmp_path: Path) -> None:
    """Two writers cannot hold one archive; readers still can; closing frees the lock."""
    db = tmp_path / "a.db"
    async with await Store.open(db, exclusive=True):
        with pytest.raises(
            StoreLocked, match=rf"another pithcrawl is using .* \(pid {os.getpid()}\)"
        ):
            await Store.open(db, exclusive=True)
        async with await Store.open(db) as reader:
            assert await reader.watchlist.tracked() == []
    async with await Store.open(db, exclusive=True):
        pass


async def test_cancelled_owner_still_releases_the_lock(tmp_path: Path) -> None:
    """Leaving the store's block by cancellation closes it and frees the writers' lock."""
    db = tmp_path / "a.db"
    with anyio.CancelScope() as scope:
        async with await Store.open(db, exclusive=True):
            scope.cancel()
            await anyio.sleep(10)
    async with await Store.open(db, exclusive=True):
        pass


async def test_missing_directory_is_refused(tmp_path: Path) -> None:
    """A path under a directory that does not exist raises StoreError (works as root too)."""
    with pytest.raises(StoreError, match="cannot open database"):
        await Store.open(tmp_path / "no" / "such" / "dir" / "a.db")
    with pytest.raises(StoreError, match="lock file"):
        await Store.open(tmp_path / "no" / "such" / "dir" / "a.db", exclusive=True)


async def test_readonly_store_refuses_writes(tmp_path: Path) -> None:
    """SQLite's mode=ro (not chmod, which root ignores) makes every write a StoreError."""
    db = tmp_path / "a.db"
    async with await Store.open(db) as s:
        await s.watchlist.track([REAL_SUFFIX], NOW)
    async with await Store.open(db, readonly=True) as ro:
        assert [r.suffix for r in await ro.watchlist.tracked()] == [REAL_SUFFIX]
        with pytest.raises(StoreError, match="is read-only"):
            await ro.watchlist.track([SUFFIX_B], NOW)
        assert [r.suffix for r in await ro.watchlist.tracked()] == [REAL_SUFFIX]


async def test_readonly_open_of_missing_file_is_refused(tmp_path: Path) -> None:
    """A read-only open never creates a database."""
    with pytest.raises(StoreError, match="cannot open database"):
        await Store.open(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()


async def test_uncreatable_location_is_refused(tmp_path: Path) -> None:
    """A database where no file can be created (its 'directory' is a file) raises StoreError.

    (Permission bits would not stop the root user the tests run as.)
    """
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        await Store.open(blocker / "a.db")


# -- blobs -------------------------------------------------------------------------------


async def test_blob_is_stored_once_and_round_trips(store: Store, real_bundle_bytes: bytes) -> None:
    """One body from two mirrors is one blob, compressed, returned byte for byte."""
    await store.watchlist.upsert_mirror(mirror("other"))
    first = await store.record_fetch(ok(real_bundle_bytes))
    second = await store.record_fetch(ok(real_bundle_bytes, mirror="other"))
    assert first is not None and second is not None
    assert first.body_sha256 == second.body_sha256
    assert await store.get_blob(first.body_sha256) == real_bundle_bytes
    stats = await store.maintenance.stats()
    assert stats["blobs"] == 1 and stats["snapshots"] == 2
    assert stats["blob_bytes_raw"] == len(real_bundle_bytes) > 14_000
    assert stats["blob_bytes_stored"] < len(real_bundle_bytes) / 3
    assert stats["file_bytes"] > 0


async def test_get_blob_detects_tampering(store: Store, real_bundle_bytes: bytes) -> None:
    """A stored blob whose bytes no longer hash to its key raises StoreCorrupt."""
    snap = await store.record_fetch(ok(real_bundle_bytes))
    assert snap is not None
    forged = packed(real_bundle_bytes.replace(b'"', b"'", 1))
    with raw(store.path) as conn:
        conn.execute("UPDATE blobs SET data = ? WHERE sha256 = ?", (forged.data, snap.body_sha256))
    with pytest.raises(StoreCorrupt, match="is corrupt"):
        await store.get_blob(snap.body_sha256)
    with raw(store.path) as conn:
        conn.execute("UPDATE blobs SET data = ? WHERE sha256 = ?", (b"junk", snap.body_sha256))
    with pytest.raises(StoreCorrupt, match="does not decompress"):
        await store.get_blob(snap.body_sha256)


def _blob_rows(path: Path) -> dict[str, tuple[str | None, int, int, int]]:
    """sha256 → (base, depth, size, stored bytes) of every blob, read behind the store."""
    with raw(path) as conn:
        rows = conn.execute("SELECT sha256, base, depth, size, length(data) FROM blobs")
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def _grown(body: bytes, n: int) -> bytes:
    """`body` with n distinct 100-character additions: a record that gained n events."""
    extra = b"".join(b',"x%d":"%s"' % (i, str(i).encode() * 60) for i in range(n))
    return body[:-1] + extra + body[-1:]


async def test_a_changed_body_is_stored_as_a_small_delta(
    store: Store, real_bundle_bytes: bytes
) -> None:
    """The next body of a series is a delta against the last one, a small fraction of a
    self-contained frame, and reads back byte for byte from a fresh connection."""
    first = await store.record_fetch(ok(real_bundle_bytes))
    changed = _grown(real_bundle_bytes, 1)
    second = await store.record_fetch(ok(changed, at=1))
    assert first is not None and second is not None
    rows = _blob_rows(store.path)
    assert rows[first.body_sha256][:2] == (None, 0)
    base, depth, size, kept = rows[second.body_sha256]
    assert (base, depth) == (first.body_sha256, 1)
    assert kept < size / 8 and kept < rows[first.body_sha256][3] / 4
    async with await Store.open(store.path, readonly=True) as fresh:  # nothing cached
        assert await fresh.get_blob(second.body_sha256) == changed
        assert await fresh.get_blob(first.body_sha256) == real_bundle_bytes


async def test_a_large_body_is_packed_before_its_write_the_same_way(
    store: Store, real_bundle_bytes: bytes, monkeypatch
) -> None:
    """A body over `LARGE_BODY` is packed outside the write transaction (compressing it
    would hold the write): the same delta against the same base, read back exactly."""
    from pithcrawl.store import bodies

    monkeypatch.setattr(bodies, "LARGE_BODY", 1000)  # the real bundle (14 KB) is "large"
    first = await store.record_fetch(ok(real_bundle_bytes))
    changed = _grown(real_bundle_bytes, 1)
    prepared = await store.bodies.pack_large(ok(changed, at=1))
    assert prepared is not None and prepared.base is not None  # packed before any write
    second = await store.record_fetch(ok(changed, at=1))
    assert first is not None and second is not None
    assert _blob_rows(store.path)[second.body_sha256][:2] == (first.body_sha256, 1)
    async with await Store.open(store.path, readonly=True) as fresh:
        assert await fresh.get_blob(second.body_sha256) == changed


async def test_a_state_is_stored_against_the_bundle_it_was_compared_with(
    store: Store, real_bundle_bytes: bytes, real_state_bytes: bytes
) -> None:
    """`related_sha256` names a better base than the series has (here: none yet)."""
    bundle = await store.record_fetch(ok(real_bundle_bytes))
    assert bundle is not None
    state = await store.record_fetch(
        ok(real_state_bytes, kind="state", related_sha256=bundle.body_sha256)
    )
    assert state is not None
    base, depth, size, kept = _blob_rows(store.path)[state.body_sha256]
    assert (base, depth) == (bundle.body_sha256, 1)
    assert kept < size / 20  # the state is a copy of the bundle's `state`
    assert await store.get_blob(state.body_sha256) == real_state_bytes


async def test_deltas_never_stack_deeper_than_max_depth(
    store: Store, real_bundle_bytes: bytes
) -> None:
    """A long series keeps every body readable within MAX_DEPTH frames of a whole one."""
    from pithcrawl.store.blobs import MAX_DEPTH

    bodies = [_grown(real_bundle_bytes, n) for n in range(8)]
    shas = []
    for n, body in enumerate(bodies):
        snap = await store.record_fetch(ok(body, at=n))
        assert snap is not None
        shas.append(snap.body_sha256)
    rows = _blob_rows(store.path)
    assert max(depth for _, depth, _, _ in rows.values()) == MAX_DEPTH
    for sha, (base, depth, _, _) in rows.items():
        assert base is None or rows[base][1] == depth - 1, sha
    async with await Store.open(store.path, readonly=True) as fresh:
        assert [await fresh.get_blob(sha) for sha in shas] == bodies


async def test_an_unrelated_body_is_stored_whole(
    store: Store, real_bundle_bytes: bytes, real_state_bytes: bytes
) -> None:
    """A delta that would not be small is not worth a dependency: the body stands alone."""
    await store.record_fetch(ok(real_bundle_bytes))
    unrelated = os.urandom(4000).hex().encode()
    snap = await store.record_fetch(ok(unrelated, at=1))
    assert snap is not None
    assert _blob_rows(store.path)[snap.body_sha256][:2] == (None, 0)


async def test_a_damaged_base_is_reported_for_the_delta_too(
    store: Store, real_bundle_bytes: bytes
) -> None:
    first = await store.record_fetch(ok(real_bundle_bytes))
    second = await store.record_fetch(ok(_grown(real_bundle_bytes, 1), at=1))
    assert first is not None and second is not None
    with raw(store.path) as conn:
        conn.execute("UPDATE blobs SET data = ? WHERE sha256 = ?", (b"junk", first.body_sha256))
    with pytest.raises(StoreCorrupt, match=f"delta base of blob {second.body_sha256}"):
        await store.get_blob(second.body_sha256)
    with raw(store.path) as conn:  # a base gone missing (foreign keys off behind our back)
        if isinstance(store.path, PgUrl):
            conn.execute("SET session_replication_role = replica")  # its foreign keys off
        conn.execute("DELETE FROM blobs WHERE sha256 = ?", (first.body_sha256,))
    with pytest.raises(StoreCorrupt, match="which is missing"):
        await store.get_blob(second.body_sha256)


def _claim_eight_byte_size(path: Path, sha256: str) -> None:
    """One bit flipped in a stored frame: its header now declares an 8-byte content size
    (gigabytes, read from the bytes that follow)."""
    with raw(path) as conn:
        data = bytearray(
            conn.execute("SELECT data FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()[0]
        )
        data[4] ^= 0x80  # Frame_Content_Size_flag, the top bits of the descriptor
        conn.execute("UPDATE blobs SET data = ? WHERE sha256 = ?", (bytes(data), sha256))


async def test_a_frame_header_claiming_a_huge_size_is_corrupt_not_a_memory_error(
    tmp_path: Path, real_bundle_bytes: bytes, real_trust: TrustSet
) -> None:
    """zstandard allocates what a frame's header declares. A damaged header is reported
    as damage, the next body of its series is stored whole (after a restart, with nothing
    cached), and fsck reports it instead of dying."""
    from pithcrawl.commands.fsck import check
    from pithcrawl.config import Config

    db = tmp_path / "archive.db"
    async with await Store.open(db, exclusive=True) as s:
        await s.watchlist.track([REAL_SUFFIX], NOW)
        await s.watchlist.upsert_mirror(mirror("main"))
        first = await s.record_fetch(ok(real_bundle_bytes))
    assert first is not None
    _claim_eight_byte_size(db, first.body_sha256)
    async with await Store.open(db, exclusive=True) as s:
        with pytest.raises(StoreCorrupt, match="its frame says"):
            await s.get_blob(first.body_sha256)
        second = await s.record_fetch(ok(_grown(real_bundle_bytes, 1), at=1))
        assert second is not None
        assert _blob_rows(db)[second.body_sha256][:2] == (None, 0)  # whole, not a delta
        assert await s.get_blob(second.body_sha256) == _grown(real_bundle_bytes, 1)
    result = await check(Config(), db, real_trust)
    damaged = result.problems[0]  # the grown body is no signed bundle: a problem too
    assert damaged["snapshot_id"] == first.id and "its frame says" in damaged["problem"]


async def test_a_large_body_packed_against_a_base_rolled_back_since_is_stored_whole(
    store: Store, real_bundle_bytes: bytes, monkeypatch
) -> None:
    """A read turn sees an open group's writes: a large body may be packed against a base
    that the group then rolls back. Its write notices and packs it again."""
    from pithcrawl.store import bodies, connection

    monkeypatch.setattr(bodies, "LARGE_BODY", 1000)  # the real bundle (14 KB) is "large"
    monkeypatch.setattr(connection, "GROUP_SECONDS", 10.0)  # groups end by blocks only
    outcomes: dict[str, str] = {}
    inside, may_end = anyio.Event(), anyio.Event()

    async def first() -> None:  # the series' first body, in a group it holds open
        try:
            async with store._db.write("record a fetch") as s:
                await s.call(store._write_fetch, ok(real_bundle_bytes), None)
                inside.set()
                await may_end.wait()
        except StoreError as e:
            outcomes["first"] = str(e)

    async def large() -> None:  # the next body, packed (in a read turn) before its write
        snap = await store.record_fetch(ok(_grown(real_bundle_bytes, 1), at=1))
        outcomes["large"] = "stored" if snap is not None else "none"

    async def failing() -> None:  # a block of the same group that fails: all rolled back
        try:
            await store.add_events([event(severity="dire")])
        except StoreError as e:
            outcomes["failing"] = str(e)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await inside.wait()
            tg.start_soon(large)
            await anyio.sleep(0.05)
            tg.start_soon(failing)  # queued: the first block leaves the group open for it
            await anyio.sleep(0.05)
            may_end.set()
    assert "check constraint" in outcomes["failing"].lower()
    assert "another write of the same transaction failed" in outcomes["first"]
    assert outcomes["large"] == "stored"
    rows = _blob_rows(store.path)
    assert len(rows) == 1 and next(iter(rows.values()))[:2] == (None, 0)


async def test_an_archive_of_schema_4_is_upgraded_keeping_every_body(
    tmp_path: Path, real_bundle_bytes: bytes
) -> None:
    """Migration 5 rebuilds `blobs` (foreign keys off, checked before the commit): every
    body and every reference to it survives, and foreign keys are enforced afterwards."""
    from pithcrawl.store.schema import MIGRATIONS, statements

    db = tmp_path / "old.db"
    old = packed(real_bundle_bytes)
    with raw(db) as conn:
        for script in MIGRATIONS[:4]:
            for statement in statements(script):
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 4")
        conn.execute(
            "INSERT INTO blobs (sha256, size, codec, data) VALUES (?, ?, ?, ?)",
            (old.sha256, old.size, old.codec, old.data),
        )
        conn.execute(
            "INSERT INTO snapshots (suffix, mirror, kind, fetched_at, url, status, body_sha256,"
            " trusted) VALUES (?, 'main', 'bundle', '2026-11-01T00:00:00Z', ?, 200, ?, 1)",
            (REAL_SUFFIX, URL, old.sha256),
        )
    async with await Store.open(db, exclusive=True) as store:
        assert await store.get_blob(old.sha256) == real_bundle_bytes
        assert len(await store.snapshots(REAL_SUFFIX)) == 1
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        conn.execute("PRAGMA foreign_keys = ON")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("DELETE FROM blobs WHERE sha256 = ?", (old.sha256,))


def _on_disk(path: Path) -> tuple[int, int] | None:
    """(failures, status) of the main bundle's bookkeeping as another process sees it."""
    with raw(path) as conn:
        row = conn.execute(
            "SELECT failures, status FROM fetch_state WHERE suffix = ? AND mirror = 'main'",
            (REAL_SUFFIX,),
        ).fetchone()
    return None if row is None else (row[0], row[1])


async def test_bookkeeping_is_deferred_but_every_read_sees_it(
    store: Store, real_bundle_bytes: bytes
) -> None:
    """A fetch that only keeps bookkeeping is written with others: not yet in the file,
    but visible to any read of this store, and in the file after `flush`."""
    await store.record_fetch(ok(real_bundle_bytes))
    await store.record_fetch(failed(at=1))
    assert _on_disk(store.path) == (0, 200)  # deferred: the file has the 200 only
    state = await store.fetch_state(REAL_SUFFIX, "main", "bundle")  # a read writes them first
    assert state is not None and state.failures == 1
    await store.record_fetch(failed(at=2))
    await store.flush()
    assert _on_disk(store.path) == (2, None)


async def test_deferred_bookkeeping_keeps_its_order_and_is_written_on_close(
    tmp_path: Path, real_bundle_bytes: bytes
) -> None:
    """Failures then a success of one document, all deferred: the success is last."""
    db = tmp_path / "archive.db"
    async with await Store.open(db, exclusive=True) as store:
        await store.watchlist.track([REAL_SUFFIX], NOW)
        await store.watchlist.upsert_mirror(mirror("main"))
        await store.record_fetch(ok(real_bundle_bytes))
        for at in (1, 2, 3):
            await store.record_fetch(failed(at=at))
        await store.record_fetch(replace(ok(real_bundle_bytes, at=4), body=None, status=304))
        assert _on_disk(db) == (0, 200)
    assert _on_disk(db) == (0, 304)  # closing wrote them, in order


async def test_a_full_batch_of_deferred_bookkeeping_is_written_at_once(
    store: Store, real_bundle_bytes: bytes
) -> None:
    from pithcrawl.store.connection import DEFER_MAX

    await store.record_fetch(ok(real_bundle_bytes))
    for at in range(1, DEFER_MAX + 1):
        await store.record_fetch(failed(at=at))
    assert _on_disk(store.path) == (DEFER_MAX, None)


async def test_get_blob_of_unknown_sha256(store: Store) -> None:
    """Asking for a body never stored is a StoreError, not a KeyError."""
    with pytest.raises(StoreError, match="no blob"):
        await store.get_blob("0" * 64)


@given(st.binary(max_size=2048), st.data())
def test_any_bit_flip_in_a_stored_blob_is_detected(body: bytes, data: st.DataObject) -> None:
    """Flipping any bit of a stored blob never yields wrong bytes (StoreCorrupt instead)."""
    blob = packed(body)
    assert unpack(blob.sha256, blob.size, blob.codec, blob.data) == body
    bit = data.draw(st.integers(0, len(blob.data) * 8 - 1))
    flipped = bytearray(blob.data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    # A flip in a frame-header bit that does not matter still decodes to the right bytes.
    with suppress(StoreCorrupt):
        assert unpack(blob.sha256, blob.size, blob.codec, bytes(flipped)) == body


# -- record_fetch --------------------------------------------------------------------------


async def test_unchanged_body_adds_no_snapshot_or_blob(
    store: Store, real_bundle_bytes: bytes
) -> None:
    """The same body again updates the bookkeeping only."""
    assert await store.record_fetch(ok(real_bundle_bytes)) is not None
    assert await store.record_fetch(ok(real_bundle_bytes, at=60)) is None
    stats = await store.maintenance.stats()
    assert (stats["blobs"], stats["snapshots"]) == (1, 1)
    state = await store.fetch_state(REAL_SUFFIX, "main", "bundle")
    assert state is not None
    assert state.last_success_at == NOW + timedelta(minutes=60)
    assert state.etag == '"60"'


async def test_changed_body_adds_snapshot_linked_to_previous(
    store: Store, real_bundle_bytes: bytes, real_state_bytes: bytes
) -> None:
    """A new body is a new snapshot whose prev_id is the last one."""
    first = await store.record_fetch(ok(real_bundle_bytes))
    second = await store.record_fetch(
        ok(real_state_bytes, at=60, trusted=False, findings=[bad_finding()])
    )
    assert first is not None and second is not None
    assert first.prev_id is None
    assert second.prev_id == first.id
    assert second.findings == (bad_finding(),) and not second.trusted
    assert await store.snapshots(REAL_SUFFIX) == [first, second]
    assert await store.snapshot(second.id) == second
    assert await store.latest_snapshot(REAL_SUFFIX, "main", "bundle") == second
    assert await store.latest_snapshot(REAL_SUFFIX, "main", "bundle", trusted=True) == first


async def test_returning_to_an_old_body_is_a_new_snapshot(
    store: Store, real_bundle_bytes: bytes, real_state_bytes: bytes
) -> None:
    """A→B→A archives three snapshots (a rollback is history) but two blobs."""
    a1 = await store.record_fetch(ok(real_bundle_bytes))
    await store.record_fetch(ok(real_state_bytes, at=1))
    a2 = await store.record_fetch(ok(real_bundle_bytes, at=2))
    assert a1 is not None and a2 is not None and a2.body_sha256 == a1.body_sha256
    stats = await store.maintenance.stats()
    assert (stats["blobs"], stats["snapshots"]) == (2, 3)


async def test_not_modified_keeps_validators_and_body(
    store: Store, real_bundle_bytes: bytes
) -> None:
    """A 304 records a success and keeps the ETag and body of the last 200."""
    snap = await store.record_fetch(ok(real_bundle_bytes))
    assert snap is not None
    not_modified = replace(ok(real_bundle_bytes, at=30), body=None, status=304, etag=None)
    assert await store.record_fetch(not_modified) is None
    state = await store.fetch_state(REAL_SUFFIX, "main", "bundle")
    assert state is not None
    assert (state.status, state.etag, state.body_sha256) == (304, '"0"', snap.body_sha256)
    assert state.last_success_at == NOW + timedelta(minutes=30)


async def test_an_error_quoting_what_no_database_text_can_hold_is_kept_escaped(
    store: Store,
) -> None:
    """A mirror's error text may quote a NUL (PostgreSQL's text cannot hold one) or bytes
    that were not UTF-8 (lone surrogates): kept as visible escapes, on either backend, and
    the pair's failure is counted like any other."""
    await store.record_fetch(failed(1, "bad byte \x00 and \udc80 here"))
    state = await store.fetch_state(REAL_SUFFIX, "main", "bundle")
    assert state is not None and state.failures == 1
    assert state.last_error == "bad byte \\x00 and \\x80 here"


async def test_failures_count_up_and_keep_the_first_failure_time(
    store: Store, real_bundle_bytes: bytes
) -> None:
    """Each failure increments `failures`; `first_failure_at` stays; a success resets both."""
    snap = await store.record_fetch(ok(real_bundle_bytes))
    assert await store.record_fetch(failed(10, "connection refused")) is None
    assert await store.record_fetch(failed(20, "timeout")) is None
    state = await store.fetch_state(REAL_SUFFIX, "main", "bundle")
    assert state is not None
    assert state.failures == 2
    assert state.first_failure_at == NOW + timedelta(minutes=10)
    assert state.last_fetch_at == NOW + timedelta(minutes=20)
    assert state.last_error == "timeout"
    assert state.next_due == NOW + timedelta(minutes=25)
    assert state.etag == '"0"' and snap is not None and state.body_sha256 == snap.body_sha256
    assert state.last_success_at == NOW
    assert (await store.maintenance.stats())["snapshots"] == 1

    await store.record_fetch(ok(real_bundle_bytes, at=30))
    state = await store.fetch_state(REAL_SUFFIX, "main", "bundle")
    assert state is not None
    assert (state.failures, state.first_failure_at, state.last_error) == (0, None, None)


async def test_first_fetch_may_fail(store: Store) -> None:
    """A failure with no earlier state creates the bookkeeping row."""
    await store.record_fetch(failed(0))
    state = await store.fetch_state(REAL_SUFFIX, "main", "bundle")
    assert state is not None
    assert (state.failures, state.first_failure_at, state.body_sha256) == (1, NOW, None)


async def test_record_fetch_is_all_or_nothing(store: Store, real_bundle_bytes: bytes) -> None:
    """A fetch whose last statement fails leaves no blob, snapshot or bookkeeping change."""
    first = await store.record_fetch(ok(real_bundle_bytes))
    before_stats = await store.maintenance.stats()
    before_state = await store.fetch_state(REAL_SUFFIX, "main", "bundle")
    changed = real_bundle_bytes + b"\n"
    # The events are inserted last; a severity outside the CHECK fails the transaction there.
    doomed = ok(changed, at=60, events=[event(), event(severity="catastrophic")])
    with pytest.raises(StoreError, match=r"(?i)check constraint"):
        await store.record_fetch(doomed)
    after_stats = await store.maintenance.stats()
    if isinstance(store.path, PgUrl):  # a rolled-back row still takes its space there
        del before_stats["file_bytes"], after_stats["file_bytes"]
    assert after_stats == before_stats
    assert await store.fetch_state(REAL_SUFFIX, "main", "bundle") == before_state
    assert await store.snapshots(REAL_SUFFIX) == [first]
    assert await store.events() == []
    # The connection is not left inside the failed transaction.
    assert await store.record_fetch(ok(changed, at=61, events=[event()])) is not None


async def test_record_fetch_links_events_to_the_snapshot(
    store: Store, real_bundle_bytes: bytes
) -> None:
    """Events stored with a fetch point at its snapshot and default to its suffix."""
    snap = await store.record_fetch(ok(real_bundle_bytes, events=[event()]))
    assert snap is not None
    [row] = await store.events()
    assert (row.snapshot_id, row.suffix, row.mirrors) == (snap.id, REAL_SUFFIX, ("main",))
    assert row.to_json()["at"] == "2026-11-27T12:00:00.000000Z"


async def test_body_sha256_must_match_body(store: Store, real_bundle_bytes: bytes) -> None:
    """A caller-supplied body_sha256 that disagrees with the body is a bug, refused."""
    with pytest.raises(ValueError, match="does not match"):
        await store.record_fetch(ok(real_bundle_bytes, body_sha256="0" * 64))


async def test_a_fetch_failing_late_in_its_write_leaves_nothing(
    store: Store, real_bundle_bytes: bytes
) -> None:
    """A statement failing after the blob, snapshot and bookkeeping of a fetch were written
    (all in one call in the database thread) takes them all back; the store goes on."""
    bad = event(severity="dire")  # refused by the events table's CHECK, written last
    with pytest.raises(StoreError, match=r"(?i)check constraint"):
        await store.record_fetch(ok(real_bundle_bytes, events=[bad]))
    stats = await store.maintenance.stats()
    assert (stats["blobs"], stats["snapshots"], stats["events"]) == (0, 0, 0)
    assert await store.fetch_state(REAL_SUFFIX, "main", "bundle") is None
    assert await store.record_fetch(ok(real_bundle_bytes, events=[event()])) is not None
    stats = await store.maintenance.stats()
    assert (stats["blobs"], stats["snapshots"], stats["events"]) == (1, 1, 1)


async def test_a_malformed_fetch_fails_alone(store: Store, real_bundle_bytes: bytes) -> None:
    """A caller's mistake is refused before the transaction it would share with other
    writes queued at the same moment: theirs are committed."""
    outcomes: dict[str, str] = {}

    async def record(name: str, fetch: FetchOutcome) -> None:
        try:
            await store.record_fetch(fetch)
            outcomes[name] = "stored"
        except Exception as e:  # what each write raised is the result
            outcomes[name] = type(e).__name__

    async with anyio.create_task_group() as tg:
        tg.start_soon(record, "good", ok(real_bundle_bytes, mirror="other"))
        tg.start_soon(record, "bad", ok(real_bundle_bytes + b" ", body_sha256="0" * 64))
    assert outcomes == {"good": "stored", "bad": "ValueError"}
    assert (await store.maintenance.stats())["snapshots"] == 1


async def test_records_to_recheck_include_untracked_ones_only_when_asked(
    store: Store, real_bundle_bytes: bytes
) -> None:
    """Mirrors serving different trusted bodies put a record on the recheck list; a pass
    over every tracked record skips untracked ones, but `sync` of a named, untracked
    record still rechecks it."""
    await store.watchlist.track([REAL_SUFFIX], NOW)
    await store.record_fetch(ok(real_bundle_bytes, mirror="main"))
    await store.record_fetch(ok(real_bundle_bytes + b" ", mirror="other"))
    assert await store.trusted.records_to_recheck(tracked=True) == [REAL_SUFFIX]
    await store.watchlist.untrack([REAL_SUFFIX])
    assert await store.trusted.records_to_recheck(tracked=True) == []
    assert await store.trusted.records_to_recheck() == [REAL_SUFFIX]


async def test_concurrent_tasks_share_one_store(store: Store, real_bundle_bytes: bytes) -> None:
    """Tasks recording at once take turns: no transaction swallows another's statements."""
    suffixes = [f"{i:026d}" for i in range(20)]
    await store.watchlist.track(suffixes, NOW)

    async def one(i: int) -> None:
        body = real_bundle_bytes + str(i).encode()
        await store.record_fetch(replace(ok(body), suffix=suffixes[i], events=[event()]))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    stats = await store.maintenance.stats()
    assert (stats["blobs"], stats["snapshots"], stats["events"]) == (20, 20, 20)


# -- scheduling reads ----------------------------------------------------------------------


async def test_due_lists_never_fetched_first_then_by_next_due(
    store: Store, real_bundle_bytes: bytes
) -> None:
    """Never-fetched pairs come first, then the overdue by next_due; future ones not at all."""
    await store.watchlist.track([SUFFIX_B, SUFFIX_C], NOW)
    await store.record_fetch(ok(real_bundle_bytes, next_due=NOW - timedelta(hours=1)))
    await store.record_fetch(
        replace(ok(real_bundle_bytes), suffix=SUFFIX_B, next_due=NOW - timedelta(hours=2))
    )
    await store.record_fetch(
        replace(ok(real_bundle_bytes), suffix=SUFFIX_C, next_due=NOW + timedelta(hours=1))
    )
    await store.watchlist.upsert_mirror(mirror("zeta"))
    due = await store.due(NOW)
    never = [(REAL_SUFFIX, "zeta"), (SUFFIX_B, "zeta"), (SUFFIX_C, "zeta")]
    assert sorted(d[:2] for d in due[:3]) == never
    assert {d.since for d in due[:3]} == {NOW}  # due since they were tracked
    assert due[3:] == [
        (SUFFIX_B, "main", NOW - timedelta(hours=2)),
        (REAL_SUFFIX, "main", NOW - timedelta(hours=1)),
    ]
    assert len(await store.due(NOW, limit=2)) == 2
    assert (SUFFIX_C, "main") in [d[:2] for d in await store.due(NOW + timedelta(hours=1))]


async def test_tracked_records_are_read_in_pages_of_ranges(store: Store) -> None:
    """A pass reads the tracked records a page at a time, in suffix ranges that together
    hold each of them exactly once (what the processes of a shared pass split)."""
    import itertools
    import random

    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    rng = random.Random(7)
    await store.watchlist.track({"".join(rng.choices(alphabet, k=26)) for _ in range(1000)}, NOW)
    suffixes = sorted(r.suffix for r in await store.watchlist.tracked())  # with the fixture's own
    for parts in (1, 2, 3, 7):
        bounds = await store.watchlist.tracked_bounds(parts)
        assert len(bounds) == parts - 1 and bounds == sorted(set(bounds))
        edges = [None, *bounds, None]
        shares = []
        for low, high in itertools.pairwise(edges):
            got: list[str] = []
            while page := await store.watchlist.tracked_page(
                low=low, high=high, after=got[-1] if got else None, limit=64
            ):
                assert len(page) <= 64
                got += page
            shares.append(got)
        assert [s for share in shares for s in share] == suffixes  # each once, in order
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    # More parts than records: no bound twice, so no range holds a record twice.
    many = await store.watchlist.tracked_bounds(2 * len(suffixes))
    assert many == sorted(set(many)) and set(many) <= set(suffixes)


async def test_due_ignores_untracked_records(store: Store, real_bundle_bytes: bytes) -> None:
    """Untracking a record drops it (and its bookkeeping) from the schedule; snapshots stay."""
    await store.record_fetch(ok(real_bundle_bytes))
    assert await store.watchlist.untrack([REAL_SUFFIX, SUFFIX_B]) == 1
    assert await store.due(NOW + timedelta(days=1)) == []
    assert len(await store.snapshots(REAL_SUFFIX)) == 1
    assert await store.fetch_state(REAL_SUFFIX, "main", "bundle") is None


# -- records, mirrors, events ----------------------------------------------------------------


async def test_track_counts_only_new_records(store: Store) -> None:
    """track() returns how many suffixes were not tracked yet; pith numbers can be set later."""
    assert await store.watchlist.track([REAL_SUFFIX, SUFFIX_B, SUFFIX_B], NOW) == 1
    await store.watchlist.set_pith_number(SUFFIX_B, f"pith:2026:{SUFFIX_B}")
    records = {r.suffix: r for r in await store.watchlist.tracked()}
    assert records[SUFFIX_B].pith_number == f"pith:2026:{SUFFIX_B}"
    assert records[REAL_SUFFIX].pith_number is None
    assert records[REAL_SUFFIX].added_at == NOW


async def test_upsert_mirror_updates_but_keeps_added_at(store: Store) -> None:
    """Upserting a known mirror changes its URLs and origin, not when it was first seen."""
    later = replace(mirror("main"), base_url="https://moved.example", origin="manifest")
    await store.watchlist.upsert_mirror(replace(later, added_at=NOW + timedelta(days=1)))
    assert await store.watchlist.mirrors() == [later]
    assert await store.watchlist.remove_mirror("main")
    assert await store.watchlist.mirrors() == []


async def test_events_filter_by_time_and_kind(store: Store) -> None:
    """events() is in time order, from `since` inclusive, of the given kinds."""
    ids = await store.add_events(
        [event("rollback", "critical", at=5), event("event_added", at=1), event("correction", at=9)]
    )
    assert len(ids) == 3
    assert [e.kind for e in await store.events()] == ["event_added", "rollback", "correction"]
    since = await store.events(since="2026-11-27T12:05:00Z")
    assert [e.kind for e in since] == ["rollback", "correction"]
    kinds = await store.events(kinds=["rollback", "correction"], since=NOW)
    assert [e.kind for e in kinds] == ["rollback", "correction"]
    assert kinds[0].evidence == {"urls": [URL]}
    with pytest.raises(ValueError, match="not an RFC 3339"):
        await store.events(since="yesterday")


async def test_closed_store_refuses_use(tmp_path: Path) -> None:
    """Using a closed store is a StoreError; closing twice is harmless."""
    s = await Store.open(tmp_path / "a.db")
    await s.close()
    await s.close()
    with pytest.raises(StoreError, match="closed"):
        await s.watchlist.tracked()


def bad_finding() -> Finding:
    return finding("bundle_signature_invalid", "/bundle_signature", "does not verify")


# -- group commit --------------------------------------------------------------------------


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """The archive's connection alone, as the store's methods share it."""
    database = await Database.open(tmp_path / "a.db", exclusive=True, readonly=False)
    try:
        yield database
    finally:
        await database.close()


def _suffix(i: int) -> str:
    return f"{i:026d}".replace("0", "A")


async def _add_record(
    db: Database,
    i: int,
    *,
    fail: bool = False,
    inside: anyio.Event | None = None,
    may_end: anyio.Event | None = None,
) -> None:
    """Insert a record in a `write` block that lets others queue up behind it (until
    `may_end` is set, when given) and then fails or ends."""
    async with db.write("add a record") as s:
        await s.run("INSERT INTO records (suffix, added_at) VALUES (?, ?)", (_suffix(i), "t"))
        if inside is not None:
            inside.set()
        if may_end is not None:
            await may_end.wait()
        await anyio.lowlevel.checkpoint()
        if fail:
            raise RuntimeError("this block fails")


def _records_on_disk(path: Path) -> set[str]:
    with raw(path) as conn:
        return {r[0] for r in conn.execute("SELECT suffix FROM records")}


async def test_write_blocks_queued_together_share_one_commit(db: Database) -> None:
    """Writers queued behind each other commit together, and each returns committed."""
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(_add_record, db, i)
    assert _records_on_disk(db.path) == {_suffix(i) for i in range(20)}
    assert 1 <= db.commits < 20
    await _add_record(db, 99)  # alone: its own transaction, committed on return
    assert _suffix(99) in _records_on_disk(db.path)


def _count_records(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM records").fetchone()[0])


async def test_a_read_at_commit_sees_the_blocks_that_joined_its_group_after_it(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first block queues a read for the end of its group; blocks queued behind it
    join the group and write after it: the read sees all of them, as a read right after
    the commit would, and its value is there once the first block returned."""
    from pithcrawl.store import connection

    # Groups end by blocks only: on a loaded machine the five blocks take longer than
    # GROUP_SECONDS, and the group would end (rightly) before the last of them joined.
    monkeypatch.setattr(connection, "GROUP_SECONDS", 10.0)
    inside, may_end = anyio.Event(), anyio.Event()
    reads = []

    async def first() -> None:
        async with db.write("first") as s:
            await s.run("INSERT INTO records (suffix, added_at) VALUES (?, ?)", (_suffix(0), "t"))
            reads.append(s.at_commit(_count_records))
            inside.set()
            await may_end.wait()  # the others queue up behind it meanwhile
        assert reads[0].value == 6  # returned: its group committed, the read ran

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await inside.wait()
        for i in range(1, 6):
            tg.start_soon(_add_record, db, i)
        await anyio.wait_all_tasks_blocked()
        may_end.set()
    assert db.commits == 1
    assert _records_on_disk(db.path) == {_suffix(i) for i in range(6)}


async def test_a_read_at_commit_that_fails_fails_its_reader_not_the_group(db: Database) -> None:
    def broken(conn: sqlite3.Connection) -> int:
        conn.execute("SELECT * FROM no_such_table")
        return 0

    async with db.write("add a record") as s:
        await s.run("INSERT INTO records (suffix, added_at) VALUES (?, ?)", (_suffix(1), "t"))
        read = s.at_commit(broken)
        with pytest.raises(StoreError, match="before it ran"):
            read.value  # noqa: B018 # not run before the group ends
    assert _records_on_disk(db.path) == {_suffix(1)}
    with pytest.raises(StoreError, match="no_such_table") as raised:
        read.value  # noqa: B018 # a StoreError, as any statement's error is
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    async with db.read("count") as r:
        with pytest.raises(TypeError, match="write blocks"):
            r.at_commit(_count_records)


async def test_a_failing_block_rolls_back_its_group_and_nothing_is_half_written(
    db: Database,
) -> None:
    """Exactly the writes whose blocks returned are in the file; the others raised."""
    returned: set[str] = set()
    failed: dict[int, BaseException] = {}

    async def writer(i: int) -> None:
        try:
            await _add_record(db, i, fail=i == 5)
        except (StoreError, RuntimeError) as e:
            failed[i] = e
        else:
            returned.add(_suffix(i))

    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(writer, i)
    assert isinstance(failed[5], RuntimeError)
    others = [e for i, e in failed.items() if i != 5]
    assert others and all("another write of the same transaction" in str(e) for e in others)
    assert _records_on_disk(db.path) == returned
    assert len(returned) + len(failed) == 12


async def test_a_writer_cancelled_while_queued_does_not_hold_its_group_open(
    db: Database,
) -> None:
    """A block cancelled while it waits for its turn neither writes nor blocks the rest."""
    inside, may_end = anyio.Event(), anyio.Event()

    async def cancelled() -> None:
        with anyio.move_on_after(0.05):
            await _add_record(db, 2)

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(_add_record, db, 1, inside=inside, may_end=may_end))
        await inside.wait()
        tg.start_soon(cancelled)
        tg.start_soon(_add_record, db, 3)
        await anyio.sleep(0.2)  # 2 gave up waiting; 3 still waits
        may_end.set()
    assert _records_on_disk(db.path) == {_suffix(1), _suffix(3)}
    await _add_record(db, 4)  # and the connection is usable afterwards
    assert _suffix(4) in _records_on_disk(db.path)


@given(st.datetimes(min_value=datetime(1000, 1, 1), timezones=st.timezones()))
def test_stored_times_are_the_registry_text_of_the_same_instant(at: datetime) -> None:
    """`db_time` (isoformat) writes exactly what `format_timestamp` (strftime) would."""
    assert db_time(at) == format_timestamp(at)
    assert datetime.fromisoformat(db_time(at)) == at.astimezone(UTC)


async def test_failing_deferred_statements_fail_the_open_group_and_nothing_waits(
    db: Database,
) -> None:
    """A deferred statement that fails inside an open group (a full disk, a broken
    row): the group is rolled back, every block of it raises, none waits for a commit."""
    outcome: dict[str, str] = {}

    async def first() -> None:
        try:
            async with db.write("add a record") as s:
                await s.run(
                    "INSERT INTO records (suffix, added_at) VALUES (?, ?)", (_suffix(1), "t")
                )
                db.defer("INSERT INTO records (suffix, added_at) VALUES (?, ?)", ("short", "t"))
                await anyio.sleep(0.01)  # the second block queues up behind this one
        except StoreError as e:
            outcome["first"] = str(e)

    async def second() -> None:
        await anyio.sleep(0.001)
        try:
            await _add_record(db, 2)
        except StoreError as e:
            outcome["second"] = str(e)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
    assert "another write of the same transaction failed" in outcome["first"]
    assert "CHECK constraint failed" in outcome["second"]
    assert _records_on_disk(db.path) == set()
    await _add_record(db, 3)  # no transaction left open: the connection writes again
    assert _records_on_disk(db.path) == {_suffix(3)}


async def test_a_failed_commit_of_deferred_statements_leaves_no_transaction_open(
    db: Database,
) -> None:
    """A COMMIT that fails (a deferred foreign key here; a full disk in life) is rolled
    back: the next write can begin its own transaction."""
    async with db.write("make tables") as s:
        await s.run("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        await s.run(
            "CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
        )
    db.defer("INSERT INTO child (p) VALUES (?)", (42,))  # fails only at COMMIT
    with pytest.raises(StoreError, match="FOREIGN KEY"):
        await db.flush()
    await _add_record(db, 1)
    assert _records_on_disk(db.path) == {_suffix(1)}


async def test_the_events_of_some_snapshots_are_read_by_index(
    store: Store, real_bundle_bytes: bytes
) -> None:
    """`history` asks for the events of one record's snapshots: an index lookup, not a
    read of the whole event log (which took half a minute at 600,000 events)."""
    snap = await store.record_fetch(ok(real_bundle_bytes, events=[event()]))
    assert snap is not None
    await store.add_events([event("other")])
    assert await store.event_kinds([snap.id]) == {snap.id: ["event_added"]}
    assert await store.event_kinds([]) == {}
    if isinstance(store.path, PgUrl):
        return  # PostgreSQL plans by its statistics: a table this small is read whole
    with raw(store.path) as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT snapshot_id, kind FROM events"
            " WHERE snapshot_id IN (SELECT value FROM json_each(?)) ORDER BY at, id",
            ("[1]",),
        ).fetchall()
    assert any("USING INDEX events_snapshot" in row[3] for row in plan), plan


async def test_mirror_summaries_sum_up_each_mirrors_bookkeeping(
    store: Store, real_bundle_bytes: bytes, real_state_bytes: bytes
) -> None:
    """What `status` shows per mirror, summed in SQL (one row a mirror, however many
    records): the same as summing the rows one by one."""
    await store.watchlist.upsert_mirror(mirror("other"))
    await store.watchlist.track([SUFFIX_B], NOW)
    await store.record_fetch(ok(real_bundle_bytes))
    await store.record_fetch(ok(real_state_bytes, kind="state", at=2))
    await store.record_fetch(failed(5, "timeout"))
    await store.record_fetch(replace(failed(9, "HTTP 503"), suffix=SUFFIX_B))
    await store.record_fetch(ok(real_bundle_bytes, mirror="other", at=3))
    await store.flush()
    states = await store.fetch_states()
    summaries = {s.mirror: s for s in await store.mirror_summaries()}
    assert set(summaries) == {"main", "other"}
    for name, got in summaries.items():
        rows = [s for s in states if s.mirror == name]
        failing = [s for s in rows if s.failures]
        latest_failure = max(failing, key=lambda s: s.last_fetch_at, default=None)
        assert got.records == len({s.suffix for s in rows})
        assert got.last_success_at == max(
            (s.last_success_at for s in rows if s.last_success_at), default=None
        )
        assert got.last_failure_at == (latest_failure and latest_failure.last_fetch_at)
        assert got.last_error == (latest_failure and latest_failure.last_error)
        assert got.failures == max(s.failures for s in rows)
        assert got.next_due == min(s.next_due for s in rows if s.next_due)
    assert summaries["main"].last_error == "HTTP 503"  # its latest failure (of two records)


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
async def test_an_archive_of_every_older_schema_is_upgraded_and_works(
    tmp_path: Path, real_bundle_bytes: bytes, version: int
) -> None:
    """An archive left by any earlier pithcrawl (schema 1 up to the one before this)
    opens for writing, is migrated step by step to this schema, passes SQLite's checks,
    and takes and reads back a fetch; read-only, before that, it is refused with a hint."""
    from pithcrawl.store.schema import MIGRATIONS, statements

    db = tmp_path / f"v{version}.db"
    with raw(db) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for script in MIGRATIONS[:version]:
            for statement in statements(script):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
    with pytest.raises(StoreError, match="open it for writing once to upgrade it"):
        await Store.open(db, readonly=True)
    async with await Store.open(db, exclusive=True) as s:
        await s.watchlist.track([REAL_SUFFIX], NOW)
        await s.watchlist.upsert_mirror(mirror("main"))
        await s.record_fetch(ok(real_bundle_bytes))
        await s.flush()
        assert await s.maintenance.integrity_check() == ["ok"]
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    async with await Store.open(db, readonly=True) as s:
        (snap,) = await s.snapshots(REAL_SUFFIX)
        assert await s.get_blob(snap.body_sha256) == real_bundle_bytes


@pytest.mark.parametrize("claimed", [0, 3, 4, SCHEMA_VERSION - 1])
async def test_an_archive_whose_version_was_set_back_is_refused_not_migrated_again(
    tmp_path: Path, real_bundle_bytes: bytes, claimed: int
) -> None:
    """`user_version` edited back: running a migration again would destroy data (number 5
    rebuilds `blobs`, and lost every delta link). Opening is refused, naming what of a
    later schema is there, and nothing is changed."""
    db = tmp_path / "a.db"
    async with await Store.open(db, exclusive=True) as s:
        await s.watchlist.track([REAL_SUFFIX], NOW)
        await s.watchlist.upsert_mirror(mirror("main"))
        await s.record_fetch(ok(real_bundle_bytes))
    with raw(db) as conn:
        before = conn.execute("SELECT sha256, base, data FROM blobs ORDER BY sha256").fetchall()
        conn.execute(f"PRAGMA user_version = {claimed}")
    with pytest.raises(StoreError, match="its version was changed"):
        await Store.open(db, exclusive=True)
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == claimed
        after = conn.execute("SELECT sha256, base, data FROM blobs ORDER BY sha256").fetchall()
    assert after == before
