"""A full disk and a read-only archive: a clear error, exit 3, and nothing damaged.

Both run `pithcrawl sync` as a real child process: under a file-size limit (what a full
disk looks like to SQLite), and inside a private mount namespace where the archive's
directory is mounted read-only (the tests run as root, which file modes would not stop).
"""

from __future__ import annotations

import json
import resource
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from builder import BundleBuilder, TestSigner, canonical_record
from mirror import TestMirror

from pithcrawl.cli import main


def setup(tmp_path: Path, signer: TestSigner, mirror: TestMirror, n: int) -> tuple[Path, list]:
    builders = []
    for i in range(n):
        b = BundleBuilder(signer, record=canonical_record(f"2611.{i:05d}", title=f"D{i}"))
        b.add_event(payload={"graph_snapshot": {"pad": "x" * 20000, "i": i}})
        mirror.put(b.bytes())
        builders.append(b)
    (tmp_path / "k.json").write_text(json.dumps(signer.public_key()))
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'db = "db/a.db"\n[trust]\nkeys = ["k.json"]\n[crawl]\ndiscover = false\n'
        f'[[mirrors]]\nname = "m"\nbase_url = "{mirror.base_url}"\n'
    )
    return cfg, builders


def trusted(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return int(conn.execute("SELECT count(*) FROM snapshots WHERE trusted = 1").fetchone()[0])


def pithcrawl(cfg: Path, *args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pithcrawl", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        **kw,
    )


def test_full_disk_is_exit_3_and_loses_nothing(tmp_path, signer: TestSigner, mirror):
    cfg, builders = setup(tmp_path, signer, mirror, 40)
    first = builders[:2]
    assert main(["--config", str(cfg), "track", *(b.pith_number for b in builders)]) == 0
    assert main(["--config", str(cfg), "sync", *(b.pith_number for b in first)]) == 0
    db = tmp_path / "db" / "a.db"
    before = trusted(db)
    limit = db.stat().st_size + 16 * 1024

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = pithcrawl(cfg, "sync", preexec_fn=small_disk)
    assert full.returncode == 3, full.stderr
    assert "Traceback" not in full.stderr
    assert "disk" in full.stderr.lower() or "full" in full.stderr.lower(), full.stderr
    assert trusted(db) >= before  # what was archived is intact; no half-written rows
    again = pithcrawl(cfg, "sync")
    assert again.returncode == 0, again.stderr
    assert trusted(db) == 2 * len(builders)


def test_read_only_archive_is_exit_3_and_untouched(tmp_path, signer: TestSigner, mirror):
    cfg, builders = setup(tmp_path, signer, mirror, 2)
    assert main(["--config", str(cfg), "sync", *(b.pith_number for b in builders[:1])]) == 0
    db = tmp_path / "db" / "a.db"
    before = db.read_bytes()
    folder = tmp_path / "db"
    script = (
        f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} && "
        f"exec {sys.executable} -m pithcrawl --config {cfg} sync {builders[1].pith_number}"
    )
    ro = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ro.returncode == 3, ro.stderr
    assert "Traceback" not in ro.stderr
    assert "read-only" in ro.stderr.lower(), ro.stderr
    assert db.read_bytes() == before
    assert trusted(db) == 2
