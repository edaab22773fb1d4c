"""`pithcrawl sync` end to end against real loopback mirrors and a real SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builder import BundleBuilder, TestSigner, canonical_record
from conftest import VANTAGE, in_thread, write_config
from mirror import TestMirror
from postgres import raw

from pithcrawl import plan
from pithcrawl.cli import main
from pithcrawl.config import parse_config
from pithcrawl.location import PgUrl


def sync(capsys, cfg: Path, *extra: str) -> tuple[int, dict]:
    code = main(["--config", str(cfg), "--log-format", "json", "-q", "sync", "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out.strip().splitlines()[-1])


def records(signer: TestSigner, n: int) -> list[BundleBuilder]:
    out = []
    for i in range(n):
        b = BundleBuilder(signer, record=canonical_record(f"2611.{i:05d}", title=f"P{i}"))
        b.add_event()
        out.append(b)
    return out


def test_first_sync_archives_every_record_then_resync_is_conditional(
    archive_at, capsys, tmp_path: Path, signer: TestSigner, mirror: TestMirror
):
    """First sync: every record archived. Second: 304s, no new snapshot."""
    builders = records(signer, 5)
    for b in builders:
        mirror.put(b.bytes())
    cfg = write_config(tmp_path, signer, mirror.base_url, db=archive_at)
    assert main(["--config", str(cfg), "track", *(b.pith_number for b in builders)]) == 0
    capsys.readouterr()
    code, summary = sync(capsys, cfg)
    assert code == 0, summary
    assert summary["records"] == 5
    assert summary["new_snapshots"] == 10  # bundle and state.json of each
    assert summary["errors"] == 0
    code, summary = sync(capsys, cfg)
    assert code == 0
    assert summary["new_snapshots"] == 0
    assert sum(mirror.conditional_hits.values()) == 10


def test_tampered_bundle_is_an_alert_and_exit_1(
    archive_at, capsys, tmp_path: Path, signer: TestSigner, mirror: TestMirror
):
    b = records(signer, 1)[0]
    doc = b.build()
    doc["bundle_signature"]["bundle_sha256"] = "0" * 64
    mirror.put(json.dumps(doc).encode())
    cfg = write_config(tmp_path, signer, mirror.base_url, db=archive_at)
    code, summary = sync(capsys, cfg, b.pith_number)
    assert code == 1
    assert summary["alerts"] == 1
    # Served again unchanged: the same alert is still open (no second one), still exit 1.
    code, summary = sync(capsys, cfg, b.pith_number)
    assert code == 1
    assert summary["alerts"] == 1
    assert summary["events"] == 0
    assert summary["untrusted"] == 1


def test_dead_mirror_exits_3(
    archive_at, capsys, tmp_path: Path, signer: TestSigner, mirror: TestMirror
):
    b = records(signer, 1)[0]
    mirror.put(b.bytes())
    mirror.fail(b.suffix, 503, retry_after="120")
    cfg = write_config(tmp_path, signer, mirror.base_url, db=archive_at)
    code, summary = sync(capsys, cfg, b.pith_number)
    assert code == 3
    assert summary["errors"] == 1


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[crawl]\ntimeout = "soon"\n', "crawl.timeout"),
        ("[crawl]\nconcurrency = 0\n", "crawl.concurrency"),
        ('[[mirrors]]\nname = "x"\nbase_url = "ftp://a"\n', "mirrors[0].base_url"),
        ('[trust]\nkeys = ["missing.key.json"]\n', "missing.key.json"),
        ("[crawl\n", "TOML"),
    ],
)
def test_bad_config_exits_2_naming_the_key(capsys, tmp_path: Path, toml: str, key: str):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    code = main(["--config", str(cfg), "sync"])
    err = capsys.readouterr().err
    assert code == 2
    assert key in err
    assert "Traceback" not in err
    assert not (tmp_path / "pithcrawl.db").exists()


def _archived(db: Path | PgUrl) -> tuple[list[tuple], list[tuple]]:
    """What an archive holds, independent of ids and times: snapshots and open alerts."""
    with raw(db) as conn:
        snaps = conn.execute(
            "SELECT suffix, mirror, kind, body_sha256, trusted FROM snapshots ORDER BY 1, 2, 3"
        ).fetchall()
        alerts = conn.execute(
            "SELECT kind, suffix, dedup_key FROM alerts WHERE closed_at IS NULL ORDER BY 3"
        ).fetchall()
    return snaps, alerts


def test_a_pass_shared_by_a_worker_process_archives_what_one_process_would(
    archive_at,
    request,
    capsys,
    *,
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
    monkeypatch,
):
    """`crawl.workers = 2`: a worker process crawls every other record (verified, archived
    and alerted on like the rest, into the same archive, on either backend), and the
    summary counts both shares."""
    monkeypatch.setattr(plan, "SHARE_MIN", 1)
    builders = {b.suffix: b for b in records(signer, 6)}
    # The shares are ranges of suffixes: 0, 1, 2 stay in this process, 3, 4, 5 go to the
    # worker. One bad bundle in each share.
    order = sorted(builders)
    for i, suffix in enumerate(order):
        doc = builders[suffix].build()
        if i in (0, 3):
            doc["bundle_signature"]["bundle_sha256"] = "0" * 64
        mirror.put(json.dumps(doc).encode())
    seen = {}
    for workers in (1, 2):
        home = tmp_path / f"workers{workers}"
        home.mkdir()
        db = home / "archive.db"
        if isinstance(archive_at, PgUrl):
            db = request.getfixturevalue("pg_cluster").archive()
        cfg = write_config(home, signer, mirror.base_url, db=db)
        cfg.write_text(cfg.read_text().replace("[crawl]\n", f"[crawl]\nworkers = {workers}\n"))
        assert main(["--config", str(cfg), "track", *order]) == 0
        code, summary = sync(capsys, cfg)
        assert code == 1, summary
        summary.pop("duration_s")
        seen[workers] = summary, _archived(db)
    summary, (snaps, alerts) = seen[2]
    assert seen[1] == seen[2]
    assert summary["new_snapshots"] == 2 * 4 + 2  # the two bad bundles: no state.json
    assert {s[0] for s in snaps} == set(order)
    bad = [("document_invalid", order[0]), ("document_invalid", order[3])]
    assert sorted((a[0], a[1]) for a in alerts) == sorted(bad)
    assert summary["alerts"] == 2 and summary["untrusted"] == 2


def test_workers_share_the_fetch_limits():
    """No more processes than records allow, nor than per_host or concurrency can share."""
    config = parse_config("[crawl]\nworkers = 4\nconcurrency = 32\nper_host = 2\n")
    assert plan.workers_for(config, 100_000) == 2  # per_host 2: one each
    assert plan.workers_for(config, plan.SHARE_MIN * 2 - 1) == 1
    shared = plan.shared_limits(config, 2)
    assert (shared.crawl.concurrency, shared.crawl.per_host) == (16, 1)
    assert plan.split(list("abcde"), 2) == [["a", "c", "e"], ["b", "d"]]


def test_a_worker_dies_with_the_pass_that_started_it(tmp_path: Path):
    """A pass killed with SIGKILL leaves no worker crawling on its own (Linux)."""
    parent = (
        "import subprocess, sys, os, time\n"
        "child = subprocess.Popen([sys.executable, '-c',"
        " 'import sys, time; from pithcrawl.worker import _bound_to_parent;"
        ' _bound_to_parent(int(sys.argv[1])); print("ready", flush=True); time.sleep(60)\','
        " str(os.getpid())], stdout=subprocess.PIPE, text=True)\n"
        "assert child.stdout.readline() == 'ready\\n'\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    worker = int(proc.stdout.readline())
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has stopped; only its exit status is left


def test_a_record_named_twice_is_crawled_once(archive_at, capsys, tmp_path: Path, signer, mirror):
    """`sync X pith:2026:X`: one record, one fetch, one failure counted."""
    b = records(signer, 1)[0]
    mirror.put(b.bytes())
    mirror.fail(b.suffix, 503)
    cfg = write_config(tmp_path, signer, mirror.base_url, db=archive_at)
    code, summary = sync(capsys, cfg, b.suffix, b.pith_number, b.suffix)
    assert code == 3
    assert (summary["records"], summary["errors"]) == (1, 1)
    assert mirror.hits[f"/pith/{b.suffix}/bundle.json"] == 1
    with raw(archive_at) as c:
        failures = c.execute("SELECT failures FROM fetch_state WHERE kind = 'bundle'").fetchall()
    assert failures == [(1,)]


def test_a_mirror_taken_out_of_the_configuration_closes_its_alert(
    archive_at, capsys, tmp_path: Path, signer, mirror
):
    """A mirror nobody asks any more is not unreachable: its alert closes and stops
    making every later pass exit 3."""
    b = records(signer, 1)[0]
    mirror.put(b.bytes())
    dead = "http://127.0.0.1:9"  # the discard port: nothing answers
    cfg = write_config(tmp_path, signer, mirror.base_url, dead, db=archive_at)
    cfg.write_text(
        cfg.read_text().replace("[crawl]\n", '[alerts]\nunreachable_after = "1s"\n[crawl]\n')
    )
    assert main(["--config", str(cfg), "track", b.suffix]) == 0
    sync(capsys, cfg)  # m1's first failure
    time.sleep(1.1)
    code, summary = sync(capsys, cfg)
    assert (code, summary["warnings"]) == (3, 1)  # failing for over a second: open
    cfg = write_config(tmp_path, signer, mirror.base_url, db=archive_at)  # m1 taken out
    code, summary = sync(capsys, cfg)
    assert (code, summary["mirrors"], summary["warnings"]) == (0, 1, 0), summary
    with raw(archive_at) as c:
        rows = c.execute("SELECT scope, closed_at IS NOT NULL FROM alerts").fetchall()
    assert rows == [("reach:m1", 1)]


def test_an_invalid_document_of_a_mirror_taken_out_closes_its_alert(
    archive_at, capsys, tmp_path: Path, signer: TestSigner, mirror: TestMirror
):
    """m1 serves a tampered bundle (a critical alert, exit 1); taken out of the
    configuration, it is judged no more: its alert closes and stops holding every later
    pass at exit 1 (found by a newcomer: there was nothing left to clear it)."""
    b = records(signer, 1)[0]
    mirror.put(b.bytes())
    doc = b.build()
    doc["bundle_signature"]["bundle_sha256"] = "0" * 64
    with in_thread(TestMirror()) as bad:
        bad.put(json.dumps(doc).encode())
        cfg = write_config(tmp_path, signer, mirror.base_url, bad.base_url, db=archive_at)
        assert main(["--config", str(cfg), "-q", "track", b.suffix]) == 0
        code, summary = sync(capsys, cfg)
        assert (code, summary["alerts"]) == (1, 1)
    cfg = write_config(tmp_path, signer, mirror.base_url, db=archive_at)  # m1 taken out
    code, summary = sync(capsys, cfg)
    assert (code, summary["alerts"], summary["alerts_open"]) == (0, 0, 0), summary
    with raw(archive_at) as c:
        rows = c.execute("SELECT scope, closed_at IS NOT NULL FROM alerts").fetchall()
    assert rows == [(f"document@{VANTAGE}:{b.suffix}:m1", 1)]


def test_a_damaged_archived_bundle_does_not_stop_the_watch(
    archive_at, capsys, tmp_path: Path, signer: TestSigner, mirror: TestMirror
):
    """The previous bundle's blob is damaged on disk: the record's next bundle is still
    verified and archived (with no change told against the lost one), and the damage is
    logged for the operator (fsck's news) instead of ending the pass with a traceback."""
    b = records(signer, 1)[0]
    mirror.put(b.bytes())
    cfg = write_config(tmp_path, signer, mirror.base_url, db=archive_at)
    assert sync(capsys, cfg, b.suffix)[0] == 0
    with raw(archive_at) as c:
        c.execute("UPDATE blobs SET data = ?", (b"\x00",))  # every archived body, damaged
    b.add_event()
    mirror.put(b.bytes())
    code = main(["--config", str(cfg), "--log-format", "json", "sync", "--json", b.suffix])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["new_snapshots"] == 2
    assert '"archive_damaged"' in err and "Traceback" not in err


def test_sync_with_nothing_tracked_says_how_to_track_one_and_asks_no_mirror(
    archive_at, capsys, tmp_path: Path, signer: TestSigner, mirror: TestMirror
):
    """No `[watch]`, no tracked record, none named: not a pass over 0 records (which
    read the manifests and said "0 records"), but how to track one; exit 0. Once one
    is tracked, the pass runs."""
    cfg = write_config(tmp_path, signer, mirror.base_url, db=archive_at)
    b = BundleBuilder(signer, record=canonical_record("2611.00001", title="P"))
    suffix = mirror.put(b.bytes())
    capsys.readouterr()
    assert main(["--config", str(cfg), "sync"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nothing to sync: no record is tracked in ")
    assert "pithcrawl track pith:2026:" in out and "[watch]" in out
    assert main(["--config", str(cfg), "-q", "sync", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 0
    assert sum(mirror.hits.values()) == 0
    assert main(["--config", str(cfg), "-q", "track", suffix]) == 0
    capsys.readouterr()
    assert main(["--config", str(cfg), "-q", "sync", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["new_snapshots"] == 2


def test_the_first_pass_over_records_under_watch_counts_them(
    archive_at, capsys, tmp_path: Path, signer: TestSigner, mirror: TestMirror
):
    """Records listed under `[watch] pith` are tracked before the pass counts its records
    (it said "0 records" the first time, while it crawled them)."""
    b = BundleBuilder(signer, record=canonical_record("2611.00001", title="P"))
    b.add_event()
    mirror.put(b.bytes())
    cfg = write_config(tmp_path, signer, mirror.base_url, db=archive_at)
    cfg.write_text(cfg.read_text() + f'[watch]\npith = ["{b.pith_number}"]\n')
    capsys.readouterr()
    assert main(["--config", str(cfg), "-q", "sync", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["records"], summary["new_snapshots"]) == (1, 2)


def test_a_pass_with_no_terminal_logs_its_progress(
    archive_at, capsys, *, tmp_path: Path, signer: TestSigner, mirror: TestMirror, monkeypatch
):
    """Under systemd or cron (stderr no terminal) a pass logs `sync_progress` lines as it
    goes (every 15 s; here at every pair), not nothing until its end."""
    from pithcrawl.commands.sync import Progress

    monkeypatch.setattr(Progress, "EVERY", 0.0)
    cfg = write_config(tmp_path, signer, mirror.base_url, db=archive_at)
    recs = records(signer, 3)
    for b in recs:
        mirror.put(b.bytes())
    assert main(["--config", str(cfg), "-q", "track", *(b.suffix for b in recs)]) == 0
    assert main(["--config", str(cfg), "--log-format", "json", "sync"]) == 0
    err = capsys.readouterr().err
    lines = [json.loads(x) for x in err.splitlines() if '"sync_progress"' in x]
    assert [(x["pairs_done"], x["pairs"]) for x in lines] == [(1, 3), (2, 3)]
    assert all(x["per_s"] > 0 and x["eta_s"] is not None for x in lines)


def test_history_counts_an_invalid_snapshots_findings_and_lists_them_with_v(
    archive_at, capsys, tmp_path: Path, signer: TestSigner, mirror: TestMirror
):
    """An invalid snapshot's row says how many findings it has (it used to list every code
    in the row, some 250 columns wide); -v lists them under the table."""
    b = records(signer, 1)[0]
    doc = b.build()
    doc["bundle_signature"]["bundle_sha256"] = "0" * 64
    mirror.put(json.dumps(doc).encode())
    cfg = write_config(tmp_path, signer, mirror.base_url, db=archive_at)
    assert sync(capsys, cfg, b.pith_number)[0] == 1
    assert main(["--config", str(cfg), "history", b.suffix]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.split()[0].isdigit()]
    assert "INVALID (1 finding: -v)" in row and "bundle_hash_mismatch" not in out
    assert main(["--config", str(cfg), "history", b.suffix, "-v"]) == 0
    out = capsys.readouterr().out
    assert f"  {row.split()[0]}: bundle_hash_mismatch" in out
