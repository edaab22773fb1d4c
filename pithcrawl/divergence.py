"""Divergence: whether the mirrors of one record tell one history.

Owns the rules over the verified histories of one record across mirrors and time, as a
table: a split view (`mirror_divergence`), a mirror that stays behind (`mirror_stale`),
two valid events claiming one place in the history (`equivocation`) and one mirror that
keeps serving one vantage an older bundle than another (`vantage_split`). A mirror that
is merely behind is not divergent: the registry's history only grows, so one history
that contains another is the same history, later.

Pure: histories in, conditions out. Each condition carries a stable `dedup_key` and is
*currently true*; the caller opens an alert for a new key and closes the alerts of keys
no longer reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pithcrawl.timestamps import format_timestamp, parse_timestamp_text


@dataclass(frozen=True, slots=True)
class Seen:
    """One verified bundle as one mirror served it at one time."""

    mirror: str
    fetched_at: datetime
    body_sha256: str
    url: str
    built_at: str
    events: tuple[str, ...]  # event ids, bundle order
    claims: tuple[tuple[str, str, str], ...] = ()  # (kind, ref, event_id): history places
    vantage: str | None = None
    """The vantage it was served to (None: fetched before vantages were recorded)."""
    node: str | None = None

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self.events)

    def cite(self) -> dict[str, Any]:
        cited = {
            "mirror": self.mirror,
            "url": self.url,
            "fetched_at": format_timestamp(self.fetched_at),
            "body_sha256": self.body_sha256,
            "built_at": self.built_at,
            "event_count": len(self.events),
        }
        if self.vantage is not None:
            cited.update(vantage=self.vantage, node=self.node)
        return cited


@dataclass(frozen=True, slots=True)
class View:
    """What one mirror serves one vantage now: the latest bundle archived from there (if
    trusted), and when the vantage last confirmed it (fetched it, or heard "not
    modified", with no other body since)."""

    seen: Seen
    confirmed_at: datetime


@dataclass(frozen=True, slots=True)
class Windows:
    """How long a difference may last before it is a condition."""

    stale_after: timedelta
    """A mirror lagging the others (`mirror_stale`)."""
    split_grace: timedelta = timedelta(0)
    """A vantage served an older bundle than another by one mirror (`vantage_split`)."""


def claims_of(bundle: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """The places in the history each event of a verified bundle claims."""
    out = []
    for event in bundle["events"]:
        if event["prev_event"] is not None:
            out.append(("prev_event", event["prev_event"], event["event_id"]))
        out.extend(("supersedes", ref, event["event_id"]) for ref in event["supersedes"])
    return tuple(out)


#: What a trusted body says of the history: (pith_number, event ids, claimed places).
History = tuple[str, tuple[str, ...], tuple[tuple[str, str, str], ...]]


def history_of(bundle: dict[str, Any]) -> History:
    """The history a verified bundle tells, as the rules compare it."""
    return (
        bundle["pith_number"],
        tuple(e["event_id"] for e in bundle["events"]),
        claims_of(bundle),
    )


@dataclass(frozen=True, slots=True)
class Condition:
    kind: str
    severity: str
    mirrors: tuple[str, ...]
    summary: str
    evidence: dict[str, Any]
    dedup_key: str


@dataclass(frozen=True, slots=True)
class Histories:
    """Everything known of one record: each mirror's current bundle, and all it served."""

    pith_number: str
    current: dict[str, Seen]  # mirror -> the bundle it serves now
    archived: Sequence[Seen]  # every verified bundle ever archived, any mirror (incl. current)
    views: Sequence[View] = ()  # each (mirror, vantage crawling now) serving a trusted bundle
    gone: Sequence[View] = ()  # the same, last, of the vantages that stopped crawling


def _served_now(h: Histories) -> list[tuple[Seen, datetime | None]]:
    """What each mirror serves now, and when that was last confirmed: to each vantage
    crawling now, once there are several (a mirror is judged by what every vantage is
    served, whichever crawled last), else its latest bundle (None: not known)."""
    if h.views:
        views = sorted(h.views, key=lambda v: (v.seen.mirror, v.seen.vantage or ""))
        return [(v.seen, v.confirmed_at) for v in views]
    return [(s, None) for s in sorted(h.current.values(), key=lambda s: s.mirror)]


def split_views(h: Histories, now: datetime, w: Windows) -> Iterable[Condition]:
    """Two mirrors (now, or one now and one as archived) serve histories neither of which
    contains the other."""
    reported: set[tuple[str, str]] = set()
    for a, _ in _served_now(h):
        for b in h.archived:
            if b.mirror == a.mirror or (a.mirror, b.mirror) in reported:
                continue
            if a.ids <= b.ids or b.ids <= a.ids:
                continue
            pair = tuple(sorted((a.mirror, b.mirror)))
            if (pair[0], pair[1]) in reported:
                continue
            reported.add((pair[0], pair[1]))
            reported.add((pair[1], pair[0]))
            only_a, only_b = sorted(a.ids - b.ids), sorted(b.ids - a.ids)
            yield Condition(
                "mirror_divergence",
                "critical",
                (pair[0], pair[1]),
                f"{a.mirror} and {b.mirror} serve histories of {h.pith_number} that cannot "
                f"both be true ({len(only_a)} and {len(only_b)} events the other lacks)",
                {
                    "pith_number": h.pith_number,
                    "documents": [a.cite(), b.cite()],
                    "only_in": {a.mirror: only_a, b.mirror: only_b},
                },
                f"mirror_divergence:{h.pith_number}:{pair[0]}:{pair[1]}",
            )


def stale_mirrors(h: Histories, now: datetime, w: Windows) -> Iterable[Condition]:
    """A mirror that lacks events another mirror has served for longer than `stale_after`
    (to one vantage at least: one alert a mirror)."""
    reported: set[str] = set()
    for a, confirmed in _served_now(h):
        if a.mirror in reported:
            continue
        newer = [b for b in h.archived if b.mirror != a.mirror and a.ids < b.ids]
        if not newer:
            continue
        first = min(newer, key=lambda b: b.fetched_at)
        if now - first.fetched_at <= w.stale_after:
            continue
        if confirmed is not None and confirmed < first.fetched_at:
            continue  # that vantage has not reached the mirror since: it cannot tell
        missing = sorted(first.ids - a.ids)
        reported.add(a.mirror)
        yield Condition(
            "mirror_stale",
            "error",
            (a.mirror,),
            f"{a.mirror} has lagged the newest history of {h.pith_number} since "
            f"{format_timestamp(first.fetched_at)} ({len(missing)} events missing)",
            {
                "pith_number": h.pith_number,
                "behind_since": format_timestamp(first.fetched_at),
                "documents": [a.cite(), first.cite()],
                "missing_event_ids": missing,
            },
            f"mirror_stale:{h.pith_number}:{a.mirror}",
        )


def equivocations(h: Histories, now: datetime, w: Windows) -> Iterable[Condition]:
    """Two valid events, anywhere they were seen, claiming the same place in the history."""
    claimants: dict[tuple[str, str], dict[str, Seen]] = {}
    for seen in h.archived:
        for kind, ref, event_id in seen.claims:
            claimants.setdefault((kind, ref), {}).setdefault(event_id, seen)
    for (kind, ref), by_event in sorted(claimants.items()):
        if len(by_event) < 2:
            continue
        ids = sorted(by_event)
        sources = [by_event[i] for i in ids]
        yield Condition(
            "equivocation",
            "critical",
            tuple(sorted({s.mirror for s in sources})),
            f"{len(ids)} validly signed events of {h.pith_number} claim {kind} {ref}",
            {
                "pith_number": h.pith_number,
                "place": {"kind": kind, "ref": ref},
                "event_ids": ids,
                "documents": [s.cite() for s in sources],
            },
            f"equivocation:{h.pith_number}:{kind}:{ref}",
        )


def _built(seen: Seen) -> datetime | None:
    ts = parse_timestamp_text(seen.built_at)
    return None if ts is None else ts.at


def _newer(a: Seen, b: Seen) -> bool:
    """Whether `a` is a later bundle than `b` of the same history: every event of `b`
    and more, or the same events rebuilt later (a fork is `equivocation`'s)."""
    if not b.ids <= a.ids:
        return False
    if b.ids < a.ids:
        return True
    built_a, built_b = _built(a), _built(b)
    return built_a is not None and built_b is not None and built_a > built_b


def _since(h: Histories, behind: Seen) -> datetime:
    """When the vantage behind was first served the bundle it holds now: the start of
    its latest run of snapshots of that history (the same events, built at the same
    time), so new bytes of the same bundle on every fetch do not restart it."""
    since = behind.fetched_at
    own = [s for s in h.archived if s.mirror == behind.mirror and s.vantage == behind.vantage]
    for s in reversed(own):
        if s.ids != behind.ids or s.built_at != behind.built_at:
            break
        since = min(since, s.fetched_at)
    return since


def vantage_splits(h: Histories, now: datetime, w: Windows) -> Iterable[Condition]:
    """One mirror that kept serving a vantage an older bundle after another vantage was
    served a newer one, for longer than `split_grace` (a CDN's caches catch up in
    minutes; a mirror that lies to one auditor's addresses does not).

    Against what another vantage is served *now*, and was confirmed to be served since
    the vantage behind was first served its older bundle (both at once): a mirror that
    went back for every vantage is each one's `rollback`, not a split. Or against what
    a vantage that stopped crawling (or was renamed) was served last: the mirror went
    back from it, and the vantage behind has no history of its own to call that a
    rollback. Counted from the first time that vantage was served something newer than
    the bundle behind (or, if later, from when the vantage behind was first served it)
    to the last time the vantage behind confirmed it: one that caught up has no older
    bundle any more. A vantage served something newer before is that vantage's
    `rollback`, not a split."""
    reported: set[str] = set()
    views = sorted(h.views, key=lambda v: (v.seen.mirror, v.seen.vantage or ""))
    for view in views:
        behind = view.seen
        if behind.mirror in reported:
            continue
        if any(
            s.mirror == behind.mirror and s.vantage == behind.vantage and _newer(s, behind)
            for s in h.archived
        ):
            continue  # it went back from what this vantage was served: its rollback
        since = _since(h, behind)
        ahead = {
            v.seen.vantage
            for v in views
            if v.seen.mirror == behind.mirror
            and v.seen.vantage != behind.vantage
            and v.confirmed_at >= since
            and _newer(v.seen, behind)
        } | {
            g.seen.vantage
            for g in h.gone
            if g.seen.mirror == behind.mirror and _newer(g.seen, behind)
        }
        newer = [
            s
            for s in h.archived
            if s.mirror == behind.mirror and s.vantage in ahead and _newer(s, behind)
        ]
        if not newer:
            continue
        first = min(newer, key=lambda s: s.fetched_at)
        if view.confirmed_at - max(first.fetched_at, since) <= w.split_grace:
            continue
        reported.add(behind.mirror)
        # When the vantage ahead was last served its newer bundle: after `since`, both
        # at once (none for a vantage that stopped: what it was served last).
        confirmed = [
            v.confirmed_at
            for v in views
            if v.seen.vantage == first.vantage and v.seen.mirror == behind.mirror
        ]
        missing = sorted(first.ids - behind.ids)
        yield Condition(
            "vantage_split",
            "critical",
            (behind.mirror,),
            f"{behind.mirror} keeps vantage {behind.vantage} on an older bundle of "
            f"{h.pith_number} ({len(behind.events)} events, built {behind.built_at}; "
            f"{len(missing)} missing) than vantage {first.vantage} has been served since "
            f"{format_timestamp(first.fetched_at)}; {behind.vantage} last confirmed it "
            f"{format_timestamp(view.confirmed_at)}, past split_grace {w.split_grace}",
            {
                "pith_number": h.pith_number,
                "mirror": behind.mirror,
                "ahead_since": format_timestamp(first.fetched_at),
                "ahead_confirmed_at": format_timestamp(confirmed[0]) if confirmed else None,
                "behind_since": format_timestamp(since),
                "behind_confirmed_at": format_timestamp(view.confirmed_at),
                "split_grace_seconds": int(w.split_grace.total_seconds()),
                "documents": [first.cite(), behind.cite()],
                "missing_event_ids": missing,
            },
            f"vantage_split:{h.pith_number}:{behind.mirror}",
        )


Rule = Callable[[Histories, datetime, Windows], Iterable[Condition]]

#: kind, severity, rule: the divergence rules of the contract, one function each.
RULES: tuple[tuple[str, str, Rule], ...] = (
    ("mirror_divergence", "critical", split_views),
    ("mirror_stale", "error", stale_mirrors),
    ("equivocation", "critical", equivocations),
    ("vantage_split", "critical", vantage_splits),
)


def conditions(
    h: Histories, now: datetime, stale_after: timedelta, split_grace: timedelta = timedelta(0)
) -> list[Condition]:
    """Every divergence condition true of this record now."""
    w = Windows(stale_after, split_grace)
    return [c for _, _, rule in RULES for c in rule(h, now, w)]
