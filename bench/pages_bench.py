"""How fast the status pages answer on a large archive (issue #16: "fast on an archive of
50,000 records").

Builds an archive of N records (default 50,000) straight into SQLite with pithcrawl's
own schema: each record tracked, fetched from M mirrors (bundle and state.json: fetch
bookkeeping, two to three bundle snapshots a mirror, the last mirror behind on a tenth
of them, failing on a hundredth), events in the log, a thousand alerts, 90 days of
hourly fetch counts. Then serves it
with `serve.serving` on loopback and times each page (median and max of --repeat GETs,
whole request as a client sees it).

    .venv/bin/python bench/pages_bench.py [--records 50000] [--mirrors 3] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import zstandard

from pithcrawl.config import Config
from pithcrawl.keys import TrustSet
from pithcrawl.serve import Ui, serving
from pithcrawl.store import Store

B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def suffix(i: int) -> str:
    rnd = random.Random(i)
    return "".join(rnd.choice(B32) for _ in range(26))


def t(at: datetime) -> str:
    return at.isoformat()


async def create(db: Path) -> None:
    async with await Store.open(db):
        pass  # creates the file and runs every migration


def fill(db: Path, n: int, mirrors: int) -> dict[str, int]:
    rnd = random.Random(7)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    now = datetime.now(UTC)
    names = [f"mirror-{m}" for m in range(mirrors)]
    body = json.dumps({"bundle_type": "pith_open_graph_bundle", "pith_number": "x"}).encode()
    sha = hashlib.sha256(body).hexdigest()
    packed = zstandard.ZstdCompressor().compress(body)
    conn.execute(
        "INSERT INTO blobs (sha256, size, codec, data) VALUES (?, ?, 'zstd', ?)",
        (sha, len(body), packed),
    )
    for m in names:
        conn.execute(
            "INSERT INTO mirrors VALUES (?, ?, ?, ?, NULL, 'config', ?)",
            (m, f"https://{m}.example", "{base_url}/b", "{base_url}/s", t(now)),
        )
    counts = {"records": n, "snapshots": 0, "events": 0, "alerts": 0}
    sid = 0
    for start in range(0, n, 5000):
        recs, states, snaps, events = [], [], [], []
        for i in range(start, min(n, start + 5000)):
            s = suffix(i)
            recs.append((s, f"pith:2026:{s}", t(now - timedelta(days=30))))
            versions = rnd.randint(2, 3)
            for mi, m in enumerate(names):
                behind = mi == mirrors - 1 and i % 10 == 0
                failing = mi == mirrors - 1 and i % 100 == 0
                for kind in ("bundle", "state"):
                    states.append(
                        (
                            s,
                            m,
                            kind,
                            f"https://{m}.example/{s}/{kind}.json",
                            '"e"',
                            None,
                            sha,
                            503 if failing else 200,
                            t(now - timedelta(hours=rnd.random() * 30)),
                            t(now - timedelta(hours=rnd.random() * 30)),
                            t(now - timedelta(hours=3)) if failing else None,
                            3 if failing else 0,
                            t(now + timedelta(hours=6)),
                            "HTTP 503 from mirror" if failing else None,
                        )
                    )
                for v in range(versions - (1 if behind else 0)):
                    sid += 1
                    built = t(datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=v))
                    fetched = t(now - timedelta(days=versions - v))
                    snaps.append(
                        (
                            sid,
                            s,
                            m,
                            "bundle",
                            fetched,
                            "u",
                            200,
                            sha,
                            "b" * 64,
                            built,
                            v + 1,
                            1,
                            "[]",
                            None,
                            None,
                            "node",
                            "node",
                        )
                    )
                    if v:
                        events.append(
                            (
                                t(now - timedelta(days=versions - v)),
                                "event_added",
                                "info",
                                f"pith:2026:{s}",
                                s,
                                json.dumps([m]),
                                "1 new event(s)",
                                "{}",
                                None,
                                sid,
                            )
                        )
        conn.executemany("INSERT INTO records VALUES (?, ?, ?)", recs)
        conn.executemany(
            "INSERT INTO fetch_state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", states
        )
        conn.executemany(
            "INSERT INTO snapshots (id, suffix, mirror, kind, fetched_at, url, status,"
            " body_sha256, bundle_sha256, built_at, event_count, trusted, findings, prev_id,"
            " patch, node, vantage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            snaps,
        )
        conn.executemany(
            "INSERT INTO events (at, kind, severity, pith_number, suffix, mirrors, summary,"
            " evidence, dedup_key, snapshot_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            events,
        )
        counts["snapshots"] += len(snaps)
        counts["events"] += len(events)
    for a in range(1000):
        s = suffix(a * 10)
        conn.execute(
            "INSERT INTO alerts (dedup_key, scope, kind, severity, pith_number, suffix, mirrors,"
            " summary, evidence, opened_at, closed_at) VALUES (?, ?, 'mirror_stale', 'error',"
            " ?, ?, ?, 'behind', ?, ?, ?)",
            (
                f"stale:{s}:{a}",
                f"record:{s}",
                f"pith:2026:{s}",
                s,
                json.dumps([names[-1]]),
                json.dumps({"body_sha256": sha}),
                t(now - timedelta(days=2)),
                None if a % 2 else t(now - timedelta(days=1)),
            ),
        )
    counts["alerts"] = 1000
    hours = [
        (m, (now - timedelta(hours=h)).strftime("%Y-%m-%dT%H"), 2 * n // 6, n // 60, 7, 0)
        for m in names
        for h in range(24 * 90)
    ]
    conn.executemany("INSERT INTO mirror_hours VALUES (?, ?, ?, ?, ?, ?)", hours)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    return counts


async def measure(db: Path, n: int, mirrors: int, repeat: int) -> list[tuple[str, float, float]]:
    deep = sorted(suffix(i) for i in range(n))[n // 2]
    paths = [
        ("overview", "/"),
        ("records, first page", "/ui/records"),
        ("records, a page mid-way", f"/ui/records?after={deep}"),
        ("a record", f"/ui/record/{suffix(10)}"),
        ("a record's diff", None),
        ("open alerts", "/ui/alerts"),
        ("all alerts, older page", "/ui/alerts?state=all&before=500"),
        ("an alert", "/ui/alert/1"),
        ("a mirror", f"/ui/mirror/mirror-{mirrors - 1}"),
    ]
    out = []
    async with (
        await Store.open(db, readonly=True) as store,
        serving(store, "127.0.0.1", 0, trust=TrustSet([]), ui=Ui(Config())) as server,
        aiohttp.ClientSession() as client,
    ):
        snaps = await store.snapshots(suffix(10))
        for name, given in paths:
            path = given or f"/ui/record/{suffix(10)}?a={snaps[0].id}&b={snaps[-1].id}"
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                async with client.get(server.url + path) as r:
                    await r.read()
                    if r.status != 200:
                        raise SystemExit(f"{path}: HTTP {r.status}")
                times.append(time.perf_counter() - start)
            out.append((name, statistics.median(times) * 1000, max(times) * 1000))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--mirrors", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "pages.db"
        start = time.perf_counter()
        asyncio.run(create(db))
        counts = fill(db, args.records, args.mirrors)
        built = time.perf_counter() - start
        print(
            f"archive: {counts['records']:,} records x {args.mirrors} mirrors,"
            f" {counts['snapshots']:,} bundle snapshots, {counts['events']:,} events,"
            f" {counts['alerts']:,} alerts, {db.stat().st_size / 2**20:.0f} MiB"
            f" (built in {built:.0f} s)"
        )
        results = asyncio.run(measure(db, args.records, args.mirrors, args.repeat))
    print(f"{'page':<26} {'median ms':>10} {'max ms':>8}   ({args.repeat} GETs each)")
    for name, median, worst in results:
        print(f"{name:<26} {median:>10.1f} {worst:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
