"""`pithcrawl status`: what the archive watches, how each mirror is doing, open alerts.

Reads the archive read-only (it works while `run` holds the writers' lock) and reports;
it never fails on what it finds. A mirror's line sums its fetch bookkeeping over every
record and document kind: the latest success, the latest failure still unresolved, the
longest run of consecutive failures, and the earliest next fetch. Open alerts are, for
now, the most recent critical event per `dedup_key` (closing alerts is not stored yet).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from pithcrawl.commands.report import archive, file_bytes, print_json, size, table, when
from pithcrawl.config import Config
from pithcrawl.errors import EXIT_OK
from pithcrawl.store import EventRow, FetchState, Store
from pithcrawl.timestamps import format_timestamp

HELP = "Tracked records, mirrors (last success and failure), open alerts, the archive."
EXAMPLE = "pithcrawl --config /etc/pithcrawl.toml status --json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


@dataclass(slots=True)
class MirrorStatus:
    """One mirror's bookkeeping, summed over its (record, kind) pairs."""

    name: str
    base_url: str | None = None
    records: set[str] = field(default_factory=set)
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    failures: int = 0
    last_error: str | None = None
    next_due: datetime | None = None

    def add(self, state: FetchState) -> None:
        self.records.add(state.suffix)
        self.last_success_at = _latest(self.last_success_at, state.last_success_at)
        failed_at = state.last_fetch_at if state.failures else None
        if failed_at is not None and (
            self.last_failure_at is None or failed_at > self.last_failure_at
        ):
            self.last_failure_at = failed_at
            self.last_error = state.last_error
        self.failures = max(self.failures, state.failures)
        if state.next_due is not None and (self.next_due is None or state.next_due < self.next_due):
            self.next_due = state.next_due

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base_url": self.base_url,
            "records": len(self.records),
            "last_success_at": _text(self.last_success_at),
            "last_failure_at": _text(self.last_failure_at),
            "failures": self.failures,
            "last_error": self.last_error,
            "next_due": _text(self.next_due),
        }


@dataclass(frozen=True, slots=True)
class Status:
    db: Path
    db_bytes: int
    records: int
    mirrors: list[MirrorStatus]
    open_alerts: list[EventRow]

    def to_json(self) -> dict[str, Any]:
        return {
            "db": {"path": str(self.db), "bytes": self.db_bytes},
            "records": self.records,
            "mirrors": [m.to_json() for m in self.mirrors],
            "open_alerts": [e.to_json() for e in self.open_alerts],
        }


def run(args: argparse.Namespace) -> int:
    config, db = archive(args)
    status = anyio.run(gather, config, db)
    if args.json:
        print_json(status.to_json())
    else:
        print("\n".join(render(status)))
    return EXIT_OK


async def gather(config: Config, db: Path) -> Status:
    """Read everything `status` shows, in one read-only session."""
    async with await Store.open(db, readonly=True) as store:
        records = len(await store.tracked())
        states = await store.fetch_states()
        known = await store.mirrors()
        events = await store.events()
    mirrors: dict[str, MirrorStatus] = {}
    for m in config.mirrors:
        mirrors[m.name] = MirrorStatus(m.name, m.base_url)
    for k in known:
        mirrors.setdefault(k.name, MirrorStatus(k.name, k.base_url))
    for s in states:
        mirrors.setdefault(s.mirror, MirrorStatus(s.mirror)).add(s)
    return Status(
        db=db,
        db_bytes=file_bytes(db),
        records=records,
        mirrors=sorted(mirrors.values(), key=lambda m: m.name),
        open_alerts=open_alerts(events),
    )


def open_alerts(events: list[EventRow]) -> list[EventRow]:
    """The newest critical event per `dedup_key` (an event without one stands alone),
    newest first."""
    latest: dict[str | int, EventRow] = {}
    for e in events:  # in time order, so a later one replaces an earlier
        if e.severity == "critical":
            latest[e.dedup_key if e.dedup_key is not None else e.id] = e
    return sorted(latest.values(), key=lambda e: (e.at, e.id), reverse=True)


def render(status: Status) -> list[str]:
    lines = [
        f"archive   {status.db} ({size(status.db_bytes)})",
        f"records   {status.records} tracked",
        "",
    ]
    if status.mirrors:
        lines += table(
            ("mirror", "records", "last success", "last failure", "failures", "next due", "error"),
            [
                (
                    m.name,
                    str(len(m.records)),
                    when(m.last_success_at),
                    when(m.last_failure_at),
                    str(m.failures),
                    when(m.next_due),
                    m.last_error or "-",
                )
                for m in status.mirrors
            ],
        )
    else:
        lines.append("no mirrors configured or fetched yet")
    lines += ["", f"open alerts: {len(status.open_alerts)}"]
    lines += [
        f"  {when(e.at)}  {e.kind}  {e.pith_number or e.suffix or '-'}"
        f"  {','.join(e.mirrors) or '-'}  {e.summary}"
        for e in status.open_alerts
    ]
    return lines


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def _text(at: datetime | None) -> str | None:
    return None if at is None else format_timestamp(at)
