"""The conditions records and mirrors are in, kept as alerts in the archive.

Owns, over what is archived: the divergence rules for one record across its mirrors and
over time (`check_record`, with `divergence`'s pure rule table), reachability per mirror
(`check_mirrors`), the rechecks time alone calls for, and reconciling a scope's open
alerts with what holds now. It knows which scopes have open alerts, so a pass with
nothing to report writes no alert transaction. It fetches and verifies nothing
(`crawl` does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog

from pithcrawl import divergence
from pithcrawl.alert import log_alerts, log_entry, sink_names
from pithcrawl.canon import parse
from pithcrawl.config import Config
from pithcrawl.divergence import History, history_of
from pithcrawl.errors import StoreCorrupt
from pithcrawl.store import (
    Alert,
    FetchOutcome,
    NewEvent,
    Reconciled,
    Recorded,
    Snapshot,
    Store,
)
from pithcrawl.store.connection import Later
from pithcrawl.store.trusted import BundleView

log = structlog.get_logger("pithcrawl.conditions")


def _mirror_of(scope: str) -> str | None:
    """The mirror an alert scope is about alone (`reach:M`, `document:S:M`, `state:S:M`,
    and the last two as one vantage sees them, `document@V:S:M`); None for the scopes of
    a record across mirrors."""
    kind, _, rest = scope.partition(":")
    if kind == "reach":
        return rest
    if kind.partition("@")[0] in ("document", "state"):
        return rest.partition(":")[2]
    return None


def _seen(snap: Snapshot, history: History, vantage: str | None) -> divergence.Seen:
    return divergence.Seen(
        snap.mirror,
        snap.fetched_at,
        snap.body_sha256,
        snap.url,
        snap.built_at or "",
        history[1],
        history[2],
        vantage,
        snap.node,
    )


def _vantage_of(scope: str) -> str | None:
    """The vantage a scope of one mirror's documents is seen from (`document@V:S:M`)."""
    kind = scope.partition(":")[0]
    return kind.partition("@")[2] or None if kind.startswith(("document@", "state@")) else None


def _views(
    view: BundleView,
    by_snapshot: dict[int, divergence.Seen],
    mirrors: Sequence[str] | None,
    live: set[str],
) -> tuple[list[divergence.View], list[divergence.View]]:
    """What each mirror crawled now serves each vantage crawling now (`live`), when
    there are several: its latest bundle there, if trusted, and when the vantage last
    confirmed it (its bookkeeping's last success, while the body it last saw is that
    one); and the same, last, of the vantages that stopped. The snapshots of no vantage
    are of the one that adopted them."""
    views: list[divergence.View] = []
    gone: list[divergence.View] = []
    if not view.confirmed:
        return views, gone
    latest: dict[tuple[str, str], Snapshot] = {}
    for snap in view.snapshots:
        vantage = view.vantage_of(snap)
        if vantage is not None:
            latest[(snap.mirror, vantage)] = snap
    for (mirror, vantage), snap in sorted(latest.items()):
        if not snap.trusted or (mirrors is not None and mirror not in mirrors):
            continue
        body, success = view.confirmed.get((mirror, vantage), (None, None))
        confirmed = snap.fetched_at
        if body == snap.body_sha256 and success is not None and success > confirmed:
            confirmed = success
        seen = by_snapshot[snap.id]
        # One that stopped crawling: what it saw last is not what it sees now.
        (views if vantage in live else gone).append(divergence.View(seen, confirmed))
    return views, gone


@dataclass(slots=True)
class Conditions:
    """The alerts of one archive, as this process's only writer of them sees them."""

    config: Config
    store: Store
    clock: Callable[[], datetime]
    # Scopes with open alerts: this process writes them, so after one read it knows
    # them (other processes sharing a pass: `forget_open_scopes` once they are done).
    _open_scopes: set[str] | None = None
    _live: tuple[float, set[str]] | None = None

    async def live_vantages(self) -> set[str]:
        """The vantages crawling now: this node's, and those of the nodes seen within two
        of their own crawl intervals, or `Config.vantage_alive` if longer (read again at
        most once a minute)."""
        if self._live is None or time.monotonic() - self._live[0] > 60:
            seen = await self.store.nodes.vantages_seen(
                self.clock(),
                interval=self.config.crawl.interval,
                alive=self.config.vantage_alive,
            )
            self._live = (time.monotonic(), seen | {self.config.node.vantage_name})
        return self._live[1]

    def forget_open_scopes(self) -> None:
        """Other processes wrote alerts to the archive: read the open ones again."""
        self._open_scopes = None

    async def is_open(self, scope: str) -> bool:
        """Whether `scope` has an open alert."""
        return scope in await self._open()

    async def _open(self) -> set[str]:
        if self._open_scopes is None:
            self._open_scopes = await self.store.alerts.open_scopes()
        return self._open_scopes

    def mark(self, scope: str, is_open: bool) -> None:
        """`scope`'s alerts were just reconciled: it has open ones or none."""
        if self._open_scopes is None:
            return  # not read yet: the next `is_open` reads it from the archive
        if is_open:
            self._open_scopes.add(scope)
        else:
            self._open_scopes.discard(scope)

    async def record(
        self,
        suffix: str,
        fetches: Sequence[tuple[FetchOutcome, str, list[NewEvent]]],
        *,
        read_view: bool = True,
        due: bool = False,
    ) -> tuple[list[tuple[Snapshot | None, int]], Later[BundleView] | None]:
        """Archive a pair's fetches of record `suffix`, each `(outcome, scope, current)`,
        reconciling the alerts of its `scope` with the conditions it shows (`current`)
        in the same transaction: a crash never leaves a body archived without the alert
        it raises. A scope with nothing to report and nothing open is not touched (nor
        read: an empty one, a fetch's bookkeeping alone, is never open). For
        each fetch: its new snapshot, and how many alerts it opened; and the record's
        bundles as the write's group committed them, when it archived a new one and
        `read_view` (`check_record`'s: read with the write, after every block of its
        group, so it sees a newer snapshot of the record that a later block archived).
        `due`: the record's rules run later, not right after this write (see
        `Store.record_fetches`)."""
        items = [
            Recorded(outcome, scope, current)
            if current or (scope and await self.is_open(scope))
            else Recorded(outcome)
            for outcome, scope, current in fetches
        ]
        written = await self.store.record_fetches(
            items,
            sinks=sink_names(self.config.alerts),
            hold=self.config.alerts.resolve_after,
            view=suffix if read_view else None,
            due=due,
        )
        results = []
        for item, (snapshot, done) in zip(items, written.fetches, strict=True):
            opened = 0
            if done is not None:
                assert item.scope is not None  # reconciled only where there is a scope
                self.mark(item.scope, done.still_open)
                log_alerts(done)
                opened = len(done.opened)
            results.append((snapshot, opened))
        return results, written.view

    async def check_record(
        self,
        suffix: str,
        *,
        mirrors: Sequence[str] | None = None,
        view: BundleView | None = None,
        due: bool = False,
    ) -> list[Alert]:
        """The divergence rules over everything archived of one record, across mirrors;
        the alerts this opened.

        `mirrors`: the mirrors crawled now (default: every mirror that served it); only
        their latest bundles count as "served now", but every archived one is history.
        `view`: the record's bundles as just read (by the write that archived the last
        of them), or None to read them now. `due`: the record may be marked as having its
        rules due (`Store.record_fetches`): once they ran, it is not any more.
        """
        opened = await self._record_rules(suffix, mirrors, view)
        if due:
            await self.store.rules_ran(suffix)
        return opened

    async def _record_rules(
        self, suffix: str, mirrors: Sequence[str] | None, view: BundleView | None
    ) -> list[Alert]:
        if view is None:
            view = await self.store.trusted.bundle_view(suffix)
        latest: dict[str, Snapshot] = {}
        for snap in view.snapshots:
            latest[snap.mirror] = snap
        trusted = [s for s in view.snapshots if s.trusted]
        histories = [await self._history(s, view.histories) for s in trusted]
        # Each of the series its vantage's heir continues (`vantage_heirs`).
        archived = [
            _seen(s, h, view.vantage_of(s)) for s, h in zip(trusted, histories, strict=True)
        ]
        # By snapshot, not by body: mirrors serving the same bytes are each themselves.
        by_snapshot = {s.id: seen for s, seen in zip(trusted, archived, strict=True)}
        current = {
            m: by_snapshot[s.id]
            for m, s in latest.items()
            if s.trusted and (mirrors is None or m in mirrors)
        }
        if not archived:
            return []
        number = histories[-1][0]  # every trusted bundle of the record states it
        views = (
            _views(view, by_snapshot, mirrors, await self.live_vantages())
            if view.confirmed
            else ([], [])
        )
        now = self.clock()
        found = divergence.conditions(
            divergence.Histories(number, current, archived, *views),
            now,
            self.config.alerts.stale_after,
            self.config.split_grace,
        )
        return await self.reconcile(
            f"record:{suffix}",
            [
                NewEvent(
                    kind=c.kind,
                    severity=c.severity,
                    at=now,
                    pith_number=number,
                    mirrors=c.mirrors,
                    summary=c.summary,
                    evidence=c.evidence,
                    dedup_key=c.dedup_key,
                    suffix=suffix,
                )
                for c in found
            ],
            now,
            log=True,
        )

    async def check_mirrors(self, names: Sequence[str]) -> list[Alert]:
        """`mirror_unreachable`: a mirror that has failed for a record for longer than
        `alerts.unreachable_after`. One alert per mirror (a dead mirror is one problem,
        not one per record); transient failures stay quiet. The alerts this opened."""
        now = self.clock()
        since = now - self.config.alerts.unreachable_after
        opened: list[Alert] = []
        for name in names:
            count, examples = await self.store.alerts.failing(name, since)
            current = []
            if count:
                current.append(
                    NewEvent(
                        kind="mirror_unreachable",
                        severity="error",
                        at=now,
                        pith_number=None,
                        mirrors=(name,),
                        summary=f"{name} has failed for {count} record(s) for longer than "
                        f"{self.config.alerts.unreachable_after}",
                        evidence={"mirror": name, "records": count, "examples": examples},
                        dedup_key=f"mirror_unreachable:{name}",
                    )
                )
            opened += await self.reconcile(f"reach:{name}", current, now, log=True)
        # A mirror no longer in the set (taken out of the configuration) is asked for
        # nothing any more: it is not unreachable, and what it served is judged no more,
        # so its alerts close (an invalid document of a mirror nobody crawls would hold
        # every later pass at exit 1, with nothing left to clear it).
        crawled = set(names)
        live = await self.live_vantages()
        for scope in sorted(await self._open()):
            if _mirror_of(scope) not in (None, *crawled):  # no hold-down: nobody watches
                await self.reconcile(scope, [], now, log=True, hold=timedelta(0))
            elif _vantage_of(scope) not in (None, *live):
                # Seen from a vantage that stopped crawling (or was renamed): nobody
                # looks from there any more, so nothing would ever clear it.
                await self.reconcile(scope, [], now, log=True, hold=timedelta(0))
        return opened

    async def recheck(self, suffixes: Sequence[str] | None, mirrors: Sequence[str]) -> list[Alert]:
        """Re-run the divergence rules where time alone can change them (a lag turning
        stale) or an alert is open, for `suffixes` (None: every tracked record); the
        alerts this opened."""
        todo = await self.store.trusted.records_to_recheck(
            tracked=suffixes is None, vantages=sorted(await self.live_vantages())
        )
        if suffixes is not None:
            wanted = set(suffixes)
            todo = [s for s in todo if s in wanted]
        opened: list[Alert] = []
        for suffix in todo:
            try:
                opened += await self.check_record(suffix, mirrors=mirrors, due=True)
            except StoreCorrupt as e:
                # Damage (fsck's to report) costs this record's rules, not the others':
                # it stays due, and is judged again by the next pass.
                log.error("archive_damaged", suffix=suffix, detail=str(e))
        return opened

    async def _history(self, snap: Snapshot, known: dict[str, History]) -> History:
        cached = known.get(snap.body_sha256)
        if cached is None:  # archived before histories were kept: derive it once
            doc = parse(await self.store.get_blob(snap.body_sha256))
            cached = history_of(doc)
            await self.store.trusted.put_history(snap.body_sha256, *cached)
        return cached

    async def reconcile(
        self,
        scope: str,
        current: list[NewEvent],
        now: datetime,
        *,
        log: bool,
        suffix: str | None = None,
        hold: timedelta | None = None,
    ) -> list[Alert]:
        """Open, keep or close the alerts of `scope` so they are `current` (alerts no
        longer reported close after the hold-down, `hold` or `alerts.resolve_after`); the
        alerts this opened (each a new entry in the event log)."""
        if not current and not await self.is_open(scope):
            return []  # nothing to open, nothing open to close: no transaction at all
        if suffix is not None:
            current = [e if e.suffix else replace(e, suffix=suffix) for e in current]
        done = await self.store.alerts.reconcile(
            scope,
            current,
            now=now,
            sinks=sink_names(self.config.alerts),
            hold=self.config.alerts.resolve_after if hold is None else hold,
            log=log,
        )
        self.mark(scope, done.still_open)
        if log:  # each alert opened is an event-log entry too: its line, named by its kind
            for a in done.opened:
                log_entry(a.kind, a.severity, a.summary, a.dedup_key)
        log_alerts(done)
        return done.opened

    async def close_cleared(self) -> list[Alert]:
        """Close the alerts whose condition has stayed clear for `alerts.resolve_after`
        (time ends a hold-down, whether or not their scope is checked again)."""
        closed = await self.store.alerts.close_cleared(
            self.clock(), self.config.alerts.resolve_after, sink_names(self.config.alerts)
        )
        if closed:
            self.forget_open_scopes()  # the scopes of those closed may have none left now
        log_alerts(Reconciled(closed=closed))
        return closed
