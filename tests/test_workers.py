"""A `sync` pass shared with worker processes: their logs, and a worker that fails.

Real processes (`crawl.workers = 2`, with `plan.SHARE_MIN` lowered so six records are
enough to start one), a real loopback mirror and a real archive.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from aiohttp import web
from conftest import in_thread, write_config
from mirror import TestMirror
from test_sync import records

from pithcrawl.config import parse_config
from pithcrawl.keys import TrustSet
from pithcrawl.log import configure as configure_logging
from pithcrawl.plan import Records
from pithcrawl.share import Tally
from pithcrawl.worker import ShareJob, _tally_of, run_share_in_worker

#: `pithcrawl` with shares of one record and up (a worker for six records).
RUN = (
    "import sys; from pithcrawl import plan; plan.SHARE_MIN = 1\n"
    "from pithcrawl.cli import main; raise SystemExit(main(sys.argv[1:]))\n"
)


class HeldMirror(TestMirror):
    """A TestMirror that holds the bundles of `held` records until `release` is set."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self.held: set[str] = set()
        self.release = threading.Event()

    async def _bundle(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["suffix"] in self.held:
            await anyio.to_thread.run_sync(self.release.wait, abandon_on_cancel=True)
        return await super()._bundle(request)


@pytest.fixture
def held_mirror() -> Iterator[HeldMirror]:
    with in_thread(HeldMirror()) as m:
        try:
            yield m
        finally:
            m.release.set()


def _pass(
    tmp_path: Path, signer, base_url: str, bad: set[int]
) -> tuple[list[str], list[str], list[bytes]]:
    """Six tracked records, those at the positions in `bad` tampered: their suffixes, the
    command to run pithcrawl on them, and their bundles."""
    builders = {b.suffix: b for b in records(signer, 6)}
    order = sorted(builders)
    docs = []
    for i, suffix in enumerate(order):
        doc = builders[suffix].build()
        if i in bad:
            doc["bundle_signature"]["bundle_sha256"] = "0" * 64
        docs.append(json.dumps(doc).encode())
    cfg = write_config(tmp_path, signer, base_url)
    cfg.write_text(
        cfg.read_text().replace("[crawl]\n", "[crawl]\nworkers = 2\n").replace('"5s"', '"60s"')
    )
    base = [sys.executable, "-c", RUN, "--config", str(cfg), "--log-format", "json"]
    done = subprocess.run([*base, "track", *order], check=False, capture_output=True)
    assert done.returncode == 0, done.stderr
    return order, base, docs


def test_a_workers_alerts_are_logged_like_this_processs(tmp_path: Path, signer, mirror):
    """The worker logs to the stderr of the pass: an alert it opens is told there."""
    order, base, docs = _pass(tmp_path, signer, mirror.base_url, bad={0, 3})
    for doc in docs:
        mirror.put(doc)
    p = subprocess.run(
        [*base, "sync", "--json"], check=False, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 1, p.stderr
    assert json.loads(p.stdout)["alerts"] == 2
    opened = [json.loads(line) for line in p.stderr.splitlines() if '"alert_opened"' in line]
    # Records 0-2 are this process's share, 3-5 the worker's: one alert from each.
    assert sorted(a["dedup_key"].split(":")[1] for a in opened) == [order[0], order[3]]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        path = Path(f"/proc/{pid}/task/{task}/children")
        if path.exists():
            out += [int(c) for c in path.read_text().split()]
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_worker_costs_its_share_not_the_pass(tmp_path: Path, signer, held_mirror):
    """The OOM killer takes the worker: the pass still ends with its summary, and with
    exit 1 for the alert this process's own share opened, not with a traceback."""
    order, base, docs = _pass(tmp_path, signer, held_mirror.base_url, bad={0})
    for doc in docs:
        held_mirror.put(doc)
    held_mirror.held = {order[4]}  # keeps the worker busy until it is killed
    p = subprocess.Popen(
        [*base, "sync", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        db = tmp_path / "archive.db"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # this process's share is archived
            time.sleep(0.1)
            try:
                with sqlite3.connect(db) as c:
                    if c.execute("SELECT count(*) FROM alerts").fetchone()[0]:
                        break
            except sqlite3.Error:
                pass
        workers = _children(p.pid)
        assert workers, "no worker process"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "Traceback" not in err and "internal error" not in err, err
    assert p.returncode == 1, err
    summary = json.loads(out)
    assert summary["alerts"] == 1 and summary["errors"] >= 1
    failed = [json.loads(line) for line in err.splitlines() if '"worker_failed"' in line]
    assert len(failed) == 1
    assert "killed by signal 9" in failed[0]["detail"]


def test_a_worker_that_fails_is_one_error_told_in_the_log(tmp_path: Path, capfd):
    """A worker whose archive cannot be opened logs why and exits; the pass counts it as
    one error instead of losing everything else it did."""
    configure_logging("json")
    job = ShareJob(
        parse_config(""),
        tmp_path / "missing" / "archive.db",
        Records(named=("A" * 26,)),
        [],
        TrustSet([]),
        ("json", 0),
        os.getpid(),
    )
    out: list[Tally] = []
    anyio.run(run_share_in_worker, job, out)
    assert out == [Tally(errors=1, failed_share=True)]
    err = capfd.readouterr().err
    failed = [json.loads(line) for line in err.splitlines() if '"worker_failed"' in line]
    # One line from the worker (why), one from this process (that its share is lost).
    assert len(failed) == 2, err
    assert "archive.db" in failed[0]["detail"]
    assert "exited with status 1" in failed[1]["detail"]
    assert failed[1]["share"] == "1 named records"


def test_a_worker_answer_that_cannot_be_read_is_a_failed_share():
    job = ShareJob(parse_config(""), Path("x"), Records(), [], TrustSet([]), ("json", 0), 1)
    assert _tally_of(job, 0, b"not a pickle") == Tally(errors=1, failed_share=True)
    assert _tally_of(job, -9, b"") == Tally(errors=1, failed_share=True)
    assert _tally_of(job, 0, pickle.dumps(Tally(new_snapshots=3))) == Tally(new_snapshots=3)
