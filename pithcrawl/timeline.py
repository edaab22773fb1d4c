"""The timeline: what changed between two trusted snapshots of one record from one mirror.

Owns pith-format.md §5 rule 7 (over time, from one mirror, `built_at` never goes back,
no event disappears, an `event_id` never changes content and the canonical record never
changes), the news a new snapshot brings (events added, corrections, key rotations) and
the check that a mirror's `state.json` is the state inside its own bundle. Each is a
`Change` whose kind and severity are those of the contract's table.

Pure: both snapshots must have passed `verify.verify_bundle` (anything else is a bug of
the caller, and may raise); nothing here re-checks a signature, fetches, stores or
alerts, or compares mirrors with each other (`divergence`). `evidence` holds what the
bundles prove; the caller adds URLs, fetch times and the sha256 of each body.

Decisions:

- A rollback is one incident however many of its rules fire (a replayed older bundle
  moves `built_at` back *and* drops events): one `rollback` Change whose summary and
  evidence carry every cause, keyed by record and mirror only, so one incident is one
  alert, and a rollback that partly recovers is still the same alert. The info kinds
  are one `Change` per row that fires: a row that concerns several events (added)
  reports them together; a row about one thing (a correction, a key) each separately.
- Content is what the spec hashes, `H(event without signature, content_sha256,
  event_id)`, recomputed here: the registry re-signs events on every rebuild, so a new
  `signed_at` or signature is not a change of content.
- A first snapshot reports nothing: the contract has no kind for a first archive, and
  the archive's history already shows it.
- `dedup_key` is `rollback:pith_number:mirror` for a rollback, else
  `kind:pith_number:mirror:cause:ids`, where `pith_number` is the one served before (the
  record being watched) and `ids` (joined by `+`) are what make this change distinct:
  event ids or key ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pithcrawl.canon import H, canon, sha256_hex
from pithcrawl.findings import pointer
from pithcrawl.merge import list_name
from pithcrawl.timestamps import Timestamp, not_after, parse_timestamp
from pithcrawl.verify import first_difference

CRITICAL = "critical"
INFO = "info"


@dataclass(frozen=True, slots=True)
class Change:
    """One thing a mirror's new snapshot says happened, as an alert kind of the contract."""

    kind: str
    severity: str
    summary: str
    evidence: dict[str, Any]
    dedup_key: str


@dataclass(frozen=True, slots=True)
class _Fact:
    """What one rule saw: the part of a `Change` that the rule alone knows."""

    cause: str
    summary: str
    ids: tuple[str, ...]
    detail: dict[str, Any]


Bundle = Mapping[str, Any]
Rule = Callable[[Bundle, Bundle], Iterator[_Fact]]


# -- views of a bundle ------------------------------------------------------------------


def _index(items: list[Mapping[str, Any]], key: str) -> dict[str, Mapping[str, Any]]:
    """item[key] -> item, in bundle order (the first one, should a key repeat)."""
    index: dict[str, Mapping[str, Any]] = {}
    for item in items:
        index.setdefault(item[key], item)
    return index


def _events(bundle: Bundle) -> dict[str, Mapping[str, Any]]:
    return _index(bundle["events"], "event_id")


def _keys(bundle: Bundle) -> dict[str, Mapping[str, Any]]:
    return _index(bundle["public_keys"], "key_id")


def _content(event: Mapping[str, Any]) -> str:
    """The content hash as the spec defines it: the signature is not content."""
    return H(
        {k: v for k, v in event.items() if k not in ("signature", "content_sha256", "event_id")}
    )


def _brief(event: Mapping[str, Any]) -> dict[str, Any]:
    return {"event_id": event["event_id"], "event_type": event["event_type"]}


def _signers(bundle: Bundle) -> dict[str, list[str]]:
    """key_id -> the JSON Pointers of every signature block it made in the bundle."""
    signers: dict[str, list[str]] = {}
    signers.setdefault(bundle["bundle_signature"]["key_id"], []).append("/bundle_signature")
    for i, event in enumerate(bundle["events"]):
        signers.setdefault(event["signature"]["key_id"], []).append(
            pointer("events", i, "signature")
        )
    return signers


def _pair(before: Any, after: Any) -> dict[str, Any]:
    return {"before": before, "after": after}


def _time(value: Any) -> Timestamp:
    ts = parse_timestamp(value)
    if ts is None:
        raise ValueError(f"{value!r} is not a timestamp: the timeline takes verified bundles")
    return ts


def _same_time(a: Any, b: Any) -> bool:
    """Two `rotates_at` values (each a timestamp or null) name the same moment."""
    ta, tb = parse_timestamp(a), parse_timestamp(b)
    if ta is None or tb is None:
        return bool(a == b)
    return ta.at == tb.at


# -- the rules (pith-format.md §5.7 and the contract's info kinds), one function each ----


def built_at_went_back(before: Bundle, after: Bundle) -> Iterator[_Fact]:
    was, now = _time(before["built_at"]), _time(after["built_at"])
    if not not_after(was, now):
        yield _Fact(
            "built_at_went_back",
            f"built_at went back from {was.text} to {now.text}",
            (was.text, now.text),
            {},
        )


def events_dropped(before: Bundle, after: Bundle) -> Iterator[_Fact]:
    now = _events(after)
    gone = [_brief(e) for i, e in _events(before).items() if i not in now]
    if gone:
        yield _Fact(
            "events_dropped",
            f"{len(gone)} event(s) served before are missing: "
            + ", ".join(e["event_id"] for e in gone),
            tuple(e["event_id"] for e in gone),
            {"events": gone},
        )


def event_content_changed(before: Bundle, after: Bundle) -> Iterator[_Fact]:
    was, now = _events(before), _events(after)
    hashes = {i: (_content(e), _content(now[i])) for i, e in was.items() if i in now}
    ids = tuple(i for i, (a, b) in hashes.items() if a != b)
    if ids:
        yield _Fact(
            "event_content_changed",
            "event(s) changed content under the same event_id: " + ", ".join(ids),
            ids,
            {"changed_events": [{"event_id": i, "content_sha256": _pair(*hashes[i])} for i in ids]},
        )


def canonical_record_changed(before: Bundle, after: Bundle) -> Iterator[_Fact]:
    was, now = H(before["canonical_record"]), H(after["canonical_record"])
    if was != now or before["canonical_sha256"] != after["canonical_sha256"]:
        yield _Fact(
            "canonical_record_changed",
            f"the canonical record changed from {was} to {now}",
            (now,),
            {
                "canonical_sha256": _pair(was, now),
                "pith_number_after": after["pith_number"],
            },
        )


def events_added(before: Bundle, after: Bundle) -> Iterator[_Fact]:
    was = _events(before)
    new = [_brief(e) for i, e in _events(after).items() if i not in was]
    if new:
        yield _Fact(
            "events_added",
            f"{len(new)} new event(s): " + ", ".join(e["event_type"] for e in new),
            tuple(e["event_id"] for e in new),
            {"events": new},
        )


def corrections_added(before: Bundle, after: Bundle) -> Iterator[_Fact]:
    was = _events(before)
    for i, e in _events(after).items():
        if i in was or not (e["supersedes"] or list_name(e["event_type"]) == "corrections"):
            continue
        supersedes = list(e["supersedes"])
        yield _Fact(
            "correction_added",
            f"{e['event_type']} event {i} supersedes "
            + (", ".join(supersedes) if supersedes else "nothing named"),
            (i,),
            {**_brief(e), "created_at": e["created_at"], "supersedes": supersedes},
        )


def keys_announced(before: Bundle, after: Bundle) -> Iterator[_Fact]:
    was = _keys(before)
    for key_id, key in _keys(after).items():
        if key_id not in was:
            yield _Fact(
                "key_announced",
                f"the bundle announces a new key {key_id!r}",
                (key_id,),
                {
                    "key_id": key_id,
                    "fingerprint_sha256_hex": key.get("fingerprint_sha256_hex"),
                    "rotates_at": key.get("rotates_at"),
                },
            )


def rotates_at_changed(before: Bundle, after: Bundle) -> Iterator[_Fact]:
    now = _keys(after)
    for key_id, key in _keys(before).items():
        if key_id not in now:
            continue
        was_at, now_at = key.get("rotates_at"), now[key_id].get("rotates_at")
        if not _same_time(was_at, now_at):
            yield _Fact(
                "rotates_at_changed",
                f"key {key_id!r} now rotates at {now_at} (was {was_at})",
                (key_id, str(now_at)),
                {"key_id": key_id, "rotates_at": _pair(was_at, now_at)},
            )


def signing_keys_new(before: Bundle, after: Bundle) -> Iterator[_Fact]:
    was = _signers(before)
    for key_id, where in _signers(after).items():
        if key_id not in was:
            yield _Fact(
                "new_signing_key",
                f"key {key_id!r} signs for the first time ({len(where)} signature(s))",
                (key_id,),
                {"key_id": key_id, "signatures": where},
            )


#: (kind, severity, rule): the contract's kinds, in the order changes are reported.
RULES: tuple[tuple[str, str, Rule], ...] = (
    ("rollback", CRITICAL, built_at_went_back),
    ("rollback", CRITICAL, events_dropped),
    ("rollback", CRITICAL, event_content_changed),
    ("rollback", CRITICAL, canonical_record_changed),
    ("event_added", INFO, events_added),
    ("correction", INFO, corrections_added),
    ("key_rotation", INFO, keys_announced),
    ("key_rotation", INFO, rotates_at_changed),
    ("key_rotation", INFO, signing_keys_new),
)


# -- the entry points -------------------------------------------------------------------


def _dedup_key(kind: str, pith_number: str, mirror: str, cause: str, ids: tuple[str, ...]) -> str:
    return f"{kind}:{pith_number}:{mirror}:{cause}:{'+'.join(ids)}"


def compare(previous: Bundle, current: Bundle, *, mirror: str) -> list[Change]:
    """Every change from `previous` to `current`, two verified bundles of one record: at
    most one `rollback` (every cause of it together), then the news."""
    number = previous["pith_number"]
    common = {
        "pith_number": number,
        "mirror": mirror,
        "bundle_sha256": _pair(
            previous["bundle_signature"]["bundle_sha256"],
            current["bundle_signature"]["bundle_sha256"],
        ),
        "built_at": _pair(previous["built_at"], current["built_at"]),
    }
    fired = [
        (kind, severity, fact) for kind, severity, rule in RULES for fact in rule(previous, current)
    ]
    back = [fact for kind, _, fact in fired if kind == "rollback"]
    changes = []
    if back:
        causes = [fact.cause for fact in back]
        detail = {k: v for fact in back for k, v in fact.detail.items()}
        changes.append(
            Change(
                "rollback",
                CRITICAL,
                "; ".join(fact.summary for fact in back),
                {**common, "cause": "+".join(causes), "causes": causes, **detail},
                f"rollback:{number}:{mirror}",
            )
        )
    changes += [
        Change(
            kind,
            severity,
            fact.summary,
            {**common, "cause": fact.cause, **fact.detail},
            _dedup_key(kind, number, mirror, fact.cause, fact.ids),
        )
        for kind, severity, fact in fired
        if kind != "rollback"
    ]
    return changes


def _difference(served: Mapping[str, Any], inside: Mapping[str, Any]) -> tuple[str, str]:
    """The first place where state.json differs from the bundle's state."""
    where, what = first_difference(served, inside, "")
    if where == "" and served.get("state_sha256") != inside.get("state_sha256"):
        # first_difference passes over a top-level state_sha256 (the merge recomputes it).
        where = "/state_sha256"
        what = f"found {served.get('state_sha256')!r}, expected {inside.get('state_sha256')!r}"
    return where, what


def compare_state_url(
    bundle: Bundle, state_doc: Mapping[str, Any], *, mirror: str = ""
) -> Change | None:
    """A `state_url_mismatch` when the mirror's state.json is not its bundle's state.

    Both must be verified (`verify_bundle`, `verify_state`). `mirror` only goes into the
    evidence and the `dedup_key`, which names the canonical sha256 of the served state.
    """
    inside, served = canon(bundle["state"]), canon(state_doc)
    if inside == served:
        return None
    where, what = _difference(state_doc, bundle["state"])
    number = bundle["pith_number"]
    sha = bundle["bundle_signature"]["bundle_sha256"]
    return Change(
        "state_url_mismatch",
        CRITICAL,
        f"state.json differs from the state inside the bundle at {where or '/'}: {what}",
        {
            "pith_number": number,
            "mirror": mirror,
            "bundle_sha256": sha,
            "built_at": bundle["built_at"],
            "state_sha256": {
                "bundle": bundle["state"].get("state_sha256"),
                "state_json": state_doc.get("state_sha256"),
            },
            "canon_sha256": {"bundle": sha256_hex(inside), "state_json": sha256_hex(served)},
            "first_difference": {"path": where, "what": what},
        },
        # One alert while the mirror's state.json is not its bundle's, whatever it serves.
        f"state_url_mismatch:{number}:{mirror}",
    )
