"""`pithcrawl run`: a real daemon process against a loopback mirror, under a fake systemd
notify socket: it becomes ready, crawls in rounds, reloads on SIGHUP (keeping the old
config when the new one is bad), and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from builder import BundleBuilder, TestSigner, canonical_record
from conftest import db_setting
from mirror import TestMirror
from postgres import raw
from prometheus_client.parser import text_string_to_metric_families

from pithcrawl.config import host_name
from pithcrawl.location import PgUrl
from pithcrawl.store.postgres import BackendError


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(10)
    yield s
    s.close()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def messages(s: socket.socket, until: str, timeout: float = 15) -> list[str]:
    """The notify datagrams up to the first holding `until` (within `timeout` seconds:
    watchdog pings keep coming, so a recv alone would never time out)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(until in m for m in seen):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {until} within {timeout}s: {seen[-5:]}")
        seen.append(s.recv(4096).decode())
    return seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(  # noqa: PLR0917 (the tests name them in order)
    tmp_path: Path,
    signer: TestSigner,
    base: str,
    interval: str,
    extra: str = "",
    db: Path | PgUrl | None = None,
) -> Path:
    key = tmp_path / "test.key.json"
    key.write_text(json.dumps(signer.public_key()))
    cfg = tmp_path / "pithcrawl.toml"
    cfg.write_text(
        f"db = {json.dumps(db_setting(db))}\n"
        f'[trust]\nkeys = ["{key.name}"]\nclock_skew = "3650d"\n'
        f'[crawl]\ninterval = "{interval}"\ntimeout = "5s"\ndiscover = false\n'
        f'[[mirrors]]\nname = "local"\nbase_url = "{base}"\n{extra}'
    )
    return cfg


def snapshots(db: Path | PgUrl) -> int:
    if isinstance(db, Path) and not db.exists():
        return 0
    with raw(db) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM snapshots").fetchone()[0])
        except (sqlite3.OperationalError, BackendError):
            return 0


def test_run_crawls_in_rounds_reloads_and_stops_on_sigterm(
    archive_at: Path | PgUrl,
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
    notify_socket: socket.socket,
):
    b = BundleBuilder(signer, record=canonical_record("2611.00042"))
    b.add_event()
    mirror.put(b.bytes())
    port = free_port()
    cfg = write_config(
        tmp_path,
        signer,
        mirror.base_url,
        "1s",
        f'[metrics]\nbind = "127.0.0.1:{port}"\n',
        db=archive_at,
    )
    db = archive_at
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "400000"}
    base = [sys.executable, "-m", "pithcrawl", "--config", str(cfg), "--log-format", "json"]
    assert subprocess.run([*base, "track", b.pith_number], env=env, check=False).returncode == 0
    proc = subprocess.Popen([*base, "run"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert any("READY=1" in m for m in messages(notify_socket, "READY=1"))
        assert any("WATCHDOG=1" in m for m in messages(notify_socket, "WATCHDOG=1"))
        wait_for(lambda: snapshots(db) == 2, "the first round (bundle and state.json)")
        path = f"/pith/{b.suffix}/bundle.json"
        wait_for(lambda: mirror.conditional_hits[path] >= 2, "two more rounds, conditional")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            exposition = resp.read().decode()
        families = {f.name: f for f in text_string_to_metric_families(exposition)}
        fetched = {
            s.labels["outcome"]: s.value
            for s in families["pithcrawl_fetches"].samples
            if s.name == "pithcrawl_fetches_total" and s.labels["kind"] == "bundle"
        }
        assert fetched["changed"] == 1
        assert fetched["not_modified"] >= 2
        assert families["pithcrawl_records_tracked"].samples[0].value == 1

        cfg.write_text(cfg.read_text() + "\n[crawl\n")  # broken TOML
        proc.send_signal(signal.SIGHUP)
        assert any("READY=1" in m for m in messages(notify_socket, "READY=1"))
        hits = mirror.hits[path]
        wait_for(lambda: mirror.hits[path] > hits, "crawling on with the old config")

        cfg.write_text(cfg.read_text().replace("\n[crawl\n", "\n"))
        proc.send_signal(signal.SIGHUP)
        assert any("READY=1" in m for m in messages(notify_socket, "READY=1"))

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert any("STOPPING=1" in m for m in messages(notify_socket, "STOPPING=1"))
    finally:
        if proc.poll() is None:
            proc.kill()
    log = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    names = [entry["event"] for entry in log]
    assert "daemon_ready" in names
    assert "reload_refused" in names
    assert "config_reloaded" in names
    assert names[-2:] == ["daemon_stopping", "crawl_summary"] or "daemon_stopping" in names
    with raw(db) as conn:
        if isinstance(db, Path):
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT count(*) FROM snapshots WHERE trusted = 1").fetchone()[0]
        nodes = conn.execute("SELECT name, vantage, first_seen < last_seen FROM nodes").fetchall()
    assert rows == 2
    # The daemon is a node of the archive, seen again as its rounds started and ended.
    assert nodes == [(host_name(), host_name(), 1)]


def test_second_writer_is_refused_while_run_holds_the_archive(
    archive_at: Path | PgUrl, tmp_path: Path, signer: TestSigner, mirror: TestMirror
):
    """A `sync` while `run` owns the archive: a clear message and exit 3, nothing damaged."""
    b = BundleBuilder(signer)
    mirror.put(b.bytes())
    cfg = write_config(tmp_path, signer, mirror.base_url, "1h", db=archive_at)
    base = [sys.executable, "-m", "pithcrawl", "--config", str(cfg), "--log-format", "json"]
    subprocess.run([*base, "track", b.pith_number], check=True)
    proc = subprocess.Popen([*base, "run"], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: snapshots(archive_at) == 2, "the daemon's first round")
        second = subprocess.run([*base, "sync"], capture_output=True, text=True, check=False)
        assert second.returncode == 3
        assert "another pithcrawl" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_the_daemons_counts_include_the_alerts_its_periodic_checks_open(
    tmp_path: Path, signer: TestSigner, mirror: TestMirror
):
    """`crawl_summary`'s events and alerts count what the record- and mirror-level rules
    open between fetches (here a mirror unreachable for longer than unreachable_after),
    as they count what a fetch finds."""
    from datetime import UTC, datetime

    import anyio

    from pithcrawl.config import load_config
    from pithcrawl.daemon import Daemon
    from pithcrawl.keys import TrustSet, load_key
    from pithcrawl.sdnotify import Notifier
    from pithcrawl.store import Store

    b = BundleBuilder(signer, record=canonical_record("2611.00077"))
    mirror.put(b.bytes())
    dead = f"http://127.0.0.1:{free_port()}"
    extra = f'[[mirrors]]\nname = "dead"\nbase_url = "{dead}"\n[alerts]\nunreachable_after = "1s"\n'
    cfg = write_config(tmp_path, signer, mirror.base_url, "1s", extra)
    trust = TrustSet([load_key(signer.public_key())])

    async def go() -> tuple[Daemon, list[str]]:
        async with await Store.open(tmp_path / "archive.db") as store:
            await store.watchlist.track([b.suffix], datetime.now(UTC))
        daemon = Daemon(
            lambda: load_config(cfg),
            tmp_path / "archive.db",
            lambda _: trust,
            Notifier({}),
            check_every=0.3,
            deliver_every=0.1,
        )
        with anyio.move_on_after(5):
            await daemon.run()
        async with await Store.open(tmp_path / "archive.db", readonly=True) as store:
            kinds = [e.kind for e in await store.events() if e.kind != "alert_closed"]
        return daemon, kinds

    daemon, kinds = anyio.run(go)
    assert "mirror_unreachable" in kinds
    assert daemon.totals.events == len(kinds)
