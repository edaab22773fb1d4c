"""Crash safety: SIGKILL `pithcrawl sync` at random moments, then check what it left.

    python bench/crash_test.py [--records 2000] [--kills 20] [--seed 1] [--json out.json]

Uses bench/sync_bench.py's cached corpus of N signed records (2–6 events each) and its
bench/mirror_server.py child process. Then, each archive fresh in a temp directory
with all N tracked first:

    reference  one `pithcrawl sync` run to completion, uninterrupted; its wall time T
    crash      `pithcrawl sync` started again and again, each SIGKILLed at a seeded
               random moment of its crawl, until --kills kills have landed; the
               archive is checked after every run
    final      `pithcrawl sync` once more, to completion: it must exit 0

The crawl of a run spans its first to its last recorded fetch (fetch_state's
last_fetch_at), [a, b] seconds after its start; a kill comes a + uniform(0.05, 0.9) ×
(b - a) seconds after the start, with [a, b] from the reference run, then from the
latest run that finished before its kill (a pass over an archive already complete is
shorter: later kills still land inside it).

A killed run "landed mid-crawl" when it had recorded some, but not all, of its pass's
2N fetches (bundle and state.json of every record); the others landed during start-up
or after the last fetch (rechecks, alert delivery, closing).

Invariants, checked with plain sqlite3 on a read-only connection after every run (and
on both final archives); each must hold whatever moment a crash hits:

    integrity       `PRAGMA integrity_check` is exactly "ok"
    foreign_keys    `PRAGMA foreign_key_check` finds nothing (snapshot → blob, prev_id,
                    event → snapshot, history → blob, delivery → alert)
    schema          user_version is pithcrawl's SCHEMA_VERSION
    records         exactly the N records tracked before the first run
    blobs           each blob is zstd (a delta: over its base, one level shallower) and
                    decompresses to `size` bytes hashing to its key
    snapshot_body   every snapshot's body_sha256 is a blob
    trusted_bundle  every trusted bundle snapshot has bundle_sha256, built_at and
                    event_count, no critical finding, and its body says the same
                    (bundle_signature.bundle_sha256, built_at, len(events), its suffix)
    trusted_state   every trusted state snapshot is JSON, has no critical finding, and
                    follows a trusted bundle snapshot of the same record and mirror
    series          in each (suffix, mirror, kind), prev_id is the previous snapshot and
                    consecutive bodies differ: a restart never stores a body twice
    bookkeeping     each series' fetch_state row exists and names its latest body, and
                    a fetch_state body is always the latest snapshot's (same transaction)
    validators      no ETag or Last-Modified without its body: else a restart would get
                    a 304 for a body that was never archived
    histories       each history is of a trusted bundle body and says what that body says
    pith_number     a record's pith_number, once set, is that of a trusted bundle of it
    no_critical     no critical event or alert: the corpus is valid, a crash is no attack

Then the final crash-run archive must equal the reference, fact by fact:

    latest           (body_sha256, trusted) of the latest snapshot per (suffix, mirror, kind)
    blobs            the set of blob sha256
    snapshot_counts  snapshots per (suffix, mirror, kind): a crash creates no duplicate
    pith_numbers     each record's pith_number
    histories        the set of bodies with a history row
    fetch_state      (body_sha256, etag, failures) per (suffix, mirror, kind)
    events, alerts   counts per (kind, severity)

Prints each run, then a tally and every violation (which invariant or fact, which rows);
writes JSON; exits 1 on any violation. `--allow FACT` reports a difference in FACT apart,
without failing: for a known bug, reported, until it is fixed. Each run's line also counts
what is derived after a trusted bundle is stored but still missing: records with no
pith_number ("unnumbered") and trusted bundle bodies with no history ("unhistoried").
`--keep DIR` crawls into DIR (new or empty) and keeps the archives and logs there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sync_bench import (
    OUT,
    ROOT,
    BenchError,
    Launcher,
    Mirror,
    _track,
    corpus,
    run_child,
    write_config,
)

from pithcrawl.store.schema import SCHEMA_VERSION
from pithcrawl.timestamps import format_timestamp

EVENTS = (2, 6)  # sync_bench's default, so both share the cached corpus
DELAY = (0.05, 0.9)  # of a crawl's span from its first to its last fetch: where kills land
CONCURRENCY = 32
FACTS = (
    "latest",
    "blobs",
    "snapshot_counts",
    "pith_numbers",
    "histories",
    "fetch_state",
    "events",
    "alerts",
)
SHOWN = 5  # offending rows printed per invariant (the JSON keeps 20)
Found = dict[str, list[str]]  # invariant or comparison → what breaks it; [] when it holds


# -- the invariants -------------------------------------------------------------------------


def _ro(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def _critical(findings: str) -> list[str]:
    return [f["code"] for f in json.loads(findings) if f["severity"] == "critical"]


def _blobs(conn: sqlite3.Connection) -> tuple[list[str], dict[str, bytes]]:
    """Decode every blob independently of pithcrawl: a delta (`base` set) with its base's
    decoded bytes as a raw-content zstd dictionary, shallowest bases first."""
    bad, bodies = [], {}
    rows = conn.execute("SELECT sha256, size, codec, base, depth, data FROM blobs ORDER BY depth")
    depths: dict[str, int] = {}
    for key, size, codec, base, depth, data in rows:
        depths[key] = depth
        if base is not None and (base not in bodies or depths[base] != depth - 1 or depth > 2):
            bad.append(f"blob {key}: base {base} missing, unreadable or not one level shallower")
            continue
        try:
            dictionary = None
            if base is not None:
                raw = zstandard.DICT_TYPE_RAWCONTENT
                dictionary = zstandard.ZstdCompressionDict(bodies[base], dict_type=raw)
            body = zstandard.ZstdDecompressor(dict_data=dictionary).decompress(
                data, max_output_size=size
            )
        except zstandard.ZstdError as e:
            bad.append(f"blob {key}: does not decompress ({e})")
            continue
        actual = hashlib.sha256(body).hexdigest()
        if codec != "zstd" or len(body) != size or actual != key:
            bad.append(f"blob {key}: codec {codec}, {len(body)}/{size} bytes, sha256 {actual}")
        bodies[key] = body
    return bad, bodies


def _trusted(conn: sqlite3.Connection, bodies: dict[str, bytes]) -> tuple[list[str], list[str]]:
    bundles, states = [], []
    for s in conn.execute("SELECT * FROM snapshots WHERE trusted = 1 ORDER BY id"):
        where = f"snapshot {s['id']} ({s['suffix']} {s['mirror']} {s['kind']})"
        out = bundles if s["kind"] == "bundle" else states
        if codes := _critical(s["findings"]):
            out.append(f"{where}: trusted with critical findings {codes}")
        body = bodies.get(s["body_sha256"])
        if body is None:
            out.append(f"{where}: no readable body {s['body_sha256']}")
            continue
        try:
            doc = json.loads(body)
        except ValueError as e:
            out.append(f"{where}: body is not JSON ({e})")
            continue
        if s["kind"] == "state":
            continue
        want = {"bundle_sha256": s["bundle_sha256"], "built_at": s["built_at"]}
        want |= {"event_count": s["event_count"], "suffix": s["suffix"]}
        if None in want.values():
            out.append(f"{where}: verification fields missing: {want}")
            continue
        said = {
            "bundle_sha256": doc["bundle_signature"]["bundle_sha256"],
            "built_at": doc["built_at"],
            "event_count": len(doc["events"]),
            "suffix": doc["pith_number"].rpartition(":")[2],
        }
        if said != want:
            out.append(f"{where}: row says {want}, body says {said}")
    orphans = """
        SELECT s.id, s.suffix, s.mirror FROM snapshots AS s WHERE s.kind = 'state'
        AND s.trusted = 1 AND NOT EXISTS (SELECT 1 FROM snapshots AS b WHERE b.kind = 'bundle'
        AND b.trusted = 1 AND b.suffix = s.suffix AND b.mirror = s.mirror AND b.id < s.id)"""
    for r in conn.execute(orphans):
        states.append(f"snapshot {r[0]} ({r[1]} {r[2]} state): no trusted bundle before it")
    return bundles, states


def _series(conn: sqlite3.Connection) -> list[str]:
    bad, last = [], None
    rows = "SELECT * FROM snapshots ORDER BY suffix, mirror, kind, id"
    for s in conn.execute(rows):
        key = (s["suffix"], s["mirror"], s["kind"])
        prev = last if last is not None and last[0] == key else None
        if s["prev_id"] != (prev[1] if prev else None):
            bad.append(f"snapshot {s['id']} {key}: prev_id {s['prev_id']}, expected {prev}")
        if prev is not None and prev[2] == s["body_sha256"]:
            bad.append(f"snapshots {prev[1]} and {s['id']} {key}: the same body twice")
        last = (key, s["id"], s["body_sha256"])
    return bad


_LATEST = """
SELECT s.* FROM snapshots AS s JOIN (SELECT max(id) AS id FROM snapshots
GROUP BY suffix, mirror, kind) AS m ON m.id = s.id
"""


def _bookkeeping(conn: sqlite3.Connection) -> list[str]:
    latest = {
        (r["suffix"], r["mirror"], r["kind"]): r["body_sha256"] for r in conn.execute(_LATEST)
    }
    state = {
        (r["suffix"], r["mirror"], r["kind"]): r["body_sha256"]
        for r in conn.execute("SELECT * FROM fetch_state")
    }
    bad = [
        f"{key}: latest snapshot body {body}, fetch_state body {state.get(key, 'no row')}"
        for key, body in latest.items()
        if state.get(key) != body
    ]
    bad += [
        f"{key}: fetch_state body {body} but no snapshot of it"
        for key, body in state.items()
        if body is not None and key not in latest
    ]
    return bad


def _histories(conn: sqlite3.Connection, bodies: dict[str, bytes]) -> list[str]:
    trusted = "SELECT 1 FROM snapshots WHERE kind = 'bundle' AND trusted = 1 AND body_sha256 = ?"
    bad = []
    for h in conn.execute("SELECT * FROM histories"):
        key = h["body_sha256"]
        if conn.execute(trusted, (key,)).fetchone() is None or key not in bodies:
            bad.append(f"history {key}: not a trusted bundle body")
            continue
        doc = json.loads(bodies[key])
        said = [doc["pith_number"], [e["event_id"] for e in doc["events"]]]
        if [h["pith_number"], json.loads(h["events"])] != said:
            bad.append(f"history {key}: says {h['pith_number']}, not what its body says")
    return bad


def _pith_numbers(conn: sqlite3.Connection, bodies: dict[str, bytes]) -> list[str]:
    known: dict[str, set[str]] = {}
    trusted = "SELECT suffix, body_sha256 FROM snapshots WHERE kind = 'bundle' AND trusted = 1"
    for suffix, key in conn.execute(trusted):
        if key in bodies:
            known.setdefault(suffix, set()).add(json.loads(bodies[key])["pith_number"])
    return [
        f"record {suffix}: pith_number {number}, trusted bundles say {known.get(suffix, set())}"
        for suffix, number in conn.execute("SELECT suffix, pith_number FROM records")
        if number is not None and number not in known.get(suffix, set())
    ]


def check_archive(db: Path, suffixes: set[str]) -> Found:
    """Every invariant of the module docstring, on the archive as a crash left it."""
    with closing(_ro(db)) as conn:
        bad_blobs, bodies = _blobs(conn)
        bundles, states = _trusted(conn, bodies)
        tracked = {r[0] for r in conn.execute("SELECT suffix FROM records")}
        rows = conn.execute
        return {
            "integrity": [r[0] for r in rows("PRAGMA integrity_check") if r[0] != "ok"],
            "foreign_keys": [
                f"{r[0]} rowid {r[1]} → {r[2]} (constraint {r[3]})"
                for r in rows("PRAGMA foreign_key_check")
            ],
            "schema": [
                f"user_version {v}, expected {SCHEMA_VERSION}"
                for (v,) in rows("PRAGMA user_version")
                if v != SCHEMA_VERSION
            ],
            "records": [f"{len(tracked - suffixes)} unexpected, {len(suffixes - tracked)} missing"]
            if tracked != suffixes
            else [],
            "blobs": bad_blobs,
            "snapshot_body": [
                f"snapshot {r[0]} ({r[1]} {r[2]}): body {r[3]} is not a blob"
                for r in rows(
                    "SELECT s.id, s.suffix, s.kind, s.body_sha256 FROM snapshots AS s"
                    " WHERE NOT EXISTS (SELECT 1 FROM blobs WHERE sha256 = s.body_sha256)"
                )
            ],
            "trusted_bundle": bundles,
            "trusted_state": states,
            "series": _series(conn),
            "bookkeeping": _bookkeeping(conn),
            "validators": [
                f"fetch_state ({r[0]} {r[1]} {r[2]}): etag {r[3]} with no body"
                for r in rows(
                    "SELECT suffix, mirror, kind, etag FROM fetch_state WHERE body_sha256 IS NULL"
                    " AND (etag IS NOT NULL OR last_modified IS NOT NULL)"
                )
            ],
            "histories": _histories(conn, bodies),
            "pith_number": _pith_numbers(conn, bodies),
            "no_critical": [
                f"{table} {r[0]}: {r[1]} ({r[2]})"
                for table in ("events", "alerts")
                for r in rows(f"SELECT id, kind, summary FROM {table} WHERE severity = 'critical'")
            ],
        }


def counts(db: Path, since: datetime) -> dict[str, Any]:
    """Snapshots in the archive; the fetch_state rows written from `since` and the first
    and last of those writes, in seconds after `since`; and what a run derives after
    storing a trusted bundle but is still missing: records with no pith_number
    ("unnumbered"), trusted bundle bodies with no history ("unhistoried")."""
    with closing(_ro(db)) as conn:
        (snaps,) = conn.execute("SELECT count(*) FROM snapshots").fetchone()
        fetched, first, last = conn.execute(
            "SELECT count(*), min(last_fetch_at), max(last_fetch_at) FROM fetch_state"
            " WHERE last_fetch_at >= ?",
            (format_timestamp(since),),
        ).fetchone()
        (unnumbered,) = conn.execute(
            "SELECT count(*) FROM records AS r WHERE r.pith_number IS NULL AND EXISTS (SELECT 1"
            " FROM snapshots AS s WHERE s.suffix = r.suffix AND s.kind = 'bundle' AND s.trusted)"
        ).fetchone()
        (unhistoried,) = conn.execute(
            "SELECT count(DISTINCT body_sha256) FROM snapshots AS s"
            " WHERE kind = 'bundle' AND trusted AND NOT EXISTS"
            " (SELECT 1 FROM histories AS h WHERE h.body_sha256 = s.body_sha256)"
        ).fetchone()
    window = [(datetime.fromisoformat(t) - since).total_seconds() for t in (first, last) if t]
    return {
        "snapshots": snaps,
        "fetched": fetched,
        "window": window or None,
        "unnumbered": unnumbered,
        "unhistoried": unhistoried,
    }


# -- the comparison ---------------------------------------------------------------------------


def facts(db: Path) -> dict[str, Any]:
    """What an interrupted run must end with, as the uninterrupted one: sets, or mappings
    compared key by key."""
    with closing(_ro(db)) as conn:

        def keyed(sql: str, width: int = 3) -> dict[Any, Any]:
            rows = [tuple(r) for r in conn.execute(sql)]
            return {r[:width]: r[width:] for r in rows}

        return {
            "latest": keyed(f"SELECT suffix, mirror, kind, body_sha256, trusted FROM ({_LATEST})"),
            "blobs": {r[0] for r in conn.execute("SELECT sha256 FROM blobs")},
            "snapshot_counts": keyed(
                "SELECT suffix, mirror, kind, count(*) FROM snapshots GROUP BY suffix, mirror, kind"
            ),
            "pith_numbers": keyed("SELECT suffix, pith_number FROM records", 1),
            "histories": {r[0] for r in conn.execute("SELECT body_sha256 FROM histories")},
            "fetch_state": keyed(
                "SELECT suffix, mirror, kind, body_sha256, etag, failures FROM fetch_state"
            ),
            "events": keyed("SELECT kind, severity, count(*) FROM events GROUP BY 1, 2", 2),
            "alerts": keyed("SELECT kind, severity, count(*) FROM alerts GROUP BY 1, 2", 2),
        }


def compare(reference: dict[str, Any], crashed: dict[str, Any]) -> Found:
    """Per fact, each key (or member) on which the two archives differ."""
    out: Found = {}
    for name, ref in reference.items():
        got = crashed[name]
        if isinstance(ref, set):
            out[name] = [f"reference only: {x}" for x in sorted(ref - got)]
            out[name] += [f"crash run only: {x}" for x in sorted(got - ref)]
        else:
            out[name] = [
                f"{' '.join(map(str, key))}: reference {ref.get(key)}, crash run {got.get(key)}"
                for key in sorted(ref.keys() | got.keys(), key=str)
                if ref.get(key) != got.get(key)
            ]
    return out


# -- the runs -----------------------------------------------------------------------------------


class Tally:
    """The runs so far and every violation, each as {where, what, rows}; those of an
    `allowed` fact (a known bug, reported) are kept apart and do not fail the test."""

    def __init__(self, allowed: set[str]) -> None:
        self.runs: list[dict[str, Any]] = []
        self.violations: list[dict[str, Any]] = []
        self.allowed: list[dict[str, Any]] = []
        self.allow = allowed
        self.checks = self.passed = 0

    def add(self, where: str, found: Found, *, count: bool = True) -> None:
        for what, rows in found.items():
            if rows:
                more = [f"... and {len(rows) - 20} more"] if len(rows) > 20 else []
                seen = self.allowed if where == "comparison" and what in self.allow else None
                (seen if seen is not None else self.violations).append(
                    {"where": where, "what": what, "rows": [*rows[:20], *more], "count": len(rows)}
                )
        if count:
            self.checks += len(found)
            self.passed += sum(not rows for rows in found.values())


def fresh_archive(d: Path, url: str, suffixes: list[str]) -> tuple[list[str], Path]:
    """A new archive tracking every record; the `sync` command line that crawls it."""
    d.mkdir()
    cfg = write_config(d, url, CONCURRENCY, CONCURRENCY)
    db = d / "archive.db"
    anyio.run(_track, db, suffixes)
    return [sys.executable, "-m", "pithcrawl", "--config", str(cfg), "-q", "sync", "--json"], db


def landed(fetched: int, pass_fetches: int) -> str:
    """Where in its run a kill landed, by the fetches that run had recorded."""
    if fetched == 0:
        return "start_up"
    return "mid_crawl" if fetched < pass_fetches else "after_crawl"


def crash_runs(
    argv: list[str],
    db: Path,
    suffixes: set[str],
    ref: dict[str, Any],
    tally: Tally,
    *,
    kills: int,
    seed: int,
    tmp: Path,
) -> None:
    """Start `sync`, SIGKILL it after a random delay, check the archive; until enough kills."""
    rng = random.Random(f"crash_test:{seed}")
    (a, b), snapshots = ref["window"], 0
    while (done := sum(r["killed"] for r in tally.runs)) < kills:
        label = f"run{len(tally.runs) + 1:02d}"
        if len(tally.runs) >= 4 * kills + 10:
            tally.add(
                label, {"kills": [f"{done} of {len(tally.runs)} runs killed; wanted {kills}"]}
            )
            return
        delay = a + rng.uniform(*DELAY) * (b - a)
        since = datetime.now(UTC)
        with (tmp / f"{label}.out").open("wb") as out, (tmp / f"{label}.err").open("wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=ROOT)
            try:
                proc.wait(delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
            finally:
                if proc.poll() is None:  # this script is being interrupted
                    proc.kill()
                proc.wait()
            wall = time.perf_counter() - t0
        killed = proc.returncode == -signal.SIGKILL
        now = counts(db, since)
        run = {
            "run": label,
            "delay_s": round(delay, 3),
            "wall_s": round(wall, 3),
            "killed": killed,
            "exit": None if killed else proc.returncode,
            "fetched": now["fetched"],
            "new_snapshots": now["snapshots"] - snapshots,
            "snapshots": now["snapshots"],
            "unnumbered": now["unnumbered"],
            "unhistoried": now["unhistoried"],
            "crawl_window_s": now["window"] and [round(x, 3) for x in now["window"]],
        }
        snapshots = now["snapshots"]
        if killed:
            run["landed"] = landed(now["fetched"], ref["fetches"])
            run["snapshots_missing"] = now["snapshots"] < ref["snapshots"]
        else:
            if now["window"] is not None:
                (a, b) = now["window"]  # the archive is complete: aim inside such a pass
            elif proc.returncode == 0:
                # Every pass fetches every record: a finished one that recorded none
                # lost its bookkeeping.
                tally.add(label, {"recorded": ["a sync that finished recorded no fetch"]})
            if proc.returncode != 0:
                stderr = (tmp / f"{label}.err").read_text()[-2000:]
                tally.add(label, {"exit": [f"sync exited {proc.returncode}: {stderr}"]})
        found = check_archive(db, suffixes)
        run["checks_passed"] = f"{sum(not v for v in found.values())}/{len(found)}"
        tally.add(label, found)
        tally.runs.append(run)
        print(
            f"{label}  {'killed' if killed else f'exit {proc.returncode}':<8}"
            f" after {wall:6.2f}s  {run.get('landed', ''):<11}  fetched {now['fetched']:>6}"
            f"  snapshots {now['snapshots']:>6}  unnumbered {now['unnumbered']:>4}"
            f"  unhistoried {now['unhistoried']:>4}"
            f"  checks {run['checks_passed']}",
            file=sys.stderr,
        )


def crash_test(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    corpus_dir, rows = corpus(args.records, args.seed, EVENTS)
    suffixes = [row[0] for row in rows]
    tracked = set(suffixes)
    tally = Tally(set(args.allow))
    mirror = Mirror([corpus_dir], None, None)
    launcher = Launcher()
    try:
        argv, ref_db = fresh_archive(tmp / "reference", mirror.url, suffixes)
        since = datetime.now(UTC)
        ref = run_child(launcher, argv, "reference", tmp, n=args.records, mirror=mirror)
        ref["window"] = counts(ref_db, since)["window"]
        ref["summary"] = json.loads(ref.pop("stdout").strip().splitlines()[-1])
        tally.add("reference", check_archive(ref_db, tracked), count=False)
        expected = facts(ref_db)
        assert tuple(expected) == FACTS
        ref["snapshots"] = sum(c for (c,) in expected["snapshot_counts"].values())
        ref["fetches"] = len(expected["fetch_state"])
        argv, db = fresh_archive(tmp / "crash", mirror.url, suffixes)
        t1 = time.perf_counter()
        crash_runs(argv, db, tracked, ref, tally, kills=args.kills, tmp=tmp, seed=args.seed)
        t2 = time.perf_counter()
        try:
            final = run_child(launcher, argv, "final", tmp, n=args.records, mirror=mirror)
            final["summary"] = json.loads(final.pop("stdout").strip().splitlines()[-1])
        except BenchError as e:
            final = {"error": str(e)}
            tally.add("final", {"exit": [str(e)]})
    finally:
        launcher.close()
        mirror.close()
    tally.add("final", check_archive(db, tracked))
    left = counts(db, datetime.now(UTC))
    final.update(unnumbered=left["unnumbered"], unhistoried=left["unhistoried"])
    comparison = compare(expected, facts(db))
    tally.add("comparison", comparison, count=False)
    killed = [r for r in tally.runs if r["killed"]]
    return {
        "records": args.records,
        "events": f"{EVENTS[0]}-{EVENTS[1]}",
        "seed": args.seed,
        "concurrency": CONCURRENCY,
        "kill_delay": f"first fetch + uniform{DELAY} x (last fetch - first fetch) of the"
        " reference run, then of the latest run that finished before its kill",
        "tally": {
            "runs": len(tally.runs),
            "kills": len(killed),
            "kills_mid_crawl": sum(r["landed"] == "mid_crawl" for r in killed),
            "kills_at_start_up": sum(r["landed"] == "start_up" for r in killed),
            "kills_after_crawl": sum(r["landed"] == "after_crawl" for r in killed),
            "kills_with_snapshots_missing": sum(r["snapshots_missing"] for r in killed),
            "finished_before_kill": len(tally.runs) - len(killed),
            "invariant_checks": tally.checks,
            "invariant_checks_passed": tally.passed,
            "comparison": {k: not v for k, v in comparison.items()},
            "allowed": sorted(args.allow),
            "reference_s": ref["wall_s"],
            "crash_phase_s": round(t2 - t1, 1),
            "final_s": final.get("wall_s"),
            "total_s": round(time.perf_counter() - t0, 1),
        },
        "reference": ref,
        "final": final,
        "runs": tally.runs,
        "violations": tally.violations,
        "allowed_differences": tally.allowed,
    }


def print_tally(r: dict[str, Any]) -> None:
    t = r["tally"]
    same = [k for k, ok in t["comparison"].items() if ok]
    print(f"N={r['records']} records ({r['events']} events), seed {r['seed']}")
    print(f"kill delay: {r['kill_delay']}\n")
    lines = [
        ("sync runs in the crash phase", t["runs"]),
        ("kills (SIGKILL)", t["kills"]),
        ("  landed mid-crawl", t["kills_mid_crawl"]),
        ("  landed at start-up (no fetch yet)", t["kills_at_start_up"]),
        ("  landed after the last fetch", t["kills_after_crawl"]),
        ("  while snapshots were still missing", t["kills_with_snapshots_missing"]),
        ("runs that finished before their kill", t["finished_before_kill"]),
        ("invariant checks passed", f"{t['invariant_checks_passed']}/{t['invariant_checks']}"),
        ("final sync", "exit 0" if "error" not in r["final"] else "FAILED"),
        ("final archive = reference", f"{len(same)}/{len(t['comparison'])} facts equal"),
        ("reference sync s", t["reference_s"]),
        ("crash phase s", t["crash_phase_s"]),
        ("final sync s", t["final_s"]),
        ("total s", t["total_s"]),
    ]
    for name, value in lines:
        print(f"{name:<40}{value!s:>12}")
    for v in [*r["violations"], *r["allowed_differences"]]:
        label = "VIOLATION" if v in r["violations"] else "ALLOWED (--allow, known bug)"
        print(f"\n{label} {v['where']}: {v['what']}: {v['count']} row(s)")
        for row in v["rows"][:SHOWN]:
            print(f"  {row}")
        if len(v["rows"]) > SHOWN:
            print(f"  ... {v['count'] - SHOWN} more ({len(v['rows']) - SHOWN} in the JSON)")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--records", type=int, default=2000, help="N, 1 to 100000")
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs to land, at least 1")
    ap.add_argument("--seed", type=int, default=1, help="the corpus's and the kill delays'")
    ap.add_argument("--json", type=Path, default=OUT / "crash_test.json")
    ap.add_argument("--keep", type=Path, help="keep the archives and logs in this new directory")
    ap.add_argument(
        "--allow",
        action="append",
        default=[],
        choices=FACTS,
        metavar="FACT",
        help="report a difference from the reference in FACT without failing (a known bug)",
    )
    args = ap.parse_args()
    if not 1 <= args.records <= 100_000 or args.kills < 1:
        ap.error("--records must be 1..100000 and --kills at least 1")
    OUT.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the mirror, rm tmp
    try:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            if any(args.keep.iterdir()):
                ap.error(f"--keep {args.keep}: the directory is not empty")
            result = crash_test(args, args.keep)
        else:
            with tempfile.TemporaryDirectory(prefix="pithcrawl-crash-") as tmp:
                result = crash_test(args, Path(tmp))
    except BenchError as e:
        print(f"crash_test: {e}", file=sys.stderr)
        return 1
    print_tally(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
