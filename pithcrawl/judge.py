"""What a fetched document means: the decisions of one (record, mirror) pair.

Given the verifier's report on a body and what the archive knows (the newest history the
mirror served before, the record's number, the trust set), say what happened: the
event-log entries, the conditions of the document's alert scope (an untrusted body, a
rollback, a state.json that is not its bundle's state), the keys a verified bundle
announces, and the history the archive keeps with it.

Pure: no await, no clock, no store, no log. `crawl` fetches, reads what a judgement
needs, and stores what it says; `conditions` reconciles the alerts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pithcrawl import timeline
from pithcrawl.entries import NewEvent
from pithcrawl.findings import Severity, kept
from pithcrawl.keys import InvalidKey, TrustedKey, TrustSet, key_problems, load_key
from pithcrawl.timestamps import format_timestamp
from pithcrawl.verify import Report

#: A Pith Number's form (pith-format.md §2).
_NUMBER = re.compile(r"pith:[0-9]{4}:[A-Z2-7]{26}")


@dataclass(frozen=True, slots=True)
class Fetched:
    """Where a body came from, as its evidence says."""

    suffix: str
    mirror: str
    url: str
    at: datetime
    body_sha256: str
    vantage: str = ""
    """Where it was fetched from ("": no vantage named, as before vantages were kept)."""

    def scope(self, kind: str) -> str:
        """The alert scope of a `kind` ("document", "state") of conditions about this
        document: the record and mirror, as seen from this vantage (a mirror that serves
        one vantage something else does not clear what another one sees)."""
        at = f"@{self.vantage}" if self.vantage else ""
        return f"{kind}{at}:{self.suffix}:{self.mirror}"

    def key(self, dedup_key: str) -> str:
        """The dedup key of a condition about this document, as seen from its vantage:
        what a mirror serves one vantage is an alert of its own, which what it serves
        another neither opens nor clears (a vantage name holds no `@`)."""
        return f"{dedup_key}@{self.vantage}" if self.vantage else dedup_key

    def evidence(self) -> dict[str, Any]:
        return {
            "mirror": self.mirror,
            "url": self.url,
            "fetched_at": format_timestamp(self.at),
            "body_sha256": self.body_sha256,
        }


@dataclass(frozen=True, slots=True)
class Before:
    """The newest history a mirror served of the record before (a trusted bundle)."""

    body_sha256: str
    document: Any


@dataclass(frozen=True, slots=True)
class Past:
    """What a mirror served of the record before: to this vantage (`own`: what it must
    not go back from) and, when that is another bundle, to any (`newest`: what its news
    is told against; another vantage told it when it came)."""

    own: Before | None
    newest: Before | None = None


@dataclass(frozen=True, slots=True)
class Judgement:
    """What one document means."""

    events: list[NewEvent] = field(default_factory=list)
    """The event-log entries it makes (news and alerts alike)."""
    scope: str = ""
    """The alert scope its conditions belong to."""
    conditions: list[NewEvent] = field(default_factory=list)
    """The conditions of `scope` that hold now (those not listed have cleared)."""
    learned: list[TrustedKey] = field(default_factory=list)
    """New keys a verified bundle announces (with `trust.follow_rotations`)."""


def alert_kind(report: Report) -> str:
    """The contract's alert kind for a document with critical findings."""
    codes = {f.code for f in report.findings if f.severity is Severity.CRITICAL}
    if codes <= {"untrusted_key"}:
        return "untrusted_key"
    if codes <= {"equivocation"}:
        return "equivocation"
    return "document_invalid"


def record_number(report: Report, suffix: str, known: str | None) -> str:
    """The tracked record's Pith Number (`known`, or its suffix before one was verified).

    Never the number a document claims for itself when that is another record: a mirror
    serving record B at record A's address raises an alert about A. A claim, from a
    document that may not verify, names the record only in the right form, for it (it
    reaches logs and hooks)."""
    claimed = report.pith_number
    if claimed is not None and _NUMBER.fullmatch(claimed) and claimed[-26:] == suffix:
        return claimed
    return known or suffix


def judge_bundle(
    report: Report,
    fetched: Fetched,
    *,
    number: str,
    before: Before | Past | None,
    trust: TrustSet,
    follow_rotations: bool,
) -> Judgement:
    """A bundle body's meaning: an untrusted one is one alert condition of its (record,
    mirror); a trusted one brings the changes against the newest history the mirror
    served `before` (a rollback is a condition; events, corrections and keys are news;
    with a `Past` of several vantages, a rollback is against this vantage's own and the
    news against the newest any was served)."""
    scope = fetched.scope("document")
    if not report.ok:
        kind = alert_kind(report)
        codes = sorted({f.code for f in report.findings if f.severity is Severity.CRITICAL})
        untrusted = NewEvent(
            kind=kind,
            severity="critical",
            at=fetched.at,
            pith_number=number,
            mirrors=(fetched.mirror,),
            summary=f"{fetched.mirror} served an untrusted bundle for {number}: "
            + ", ".join(codes),
            evidence={**fetched.evidence(), **kept(report.findings)},
            # One alert while the mirror serves untrusted bundles of this record, however
            # many different ones: a body per fetch is not an alert each.
            dedup_key=fetched.key(f"{kind}:{fetched.suffix}:{fetched.mirror}"),
            suffix=fetched.suffix,
        )
        return Judgement([untrusted], scope, [untrusted])
    past = before if isinstance(before, Past) else Past(before)
    events = []
    if past.own is not None:
        events = _changes(report, fetched, number, past.own)
    if past.newest is not None and past.newest.body_sha256 != _body_of(past.own):
        # Another vantage was served a newer bundle: its news was told when it came.
        rollbacks = [e for e in events if e.kind == "rollback"]
        news = _changes(report, fetched, number, past.newest)
        events = rollbacks + [e for e in news if e.kind != "rollback"]
    learned = announced_keys(report.document, trust) if follow_rotations else []
    return Judgement(events, scope, [e for e in events if e.severity == "critical"], learned)


def _changes(report: Report, fetched: Fetched, number: str, before: Before) -> list[NewEvent]:
    """What a trusted bundle changes against the newest history the mirror ever served
    (not merely the last one: after a replay of an old bundle, the news when the mirror
    recovers is only what is really new)."""
    evidence = {**fetched.evidence(), "previous_body_sha256": before.body_sha256}
    return [
        NewEvent(
            kind=c.kind,
            severity=c.severity,
            at=fetched.at,
            pith_number=number,
            mirrors=(fetched.mirror,),
            summary=c.summary,
            evidence={**evidence, **c.evidence},
            dedup_key=fetched.key(c.dedup_key) if c.severity == "critical" else c.dedup_key,
            suffix=fetched.suffix,
        )
        for c in timeline.compare(before.document, report.document, mirror=fetched.mirror)
    ]


def _body_of(before: Before | None) -> str | None:
    return None if before is None else before.body_sha256


def announced_keys(bundle: dict[str, Any], trust: TrustSet) -> list[TrustedKey]:
    """New, well-formed keys a verified bundle announces (`trust.follow_rotations`)."""
    keys = []
    for doc in bundle["public_keys"]:
        if doc["key_id"] in trust or key_problems(doc):
            continue
        try:
            keys.append(load_key(doc))
        except InvalidKey:
            continue
    return keys


def judge_state(
    report: Report,
    fetched: Fetched,
    *,
    bundle: dict[str, Any],
    bundle_body_sha256: str,
) -> Judgement:
    """A state.json's meaning beside the trusted bundle its mirror serves: a condition
    when it does not verify, or is not that bundle's own `state`."""
    scope = fetched.scope("state")
    mismatch = (
        timeline.compare_state_url(bundle, report.document, mirror=fetched.mirror)
        if report.ok
        else None
    )
    if report.ok and mismatch is None:
        return Judgement([], scope, [])
    number = str(bundle.get("pith_number", fetched.suffix))
    condition = NewEvent(
        kind="state_url_mismatch",
        severity="critical",
        at=fetched.at,
        pith_number=number,
        mirrors=(fetched.mirror,),
        summary=mismatch.summary
        if mismatch
        else f"{fetched.mirror} served an invalid state.json for {number}",
        evidence={
            "mirror": fetched.mirror,
            "url": fetched.url,
            "fetched_at": format_timestamp(fetched.at),
            "state_body_sha256": fetched.body_sha256,
            "bundle_body_sha256": bundle_body_sha256,
            **kept(report.findings),
            **(mismatch.evidence if mismatch else {}),
        },
        dedup_key=fetched.key(f"state_url_mismatch:{fetched.suffix}:{fetched.mirror}"),
        suffix=fetched.suffix,
    )
    return Judgement([condition], scope, [condition])
