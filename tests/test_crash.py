"""Crash safety in CI: bench/crash_test.py's reduced form, 200 records and 3 SIGKILLs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "crash_test.py"


def test_sync_survives_sigkill(tmp_path: Path) -> None:
    """Killed mid-crawl 3 times, `sync` leaves a sound archive and ends as an uninterrupted run."""
    out = tmp_path / "crash.json"
    argv = [sys.executable, str(SCRIPT), "--records", "200", "--kills", "3", "--json", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    tally = result["tally"]
    assert result["violations"] == []
    assert tally["kills"] == 3
    assert tally["invariant_checks_passed"] == tally["invariant_checks"] > 0
    assert all(tally["comparison"].values()), tally["comparison"]
