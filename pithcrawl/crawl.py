"""One record across its mirrors: fetch → verify → compare → store → report.

Owns the decision of what is routine (a 304, an unchanged body, a transient error to
retry later) and what is news (a new snapshot, a change in the history, an invalid
document). It is the only module that combines `verify`, `timeline` and `store`; each
of those stays ignorant of the others. Nothing is marked trusted except in the same
transaction that archives it, after verification. Polling a document and its
bookkeeping (validators, next due, backoff) are `polling`'s; what holds across a
record's mirrors and over time, kept as alerts, is `conditions`'s.
"""

from __future__ import annotations

import functools
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import anyio
import structlog

from pithcrawl.alert import log_entry
from pithcrawl.canon import parse
from pithcrawl.conditions import Conditions
from pithcrawl.config import Config
from pithcrawl.divergence import history_of
from pithcrawl.errors import OperationalError, StoreCorrupt
from pithcrawl.fetch import Fetcher
from pithcrawl.judge import (
    Before,
    Fetched,
    Judgement,
    Past,
    judge_bundle,
    judge_state,
    record_number,
)
from pithcrawl.keys import TrustSet
from pithcrawl.log import pair
from pithcrawl.metrics import Metrics
from pithcrawl.mirrors import Site, discoverable, from_hints
from pithcrawl.polling import UNREAD, Got, Poller, Unread, body_sha256
from pithcrawl.store import Alert, FetchOutcome, FetchState, NewEvent, Snapshot, Store
from pithcrawl.store.connection import Later
from pithcrawl.store.trusted import BundleView
from pithcrawl.verify import Report, verify_bundle, verify_state

log = structlog.get_logger("pithcrawl.crawl")


#: Verdicts on recent bundle bodies kept in memory (see `Crawler._verify`).
VERDICTS_KEPT = 64
#: Bodies larger than this are verified in a thread, off the event loop.
VERIFY_IN_THREAD = 128 << 10
#: The most bodies that failed verification archived per record, mirror and kind in a
#: day (`EVIDENCE_WINDOW`): the evidence of an incident, not a copy of every junk body.
EVIDENCE_PER_DAY = 4
EVIDENCE_WINDOW = timedelta(days=1)

_BUG = "internal error (a bug: please report it)"


@dataclass(slots=True)
class PairResult:
    """What one (record, mirror) pass found."""

    suffix: str
    mirror: str
    new_snapshots: int = 0
    events: list[NewEvent] = field(default_factory=list)
    error: str | None = None
    deferred: bool = False
    serves_untrusted: bool = False
    """The mirror serves a bundle that failed verification (new now, or as before)."""
    record_alerts: list[Alert] = field(default_factory=list)
    """Alerts the record-level rules opened after this pair's new snapshots (a
    divergence, an equivocation across mirrors, a mirror gone stale)."""
    alerts_raised: int = 0
    """Alerts this pair's fetches opened (an invalid document, a rollback, …), not
    counting `record_alerts`."""
    rules_failed: bool = False
    """The record-level rules, run when this pair ended, failed (an error of the pass
    even when the pair itself was put off)."""
    writes: list[tuple[FetchOutcome, Judgement, str]] = field(default_factory=list, repr=False)
    """The pair's fetches judged and not yet stored: they are stored together, in one
    transaction, when the pair ends (`Crawler._flush`); each with its body's sha256."""

    @property
    def critical(self) -> bool:
        return self.serves_untrusted or any(e.severity == "critical" for e in self.events)


@dataclass(slots=True)
class RecordTurn:
    """One record's pairs in a pass, one per mirror crawled at once: the record-level
    rules (`Conditions.check_record`) run once, when the last of them ends, over what
    all of them archived. Run after each pair instead, they would judge the mirrors not
    stored yet by what they served before this pass (a mirror that caught up in this
    very pass, fetched a moment later, called stale and cleared again)."""

    left: int
    """Pairs of the record not ended yet."""
    changed: bool = False
    """Whether one of the ended pairs archived a new snapshot."""
    marked: bool = False
    """Whether a pair that was not the last marked the record's rules due in the archive
    (`Store.record_fetches`' `due`: a pass stopped before the last pair ends leaves
    them to the next check across records)."""

    def end(self, changed: bool) -> bool:
        """One pair ended (`changed`: it archived something new); whether the rules are
        due now (it was the last, and something of the record changed)."""
        self.left -= 1
        self.changed |= changed
        return self.left == 0 and self.changed


@dataclass(frozen=True, slots=True)
class _Trusted:
    """The trusted bundle a mirror serves now; `document` is parsed only when needed."""

    body_sha256: str
    bundle_sha256: str | None
    document: Any


def _cut_short(got: Got, report: Report) -> Got | None:
    """`got` as a failed fetch when its body is not whole JSON and nothing said where it
    ends (no Content-Length, not chunked): a connection reset there ends the body as
    quietly as a close, so it may be a transfer cut short, not the mirror's content. A
    mirror gets no alert for it, only an error to retry; one that means to serve
    garbage says so with a length."""
    fetched = got.result
    if fetched is None or fetched.framed or got.rejudged:
        return None
    if {f.code for f in report.findings} != {"malformed_json"}:
        return None
    return replace(
        got,
        result=None,
        error=f"{got.url}: the body ended with its connection (no Content-Length) and is"
        " not whole JSON: taken as cut short",
    )


@dataclass(slots=True)
class Crawler:
    config: Config
    store: Store
    fetcher: Fetcher
    trust: TrustSet
    clock: Callable[[], datetime]
    rand: random.Random = field(default_factory=random.Random)
    metrics: Metrics = field(default_factory=Metrics)
    reverify: bool = False
    """Judge unchanged bodies again (the trust set changed since their verdicts)."""
    mirrors: list[str] | None = None
    """The mirrors crawled now (None: every mirror that ever served a record counts as
    serving it now); a mirror taken out of the configuration is only history."""
    _verdicts: OrderedDict[tuple[str, str], Report] = field(default_factory=OrderedDict)
    _verdicts_trust: TrustSet | None = None
    conditions: Conditions = field(init=False)
    """The alerts of records and mirrors (divergence, reachability) in the archive."""
    poller: Poller = field(init=False)
    """Fetches each document and writes down how the poll went."""

    def __post_init__(self) -> None:
        self.conditions = Conditions(self.config, self.store, self.clock)
        self.poller = Poller(self.config, self.store, self.fetcher, self.metrics, self.rand)

    async def sync_pair(
        self,
        suffix: str,
        site: Site,
        *,
        bundle_state: FetchState | Unread | None = UNREAD,
        state_state: FetchState | Unread | None = UNREAD,
        served_trusted: bool | None = None,
        turn: RecordTurn | None = None,
    ) -> PairResult:
        """Fetch, verify and archive one record's bundle and state.json from one mirror;
        then the record-level rules, if it archived something new (or, with `turn`, once
        the last of the record's pairs in the pass ended and one of them did).

        `bundle_state`, `state_state`: the fetch bookkeeping of each, when the caller has
        read it already (None: there is none). `served_trusted`: whether the mirror ever
        served a trusted bundle of the record, when the caller has read it (None: read
        it when needed).
        """
        result = PairResult(suffix, site.name)
        with pair(suffix, site.name):
            # The record's bundles are read with this pair's write only if the rules will
            # run after it (without a turn, or when it is the record's last pair).
            last = turn is None or turn.left == 1
            view = await self._fetch_and_store(
                site,
                result,
                bundle_state=bundle_state,
                state_state=state_state,
                served_trusted=served_trusted,
                read_view=last,
                turn=None if last else turn,
            )
            await self.end_turn(result, turn, view)
        return result

    async def cut_short(self, suffix: str, site: Site, lease: timedelta) -> PairResult:
        """The pair outran its lease (`node.lease`) and was cancelled, so that another
        node, taking it once the lease expired, never fetches it at the same time:
        nothing of it was archived (its writes are one transaction, at its end), and it
        is recorded as a failed fetch of its bundle, retried after the usual backoff."""
        result = PairResult(suffix, site.name)
        with pair(suffix, site.name):
            error = (
                f"took longer than node.lease ({lease.total_seconds():g}s) and was cut"
                " short: a slow mirror needs a longer lease"
            )
            result.error = await self._failed_pair(suffix, site, error)
        return result

    async def _failed_pair(self, suffix: str, site: Site, error: str) -> str:
        """Record the pair's bundle a failed fetch (`error`), put off by the backoff."""
        before = await self.store.fetch_state(
            suffix, site.name, "bundle", vantage=self.config.node.vantage_name
        )
        got = Got("bundle", site.bundle_url(suffix), before, None, error)
        return await self.poller.failed(suffix, site.name, got, self.clock())

    async def end_turn(
        self,
        result: PairResult,
        turn: RecordTurn | None,
        view: Later[BundleView] | None = None,
    ) -> None:
        """The pair of `result` ended (or was put off): the record-level rules, when due
        (see `RecordTurn`; without one, when this pair archived something new), their
        alerts in `result`. `view`: the record's bundles as this pair's write committed
        them, if it read them."""
        changed = result.new_snapshots > 0
        if not (changed if turn is None else turn.end(changed)):
            return
        try:
            result.record_alerts = await self.conditions.check_record(
                result.suffix,
                mirrors=self.mirrors,
                view=None if view is None else view.value,
                due=turn is not None and turn.marked,
            )
        except StoreCorrupt as e:
            log.error("archive_damaged", detail=str(e))
            result.error = result.error or f"archive damaged: {e}"
            result.rules_failed = True
        except (OperationalError, anyio.get_cancelled_exc_class()):
            raise
        except Exception:
            log.exception("pair_failed", detail=_BUG)
            result.error = result.error or "internal error (a bug: see the pair_failed log line)"
            result.rules_failed = True

    async def _fetch_and_store(
        self,
        site: Site,
        result: PairResult,
        *,
        bundle_state: FetchState | Unread | None,
        state_state: FetchState | Unread | None,
        served_trusted: bool | None,
        read_view: bool,
        turn: RecordTurn | None,
    ) -> Later[BundleView] | None:
        """The pair's fetches, judged and stored; the record's bundles as its write
        committed them, when it archived a new bundle and `read_view`. `turn`: the
        record's, when this pair is not its last (a new snapshot marks its rules due)."""
        suffix = result.suffix
        try:
            trusted = await self._bundle(suffix, site, result, bundle_state, served_trusted)
            if trusted is not None and result.error is None:
                await self._state(suffix, site, trusted, result, state_state)
            return await self._flush(result, read_view, turn)
        except StoreCorrupt as e:
            # Damage in the archive (fsck's to report) costs this pair, not the pass: an
            # error of the pass, and every other record is still watched.
            log.error("archive_damaged", detail=str(e))
            result.error = f"archive damaged: {e}"
            await self._flush_after_error(result, site)
        except (OperationalError, anyio.get_cancelled_exc_class()):
            raise  # the archive cannot be written, or the pass is stopping: for all
        except Exception:
            # A bug met on what one mirror sent: it costs this pair (an error of the pass,
            # told with its traceback), never the pass or the other mirrors.
            log.exception("pair_failed", detail=_BUG)
            result.error = "internal error (a bug: see the pair_failed log line)"
            await self._flush_after_error(result, site)
        return None

    async def _flush(
        self, result: PairResult, read_view: bool = False, turn: RecordTurn | None = None
    ) -> Later[BundleView] | None:
        """Store the pair's judged fetches (`PairResult.writes`) in one transaction, with
        the alerts they raise or clear; then count them, tell their news and take the
        keys they taught. The record's bundles as the write committed them, when it
        archived a new one and `read_view`."""
        writes, result.writes = result.writes, []
        if not writes:
            return None
        kept = [(await self._within_quota(outcome), judged, sha) for outcome, judged, sha in writes]
        stored, view = await self.conditions.record(
            result.suffix,
            [(outcome, judged.scope, judged.conditions) for outcome, judged, _ in kept],
            read_view=read_view,
            due=turn is not None,
        )
        if turn is not None and any(snapshot is not None for snapshot, _ in stored):
            turn.marked = True
        for (_, judged, sha), (snapshot, raised) in zip(kept, stored, strict=True):
            result.alerts_raised += raised
            result.new_snapshots += snapshot is not None
            result.events.extend(judged.events)
            for e in judged.events:
                log_entry(e.kind, e.severity, e.summary, e.dedup_key)
            if judged.learned:
                self.trust = self.trust.with_keys(judged.learned)
                for key in judged.learned:
                    log.warning(
                        "key_learned",
                        key_id=key.key_id,
                        fingerprint=key.fingerprint_hex,
                        body_sha256=sha,
                    )
        return view

    async def _flush_after_error(self, result: PairResult, site: Site) -> None:
        """What the pair judged before it failed is still stored (the bundle when its
        state.json step failed). When nothing is left to store (the pair's write itself
        failed, or it failed before judging anything), its bundle is recorded a failed
        fetch, retried after the usual backoff: a pair nothing puts off is due again at
        once, and `run` would fetch it every second for as long as it fails. A second
        failure here is only logged."""
        try:
            if result.writes:
                await self._flush(result)
            else:
                await self._failed_pair(result.suffix, site, result.error or "")
        except (OperationalError, anyio.get_cancelled_exc_class()):
            raise
        except Exception:
            log.exception("pair_failed", detail=_BUG)

    # -- the bundle ----------------------------------------------------------------------

    async def _bundle(
        self,
        suffix: str,
        site: Site,
        result: PairResult,
        state: FetchState | Unread | None,
        served_trusted: bool | None,
    ) -> _Trusted | None:
        got = await self.poller.fetch(suffix, site, "bundle", site.bundle_url(suffix), before=state)
        if got.result is not None and got.result.status == 404:
            # Not at its address: it may be at the well-known one. (Not after a failure:
            # a mirror that times out would then cost two timeouts a record.)
            fallback = site.well_known_url(suffix)
            if fallback is not None:
                alt = await self.poller.fetch(suffix, site, "bundle", fallback, conditional=False)
                if alt.result is not None and alt.result.status == 200:
                    got = alt
        now = self.clock()
        if got.error is not None or got.result is None or got.result.status not in (200, 304):
            result.error = await self.poller.failed(suffix, site.name, got, now)
            return None
        if got.unchanged:
            before = got.before
            again = None
            if (
                before is not None
                and before.body_sha256 is not None
                and (self.reverify or not before.body_trusted)
            ):
                # The keys changed since this body was judged, or it was not trusted then:
                # its archived bytes are judged again, under the keys of now (below, as a
                # body just fetched: the same bytes, so no new snapshot).
                again = await self._archived(got)
                if again is not None:
                    assert again.result is not None and before is not None
                    verdict = await self._verify(
                        again.result.body, again.body_sha256 or "", suffix, now
                    )
                    if verdict.ok == bool(before.body_trusted):
                        again = None  # the same verdict: nothing new to say
            if again is None:
                # Stored with the pair's state.json, in one transaction: a node that dies
                # between the two leaves the pair due, not its state.json an interval late.
                outcome = self.poller.outcome(suffix, site.name, got, now)
                result.writes.append((outcome, Judgement(), ""))
                if before is None or before.body_sha256 is None or not before.body_trusted:
                    # What this mirror serves was never trusted: its alert was raised when
                    # it first came; it is still a security finding of this pass.
                    result.serves_untrusted = True
                    return None
                return _Trusted(before.body_sha256, None, None)
            got = again
        assert got.result is not None  # a 200 or a 304, checked above
        body, body_sha = got.result.body, got.body_sha256 or body_sha256(got.result.body)
        report = await self._verify(body, body_sha, suffix, now)
        cut = _cut_short(got, report)
        if cut is not None:
            result.error = await self.poller.failed(suffix, site.name, cut, now)
            return None
        self.metrics.findings(f.code for f in report.findings)
        number = await self._number(suffix, report)
        fetched = Fetched(suffix, site.name, got.result.final_url, now, body_sha, self.vantage)
        judged = judge_bundle(
            report,
            fetched,
            number=number,
            before=await self._before(suffix, site.name)
            if report.ok and served_trusted is not False
            else None,
            trust=self.trust,
            follow_rotations=self.config.trust.follow_rotations,
        )
        outcome = self.poller.outcome(
            suffix, site.name, got, now, report=report, events=judged.events
        )
        if report.ok:
            _, ids, claims = history_of(report.document)
            outcome = replace(
                outcome,
                pith_number=number,
                history=(ids, claims),
                learned_keys=[k.to_json() for k in judged.learned],
            )
        result.writes.append((outcome, judged, body_sha))
        if not report.ok:
            result.serves_untrusted = True
            return None
        if self.config.crawl.discover:
            await self._discover(report.document, suffix, now)
        return _Trusted(body_sha, report.bundle_sha256, report.document)

    async def _verify(self, body: bytes, body_sha: str, suffix: str, now: datetime) -> Report:
        """Verify a bundle body, once per body while the trust set stays the same.

        Mirrors mostly serve the same bytes, and a pass visits one record's mirrors one
        after another, so a small cache spares re-verifying them. It is keyed by the
        trust set too, and held in memory only: a verdict never outlives the keys it
        was reached with. A large body is verified off the event loop: seconds of work
        on a hostile mirror's body must not stall the other mirrors' fetches until
        their timeouts run out.
        """
        key = (body_sha, suffix)
        cached = self._verdicts.get(key)
        if cached is not None and self._verdicts_trust is self.trust:
            self._verdicts.move_to_end(key)
            return cached
        if self._verdicts_trust is not self.trust:
            self._verdicts.clear()
            self._verdicts_trust = self.trust
        judge = functools.partial(
            verify_bundle,
            body,
            self.trust,
            now=now,
            clock_skew=self.config.trust.clock_skew,
            expected_suffix=suffix,
        )
        report = await anyio.to_thread.run_sync(judge) if len(body) > VERIFY_IN_THREAD else judge()
        self._verdicts[key] = report
        if len(self._verdicts) > VERDICTS_KEPT:
            self._verdicts.popitem(last=False)
        return report

    @property
    def vantage(self) -> str:
        return self.config.node.vantage_name

    async def _before(self, suffix: str, mirror: str) -> Past | None:
        """The newest history `mirror` ever served of the record (not merely the last:
        after a replay of an old bundle, the news when it recovers is only what is
        really new), to this vantage and to any; None before its first trusted bundle.
        One lost to damage in the archive is not there (fsck's news: the body is still
        judged, with no change told against it)."""
        own, newest = await self.store.trusted.highest_bundles(suffix, mirror, self.vantage)
        if newest is None:
            return None
        past = Past(await self._document(own))
        if own is None or newest.body_sha256 != own.body_sha256:
            past = replace(past, newest=await self._document(newest))
        return past

    async def _document(self, snap: Snapshot | None) -> Before | None:
        if snap is None:
            return None
        try:
            return Before(snap.body_sha256, parse(await self.store.get_blob(snap.body_sha256)))
        except StoreCorrupt as e:
            log.error("archive_damaged", detail=str(e), snapshot_id=snap.id)
            return None

    async def _within_quota(self, outcome: FetchOutcome) -> FetchOutcome:
        """`outcome`, or its bookkeeping alone when it would archive one more body that
        failed verification past `EVIDENCE_PER_DAY` of its (record, mirror, kind): a
        mirror serving a new junk body on every fetch fills no disk (its alert, and the
        first bodies as its evidence, are kept; the body is judged each time)."""
        if outcome.body is None or outcome.trusted:
            return outcome
        since = outcome.fetched_at - EVIDENCE_WINDOW
        kept = await self.store.untrusted_count(outcome.suffix, outcome.mirror, outcome.kind, since)
        if kept < EVIDENCE_PER_DAY:
            return outcome
        log.info(
            "evidence_not_kept",
            kind=outcome.kind,
            kept=kept,
            detail=f"already {kept} bodies that failed verification in a day",
        )
        return replace(outcome, body=None, body_sha256=None, events=(), findings=())

    async def _archived(self, got: Got) -> Got | None:
        """`got` (unchanged) as a 200 of the archived body it stands for; None when that
        cannot be read (damage is logged; the last verdict then stands)."""
        before, fetched = got.before, got.result
        assert before is not None and before.body_sha256 is not None and fetched is not None
        try:
            body = await self.store.get_blob(before.body_sha256)
        except StoreCorrupt as e:
            log.error("archive_damaged", detail=str(e), body_sha256=before.body_sha256)
            return None
        return replace(
            got,
            result=replace(fetched, status=200, body=body),
            body_sha256=before.body_sha256,
            rejudged=True,
        )

    async def _number(self, suffix: str, report: Report) -> str:
        """The tracked record's Pith Number (`judge.record_number`), asking the archive
        only when the document does not say it."""
        number = record_number(report, suffix, None)
        if number != suffix:
            return number
        return record_number(report, suffix, await self.store.watchlist.pith_number(suffix))

    # -- state.json ----------------------------------------------------------------------

    async def _state(
        self,
        suffix: str,
        site: Site,
        bundle: _Trusted,
        result: PairResult,
        known: FetchState | Unread | None = UNREAD,
    ) -> None:
        got = await self.poller.fetch(suffix, site, "state", site.state_url(suffix), before=known)
        now = self.clock()
        if got.result is not None and got.result.status == 404:
            return  # state.json is optional for a mirror: its absence is not news
        if got.result is None or got.result.status not in (200, 304):
            result.error = await self.poller.failed(suffix, site.name, got, now)
            return
        if got.unchanged and bundle.document is None:
            # Neither document changed since they were last compared.
            result.writes.append(
                (self.poller.outcome(suffix, site.name, got, now), Judgement(), "")
            )
            return
        if got.unchanged:
            assert got.before is not None  # unchanged implies a body before
            body_sha = got.before.body_sha256 or ""
            body = await self.store.get_blob(body_sha)
        else:
            body, body_sha = got.result.body, got.body_sha256 or body_sha256(got.result.body)
        report = verify_state(body, expected_suffix=suffix)
        cut = _cut_short(got, report)
        if cut is not None:
            result.error = await self.poller.failed(suffix, site.name, cut, now)
            return
        bundle_doc = bundle.document
        if bundle_doc is None:
            bundle_doc = parse(await self.store.get_blob(bundle.body_sha256))
        judged = judge_state(
            report,
            Fetched(suffix, site.name, got.url, now, body_sha, self.vantage),
            bundle=bundle_doc,
            bundle_body_sha256=bundle.body_sha256,
        )
        # A state.json is a copy of its bundle's `state`: stored as a delta against it.
        outcome = self.poller.outcome(
            suffix,
            site.name,
            got,
            now,
            report=report,
            events=judged.events,
            related_sha256=bundle.body_sha256,
        )
        result.writes.append((outcome, judged, body_sha))

    # -- reporting and trust -----------------------------------------------------------------

    async def _discover(self, bundle: dict[str, Any], suffix: str, now: datetime) -> None:
        """Add the mirrors a verified bundle names, if they may be crawled."""
        known = {(m.base_url, m.bundle_pattern) for m in await self.store.watchlist.mirrors()}
        for site in from_hints(bundle, suffix):
            if (site.base_url, site.bundle_pattern) in known:
                continue
            refused = await discoverable(site, allow_private=self.config.crawl.allow_private_hosts)
            if refused is not None:
                log.info("mirror_hint_refused", mirror=site.name, reason=refused)
                continue
            await self.store.watchlist.upsert_mirror(site.row(now))
            known.add((site.base_url, site.bundle_pattern))
            log.info("mirror_discovered", mirror=site.name, base_url=site.base_url)
