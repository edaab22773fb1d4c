"""`pithcrawl history` and `diff`: a record's archived snapshots, and what changed.

`history` lists every snapshot of a record (one kind, from one mirror or all), oldest
first, with what changed since the same mirror's previous snapshot: the number of JSON
Patch operations and the kinds of the event-log entries linked to it. `diff` prints the
RFC 6902 patch between two snapshots, computed from the archived bytes. Both read the
archive read-only and exit 0 whatever they show; an unknown record or snapshot is a
usage error (exit 2) that names it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import anyio

from pithcrawl.canon import MalformedJSON, parse
from pithcrawl.commands.patch import make_patch
from pithcrawl.commands.report import (
    archive,
    print_json,
    row_id,
    say,
    suffix_of,
    table,
    when,
)
from pithcrawl.errors import EXIT_OK, StoreCorrupt, UsageError
from pithcrawl.location import Where
from pithcrawl.store import KINDS, Snapshot, Store
from pithcrawl.timestamps import format_timestamp

HELP = "Every archived snapshot of a record: when, from where, built_at, what changed."
EXAMPLE = "pithcrawl history pith:2026:2SZ3GMWFCMMCUPZJQTONOWSJZ2 --mirror pith.science"
DIFF_HELP = "The RFC 6902 JSON Patch between two snapshots of a record (default: the last two)."
DIFF_EXAMPLE = "pithcrawl diff 2SZ3GMWFCMMCUPZJQTONOWSJZ2 --from 12 --to 15"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pith", metavar="PITH", help="full number, suffix or bundle URL")
    p.add_argument("--mirror", metavar="NAME", help="only this mirror's snapshots")
    p.add_argument("--kind", choices=KINDS, default="bundle", help="document kind (bundle)")
    p.add_argument("--vantage", metavar="NAME", help="only the snapshots fetched from this vantage")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


def add_diff_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pith", metavar="PITH", help="full number, suffix or bundle URL")
    p.add_argument("--mirror", metavar="NAME", help="the last two snapshots of this mirror")
    p.add_argument("--from", dest="from_id", type=row_id, metavar="ID", help="older snapshot id")
    p.add_argument("--to", dest="to_id", type=row_id, metavar="ID", help="newer snapshot id")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


@dataclass(frozen=True, slots=True)
class Entry:
    """One snapshot as `history` shows it."""

    snapshot: Snapshot
    changes: int | None
    """JSON Patch operations since the previous snapshot (`prev_id`); None for the first
    or when either document is not JSON (or is damaged)."""
    events: tuple[str, ...]
    damaged: str | None = None
    """What is wrong with its archived body or its predecessor's, if the archive is
    damaged there (`fsck` tells more): the row is shown, marked, with the others."""

    def to_json(self) -> dict[str, Any]:
        s = self.snapshot
        return {
            "id": s.id,
            "kind": s.kind,
            "fetched_at": format_timestamp(s.fetched_at),
            "mirror": s.mirror,
            "url": s.url,
            "status": s.status,
            "built_at": s.built_at,
            "event_count": s.event_count,
            "bundle_sha256": s.bundle_sha256,
            "body_sha256": s.body_sha256,
            "trusted": s.trusted,
            "findings": _codes(s),
            "prev_id": s.prev_id,
            "node": s.node,
            "vantage": s.vantage,
            "changes": self.changes,
            "events": list(self.events),
            "damaged": self.damaged,
        }


def run(args: argparse.Namespace) -> int:
    _, db = archive(args)
    suffix = suffix_of(args.pith)
    number, entries = anyio.run(_history, db, suffix, args.mirror, args.kind, args.vantage)
    if args.json:
        print_json(
            {
                "pith_number": number,
                "suffix": suffix,
                "snapshots": [e.to_json() for e in entries],
            }
        )
        return EXIT_OK
    where = f" from {args.mirror}" if args.mirror else ""
    where += f" seen from vantage {args.vantage}" if args.vantage else ""
    say(f"{number or suffix}: {len(entries)} {args.kind} snapshot(s){where}")
    if entries:
        say(*_render(entries))
    for e in entries:
        codes = _codes(e.snapshot)
        if args.verbose and codes:
            say(f"  {e.snapshot.id}: {', '.join(codes)}")
        if e.damaged:
            say(f"  {e.snapshot.id}: DAMAGED {e.damaged} (run `pithcrawl fsck`)")
    return EXIT_OK


async def _history(
    db: Where, suffix: str, mirror: str | None, kind: str, vantage: str | None = None
) -> tuple[str | None, list[Entry]]:
    async with await Store.open(db, readonly=True) as store:
        snaps = await store.snapshots(suffix, mirror=mirror, kind=kind, vantage=vantage)
        record = await store.watchlist.record(suffix)
        if record is None and not snaps and not await _archived(store, suffix):
            raise UsageError(f"PITH {suffix}: no such record in the archive {db}")
        if mirror is not None and not snaps and not await _known_mirror(store, mirror):
            raise UsageError(f"--mirror {mirror}: no such mirror in the archive (see `status`)")
        if vantage is not None and not snaps:
            known = sorted({n.vantage for n in await store.nodes.all()})
            if vantage not in known:
                raise UsageError(
                    f"--vantage {vantage}: no node crawled from that vantage"
                    f" (the archive's: {', '.join(known) or 'none yet'}; names are case-sensitive)"
                )
        linked = await store.event_kinds([s.id for s in snaps])
        by_id = {s.id: s for s in snaps}
        entries = []
        for s in snaps:
            changes, damaged = await _changes(store, s, by_id)
            entries.append(Entry(s, changes, tuple(linked.get(s.id, ())), damaged))
        number = record.pith_number if record is not None else None
        if number is None:
            number = await _pith_number(store, suffix)
    return number, entries


async def _known_mirror(store: Store, name: str) -> bool:
    """Whether the archive knows a mirror of that name (configured, listed or fetched)."""
    if any(m.name == name for m in await store.watchlist.mirrors()):
        return True
    return any(s.mirror == name for s in await store.mirror_summaries())


async def _archived(store: Store, suffix: str) -> bool:
    """Whether anything of the record is archived (of any kind, from any mirror)."""
    return any([await store.snapshots(suffix, kind=k) for k in KINDS])


async def _changes(
    store: Store, s: Snapshot, by_id: dict[int, Snapshot]
) -> tuple[int | None, str | None]:
    """JSON Patch operations since `s`'s previous snapshot (None when there is none or
    either is not JSON), and what is damaged if either body cannot be read back."""
    try:
        await store.get_blob(s.body_sha256)  # its own body, whatever came before it
        if s.prev_id is None:
            return None, None
        prev = by_id.get(s.prev_id) or await store.snapshot(s.prev_id)
        if prev is None:
            return None, None
        before = parse(await store.get_blob(prev.body_sha256))
        after = parse(await store.get_blob(s.body_sha256))
    except MalformedJSON:
        return None, None
    except StoreCorrupt as e:
        return None, str(e)
    return len(make_patch(before, after)), None


async def _pith_number(store: Store, suffix: str) -> str | None:
    """The full number the newest trusted bundle states (the record row may not know it)."""
    trusted = [s for s in await store.snapshots(suffix, kind="bundle") if s.trusted]
    if not trusted:
        return None
    try:
        doc = parse(await store.get_blob(trusted[-1].body_sha256))
    except (MalformedJSON, StoreCorrupt):
        return None
    number = doc.get("pith_number") if isinstance(doc, dict) else None
    return number if isinstance(number, str) else None


def _render(entries: list[Entry]) -> list[str]:
    # Which vantage fetched each snapshot, once there is more than one to tell apart.
    vantages = len({e.snapshot.vantage for e in entries}) > 1
    header = (
        "id", "fetched", "mirror", *(("vantage",) if vantages else ()), "status", "built_at",
        "events", "bundle_sha256", "trust", "changes", "log", "url",
    )  # fmt: skip
    rows = []
    for e in entries:
        s = e.snapshot
        codes = _codes(s)
        rows.append(
            (
                str(s.id),
                when(s.fetched_at),
                s.mirror,
                *((s.vantage or "-",) if vantages else ()),
                str(s.status),
                s.built_at or "-",
                "-" if s.event_count is None else str(s.event_count),
                (s.bundle_sha256 or "-")[:16],
                "trusted" if s.trusted else f"INVALID ({_count(len(codes), 'finding')}: -v)",
                "DAMAGED" if e.damaged else "-" if e.changes is None else f"{e.changes} ops",
                ",".join(e.events) or "-",
                s.url,
            )
        )
    return table(header, rows)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _codes(s: Snapshot) -> list[str]:
    return sorted({f.code for f in s.findings})


# -- diff ---------------------------------------------------------------------------------


def run_diff(args: argparse.Namespace) -> int:
    _, db = archive(args)
    suffix = suffix_of(args.pith)
    old, new, patch = anyio.run(_diff, db, suffix, args.mirror, args.from_id, args.to_id)
    if args.json:
        print_json({"from": _side(old), "to": _side(new), "patch": patch})
        return EXIT_OK
    changes = f"{len(patch)} change{'' if len(patch) == 1 else 's'}" if patch else "no change"
    say(
        f"snapshot {old.id} ({old.mirror}, {format_timestamp(old.fetched_at)})"
        f" -> snapshot {new.id} ({new.mirror}, {format_timestamp(new.fetched_at)}): {changes}"
    )
    if patch:
        print_json(patch, indent=2)
    return EXIT_OK


def _side(s: Snapshot) -> dict[str, Any]:
    """A compared snapshot, as `diff --json` names it."""
    return {
        "id": s.id,
        "mirror": s.mirror,
        "vantage": s.vantage,
        "fetched_at": format_timestamp(s.fetched_at),
        "body_sha256": s.body_sha256,
        "trusted": s.trusted,
    }


async def _diff(
    db: Where, suffix: str, mirror: str | None, from_id: int | None, to_id: int | None
) -> tuple[Snapshot, Snapshot, list[dict[str, Any]]]:
    """The two bundle snapshots compared (older, newer) and the patch between them."""
    async with await Store.open(db, readonly=True) as store:
        series = await store.snapshots(suffix, mirror=mirror)
        if not series and from_id is None and to_id is None:
            if await _archived(store, suffix):
                raise UsageError(
                    f"PITH {suffix}: no bundle snapshots{_from(mirror)}; diff needs two"
                )
            if await store.watchlist.record(suffix) is not None:
                raise UsageError(
                    f"PITH {suffix}: tracked, but nothing of it is archived yet; run"
                    " `pithcrawl sync` first"
                )
            raise UsageError(f"PITH {suffix}: no such record in the archive {db}")
        new = await _pick(store, "--to", to_id, suffix, mirror) if to_id is not None else None
        old = await _pick(store, "--from", from_id, suffix, mirror) if from_id is not None else None
        if old is not None and new is not None and old.id > new.id:
            raise UsageError(
                f"--from {old.id} is newer than --to {new.id}: give the older snapshot first"
            )
        if new is None:
            if not series:
                raise UsageError(f"PITH {suffix}: no bundle snapshots{_from(mirror)}")
            new = series[-1]
        if old is None:
            old = await _before(store, series, new)
            if old is None:
                raise UsageError(
                    f"PITH {suffix}: snapshot {new.id} is the first{_from(mirror)};"
                    " diff needs two (see `pithcrawl history`)"
                )
        before = await _document(store, old)
        after = await _document(store, new)
    return old, new, make_patch(before, after)


async def _pick(
    store: Store, flag: str, snapshot_id: int, suffix: str, mirror: str | None
) -> Snapshot:
    s = await store.snapshot(snapshot_id)
    if s is None:
        raise UsageError(f"{flag} {snapshot_id}: no such snapshot in the archive")
    if s.suffix != suffix:
        raise UsageError(f"{flag} {snapshot_id}: a snapshot of {s.suffix}, not of {suffix}")
    if s.kind != "bundle":
        raise UsageError(f"{flag} {snapshot_id}: a snapshot of a {s.kind}; diff compares bundles")
    if mirror is not None and s.mirror != mirror:
        raise UsageError(f"{flag} {snapshot_id}: a snapshot from {s.mirror}, not from {mirror}")
    return s


async def _before(store: Store, series: list[Snapshot], new: Snapshot) -> Snapshot | None:
    """The snapshot before `new`: in the chosen series if it is there, else its own
    mirror's previous one."""
    ids = [s.id for s in series]
    if new.id in ids:
        i = ids.index(new.id)
        return series[i - 1] if i > 0 else None
    return None if new.prev_id is None else await store.snapshot(new.prev_id)


async def _document(store: Store, s: Snapshot) -> Any:
    try:
        return parse(await store.get_blob(s.body_sha256))
    except MalformedJSON as e:
        raise UsageError(f"snapshot {s.id} is not JSON ({e}); there is no patch to show") from None


def _from(mirror: str | None) -> str:
    return f" from {mirror}" if mirror else ""
