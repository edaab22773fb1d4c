"""`pithcrawl run` when things go wrong around it: a reload naming a secret it cannot read,
a mirror that accepts connections and never answers (the watchdog and the lag metric).
A real daemon process, a fake systemd notify socket, real sockets on loopback."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from builder import BundleBuilder, TestSigner, canonical_record
from mirror import TestMirror
from prometheus_client.parser import text_string_to_metric_families
from test_run import free_port, messages, notify_socket, snapshots, wait_for, write_config

from pithcrawl.sdnotify import Notifier

__all__ = ["notify_socket"]  # a fixture, used by name


@pytest.fixture
def hanging() -> Iterator[str]:
    """The base URL of a server that accepts every connection and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()
    for c in held:
        c.close()


def _command(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "pithcrawl", "--config", str(cfg), "--log-format", "json"]


def _stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(20)


def test_a_reload_naming_an_unreadable_secret_keeps_the_old_configuration(
    tmp_path: Path, signer: TestSigner, mirror: TestMirror, notify_socket: socket.socket
):
    """The secret file is part of the configuration: a reload that names one it cannot
    read is refused like any bad configuration (the daemon used to exit 2 on it, which
    systemd does not restart)."""
    b = BundleBuilder(signer, record=canonical_record("2611.00042"))
    b.add_event()
    mirror.put(b.bytes())
    (tmp_path / "secret").write_text("s3cret\n")
    extra = '[alerts]\nwebhook = "http://127.0.0.1:9/hook"\nwebhook_secret_file = "secret"\n'
    cfg = write_config(tmp_path, signer, mirror.base_url, "1s", extra)
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.getsockname()}
    subprocess.run([*_command(cfg), "track", b.pith_number], env=env, check=True)
    proc = subprocess.Popen([*_command(cfg), "run"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        messages(notify_socket, "READY=1")
        wait_for(lambda: snapshots(tmp_path / "archive.db") == 2, "the first round")
        cfg.write_text(cfg.read_text().replace('"secret"', '"secret.typo"'))
        proc.send_signal(signal.SIGHUP)
        seen = messages(notify_socket, "reload refused")
        assert any("RELOADING=1" in m for m in seen)
        assert proc.poll() is None
    finally:
        code = _stop(proc)
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert code == 0, err
    assert '"reload_refused"' in err and "secret.typo" in err


def test_a_mirror_that_never_answers_does_not_silence_the_watchdog(
    tmp_path: Path, signer: TestSigner, notify_socket: socket.socket, hanging: str
):
    """Every worker waits on the mirror (until its timeout, then again on the fallback
    URL): the scheduler waits for a free one, and keeps pinging the watchdog meanwhile
    (it used to go quiet for many timeouts, and systemd would have killed it). It waits
    asleep: its pairs queued for a mirror at `per_host` once made it spin, burning a
    core while the mirror hung."""
    cfg = write_config(tmp_path, signer, hanging, "1h")
    cfg.write_text(
        cfg.read_text().replace('timeout = "5s"', 'timeout = "1s"\nconcurrency = 8\nper_host = 2')
    )
    numbers = [
        BundleBuilder(signer, record=canonical_record(f"2611.{i:05d}")).pith_number
        for i in range(20)
    ]
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "2000000"}
    subprocess.run([*_command(cfg), "track", *numbers], env=env, check=True)
    proc = subprocess.Popen([*_command(cfg), "run"], env=env, stderr=subprocess.DEVNULL, text=True)
    pings: list[float] = []
    try:
        messages(notify_socket, "READY=1")
        start = time.monotonic()
        cpu_start = _cpu_seconds(proc.pid)
        notify_socket.settimeout(0.2)
        while time.monotonic() < start + 6:  # the old gap: about 14 s
            try:
                if "WATCHDOG=1" in notify_socket.recv(4096).decode():
                    pings.append(time.monotonic())
            except TimeoutError:
                pass
        end = time.monotonic()
        cpu = _cpu_seconds(proc.pid) - cpu_start
    finally:
        _stop(proc)
    times = [start, *pings, end]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 2.0, f"{max(gaps):.1f}s without a watchdog ping (WatchdogSec is 2 s)"
    # Asleep but for its pings and the workers' timeouts (0.1 s of CPU here; spinning,
    # it took all the CPU it got: 5.5 s of the 6 on an idle machine).
    assert cpu < 0.25 * (end - start), f"{cpu:.1f} s of CPU in {end - start:.0f} s of waiting"


def _cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_lag_metric_tells_how_late_the_waiting_pairs_are(
    tmp_path: Path, signer: TestSigner, mirror: TestMirror, hanging: str
):
    """Pairs due and waiting for a worker (all busy on a mirror that never answers): the
    lag gauge says how late the oldest is (it used to read 0 whenever any pair was in
    flight, which is exactly when a daemon falls behind)."""
    numbers = []
    for i in range(40):
        b = BundleBuilder(signer, record=canonical_record(f"2611.{i:05d}"))
        mirror.put(b.bytes())
        numbers.append(b.pith_number)
    cfg = write_config(tmp_path, signer, mirror.base_url, "1s")
    subprocess.run([*_command(cfg), "track", *numbers], check=True, capture_output=True)
    subprocess.run([*_command(cfg), "sync"], check=True, capture_output=True)  # due in 1 s
    port = free_port()
    cfg.write_text(
        cfg.read_text()
        .replace(mirror.base_url, hanging)  # the same mirror, now hanging
        .replace('timeout = "5s"', 'timeout = "1s"\nconcurrency = 4\nper_host = 2')
        + f'[metrics]\nbind = "127.0.0.1:{port}"\n'
    )
    proc = subprocess.Popen([*_command(cfg), "run"], stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    finally:
        _stop(proc)
    lag = families["pithcrawl_scheduler_lag_seconds"].samples[0].value
    # Due about 1 s after the sync; 5 s later most of the 40 still wait for 4 workers.
    assert lag > 2, f"the lag gauge reads {lag} s while pairs wait seconds past due"


def test_a_supervisor_that_does_not_read_never_stops_the_daemon(tmp_path: Path):
    """A notify socket nobody reads (its queue full after a few datagrams): every notify
    returns at once, false when the datagram could not be queued (a blocking send froze
    the daemon's event loop once the queue was full: no fetch, no ping, nothing)."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as deaf:
        deaf.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        started = time.monotonic()
        sent = [notifier.ping() for _ in range(200)]
        assert time.monotonic() - started < 2
    assert sent[0] and not all(sent)


def test_a_ready_waits_a_little_for_room_where_a_ping_would_not(tmp_path: Path):
    """The supervisor's queue is full of pings when a reload ends: READY=1 waits for
    room (up to two seconds) rather than being dropped, which would leave systemd
    waiting on a reload that is done."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as supervisor:
        supervisor.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        while notifier.ping():
            pass  # the queue is full
        got: list[bytes] = []

        def drain() -> None:
            time.sleep(0.3)
            supervisor.settimeout(2)
            while not any(b"READY=1" in m for m in got):
                got.append(supervisor.recv(4096))

        reader = threading.Thread(target=drain)
        reader.start()
        assert notifier.ready("done")
        reader.join(5)
    assert any(b"READY=1" in m for m in got)
