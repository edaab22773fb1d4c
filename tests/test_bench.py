"""The benchmarks still run and still check what they measure (tiny sizes, no timing
asserted: speed targets live in the scripts' figures, never in a test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run(script: str, *args: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def test_sync_bench_runs_every_phase_and_checks_its_archive(
    tmp_path: Path, pg_cluster: Any
) -> None:
    """Every phase, with the passes on PostgreSQL (`--db`) beside SQLite's; then
    bench/verify_bench.py, which the script runs with `--bundles`, `--rounds` and `--json`
    as a person would, and whose figures it keeps."""
    out = tmp_path / "sync.json"
    env = {"BENCH_OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path)}
    args = ["--records", "20", "--verify-bundles", "3", "--verify-rounds", "1"]
    run("sync_bench.py", *args, "--db", pg_cluster.url(), "--json", str(out), env=env)
    figures = json.loads(out.read_text())
    run20 = figures["sizes"]["20"]
    assert run20["pg_cold"]["summary"]["new_snapshots"] == 40
    assert run20["pg_unchanged"]["summary"]["new_snapshots"] == 0
    # The run nodes' cold round: each document archived once, by one node or the other.
    assert run20["pg_run_1"]["snapshots_by_node"] == {"n0": 40}
    assert sum(run20["pg_run_2"]["snapshots_by_node"].values()) == 40
    assert run20["unchanged"]["stats_delta"] == {
        "blobs": 0,
        "snapshots": 0,
        "blob_bytes_stored": 0,
    }
    assert run20["bumped"]["changed_records"] == 2
    assert all(c["found"] == c["expected"] for c in run20["new_snapshot_checks"].values())
    assert any((tmp_path / "out").iterdir())  # the corpus was cached where it was told

    verify = figures["verification"]  # verify_bench.py's --json, as it wrote it
    assert verify["bundles"] == 3
    assert verify["signatures"] >= 3 * 3  # receipt, record_created, bundle at least
    # Figures only, never compared (timing on a loaded machine is noise); that the
    # library work hashes what the spec hashes is checked by the script itself.
    for key in ("ratio_to_floor", "library_us", "best_possible_ratio"):
        assert verify[key] > 0 and verify["real_bundle"][key] > 0
    assert verify["real_bundle"]["signatures"] == 4


def test_soak_runs_the_daemon_and_stops_it_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    env = {"BENCH_OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path)}
    args = ["--records", "20", "--minutes", "0.2", "--interval", "4s", "--every", "3"]
    run("soak.py", *args, "--json", str(out), env=env)
    figures = json.loads(out.read_text())
    assert figures["exit_code"] == 0 and figures["loud_log_lines"] == []
    assert len(figures["samples"]) >= 3
    assert all(s["rss_mb"] > 0 and s["fds"] > 0 for s in figures["samples"])


def test_soak_refuses_to_judge_a_run_too_short_to_have_a_steady_part(tmp_path: Path) -> None:
    """No sample after the warm-up: no verdict of "0 growth", but exit 1 saying why."""
    env = {**os.environ, "BENCH_OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path)}
    args = ["--records", "5", "--minutes", "0.05", "--interval", "10s", "--every", "1"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "soak.py"), *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1
    assert "too short to judge" in done.stderr
