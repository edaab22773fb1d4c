"""`pithcrawl run` left running against a mirror where nothing changes: does anything grow?

    python bench/soak.py [--records 2000] [--minutes 20] [--interval 20s] [--json out.json]

Serves a signed corpus (sync_bench's, cached the same way) from bench/mirror_server.py,
tracks every record, and runs the daemon with a short `crawl.interval`, so each pair is
fetched again and again (conditional GETs: 304s). Every `--every` seconds it samples the
daemon from /proc (RSS, open descriptors, threads) and the archive's files (db, -wal);
at the end it stops the daemon with SIGTERM. The first half of the run is left out (the
cold crawl, and the connection pool and page cache filling up); over the second half,
nothing changes, so every figure should stay flat. It prints the samples and each
figure's growth per hour over that steady half, and exits 1 when the daemon died, did
not exit 0 on SIGTERM, or logged anything at warning level or above.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sync_bench import BENCH, BenchError, Mirror, _track, corpus, write_config

from pithcrawl.timestamps import parse_duration

ROOT = BENCH.parent


def sample(pid: int, db: Path, t0: float) -> dict[str, float]:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {
        "t_s": round(time.monotonic() - t0),
        "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(status["Threads"]),
        "db_bytes": db.stat().st_size if db.exists() else 0,
        "wal_bytes": Path(f"{db}-wal").stat().st_size if Path(f"{db}-wal").exists() else 0,
    }


def growth_per_hour(samples: list[dict[str, float]], key: str) -> float:
    """The least-squares slope of `key` over time, per hour."""
    n = len(samples)
    if n < 2:
        return 0.0
    ts = [s["t_s"] for s in samples]
    vs = [s[key] for s in samples]
    mt, mv = sum(ts) / n, sum(vs) / n
    var = sum((t - mt) ** 2 for t in ts)
    if not var:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / var * 3600


def loud_lines(log: Path) -> list[str]:
    """The daemon's log lines at warning level or above (JSON lines)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            level = json.loads(line).get("level")
        except ValueError:
            out.append(line)  # not JSON: something wrote to stderr behind structlog's back
            continue
        if level not in ("debug", "info"):
            out.append(line)
    return out


def soak(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    d, rows = corpus(args.records, 1, (2, 6))
    mirror = Mirror([d], None, None)
    try:
        cfg = write_config(tmp, mirror.url, 32, 32)
        cfg.write_text(
            cfg.read_text().replace("[crawl]\n", f'[crawl]\ninterval = "{args.interval}"\n')
        )
        db = tmp / "archive.db"
        anyio.run(_track, db, [r[0] for r in rows])
        log = tmp / "daemon.log"
        argv = [sys.executable, "-m", "pithcrawl", "--config", str(cfg)]
        argv += ["--log-format", "json", "run"]
        with log.open("w") as err:
            proc = subprocess.Popen(argv, cwd=tmp, stderr=err, stdout=subprocess.DEVNULL)
        t0 = time.monotonic()
        # The second half, and never the cold crawl however short the run.
        warmup = max(args.minutes * 30, parse_duration(args.interval).total_seconds() * 1.5)
        samples = []
        try:
            while time.monotonic() - t0 < args.minutes * 60:
                time.sleep(args.every)
                try:
                    if proc.poll() is not None:
                        raise FileNotFoundError
                    samples.append(sample(proc.pid, db, t0))
                except FileNotFoundError:  # gone, maybe between poll() and /proc
                    tail = log.read_text(errors="replace")[-4000:]
                    raise BenchError(f"the daemon died (exit {proc.wait()}):\n{tail}") from None
                s = samples[-1]
                print(
                    f"{s['t_s']:>6}s  RSS {s['rss_mb']:>6} MB  fds {s['fds']:>3}  "
                    f"threads {s['threads']:>2}  db {s['db_bytes']:>10}  wal {s['wal_bytes']:>9}",
                    flush=True,
                )
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            try:
                code: int | None = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()  # did not stop on SIGTERM: a failure, and no daemon left behind
                proc.wait()
                code = None
            stop_s = time.monotonic() - stopped
    finally:
        mirror.close()
    steady = [s for s in samples if s["t_s"] >= warmup]
    return {
        "records": args.records,
        "interval": args.interval,
        "minutes": args.minutes,
        "samples": samples,
        "steady_from_s": warmup,
        "per_hour": {
            key: round(growth_per_hour(steady, key), 2)
            for key in ("rss_mb", "fds", "threads", "db_bytes", "wal_bytes")
        },
        "exit_code": code,
        "stop_s": round(stop_s, 2),
        "loud_log_lines": loud_lines(log)[:20],
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--interval", default="20s", help="crawl.interval for the daemon")
    ap.add_argument("--every", type=float, default=30, help="seconds between samples")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if not Path("/proc/self/status").exists():
        ap.error("reads the daemon's figures from /proc: Linux only")
    try:
        parse_duration(args.interval)
    except ValueError as e:
        ap.error(f"--interval: {e}")
    with tempfile.TemporaryDirectory(prefix="pithcrawl-soak-") as tmp:
        try:
            result = soak(args, Path(tmp))
        except BenchError as e:
            print(f"soak: {e}", file=sys.stderr)
            return 1
    steady = [x for x in result["samples"] if x["t_s"] >= result["steady_from_s"]]
    if len(steady) < 2:
        print(
            f"soak: too short to judge: {len(steady)} sample(s) after"
            f" {result['steady_from_s']:.0f}s (run longer, or sample more often)",
            file=sys.stderr,
        )
        return 1
    growth = result["per_hour"]
    print(
        f"\nsteady state from {result['steady_from_s']:.0f}s, growth per hour: "
        f"RSS {growth['rss_mb']} MB, fds {growth['fds']}, threads {growth['threads']}, "
        f"db {growth['db_bytes']:.0f} B, wal {growth['wal_bytes']:.0f} B"
    )
    if result["exit_code"] is None:
        print(f"SIGTERM: still running after {result['stop_s']}s, killed")
    else:
        print(f"SIGTERM: exit {result['exit_code']} after {result['stop_s']}s")
    for line in result["loud_log_lines"]:
        print(f"LOGGED {line}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["exit_code"] == 0 and not result["loud_log_lines"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
