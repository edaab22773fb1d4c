"""Writes that meet other writes: a body already archived from another mirror, and a
record's later snapshots written in the same group commit. Found by a review of the
write path's speed work; each test failed on the code before its fix."""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from builder import BundleBuilder, TestSigner, canonical_record
from conftest import in_thread, write_config
from mirror import TestMirror
from test_alerts import env, lagging

from pithcrawl.cli import main
from pithcrawl.conditions import Conditions
from pithcrawl.store import Store
from pithcrawl.store.blobs import MAX_DEPTH


def test_a_state_stored_against_a_bundle_another_mirror_archived_first_stays_readable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner
) -> None:
    """m0 archives three bundles as a chain of deltas (depth 0, 1, 2) and no state.json;
    m1 then serves the newest bundle and its state.json. m1's bundle is packed whole,
    but the row kept is m0's, at depth 2: the state.json must stand on the row as
    stored, not as just packed, or its chain is deeper than any reader follows."""
    b = BundleBuilder(signer, record=canonical_record("2611.00001", title="P"))
    for _ in range(15):
        b.add_event()
    with in_thread(TestMirror()) as m0, in_thread(TestMirror()) as m1:
        cfg = write_config(tmp_path, signer, m0.base_url)
        assert main(["--config", str(cfg), "-q", "track", b.pith_number]) == 0
        for _ in range(3):
            b.add_event()
            suffix = m0.put(b.bytes())
            m0.states.pop(suffix)  # state.json is optional: a 404
            main(["--config", str(cfg), "-q", "sync"])
        m1.put(b.bytes())
        cfg = write_config(tmp_path, signer, m0.base_url, m1.base_url)
        main(["--config", str(cfg), "-q", "sync"])
        with sqlite3.connect(tmp_path / "archive.db") as db:
            depths = dict(db.execute("SELECT sha256, depth FROM blobs"))
            links = db.execute("SELECT sha256, base, depth FROM blobs WHERE base IS NOT NULL")
            for sha, base, depth in links:
                assert depth == depths[base] + 1 <= MAX_DEPTH, (sha, base, depth)
        capsys.readouterr()
        assert main(["--config", str(cfg), "fsck"]) == 0, capsys.readouterr().out


@pytest.mark.anyio
async def test_a_mirror_that_caught_up_in_the_same_group_commit_is_not_called_stale(
    tmp_path: Path, signer: TestSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """m0's write holds the database thread while m1's write of the same record joins
    its group: the rules run after m0's write must see m1's snapshot, not the record as
    it was inside m0's write (which still showed m1 lagging past `stale_after`)."""
    real_write, real_record = Store._write_fetches, Conditions.record

    def slowed(self, conn, fetches, prepared, **kw):  # type: ignore[no-untyped-def]
        out = real_write(self, conn, fetches, prepared, **kw)
        if fetches[0].mirror == "m0" and fetches[0].kind == "bundle":
            time.sleep(0.3)  # m0's write holds the database thread a while
        return out

    async def later(self, suffix, fetches):  # type: ignore[no-untyped-def]
        if fetches and fetches[0][0].mirror == "m1":
            await anyio.sleep(0.1)  # m1 writes while m0's write holds the turn
        return await real_record(self, suffix, fetches)

    monkeypatch.setattr(Store, "_write_fetches", slowed)
    monkeypatch.setattr(Conditions, "record", later)
    async with env(tmp_path, signer) as e:
        b = await lagging(e, signer)
        e.configure()
        assert (await e.sync()).alerts == 0  # m1 lags, not yet for stale_after
        e.clock.advance(timedelta(days=2, seconds=1))
        e.mirrors[0].put(b.bytes(built_at="2026-11-05T00:00:00Z"))  # rebuilt: same history
        e.mirrors[1].put(b.bytes())  # m1 caught up
        await e.sync()
        async with e.store() as store:
            kinds = [x.evidence.get("kind") for x in await store.events()]
        assert "mirror_stale" not in kinds
