"""`pithcrawl fsck`: is the archive still what it claims to be?

SQLite's integrity check, then every trusted snapshot read back (its body must hash to
its sha256) and verified again, as of its fetch time, against the trust set (configured
keys, plus keys learned from rotations when they are followed); every untrusted one read
back too (it is the evidence behind an alert); and every alert and log entry's JSON
columns checked. Anything wrong is reported with its snapshot or row. Read-only: it
repairs nothing.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

import anyio

from pithcrawl.commands.report import archive, print_json, say
from pithcrawl.config import Config
from pithcrawl.errors import EXIT_OK, EXIT_OPERATIONAL, EXIT_SECURITY, StoreCorrupt, StoreError
from pithcrawl.keys import TrustSet
from pithcrawl.location import Where
from pithcrawl.store import Snapshot, Store
from pithcrawl.trust import load_trust, with_learned
from pithcrawl.verify import verify_archived

HELP = "Check the database and re-verify every archived trusted body."
EXAMPLE = "pithcrawl --config /etc/pithcrawl/pithcrawl.toml fsck"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="the result as one JSON document")


@dataclass(slots=True)
class Result:
    integrity: list[str] = field(default_factory=list)
    checked: int = 0
    evidence_read: int = 0
    """Untrusted snapshots whose bodies were read back."""
    problems: list[dict[str, Any]] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    """Alerts and log entries whose JSON columns are damaged."""

    def to_json(self) -> dict[str, Any]:
        return {
            "integrity": self.integrity,
            "trusted_snapshots_checked": self.checked,
            "untrusted_snapshots_read": self.evidence_read,
            "problems": self.problems,
            "damaged_rows": self.rows,
        }


def run(args: argparse.Namespace) -> int:
    config, db = archive(args)
    result = anyio.run(check, config, db, load_trust(config.trust.keys))
    if args.json:
        print_json(result.to_json(), indent=2)
    else:
        say(
            f"integrity: {', '.join(result.integrity)}",
            f"trusted snapshots re-verified: {result.checked}",
            f"untrusted snapshots (evidence) read back: {result.evidence_read}",
            *(
                f"PROBLEM snapshot {p['snapshot_id']} ({p['suffix']}, {p['mirror']}): "
                f"{p['problem']}"
                for p in result.problems
            ),
            *(f"PROBLEM {row}" for row in result.rows),
        )
        if not result.problems and not result.rows:
            say("every trusted body still verifies; every body and row reads back")
    if result.integrity != ["ok"]:
        return EXIT_OPERATIONAL
    return EXIT_SECURITY if result.problems or result.rows else EXIT_OK


async def check(config: Config, db: Where, trust: TrustSet) -> Result:
    result = Result()
    async with await Store.open(db, readonly=True) as store:
        result.integrity = await store.maintenance.integrity_check()
        trust = await with_learned(trust, store, config)
        after = 0
        while page := await store.trusted.snapshots(after_id=after):
            for _, snap in page:
                if isinstance(snap, StoreCorrupt):
                    result.rows.append(str(snap))
                    continue
                problem = await _recheck(store, snap, trust, config)
                result.checked += 1
                if problem is not None:
                    result.problems.append(_problem(snap, problem))
            after = page[-1][0]
        after = 0
        while page := await store.maintenance.untrusted_snapshots(after_id=after):
            for _, snap in page:
                if isinstance(snap, StoreCorrupt):
                    result.rows.append(str(snap))
                    continue
                result.evidence_read += 1
                try:
                    await store.get_blob(snap.body_sha256)
                except StoreError as e:
                    result.problems.append(_problem(snap, f"evidence unreadable: {e}"))
            after = page[-1][0]
        result.rows += await store.maintenance.malformed_rows()
    return result


def _problem(snap: Snapshot, problem: str) -> dict[str, Any]:
    return {
        "snapshot_id": snap.id,
        "suffix": snap.suffix,
        "mirror": snap.mirror,
        "kind": snap.kind,
        "body_sha256": snap.body_sha256,
        "problem": problem,
    }


async def _recheck(store: Store, snap: Snapshot, trust: TrustSet, config: Config) -> str | None:
    try:
        body = await store.get_blob(snap.body_sha256)
    except StoreError as e:
        return str(e)
    report = verify_archived(
        body,
        snap.kind,
        trust,
        fetched_at=snap.fetched_at,
        clock_skew=config.trust.clock_skew,
        expected_suffix=snap.suffix,
    )
    if not report.ok:
        codes = sorted({f.code for f in report.findings if f.severity == "critical"})
        return "no longer verifies: " + ", ".join(codes)
    if snap.kind == "bundle":
        # The row must describe its body: a row pointed at another (older, valid) body
        # would have `serve` and the history rules see another version than it records.
        recorded = {
            "bundle_sha256": (snap.bundle_sha256, report.bundle_sha256),
            "built_at": (snap.built_at, report.built_at),
            "event_count": (snap.event_count, len(report.events)),
        }
        wrong = [f"{k} {r!r} recorded, {a!r} in it" for k, (r, a) in recorded.items() if r != a]
        if wrong:
            return "its row describes another body: " + "; ".join(wrong)
    return None
