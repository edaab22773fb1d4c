"""`make demo`: its script, run as a person would (Ctrl-C included) and as CI does
(`--no-wait`): real loopback mirrors, real `pithcrawl` processes, the shipped fixture."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "demo" / "demo.py"
_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_demo_left() -> Iterator[None]:
    """A test that fails half-way kills its demo (and with it, its `serve`): none is left
    waiting for a Ctrl-C nobody sends."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def demo(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(DEMO), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    _STARTED.append(proc)
    return proc


def directory(output: str) -> Path:
    found = re.search(r"^demo directory: (\S+)$", output, re.M)
    assert found, output
    return Path(found.group(1))


def read_until_open(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """The demo's output up to its `open URL` line (the pages are up), and that URL."""
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("open http://"):
            return "".join(lines), line.split()[1]
    pytest.fail("".join(lines))


def test_the_demo_finds_the_rollback_and_the_tampered_copy_and_ctrl_c_cleans_up() -> None:
    """One interactive run checks what the demo shows (the alerts, their evidence, the
    pages), then that Ctrl-C stops everything and removes the demo's directory."""
    proc = demo()
    shown, url = read_until_open(proc)
    assert "sync exit codes: 0 before, 1 after beta turned bad" in shown
    alerts = re.findall(r"^  #(\d+) \S+  critical (\w+)  (\S+)  beta ", shown, re.M)
    assert sorted(kind for _, kind, _ in alerts) == ["document_invalid", "rollback"]
    tampered = next(number for _, kind, number in alerts if kind == "document_invalid")
    assert tampered == "pith:2026:2SZ3GMWFCMMCUPZJQTONOWSJZ2"  # the registry's real record
    assert re.search(r"alert-\d+/documents/[0-9a-f]{64}\.json", shown)
    assert re.search(r"^open http://127\.0\.0\.1:\d+/ ", shown, re.M)
    with urllib.request.urlopen(url, timeout=10) as r:
        page = r.read().decode()
    assert r.status == 200 and "Overview" in page and "rollback" in page
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    out = shown + rest
    assert proc.returncode == 0, out
    assert not directory(out).exists()  # cleaned up
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)  # the server is gone too


def test_sigterm_early_and_sigkill_late_leave_nothing_behind() -> None:
    """SIGTERM during the first sync of a CI run (`--no-wait`, as a cancelled CI job
    sends it) stops and cleans up as Ctrl-C does; SIGKILL once the pages are up takes
    `serve` with it (its children die with it). The two demos run side by side."""
    import time

    late = demo()  # read once `early` is done: its output waits in the pipe meanwhile
    early = demo("--no-wait")
    assert early.stdout is not None
    first = early.stdout.readline()
    while "sync" not in (line := early.stdout.readline()):
        assert line, "the demo ended before its first sync"
    early.send_signal(signal.SIGTERM)
    rest, _ = early.communicate(timeout=60)
    assert early.returncode == 130, rest
    assert not directory(first + rest).exists()

    shown, url = read_until_open(late)
    late.kill()
    late.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
        except OSError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"serve still answers at {url} after the demo was killed")
    shutil.rmtree(directory(shown), ignore_errors=True)  # SIGKILL: no finally
