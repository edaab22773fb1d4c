"""`pithcrawl sync`, `track`, `untrack`: one verified, archived pass, and the watch list.

`sync` crawls every tracked (or named) record from every configured mirror once,
prints a summary and exits 1 on a critical finding, 3 on operational errors only.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from pithcrawl.commands.report import load, print_json, say
from pithcrawl.errors import EXIT_OK, EXIT_OPERATIONAL, EXIT_SECURITY, UsageError
from pithcrawl.location import Where, make_room
from pithcrawl.pith import parse_reference
from pithcrawl.store import Store
from pithcrawl.trust import load_trust

if TYPE_CHECKING:
    from pithcrawl.sync import Summary

SYNC_HELP = "One pass: every tracked record from every mirror, verified and archived."
SYNC_EXAMPLE = "pithcrawl --config /etc/pithcrawl/pithcrawl.toml sync --json"
TRACK_HELP = "Add records to watch (full number, 26-char suffix, or bundle URL)."
TRACK_EXAMPLE = "pithcrawl track pith:2026:2SZ3GMWFCMMCUPZJQTONOWSJZ2"
UNTRACK_HELP = "Stop watching records (their archive is kept)."
UNTRACK_EXAMPLE = "pithcrawl untrack 2SZ3GMWFCMMCUPZJQTONOWSJZ2"

log = structlog.get_logger("pithcrawl.sync")


def add_sync_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pith", nargs="*", metavar="PITH", help="only these records")
    p.add_argument("--json", action="store_true", help="the summary as one JSON document")


def add_track_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pith", nargs="+", metavar="PITH", help="full number, suffix or bundle URL")


def _suffixes(refs: list[str]) -> list[str]:
    out = []
    for ref in refs:
        try:
            out.append(parse_reference(ref))
        except ValueError as e:
            raise UsageError(f"PITH {ref!r}: {e}") from None
    return out


def run_track(args: argparse.Namespace) -> int:
    _, db = load(args)
    suffixes = _suffixes(args.pith)

    async def go() -> int:
        make_room(db)
        async with await Store.open(db) as store:
            return await store.watchlist.track(suffixes, datetime.now(UTC))

    added = anyio.run(go)
    print(f"tracking {len(suffixes)} record(s), {added} new")
    return EXIT_OK


def run_untrack(args: argparse.Namespace) -> int:
    _, db = load(args)
    suffixes = _suffixes(args.pith)

    async def go() -> int:
        async with await Store.open(db) as store:
            return await store.watchlist.untrack(suffixes)

    removed = anyio.run(go)
    print(f"no longer tracking {removed} record(s)")
    return EXIT_OK


#: What `sync` says when there is nothing to crawl, instead of a pass over 0 records.
NOTHING_TRACKED = (
    "nothing to sync: no record is tracked in {db}. Track one, then sync again:\n"
    "  pithcrawl track pith:2026:2SZ3GMWFCMMCUPZJQTONOWSJZ2   (a Pith Number, suffix or"
    " bundle URL)\n"
    "or list them under [watch] pith = [...] in the configuration, or name them:"
    " pithcrawl sync PITH..."
)


def run_sync(args: argparse.Namespace) -> int:
    config, db = load(args)
    named = _suffixes(args.pith)
    trust = load_trust(config.trust.keys)
    if not named and not config.watch.pith and not (_exists(db) and anyio.run(_tracks_any, db)):
        # Not a pass over nothing (which would still read the manifests): what to do.
        # A sink that cannot work is still an error, with or without records.
        from pithcrawl.alert import check_sinks

        check_sinks(config.alerts, os.environ)
        if args.json:
            from pithcrawl.sync import Summary

            log.warning("nothing_tracked", db=str(db))
            print_json(Summary().to_json())
        else:
            say(*NOTHING_TRACKED.format(db=db).splitlines())
        return EXIT_OK
    started = time.monotonic()
    from pithcrawl.sync import sync_once

    summary = anyio.run(functools.partial(sync_once, config, db, named, trust, progress=Progress))
    summary.duration_s = time.monotonic() - started
    if args.json:
        print_json(summary.to_json())
    else:
        say(summary_line(summary))
    log.info("sync_done", **summary.to_json())
    return exit_code(summary)


def _exists(db: Where) -> bool:
    """Whether there may be an archive at `db` (a database may hold one: it is asked)."""
    return not isinstance(db, Path) or db.exists()


async def _tracks_any(db: Where) -> bool:
    """Whether the archive at `db` tracks a record."""
    async with await Store.open(db) as store:
        return await store.watchlist.tracked_count() > 0


def exit_code(s: Summary) -> int:
    """1 while a critical alert of what the pass checked is firing (its condition holds,
    whether raised now or by an earlier pass), 3 while only operational ones are (or
    fetches failed, or were put off because their mirror keeps failing, or a manifest
    could not be read). An alert held open while its condition stays clear (the
    hold-down, `alerts.resolve_after`) does not count: the pass found nothing wrong."""
    if s.alerts:
        return EXIT_SECURITY
    if s.errors or s.deferred or s.manifests_unread or s.warnings:
        return EXIT_OPERATIONAL
    return EXIT_OK


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def summary_line(s: Summary) -> str:
    """The pass in one line, for people."""
    line = (
        f"{_n(s.records, 'record')} × {_n(s.mirrors, 'mirror')}: "
        f"{_n(s.new_snapshots, 'new snapshot')}, {_n(s.events, 'logged event')}, "
        f"{_n(s.alerts_raised, 'alert')} raised, {s.alerts_open} open, {_n(s.errors, 'error')}"
    )
    if s.deferred:
        line += f", {s.deferred} put off (their mirror keeps failing; retried later)"
    if s.manifests_unread:
        line += f", {s.manifests_unread} manifest(s) unreadable (see status)"
    return f"{line} in {s.duration_s:.1f}s"


class Progress:
    """Pairs done/total and rate: redrawn on a terminal; with no terminal (systemd, cron),
    a `sync_progress` log line every `EVERY` seconds, so a long pass is not silent until
    it ends.

    `weight`: pairs each step stands for (a pass shared by N processes counts this
    one's share N times: an estimate of the whole, which ends at the total)."""

    EVERY = 15.0
    """Seconds between two log lines when there is no terminal."""

    def __init__(self, total: int, weight: int = 1) -> None:
        self.total, self.count, self.weight = total, 0, weight
        self.started = self.logged = time.monotonic()
        self.tty = sys.stderr.isatty()

    def step(self) -> None:
        self.count = min(self.total, self.count + self.weight)
        if self.tty:
            if self.count % 50 < self.weight or self.count == self.total:
                rate = self.count / max(time.monotonic() - self.started, 1e-9)
                end = "\n" if self.count == self.total else ""
                print(f"\r{self.count}/{self.total} ({rate:.0f}/s)", end=end, file=sys.stderr)
            return
        now = time.monotonic()
        if now - self.logged >= self.EVERY and self.count < self.total:
            self.logged = now
            rate = self.count / max(now - self.started, 1e-9)
            log.info(
                "sync_progress",
                pairs_done=self.count,
                pairs=self.total,
                per_s=round(rate, 1),
                eta_s=round((self.total - self.count) / rate) if rate else None,
            )
