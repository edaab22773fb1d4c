"""`pithcrawl status`: what the archive watches, how each mirror is doing, open alerts.

Reads the archive read-only (it works while `run` holds the writers' lock) and reports;
it never fails on what it finds. A mirror's line sums its fetch bookkeeping over every
record and document kind: the latest success, the latest failure still unresolved, the
longest run of consecutive failures, and the earliest next fetch. Open alerts come from
the archive's alert table, each with the state of its delivery to every sink.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio

from pithcrawl.commands.report import archive, print_json, say, size, table, when
from pithcrawl.config import Config
from pithcrawl.errors import EXIT_OK
from pithcrawl.location import Where
from pithcrawl.mirrors import last_crawled, manifest_read
from pithcrawl.store import Alert, Delivery, Mirror, Store
from pithcrawl.store.archive import MirrorSummary
from pithcrawl.store.nodes import Node
from pithcrawl.timestamps import format_timestamp, parse_timestamp

HELP = "Tracked records, mirrors (last success and failure), open alerts, the archive."
EXAMPLE = "pithcrawl --config /etc/pithcrawl/pithcrawl.toml status --json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


@dataclass(slots=True)
class MirrorStatus:
    """One mirror's bookkeeping, summed over its (record, kind) pairs."""

    name: str
    base_url: str | None = None
    records: int = 0
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    failures: int = 0
    last_error: str | None = None
    next_due: datetime | None = None
    crawled: bool = True
    """Still crawled: configured, listed by a configured manifest, or discovered while
    discovery is on. Any other keeps its bookkeeping here, with nothing due."""
    manifest: str | None = None
    """For a manifest entry: the manifest's URL (its reads are the row's successes and
    failures, and `records` the mirrors it listed last)."""

    def take(self, s: MirrorSummary) -> None:
        self.records, self.failures, self.last_error = s.records, s.failures, s.last_error
        self.last_success_at, self.last_failure_at = s.last_success_at, s.last_failure_at
        self.next_due = s.next_due

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base_url": self.base_url,
            "records": self.records,
            "last_success_at": _text(self.last_success_at),
            "last_failure_at": _text(self.last_failure_at),
            "failures": self.failures,
            "last_error": self.last_error,
            "next_due": _text(self.next_due),
            "crawled": self.crawled,
            "manifest": self.manifest,
        }

    def take_manifest(self, url: str, read: dict[str, Any]) -> None:
        self.manifest = url
        self.records = read.get("listed") or 0
        self.last_success_at = parse_time(read.get("last_success_at"))
        failed = parse_time(read.get("last_failure_at"))
        if failed is not None and (self.last_success_at is None or failed > self.last_success_at):
            self.last_failure_at, self.last_error = failed, read.get("last_error")


@dataclass(frozen=True, slots=True)
class Status:
    db: Where
    db_bytes: int
    records: int
    mirrors: list[MirrorStatus]
    open_alerts: list[Alert]
    deliveries: dict[int, list[Delivery]]
    """The deliveries of the open alerts."""
    undelivered: int
    """Deliveries not yet taken, of any alert (a closing notice of a closed one too)."""
    nodes: list[Node]
    """The nodes that crawled the archive, the one seen last first."""
    leases: dict[str, int]
    """The pairs each node holds a running lease on (is fetching, or died fetching)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "db": {"path": str(self.db), "bytes": self.db_bytes},
            "records": self.records,
            "nodes": [
                {
                    "name": n.name,
                    "vantage": n.vantage,
                    "first_seen": _text(n.first_seen),
                    "last_seen": _text(n.last_seen),
                    "leases": self.leases.get(n.name, 0),
                }
                for n in self.nodes
            ],
            "mirrors": [m.to_json() for m in self.mirrors],
            "open_alerts": [
                {**a.to_json(), "deliveries": [_delivery(d) for d in self.deliveries.get(a.id, [])]}
                for a in self.open_alerts
            ],
            "undelivered": self.undelivered,
        }


def run(args: argparse.Namespace) -> int:
    config, db = archive(args)
    status = anyio.run(gather, config, db)
    if args.json:
        print_json(status.to_json())
    else:
        say(*render(status))
    return EXIT_OK


async def gather(config: Config, db: Where) -> Status:
    """Read everything `status` shows, in one read-only session."""
    async with await Store.open(db, readonly=True) as store:
        return await gather_from(store, config)


async def gather_from(store: Store, config: Config, *, alerts: bool = True) -> Status:
    """`gather` from an open archive (`serve`'s overview shows the same figures); without
    `alerts`, no open alert is read (the overview counts them, and reads a page)."""
    db = store.path
    records = await store.watchlist.tracked_count()
    nodes = await store.nodes.all()
    leases = await store.leases.held(datetime.now(UTC))
    # A mirror's health as the vantages crawling lately see it: one that stopped (or was
    # renamed) would show its last failure forever.
    newest = max((n.last_seen for n in nodes), default=None)
    live = None
    if newest is not None:
        live = sorted({n.vantage for n in nodes if n.crawling(newest, config.vantage_alive)})
    summaries = await store.mirror_summaries(vantages=live)
    known = await store.watchlist.mirrors()
    open_alerts = await store.alerts.open_alerts() if alerts else []
    deliveries: dict[int, list[Delivery]] = {}
    for d in await store.deliveries.rows(alert_ids=[a.id for a in open_alerts]):
        deliveries.setdefault(d.alert_id, []).append(d)
    undelivered = await store.deliveries.undelivered_count()
    reads = {m.name: await manifest_read(store, m.name) for m in config.mirrors if m.manifest}
    last = await last_crawled(store)
    mirrors: dict[str, MirrorStatus] = {}
    for m in config.mirrors:
        mirrors[m.name] = MirrorStatus(m.name, m.base_url)
    for k in known:
        mirrors.setdefault(k.name, MirrorStatus(k.name, k.base_url))
    for summary in summaries:
        mirrors.setdefault(summary.mirror, MirrorStatus(summary.mirror)).take(summary)
    for m in config.mirrors:
        if m.manifest is not None and m.base_url is None:
            mirrors[m.name].take_manifest(m.manifest, reads[m.name])
    crawled = crawled_names(config, known)
    if last is not None:
        # Configured entries are crawled (by the next pass, if added since the last); of
        # the mirrors manifests listed and bundles named, those the last pass crawled (a
        # duplicate of a configured mirror, or a discovered one refused, was not).
        configured = {m.name for m in config.mirrors}
        crawled = {n for n in crawled if n in configured or n in last}
    for status in mirrors.values():
        if status.name not in crawled:
            status.crawled, status.next_due = False, None
    return Status(
        db=db,
        db_bytes=await store.maintenance.size(),
        records=records,
        mirrors=sorted(mirrors.values(), key=lambda m: m.name),
        open_alerts=open_alerts,
        deliveries=deliveries,
        undelivered=undelivered,
        nodes=nodes,
        leases=leases,
    )


def crawled_names(config: Config, known: list[Mirror]) -> set[str]:
    """The mirrors a pass crawls now: configured ones, those a configured manifest
    listed, and discovered ones while discovery is on."""
    names = {m.name for m in config.mirrors}
    manifests = tuple(f"{m.name}/" for m in config.mirrors if m.manifest)
    for k in known:
        if (k.origin == "manifest" and k.name.startswith(manifests)) or (
            k.origin == "discovered" and config.crawl.discover
        ):
            names.add(k.name)
    return names


def _delivery(d: Delivery) -> dict[str, Any]:
    return {
        "sink": d.sink,
        "phase": d.phase,
        "delivered_at": _text(d.delivered_at),
        "attempts": d.attempts,
        "next_attempt": None if d.delivered_at else _text(d.next_attempt),
        "last_error": d.last_error,
    }


def _delivery_text(ds: list[Delivery]) -> str:
    if not ds:
        return "logged only: no alerts.hook or alerts.webhook to deliver to"
    return ", ".join(
        f"{d.sink} {'delivered' if d.delivered_at else f'pending ({d.attempts} tries)'}"
        for d in ds
        if d.phase == "open"
    )


def render(status: Status) -> list[str]:
    lines = [
        f"archive   {status.db} ({size(status.db_bytes)})",
        f"records   {status.records} tracked",
        "",
    ]
    if len(status.nodes) > 1 or any(n.vantage != n.name for n in status.nodes):
        # One node named after its host is every archive's case: only more is news.
        lines += table(
            ("node", "vantage", "first seen", "last seen", "leases"),
            [
                (
                    n.name,
                    n.vantage,
                    when(n.first_seen),
                    when(n.last_seen),
                    str(status.leases.get(n.name, 0)),
                )
                for n in status.nodes
            ],
        )
        lines.append("")
    elif status.nodes:
        n = status.nodes[0]
        held = status.leases.get(n.name, 0)
        leased = f", fetching {held} pairs" if held else ""
        lines[-1:] = [f"node      {n.name}, last seen {when(n.last_seen)}{leased}", ""]
    if status.mirrors:
        lines += table(
            ("mirror", "records", "last success", "last failure", "failures", "next due", "error"),
            [
                (
                    _name(m),
                    f"{m.records} mirrors listed" if m.manifest else str(m.records),
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
    held = sum(1 for a in status.open_alerts if not a.firing)
    lines += [
        "",
        f"open alerts: {len(status.open_alerts)}"
        + (f" ({held} clear now, held open for alerts.resolve_after)" if held else ""),
    ]
    for a in status.open_alerts:
        sent = _delivery_text(status.deliveries.get(a.id, []))
        state = []
        if a.cleared_at is not None:
            state.append(f"clear since {when(a.cleared_at)}")
        if a.recurrences:
            state.append(f"came back {a.recurrences} time(s)")
        lines.append(
            f"  #{a.id} {when(a.opened_at)}  {a.severity} {a.kind}"
            f"  {a.pith_number or a.suffix or '-'}  {','.join(a.mirrors) or '-'}"
            f"  {a.summary}  [{sent}]" + (f"  ({'; '.join(state)})" if state else "")
        )
    return lines


def _name(m: MirrorStatus) -> str:
    if m.manifest is not None:
        return f"{m.name} (manifest)"
    return m.name if m.crawled else f"{m.name} (not crawled)"


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def parse_time(text: Any) -> datetime | None:
    stamp = parse_timestamp(text) if isinstance(text, str) else None
    return None if stamp is None else stamp.at


def _text(at: datetime | None) -> str | None:
    return None if at is None else format_timestamp(at)
