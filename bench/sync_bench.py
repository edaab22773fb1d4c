"""End-to-end `pithcrawl sync` against a fast local mirror, each pass in a fresh process.

    python bench/sync_bench.py [--records 2000] [--events 2-6] [--json out.json]

Builds N records with 2–6 events each (seeded), signed with a key made here; the corpus
is cached under bench/out/ keyed by (N, seed, events). A mirror (bench/mirror_server.py,
in its own process; or `--mirror-url` for another one serving the same files) serves
them. Then, each in a child process, timed with its own CPU and peak RSS:

    fetch-only   HttpFetcher GETs every bundle and state.json: no verification, no storage
    cold         `pithcrawl sync` of all N into an empty archive
    unchanged    the same again: conditional GETs, nothing new stored
    bumped       after 10% of the records gained one event: DB growth per changed record

The database lives in a temp directory (honours TMPDIR). Figures go to stdout and
to --json (default bench/out/sync_bench.json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from builder import BundleBuilder, TestSigner, canonical_record, serialize

from pithcrawl.fetch import HttpFetcher
from pithcrawl.store import Store

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
KEY_ID = "bench-sync-key"
CORPUS_VERSION = 1  # bump when the records below change, to invalidate cached corpora
_TEXT = (
    "we propose a method for learning sparse graph representations under noisy labels and "
    "show that it improves robustness across modalities while remaining efficient at scale "
    "experiments on standard benchmarks confirm the theoretical analysis of convergence"
)
WORDS = _TEXT.split()


# -- the corpus ------------------------------------------------------------------------------


def build(i: int, seed: int, lo: int, hi: int, extra: int = 0) -> tuple[str, bytes, bytes]:
    """Record i: its suffix, bundle and state bytes; `extra` more events on top of the same."""
    rng = random.Random(f"{seed}:{i}")
    b = BundleBuilder(TestSigner(KEY_ID), record=canonical_record(f"2611.{i:05d}", title=f"P{i}"))
    for j in range(rng.randint(lo, hi) - 1 + extra):  # record_created is the first event
        words = " ".join(rng.choice(WORDS) for _ in range(60))
        paper = {"title": f"Paper {i}", "abstract_excerpt": words, "authors_text": f"A. {j}"}
        claims = {"count": rng.randint(0, 9), "top": rng.sample(WORDS, 5)}
        b.add_event(payload={"graph_snapshot": {"n": j, "paper": paper, "claims": claims}})
    doc = b.build()
    return b.suffix, serialize(doc), serialize(doc["state"])


def _write_chunk(job: tuple[Path, list[int], int, int, int, int]) -> list[list[Any]]:
    out, indices, seed, lo, hi, extra = job
    rows: list[list[Any]] = []
    for i in indices:
        suffix, bundle, state = build(i, seed, lo, hi, extra)
        (out / f"{suffix}.bundle.json").write_bytes(bundle)
        (out / f"{suffix}.state.json").write_bytes(state)
        rows.append([suffix, len(bundle), len(state)])
    return rows


def write_records(
    out: Path, indices: list[int], seed: int, events: tuple[int, int], extra: int = 0
) -> list[list[Any]]:
    """[suffix, bundle bytes, state bytes] of each record, built on two cores."""
    step = 250
    jobs = [
        (out, indices[a : a + step], seed, *events, extra) for a in range(0, len(indices), step)
    ]
    with multiprocessing.Pool(min(2, os.cpu_count() or 1)) as pool:
        return [row for part in pool.imap(_write_chunk, jobs) for row in part]


def corpus(n: int, seed: int, events: tuple[int, int]) -> tuple[Path, list[list[Any]]]:
    """The cached corpus directory and its manifest, built on first use."""
    d = OUT / f"corpus-v{CORPUS_VERSION}-n{n}-s{seed}-e{events[0]}-{events[1]}"
    manifest = d / "manifest.json"
    if manifest.exists():
        return d, json.loads(manifest.read_text())
    shutil.rmtree(d, ignore_errors=True)  # a build that was interrupted
    d.mkdir(parents=True)
    t0 = time.perf_counter()
    rows = write_records(d, list(range(n)), seed, events)
    manifest.write_text(json.dumps(rows))  # written last: its presence means complete
    print(f"built {n} records in {time.perf_counter() - t0:.1f}s into {d}", file=sys.stderr)
    return d, rows


# -- the mirror -------------------------------------------------------------------------------


class LocalMirror:
    """bench/mirror_server.py in a child process; `reload()` after files change."""

    def __init__(self, dirs: list[Path]) -> None:
        argv = [sys.executable, str(BENCH / "mirror_server.py"), *map(str, dirs)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{int(self._line('port'))}"

    def _line(self, word: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != word:
            raise BenchError(f"mirror_server: expected '{word} N', got {line!r}")
        return line[1]

    def reload(self) -> None:
        self.proc.send_signal(signal.SIGHUP)
        self._line("reloaded")

    def cpu(self) -> float | None:
        """User+system CPU seconds so far (Linux /proc; None elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ExternalMirror:
    """A mirror run by someone else; `reload_cmd` (a shell command) after files change."""

    def __init__(self, url: str, reload_cmd: str | None) -> None:
        self.url, self.reload_cmd = url.rstrip("/"), reload_cmd

    def reload(self) -> None:
        if self.reload_cmd is None:
            raise BenchError("--mirror-url without --mirror-reload: cannot bump records")
        subprocess.run(self.reload_cmd, shell=True, check=True)

    def cpu(self) -> float | None:
        return None

    def close(self) -> None:
        pass


# -- child processes --------------------------------------------------------------------------


class BenchError(Exception):
    pass


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    mirror_cpu_s: float | None
    stdout: str

    def figures(self, n: int) -> dict[str, Any]:
        return {
            "records_per_s": round(n / self.wall_s, 1),
            "wall_s": round(self.wall_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "mirror_cpu_s": None if self.mirror_cpu_s is None else round(self.mirror_cpu_s, 2),
        }


def run_child(argv: list[str], label: str, tmp: Path, mirror: Any) -> Run:
    """Run argv to completion; exit 0 or BenchError with its stderr."""
    out, err = tmp / f"{label}.out", tmp / f"{label}.err"
    m0 = mirror.cpu()
    with out.open("wb") as o, err.open("wb") as e:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=o, stderr=e, cwd=ROOT)
        _, status, ru = os.wait4(proc.pid, 0)  # this child's own rusage, exactly
        wall = time.perf_counter() - t0
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise BenchError(f"{label}: exit {code}: {' '.join(argv)}\n{err.read_text()[-4000:]}")
    m1 = mirror.cpu()
    rss_unit = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes there, KiB on Linux
    return Run(
        wall,
        ru.ru_utime + ru.ru_stime,
        ru.ru_maxrss / rss_unit,
        None if m0 is None or m1 is None else m1 - m0,
        out.read_text(),
    )


async def _fetch_all(base: str, suffixes: list[str], concurrency: int, per_host: int) -> int:
    """GET every bundle and state.json, `concurrency` workers as `sync` runs them."""
    total = 0
    send, receive = anyio.create_memory_object_stream[str](concurrency)
    async with HttpFetcher(
        user_agent="pithcrawl-bench", concurrency=concurrency, per_host=per_host
    ) as fetcher:

        async def worker() -> None:
            nonlocal total
            async with receive.clone() as jobs:
                async for suffix in jobs:
                    for kind in ("bundle", "state"):
                        r = await fetcher.get(f"{base}/pith/{suffix}/{kind}.json")
                        if r.status != 200:
                            raise BenchError(f"{r.url}: HTTP {r.status}")
                        total += len(r.body)

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
            async with send:
                for suffix in suffixes:
                    await send.send(suffix)
            receive.close()
    return total


def fetch_only_child(argv: list[str]) -> int:
    base, manifest, concurrency, per_host = argv
    suffixes = [row[0] for row in json.loads(Path(manifest).read_text())]
    print(anyio.run(_fetch_all, base, suffixes, int(concurrency), int(per_host)))
    return 0


# -- the archive ------------------------------------------------------------------------------


async def _track(db: Path, suffixes: list[str]) -> None:
    async with await Store.open(db) as store:
        await store.track(suffixes, datetime.now(UTC))


async def _stats(db: Path) -> dict[str, int]:
    async with await Store.open(db, readonly=True) as store:
        return await store.stats()


def db_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def write_config(tmp: Path, url: str, concurrency: int, per_host: int) -> Path:
    (tmp / "bench.key.json").write_text(json.dumps(TestSigner(KEY_ID).public_key()))
    cfg = tmp / "pithcrawl.toml"
    cfg.write_text(
        'db = "archive.db"\n\n[trust]\nkeys = ["bench.key.json"]\nclock_skew = "3650d"\n\n'
        f"[crawl]\nconcurrency = {concurrency}\nper_host = {per_host}\ndiscover = false\n\n"
        f'[[mirrors]]\nname = "bench"\nbase_url = "{url}"\n'
    )
    return cfg


# -- the run ----------------------------------------------------------------------------------


def bench(args: argparse.Namespace, tmp: Path, events: tuple[int, int]) -> dict[str, Any]:
    n = args.records
    corpus_dir, rows = corpus(n, args.seed, events)
    overlay = tmp / "bumped"
    overlay.mkdir()
    if args.mirror_url:
        mirror: Any = ExternalMirror(args.mirror_url, args.mirror_reload)
        print(f"external mirror: serve {corpus_dir}, then {overlay} over it", file=sys.stderr)
    else:
        mirror = LocalMirror([corpus_dir, overlay])
    try:
        cfg = write_config(tmp, mirror.url, args.concurrency, args.per_host)
        db = tmp / "archive.db"
        anyio.run(_track, db, [row[0] for row in rows])
        py = sys.executable
        sync = [py, "-m", "pithcrawl", "--config", str(cfg), "-q", "sync", "--json"]
        phases: dict[str, Any] = {}

        startup = run_child([py, "-m", "pithcrawl", "--version"], "startup", tmp, mirror)
        phases["startup"] = {"wall_s": round(startup.wall_s, 3)}
        fetch_argv = [
            py,
            __file__,
            "--fetch-only-child",
            mirror.url,
            str(corpus_dir / "manifest.json"),
        ]
        fetch = run_child(
            [*fetch_argv, str(args.concurrency), str(args.per_host)], "fetch", tmp, mirror
        )
        phases["fetch_only"] = {**fetch.figures(n), "bytes": int(fetch.stdout)}

        def sync_phase(label: str, profile: bool = False) -> dict[str, Any]:
            before, size0 = anyio.run(_stats, db), db_bytes(db)
            prof = ["-m", "cProfile", "-o", str(OUT / f"{label}_sync.prof")] if profile else []
            run = run_child([py, *prof, *sync[1:]], label, tmp, mirror)
            after, size1 = anyio.run(_stats, db), db_bytes(db)
            delta = {k: after[k] - before[k] for k in ("blobs", "snapshots", "blob_bytes_stored")}
            summary = json.loads(run.stdout.strip().splitlines()[-1])
            return {
                **run.figures(n),
                "db_bytes_added": size1 - size0,
                "stats_delta": delta,
                "summary": summary,
            }

        phases["cold"] = sync_phase("cold", args.profile)
        phases["unchanged"] = sync_phase("unchanged")
        picked = sorted(random.Random(args.seed).sample(range(n), max(1, n // 10)))
        bumped = write_records(overlay, picked, args.seed, events, extra=1)
        mirror.reload()
        bump = phases["bumped"] = sync_phase("bumped")
        raw = sum(row[1] for row in bumped)
        bump.update(
            changed_records=len(bumped),
            bytes_per_changed_record=round(bump["db_bytes_added"] / len(bumped), 1),
            raw_bundle_bytes_per_changed_record=round(raw / len(bumped), 1),
            ratio_to_raw_bundle=round(bump["db_bytes_added"] / raw, 3),
        )
    finally:
        mirror.close()
    checks = {
        "cold_new_snapshots": (phases["cold"]["summary"]["new_snapshots"], 2 * n),
        "unchanged_new_snapshots": (phases["unchanged"]["summary"]["new_snapshots"], 0),
        "bumped_new_snapshots": (bump["summary"]["new_snapshots"], 2 * len(bumped)),
    }
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "records": n,
        "events": f"{events[0]}-{events[1]}",
        "seed": args.seed,
        "concurrency": args.concurrency,
        "per_host": args.per_host,
        "mean_bundle_bytes": sum(r[1] for r in rows) // n,
        "mean_state_bytes": sum(r[2] for r in rows) // n,
        "profiled": args.profile,
        **phases,
        "cold_to_fetch_only": round(phases["cold"]["wall_s"] / fetch.wall_s, 2),
        "checks": {k: {"found": f, "expected": e, "ok": f == e} for k, (f, e) in checks.items()},
    }


def print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"N={r['records']} records, {r['events']} events, mean bundle {r['mean_bundle_bytes']} B,"
        f" state {r['mean_state_bytes']} B; {m['cpu_count']} CPUs, {m['platform']}"
    )
    print(f"process startup (pithcrawl --version): {r['startup']['wall_s']:.2f}s")
    head = ("phase", "records/s", "wall s", "CPU s", "RSS MB", "mirror CPU s", "DB +bytes")
    print("{:<12}{:>11}{:>9}{:>8}{:>8}{:>14}{:>12}".format(*head))
    for name in ("fetch_only", "cold", "unchanged", "bumped"):
        p = r[name]
        mcpu = "-" if p["mirror_cpu_s"] is None else f"{p['mirror_cpu_s']:.2f}"
        grown = p.get("db_bytes_added", "-")
        print(
            f"{name:<12}{p['records_per_s']:>11}{p['wall_s']:>9.2f}{p['cpu_s']:>8.2f}"
            f"{p['peak_rss_mb']:>8.1f}{mcpu:>14}{grown:>12}"
        )
    b = r["bumped"]
    print(f"cold sync time / fetch-only time: {r['cold_to_fetch_only']}")
    print(f"unchanged re-sync stats delta: {r['unchanged']['stats_delta']}")
    print(
        f"bumped: {b['changed_records']} records changed, {b['bytes_per_changed_record']} DB bytes"
        f" each = {b['ratio_to_raw_bundle']} × the raw bundle"
        f" ({b['raw_bundle_bytes_per_changed_record']} B); stats delta {b['stats_delta']}"
    )
    for k, c in r["checks"].items():
        if not c["ok"]:
            print(f"CHECK FAILED {k}: found {c['found']}, expected {c['expected']}")


def main() -> int:
    if sys.argv[1:2] == ["--fetch-only-child"]:
        return fetch_only_child(sys.argv[2:])
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--records", type=int, default=2000, help="N, up to 100000")
    ap.add_argument("--events", default="2-6", help="events per record, LO-HI (seeded)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--per-host", type=int, default=32)
    ap.add_argument("--mirror-url", help="an external mirror serving the corpus")
    ap.add_argument("--mirror-reload", help="shell command telling it files changed")
    ap.add_argument("--profile", action="store_true", help="cProfile the cold sync")
    ap.add_argument("--json", type=Path, default=OUT / "sync_bench.json")
    args = ap.parse_args()
    lo, _, hi = args.events.partition("-")
    events = (int(lo), int(hi or lo))
    if not 1 <= args.records <= 100_000 or not 1 <= events[0] <= events[1]:
        ap.error("--records must be 1..100000 and --events LO-HI with 1 <= LO <= HI")
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="pithcrawl-bench-") as tmp:
            result = bench(args, Path(tmp), events)
    except BenchError as e:
        print(f"sync_bench: {e}", file=sys.stderr)
        return 1
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(c["ok"] for c in result["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
