"""Many nodes, one archive: `run` daemons of one vantage sharing a PostgreSQL archive.

Each due pair is taken (leased) by one node; a node SIGKILLed mid-round holds its pairs
until their leases expire, then the other node fetches them. The mirror's own count of
requests is the access log; the archive is compared with one crawled by a single node.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from builder import BundleBuilder, TestSigner, canonical_record
from conftest import in_thread
from mirror import TestMirror
from postgres import Cluster, raw

from pithcrawl.location import PgUrl

RECORDS = 500
SIGNER = TestSigner(seed=bytes(32))


@pytest.fixture(scope="module")
def bundles() -> list[bytes]:
    """RECORDS signed bundles, one event each."""
    return [
        BundleBuilder(SIGNER, record=canonical_record(f"2611.{i:05d}")).bytes()
        for i in range(RECORDS)
    ]


@pytest.fixture(scope="module")
def _far_mirror(bundles: list[bytes]) -> Iterator[TestMirror]:
    with in_thread(TestMirror()) as m:
        for body in bundles:
            m.put(body)
        yield m


@pytest.fixture
def far_mirror(_far_mirror: TestMirror) -> TestMirror:
    """A loopback mirror of every bundle, each document taking a few milliseconds (the
    two nodes' rounds overlap: neither is done before the other has started); its
    counts start at zero."""
    _far_mirror.delay = 0.01
    _far_mirror.hits.clear()
    _far_mirror.conditional_hits.clear()
    return _far_mirror


def config(
    tmp_path: Path,
    name: str,
    db: PgUrl | Path,
    *bases: str,
    lease: str = "5s",
    extra: str = "",
    timeout: str = "2s",
) -> Path:
    """Node `name`'s configuration (vantage v): the archive at `db`, a mirror at each of
    `bases` (the first is "local"), `extra` sections."""
    key = tmp_path / "test.key.json"
    key.write_text(json.dumps(SIGNER.public_key()))
    where = db.url if isinstance(db, PgUrl) else str(db)
    names = ["local", *(f"m{i}" for i in range(1, len(bases)))]
    mirrors = "".join(
        f'[[mirrors]]\nname = "{n}"\nbase_url = "{b}"\n' for n, b in zip(names, bases, strict=True)
    )
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(
        f"db = {json.dumps(where)}\n"
        f'[trust]\nkeys = ["{key.name}"]\nclock_skew = "3650d"\n'
        f'[crawl]\ninterval = "1h"\ntimeout = "{timeout}"\ndiscover = false\nconcurrency = 8\n'
        f'[node]\nname = "{name}"\nvantage = "v"\nlease = "{lease}"\n{extra}{mirrors}'
    )
    return cfg


def command(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pithcrawl", "--config", str(cfg), "--log-format", "json", *args]


def track(cfg: Path, mirror: TestMirror) -> None:
    piths = [f"pith:2026:{suffix}" for suffix in mirror.bundles]
    subprocess.run(command(cfg, "track", *piths), check=True, capture_output=True)


def one(db: PgUrl | Path, sql: str) -> int:
    with raw(db) as conn:
        return int(conn.execute(sql).fetchone()[0])


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def fetched_all(db: PgUrl | Path, records: int = RECORDS) -> bool:
    """Every pair's bundle and state.json fetched by the vantage, and no lease left."""
    done = one(db, "SELECT count(*) FROM fetch_state WHERE vantage = 'v' AND status = 200")
    return done == 2 * records and one(db, "SELECT count(*) FROM leases") == 0


def archived(db: PgUrl | Path) -> list[tuple]:
    """What the archive holds, whoever fetched it: each snapshot's document and body."""
    with raw(db) as conn:
        rows = conn.execute(
            "SELECT s.suffix, s.mirror, s.kind, s.status, s.trusted, s.bundle_sha256,"
            " s.body_sha256, s.event_count FROM snapshots AS s ORDER BY 1, 2, 3"
        ).fetchall()
    return [tuple(r) for r in rows]


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            assert p.wait(timeout=20) in {0, -signal.SIGKILL}
        finally:
            if p.poll() is None:
                p.kill()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, _far_mirror: TestMirror) -> list[tuple]:
    """The archive one node makes of the mirror (a `sync` pass into SQLite)."""
    tmp = tmp_path_factory.mktemp("reference")
    db = tmp / "reference.db"
    cfg = config(tmp, "alone", db, _far_mirror.base_url)
    track(cfg, _far_mirror)
    subprocess.run(command(cfg, "sync"), check=True, capture_output=True)
    return archived(db)


def test_two_nodes_share_a_round_and_take_over_from_one_killed_in_the_next(
    pg_cluster: Cluster, tmp_path: Path, far_mirror: TestMirror, reference: list[tuple]
) -> None:
    """Round one: every pair fetched once, by one node or the other, and the archive a
    single node makes. Round two (every pair due again, as an interval later): node a
    SIGKILLed mid-round; b fetches the pairs a held once their leases (5 s) expire."""
    db = pg_cluster.archive()
    a, b = (config(tmp_path, n, db, far_mirror.base_url) for n in "ab")
    track(a, far_mirror)
    nodes = [
        subprocess.Popen(command(a, "run"), stderr=subprocess.DEVNULL),
        subprocess.Popen(command(b, "run"), stderr=subprocess.PIPE),
    ]
    try:
        wait_for(lambda: fetched_all(db), "one round of every pair")
        time.sleep(1.0)  # nothing more comes: every pair is due again in an hour
        status = subprocess.run(command(a, "status", "--json"), capture_output=True, check=True)
        requests = [
            far_mirror.hits[f"/pith/{s}/{doc}"]
            for s in far_mirror.bundles
            for doc in ("bundle.json", "state.json")
        ]
        assert requests == [1] * (2 * RECORDS), "a pair fetched twice, or not at all"
        # Both did their share, and the archive is the one a single node makes.
        shares = {n: one(db, f"SELECT count(*) FROM snapshots WHERE node = '{n}'") for n in "ab"}
        assert sum(shares.values()) == 2 * RECORDS
        assert min(shares.values()) > 0.1 * RECORDS, shares
        assert archived(db) == reference
        shown = {n["name"]: n for n in json.loads(status.stdout)["nodes"]}
        assert shown.keys() == {"a", "b"}
        assert {n["vantage"] for n in shown.values()} == {"v"}

        far_mirror.hits.clear()
        far_mirror.conditional_hits.clear()
        far_mirror.delay = 0.03  # a round long enough to be killed in
        with raw(db) as conn:
            conn.execute("UPDATE fetch_state SET next_due = last_fetch_at")
        wait_for(
            lambda: sum(far_mirror.conditional_hits.values()) > 100,
            "the nodes to be well into round two",
        )
        held = one(db, "SELECT count(*) FROM leases WHERE node = 'a'")
        nodes[0].send_signal(signal.SIGKILL)
        nodes[0].wait(timeout=10)
        killed_at = time.monotonic()
        wait_for(
            lambda: (
                one(db, "SELECT count(*) FROM fetch_state WHERE next_due = last_fetch_at") == 0
                and one(db, "SELECT count(*) FROM leases") == 0
            ),
            "node b to fetch a's pairs once their leases expired",
        )
        took = time.monotonic() - killed_at
    finally:
        stop(*nodes)
    assert held > 0
    assert took >= 4.0, "a's pairs were taken before their lease (5 s) ran out"
    # Only the pairs a held when killed were asked for twice in round two (their fetch
    # was cut off, nothing of it written); every other once.
    twice = [s for s in far_mirror.bundles if far_mirror.hits[f"/pith/{s}/bundle.json"] > 1]
    assert len(twice) <= held
    assert all(1 <= far_mirror.hits[f"/pith/{s}/bundle.json"] <= 2 for s in far_mirror.bundles)
    assert archived(db) == reference  # nothing lost, nothing written twice
    assert nodes[1].stderr is not None
    log = [
        json.loads(line) for line in nodes[1].stderr.read().splitlines() if line.startswith(b"{")
    ]
    assert not [e for e in log if e.get("level") in {"error", "critical"}], log[-5:]


def test_on_sqlite_a_second_node_is_refused(
    tmp_path: Path, mirror: TestMirror, bundles: list[bytes]
) -> None:
    """SQLite keeps one writer process: the second node exits 3, naming the first."""
    db = tmp_path / "archive.db"
    for body in bundles[:5]:
        mirror.put(body)
    a, b = (config(tmp_path, n, db, mirror.base_url) for n in "ab")
    track(a, mirror)
    first = subprocess.Popen(command(a, "run"), stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: db.exists() and one(db, "SELECT count(*) FROM nodes") > 0, "node a")
        second = subprocess.run(command(b, "run"), capture_output=True, text=True, check=False)
    finally:
        stop(first)
    assert second.returncode == 3
    assert "another pithcrawl" in second.stderr
    assert "Traceback" not in second.stderr


def test_an_alert_two_nodes_see_is_opened_and_delivered_once(
    pg_cluster: Cluster, tmp_path: Path
) -> None:
    """Two mirrors serving forked histories of 30 records, their pairs fetched by either
    node: each record's divergence is one alert, its hook run once, whichever node saw
    it and however often."""
    forks = []
    for i in range(30):
        sides = [BundleBuilder(SIGNER, record=canonical_record(f"2612.{i:05d}")) for _ in "ab"]
        for side, builder in zip("ab", sides, strict=True):
            builder.add_event(payload={"graph_snapshot": {"side": side}})
        forks.append(sides)
    calls = tmp_path / "calls"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$ALERT_ID $ALERT_STATUS $EVENT" >> "{calls}"\n')
    hook.chmod(0o755)
    db = pg_cluster.archive()
    with in_thread(TestMirror(delay=0.1)) as m0, in_thread(TestMirror(delay=0.1)) as m1:
        for a, b in forks:
            m0.put(a.bytes())
            m1.put(b.bytes())
        extra = '[alerts]\nhook = "hook.sh"\n'
        a, b = (config(tmp_path, n, db, m0.base_url, m1.base_url, extra=extra) for n in "ab")
        track(a, m0)
        nodes = [subprocess.Popen(command(cfg, "run"), stderr=subprocess.DEVNULL) for cfg in (a, b)]
        try:
            wait_for(
                lambda: calls.exists() and len(calls.read_text().splitlines()) >= len(forks),
                "every divergence delivered",
            )
            time.sleep(6)  # a second delivery of any would come within a delivery round
        finally:
            stop(*nodes)
    lines = calls.read_text().splitlines()
    assert len(lines) == len(forks), lines
    assert {line.split()[2] for line in lines} == {"mirror_divergence"}
    assert len({line.split()[0] for line in lines}) == len(forks)
    opened = one(db, "SELECT count(*) FROM alerts WHERE closed_at IS NULL")
    assert opened == len(forks)
    assert one(db, "SELECT count(DISTINCT node) FROM snapshots") == 2


def test_a_pair_outrunning_its_lease_is_cut_short_and_failed(tmp_path: Path) -> None:
    """Each document answers within crawl.timeout, but the pair (its bundle not at its
    address, then at the well-known one, then state.json) takes longer than node.lease:
    it is cut short before the lease ends, nothing of it archived, and recorded as a
    failed fetch retried after the backoff."""
    db = tmp_path / "archive.db"
    with in_thread(TestMirror(delay=0.8)) as slow:
        suffix = slow.put(BundleBuilder(SIGNER, record=canonical_record("2612.99999")).bytes())
        slow.hidden.add(suffix)
        cfg = config(tmp_path, "a", db, slow.base_url, lease="2.5s", timeout="1s")
        track(cfg, slow)
        node = subprocess.Popen(command(cfg, "run"), stderr=subprocess.PIPE)
        try:
            wait_for(
                lambda: db.exists() and one(db, "SELECT count(*) FROM fetch_state") > 0,
                "the pair's failure",
            )
        finally:
            stop(node)
    assert node.stderr is not None
    log = [json.loads(line) for line in node.stderr.read().splitlines() if line.startswith(b"{")]
    with raw(db) as conn:
        ((kind, failures, error, due, at),) = conn.execute(
            "SELECT kind, failures, last_error, next_due, last_fetch_at FROM fetch_state"
        ).fetchall()
        assert conn.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM leases").fetchone()[0] == 0
    assert (kind, failures) == ("bundle", 1)
    assert "took longer than node.lease (2.5s) and was cut short" in error
    assert due > at  # put off (a minute's backoff, with jitter)
    assert [e["event"] for e in log if e["level"] == "warning"] == ["fetch_failed"]


def test_a_node_stopped_past_its_leases_lets_the_other_fetch_and_records_nothing(
    pg_cluster: Cluster, tmp_path: Path
) -> None:
    """Node a is frozen (SIGSTOP: a paused VM) mid-pair for longer than its leases; node
    b takes and fetches its pairs; a, thawed, finds its leases gone: it records neither
    its late fetches nor a failure, and logs `lease_lost`."""
    db = pg_cluster.archive()
    with in_thread(TestMirror(delay=1.0)) as slow:
        for i in range(4):
            slow.put(BundleBuilder(SIGNER, record=canonical_record(f"2612.8{i:04d}")).bytes())
        a, b = (config(tmp_path, n, db, slow.base_url) for n in "ab")
        track(a, slow)
        first = subprocess.Popen(command(a, "run"), stderr=subprocess.PIPE)
        second = None
        try:
            wait_for(lambda: one(db, "SELECT count(*) FROM leases") == 4, "a to take every pair")
            first.send_signal(signal.SIGSTOP)
            second = subprocess.Popen(command(b, "run"), stderr=subprocess.DEVNULL)
            wait_for(lambda: fetched_all(db, 4), "b to fetch a's pairs")
            first.send_signal(signal.SIGCONT)
            time.sleep(3)  # a wakes past its deadlines
        finally:
            first.send_signal(signal.SIGCONT)
            stop(*([second] if second else []))
            first.send_signal(signal.SIGTERM)
            # 3 when it was frozen inside a write transaction for long: the server ended
            # that session (a stalled node must not hold the write lock), and a restarts.
            assert first.wait(timeout=20) in {0, 3}
    assert first.stderr is not None
    err = first.stderr.read()
    if first.returncode == 0:
        log = [json.loads(line) for line in err.splitlines() if line.startswith(b"{")]
        assert len([e for e in log if e["event"] == "lease_lost"]) == 4
    else:
        assert b"idle-in-transaction" in err and b"Traceback" not in err, err[-2000:]
    assert one(db, "SELECT count(*) FROM fetch_state WHERE failures > 0") == 0
    assert one(db, "SELECT count(*) FROM snapshots WHERE node = 'b'") == 8
    assert one(db, "SELECT count(*) FROM snapshots") == 8


def test_a_reload_keeps_the_nodes_name_and_a_stop_lets_go_of_its_leases(tmp_path: Path) -> None:
    """SIGHUP with another [node] name is refused (the name holds the node's lock, its
    leases and its clock: a restart's to change); SIGTERM mid-round lets go of every
    lease the node held, for the other nodes to take at once."""
    db = tmp_path / "archive.db"
    with in_thread(TestMirror(delay=0.5)) as slow:
        for i in range(6):
            slow.put(BundleBuilder(SIGNER, record=canonical_record(f"2612.7{i:04d}")).bytes())
        cfg = config(tmp_path, "a", db, slow.base_url)
        track(cfg, slow)
        node = subprocess.Popen(command(cfg, "run"), stderr=subprocess.PIPE)
        try:
            wait_for(
                lambda: db.exists() and one(db, "SELECT count(*) FROM leases") > 0, "leases taken"
            )
            cfg.write_text(cfg.read_text().replace('name = "a"', 'name = "b"'))
            node.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            assert one(db, "SELECT count(*) FROM leases WHERE node = 'a'") > 0
        finally:
            stop(node)
    assert node.returncode == 0
    assert one(db, "SELECT count(*) FROM leases") == 0
    assert node.stderr is not None
    log = [json.loads(line) for line in node.stderr.read().splitlines() if line.startswith(b"{")]
    (refused,) = [e for e in log if e["event"] == "reload_refused"]
    assert "[node] name and vantage cannot change on a reload" in refused["error"]
    assert not [e for e in log if e["event"] == "config_reloaded"]


def test_a_slow_mirror_holds_up_no_other_mirror(tmp_path: Path) -> None:
    """One node, a mirror answering in seconds beside a fast one: while the slow one's
    pairs wait for its `per_host` slots, the fast one's are read and fetched on (the
    scheduler does not sleep on the slow one's queued pairs)."""
    db = tmp_path / "archive.db"
    bodies = [
        BundleBuilder(SIGNER, record=canonical_record(f"2612.6{i:04d}")).bytes() for i in range(100)
    ]
    with in_thread(TestMirror(delay=2.0)) as slow, in_thread(TestMirror()) as fast:
        for body in bodies:
            slow.put(body)
            fast.put(body)
        cfg = config(tmp_path, "a", db, slow.base_url, fast.base_url)
        cfg.write_text(
            cfg.read_text().replace("concurrency = 8\n", "concurrency = 8\nper_host = 2\n")
        )
        track(cfg, slow)
        node = subprocess.Popen(command(cfg, "run"), stderr=subprocess.DEVNULL)
        try:
            wait_for(
                lambda: fast.hits and sum(fast.hits.values()) >= 2 * len(bodies),
                "every pair of the fast mirror",
            )
            slow_done = sum(slow.hits.values())
        finally:
            stop(node)
    # The slow mirror answered a few documents meanwhile (two at a time, 2 s each); the
    # fast one's 200 came in between, not a queue's worth per slow answer.
    assert slow_done <= 8, slow_done
