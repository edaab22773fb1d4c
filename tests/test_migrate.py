"""`pithcrawl migrate --to`: an archive with history, alerts and deliveries copied from
SQLite to PostgreSQL and back, every command's output the same on each; a target that
is not empty refused; a copy killed half-way refused by every command, then completed by
running it again.

Real archives made by real passes over a loopback mirror, a real PostgreSQL cluster
(`tests/postgres.py`), the CLI in this process or (to be killed) in a subprocess.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builder import BundleBuilder, TestSigner, canonical_record
from conftest import write_config
from mirror import TestMirror
from postgres import Cluster, raw, shown

from pithcrawl.cli import main
from pithcrawl.location import PgUrl

Where = Path | PgUrl


def _build(tmp_path: Path, signer: TestSigner, mirror: TestMirror, records: int) -> Path:
    """A SQLite archive after three passes: every record archived, half changed since
    (snapshots with history, `event_added`), one tampered (an open critical alert), and a
    hook that took each alert (deliveries). Its configuration's path."""
    builders = []
    for i in range(records):
        b = BundleBuilder(signer, record=canonical_record(f"2611.{i:05d}", title=f"P{i}"))
        b.add_event()
        mirror.put(b.bytes())
        builders.append(b)
    cfg = write_config(tmp_path, signer, mirror.base_url, db=tmp_path / "source.db")
    cfg.write_text(cfg.read_text() + '[alerts]\nhook = "/bin/true"\n')
    assert main(["--config", str(cfg), "-q", "track", *(b.pith_number for b in builders)]) == 0
    assert main(["--config", str(cfg), "-q", "sync"]) == 0
    for b in builders[: records // 2]:
        b.add_event()
        mirror.put(b.bytes())
    doc = builders[-1].build()
    doc["bundle_signature"]["bundle_sha256"] = "0" * 64
    mirror.put(json.dumps(doc).encode())
    assert main(["--config", str(cfg), "-q", "sync"]) == 1
    return cfg


def _cli(capsys: pytest.CaptureFixture[str], cfg: Path, db: Where, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--config", str(cfg), "--db", shown(db), "-q", *argv])
    out, _ = capsys.readouterr()
    return code, out


def _outputs(capsys: pytest.CaptureFixture[str], cfg: Path, db: Where, tmp: Path) -> dict:
    """What every read command says of the archive at `db` (its own name left out)."""
    code, text = _cli(capsys, cfg, db, "status", "--json")
    assert code == 0
    status = json.loads(text)
    assert status.pop("db")["path"] == str(db)
    out: dict = {"status": status}
    out["status text"] = _cli(capsys, cfg, db, "status")[1].split("\n", 1)[1]
    out["events"] = _cli(capsys, cfg, db, "events", "--json")
    suffix = status["open_alerts"][0]["pith_number"]
    changed = canonical_record("2611.00000", title="P0")
    for ref in (suffix, BundleBuilder(TestSigner(), record=changed).suffix):
        out[f"history {ref}"] = _cli(capsys, cfg, db, "history", ref, "--json")
    first = BundleBuilder(TestSigner(), record=changed).suffix
    out["diff"] = _cli(capsys, cfg, db, "diff", first)
    out["fsck"] = _cli(capsys, cfg, db, "fsck", "--json")
    alert = status["open_alerts"][0]["id"]
    folder = tmp / f"evidence-{len(list(tmp.glob('evidence-*')))}"
    assert _cli(capsys, cfg, db, "evidence", str(alert), "--out", str(folder))[0] == 0
    out["evidence"] = {  # the moment of the export aside
        str(p.relative_to(folder)): re.sub(rb'"generated_at": "[^"]*"', b"", p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    return out


def test_an_archive_goes_to_postgresql_and_back_and_every_command_says_the_same(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
    pg_cluster: Cluster,
) -> None:
    cfg = _build(tmp_path, signer, mirror, records=6)
    source: Where = tmp_path / "source.db"
    before = _outputs(capsys, cfg, source, tmp_path)
    pg = pg_cluster.archive()
    code, out = _cli(capsys, cfg, source, "migrate", "--to", shown(pg), "--json")
    assert code == 0, out
    copied = json.loads(out)
    assert copied["rows"]["snapshots"] == 6 * 2 + 3 * 2 + 1  # both documents, 3 changed, 1 bad
    assert copied["rows"]["deliveries"] >= 1 and copied["rows"]["alerts"] >= 1
    assert copied["bodies_checked"] == copied["rows"]["blobs"]
    assert _outputs(capsys, cfg, pg, tmp_path) == before
    back: Where = tmp_path / "back.db"
    assert _cli(capsys, cfg, pg, "migrate", "--to", str(back))[0] == 0
    assert _outputs(capsys, cfg, back, tmp_path) == before
    # The copies crawl on: ids go on from the copied ones (PostgreSQL's counters too).
    for db in (pg, back):
        assert main(["--config", str(cfg), "--db", shown(db), "-q", "sync"]) == 1
        with raw(db) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM snapshots ORDER BY id")]
        assert len(ids) == len(set(ids)) == copied["rows"]["snapshots"]  # nothing new


def test_a_target_that_holds_anything_is_refused_and_left_alone(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
    archive_at: Where,
) -> None:
    cfg = _build(tmp_path, signer, mirror, records=2)
    source = tmp_path / "source.db"
    assert main(["--db", shown(archive_at), "-q", "track", "2SZ3GMWFCMMCUPZJQTONOWSJZ2"]) == 0
    capsys.readouterr()
    code = main(["--config", str(cfg), "--db", str(source), "migrate", "--to", shown(archive_at)])
    err = capsys.readouterr().err
    assert code == 2
    assert "is not empty (it holds records)" in err and "Traceback" not in err
    with raw(archive_at) as conn:
        assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 0
    # Nor the archive itself, nor a URL libpq cannot read.
    assert main(["--db", str(source), "migrate", "--to", str(source)]) == 2
    with pytest.raises(SystemExit) as refused:
        main(["--db", str(source), "migrate", "--to", "postgresql://[::1/x"])
    assert refused.value.code == 2
    assert "not a PostgreSQL URL libpq can read" in capsys.readouterr().err


@pytest.mark.parametrize("towards", ["postgresql", "sqlite"])
def test_a_copy_killed_half_way_is_refused_until_run_again_and_completed(
    capsys: pytest.CaptureFixture[str],
    *,
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
    pg_cluster: Cluster,
    towards: str,
) -> None:
    cfg = _build(tmp_path, signer, mirror, records=60)
    source: Where = tmp_path / "source.db"
    if towards == "sqlite":  # the source on PostgreSQL, the copy into a file
        pg = pg_cluster.archive()
        assert _cli(capsys, cfg, source, "migrate", "--to", shown(pg))[0] == 0
        source = pg
    before = _outputs(capsys, cfg, source, tmp_path)
    argv = [sys.executable, "-m", "pithcrawl", "--config", str(cfg), "--db", shown(source)]
    # Killed once the first page of bodies is in; on a machine so busy that the copy
    # ended first, again into a new target (never more than three times).
    for attempt in range(3):
        target: Where = (
            tmp_path / f"copy{attempt}.db" if towards == "sqlite" else pg_cluster.archive()
        )
        if _killed_half_way([*argv, "migrate", "--to", shown(target)], target):
            break
    else:
        pytest.fail("three copies in a row ended before they could be killed")
    assert _rows(target, "blobs") > 0
    # Every command refuses it, saying what happened and what to do.
    for command in (["status"], ["sync"], ["history", "2SZ3GMWFCMMCUPZJQTONOWSJZ2"]):
        capsys.readouterr()
        assert main(["--config", str(cfg), "--db", shown(target), *command]) == 3
        err = capsys.readouterr().err
        assert "holds an unfinished copy of" in err and "migrate" in err, err
    done = subprocess.run([*argv, "migrate", "--to", shown(target)], check=False)
    assert done.returncode == 0
    assert _outputs(capsys, cfg, target, tmp_path) == before


def _killed_half_way(argv: list[str], target: Where) -> bool:
    """Run the copy `argv`; SIGKILL it once `target` holds a body: whether it was still
    running then."""
    proc = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _rows(target, "blobs") < 1:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode == -signal.SIGKILL


def _rows(db: Where, table: str) -> int:
    if isinstance(db, Path) and not db.exists():
        return 0
    try:
        with raw(db) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except Exception:  # not created yet, or locked for a moment
        return 0
