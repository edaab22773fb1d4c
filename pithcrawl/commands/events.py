"""`pithcrawl events`: the structured event log, oldest first.

Reads the archive read-only and prints every event (from `--since`, of the `--kind`s
asked for): one JSON object per line with `--json` (the contract's alert object), else
one line per event for people. A kind it does not know simply matches nothing: scripts
must tolerate new kinds, so asking for one is not an error.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import anyio

from pithcrawl.commands.report import archive, print_json, say, table, when
from pithcrawl.errors import EXIT_OK, UsageError
from pithcrawl.location import Where
from pithcrawl.store import EventRow, Store
from pithcrawl.timestamps import parse_duration, parse_timestamp

HELP = "The event log: alerts, corrections, key rotations, new events, changes."
EXAMPLE = "pithcrawl events --since 2d --kind rollback --kind mirror_divergence --json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--since", metavar="TIME", help="RFC 3339 UTC time, or a duration ago like 2d or 6h"
    )
    p.add_argument(
        "--kind",
        action="append",
        default=[],
        metavar="KIND",
        help="only events of this kind (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line on stdout")


def since(text: str, now: datetime) -> datetime:
    """`--since`'s moment: an RFC 3339 UTC time, or `now` minus a duration."""
    stamp = parse_timestamp(text)
    if stamp is not None:
        return stamp.at
    try:
        return now - parse_duration(text)
    except (ValueError, OverflowError):
        raise UsageError(
            f"--since {text!r}: expected an RFC 3339 UTC time like 2026-11-27T12:00:00Z"
            " or a duration like 30m, 6h or 2d"
        ) from None


def run(args: argparse.Namespace) -> int:
    _, db = archive(args)
    start = None if args.since is None else since(args.since, datetime.now(UTC))
    events, alerts = anyio.run(_events, db, start, tuple(args.kind))
    if args.json:  # JSON lines: none for no events
        for event in events:
            print_json(entry_json(event, alerts.get(event.id)))
        return EXIT_OK
    if not events:
        kinds = f" of kind {', '.join(args.kind)}" if args.kind else ""
        after = "" if start is None else f" since {when(start)}"
        say(f"no events{kinds}{after} in {db}")
        return EXIT_OK
    header = ("at", "severity", "kind", "record", "mirrors", "summary")
    say(*table(header, [_cells(e, alerts.get(e.id)) for e in events]))
    return EXIT_OK


def entry_json(event: EventRow, alert: dict[str, Any] | None) -> dict[str, Any]:
    """One line of `--json`: the contract's alert object, where `id` is the alert's, as
    hooks, webhooks, `status` and `evidence ALERT_ID` know it (null for an entry that
    raised no alert, such as `event_added`), and `log_id` is the entry's own row."""
    doc = event.to_json()
    doc["log_id"] = doc["id"]
    doc["id"] = None if alert is None else alert["id"]
    if alert is not None:
        doc["alert"] = alert
    return doc


async def _events(
    db: Where, start: datetime | None, kinds: tuple[str, ...]
) -> tuple[list[EventRow], dict[int, dict[str, Any]]]:
    """The events, and for each that belongs to an alert (by the entry's id), the
    alert's id, state and deliveries."""
    async with await Store.open(db, readonly=True) as store:
        events = await store.events(since=start, kinds=kinds)
        alerts = await store.alerts.of_entries(events)
        ids = sorted({a.id for a in alerts.values()})
        deliveries: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
        for d in await store.deliveries.rows(alert_ids=ids) if ids else []:
            deliveries[d.alert_id].append(
                {
                    "sink": d.sink,
                    "phase": d.phase,
                    "delivered": d.delivered_at is not None,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                }
            )
    states = {
        entry: {
            "id": a.id,
            "status": "open" if a.open else "closed",
            "deliveries": deliveries[a.id],
        }
        for entry, a in alerts.items()
    }
    return events, states


def _alert_text(alert: dict[str, Any]) -> str:
    sent = ", ".join(
        f"{d['sink']} {d['phase']} {'delivered' if d['delivered'] else 'pending'}"
        for d in alert["deliveries"]
    )
    return f"alert #{alert['id']} {alert['status']}" + (f": {sent}" if sent else "")


def _cells(e: EventRow, alert: dict[str, Any] | None) -> list[str]:
    """One event for people: time, severity, kind, record, mirrors, summary (and the
    alert behind it, with its deliveries)."""
    summary = e.summary + (f"  [{_alert_text(alert)}]" if alert else "")
    mirrors = ",".join(e.mirrors) or "-"
    return [when(e.at), e.severity, e.kind, e.pith_number or e.suffix or "-", mirrors, summary]
