"""A damaged row (the archive edited behind pithcrawl's back): every command that meets
it fails with one line naming it (exit 3), never a traceback, and `fsck` reports it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest
from arena import arena
from builder import BundleBuilder, TestSigner
from hostile import respond

from pithcrawl.cli import main

#: (table, column, value, the key of one row to damage)
DAMAGE = [
    ("snapshots", "findings", "[1]", "id"),
    ("snapshots", "fetched_at", "garbage", "id"),
    ("alerts", "opened_at", "garbage", "id"),
    ("alerts", "mirrors", "[1, 2]", "id"),
    ("alerts", "cleared_at", "soon", "id"),
    ("deliveries", "next_attempt", "garbage", "alert_id"),
    ("fetch_state", "next_due", "garbage", "suffix"),
    ("fetch_state", "last_success_at", "2026-13-45T99:00:00Z", "suffix"),
    ("events", "at", "garbage", "id"),
]


def _archive(tmp_path: Path, signer: TestSigner) -> tuple[Path, str]:
    """An archive with snapshots, an alert, a delivery and events: a pass over a good
    mirror and a hostile one serving a stranger's bundle, with a hook."""

    async def build() -> tuple[Path, str]:
        async with arena(tmp_path, signer, records=1) as a:
            (b,) = a.records
            rogue = BundleBuilder(TestSigner("rogue-key"), record=b.record)
            rogue.add_event()
            a.hostile.route(a.hostile.bundle_path(b.suffix), respond(200, rogue.bytes()))
            hook = tmp_path / "hook"
            hook.write_text("#!/bin/sh\nexit 1\n")
            hook.chmod(0o755)
            a.extra += f'\n[alerts]\nhook = "{hook}"\n'
            await a.sync()
            return a.write_config(), b.suffix

    cfg, suffix = anyio.run(build)
    return cfg, suffix


@pytest.mark.parametrize("damage", DAMAGE, ids=[f"{d[0]}.{d[1]}" for d in DAMAGE])
def test_a_damaged_row_is_one_line_and_exit_3_and_fsck_names_it(tmp_path, signer, capsys, damage):
    """Each damage, under `status`, `events`, `history` and `evidence`: exit 0 (the row
    is not read by it) or 3 with one line saying to run fsck; `fsck` exits 1 naming it
    (tracebacks from all of them before, and from fsck itself)."""
    table, column, value, key = damage
    cfg, suffix = _archive(tmp_path, signer)
    db = tmp_path / "archive.db"
    with sqlite3.connect(db) as conn:
        (row,) = conn.execute(f"SELECT {key} FROM {table} LIMIT 1").fetchall()
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (value, row[0]))
    capsys.readouterr()
    evidence = ["evidence", "1", "--out", str(tmp_path / "ev")]
    for command in (["status"], ["events"], ["history", suffix], evidence):
        code = main(["--config", str(cfg), *command])
        err = capsys.readouterr().err
        assert "Traceback" not in err and "internal error" not in err, (command, err)
        assert code in (0, 3), (command, code, err)
        if code == 3:
            assert len(err.strip().splitlines()) == 1 and "run fsck" in err, err
    assert main(["--config", str(cfg), "fsck"]) == 1
    out = capsys.readouterr().out
    assert column in out and "PROBLEM" in out
