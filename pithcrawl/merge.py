"""The deterministic merge `pith-open-graph-merge-v1` (pith-format.md §4).

Owns how a state is derived from a bundle's events and which events conflict. The
rules for the two known event types are checked against the real fixture; the rest
is inferred, so each inferred rule lives behind one function here (`list_name`,
`invalid_entry`, `equivocation_groups`) and can change in one place. It does not
decide whether an event is valid: the caller passes that in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pithcrawl.canon import H, without

MERGE_VERSION = "pith-open-graph-merge-v1"
STATE_TYPE = "pith_open_graph_state"

#: The lists every `current` has, even when empty (checked on the fixture).
CURRENT_LISTS = (
    "graph_snapshots",
    "author_attestations",
    "timestamp_anchors",
    "storage_attestations",
    "citation_signatures",
    "replication_records",
    "corrections",
    "mirror_hints",
)


def list_name(event_type: str) -> str:
    """The `current` list an event type goes to: its plural (inferred beyond graph_snapshot)."""
    return event_type + "s"


def invalid_entry(index: int, event: Mapping[str, Any], reasons: Sequence[str]) -> dict[str, Any]:
    """How an event that is not applied is listed in `invalid_events` (inferred)."""
    return {"index": index, "event_id": event.get("event_id"), "reasons": sorted(set(reasons))}


@dataclass(frozen=True, slots=True)
class Equivocation:
    """Two or more valid events that claim the same place in the history."""

    kind: str  # "prev_event" or "supersedes"
    ref: str  # the event_id both name
    event_ids: tuple[str, ...]
    indexes: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "ref": self.ref, "event_ids": list(self.event_ids)}


def equivocation_groups(
    events: Sequence[Mapping[str, Any]], valid: Sequence[bool]
) -> list[Equivocation]:
    """Valid events naming the same non-null `prev_event`, or superseding the same event.

    A null `prev_event` starts no chain, and the same event listed twice does not
    conflict with itself (inferred from the fixture: two events with null, no conflict).
    """
    claims: dict[tuple[str, str], dict[str, int]] = {}
    for i, event in enumerate(events):
        if not valid[i]:
            continue
        places = [("supersedes", ref) for ref in event["supersedes"]]
        if event["prev_event"] is not None:
            places.append(("prev_event", event["prev_event"]))
        for place in places:
            claims.setdefault(place, {}).setdefault(event["event_id"], i)
    return [
        Equivocation(kind, ref, tuple(ids), tuple(ids.values()))
        for (kind, ref), ids in claims.items()
        if len(ids) > 1
    ]


def entry(event: Mapping[str, Any]) -> dict[str, Any]:
    """How an applied event appears in `current` (checked)."""
    return {
        "event_id": event["event_id"],
        "target": event["target"],
        "created_at": event["created_at"],
        "signer": event["signer"],
        "payload": event["payload"],
    }


def merge(
    bundle: Mapping[str, Any],
    valid: Sequence[bool],
    reasons: Mapping[int, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The state of a bundle, with `state_sha256`, given which of its events are valid.

    `bundle` must already fit `schema.BUNDLE`; `reasons` says why each invalid event is.
    """
    state = derive(bundle, valid, reasons, equivocation_groups(bundle["events"], valid))
    state["state_sha256"] = H(state)
    return state


def derive(
    bundle: Mapping[str, Any],
    valid: Sequence[bool],
    reasons: Mapping[int, Sequence[str]] | None,
    groups: Sequence[Equivocation],
    *,
    entry_of: Callable[[int, Mapping[str, Any]], Any] | None = None,
    canonical_record: Any = None,
) -> dict[str, Any]:
    """The state without `state_sha256`.

    `entry_of` and `canonical_record` let a caller substitute values of the same
    canonical form (the verifier passes pre-serialised fragments), so the
    state's canonical bytes are assembled rather than computed again.
    """
    events: Sequence[Mapping[str, Any]] = bundle["events"]
    make_entry = entry_of or (lambda i, e: entry(e))
    current: dict[str, Any] = {
        "canonical_record": (
            bundle["canonical_record"] if canonical_record is None else canonical_record
        ),
        # A copy: an event type whose plural is `source_aliases` ("source_aliase") goes to
        # this list by the inferred rule, and must not change the bundle it came from.
        "source_aliases": list(bundle["source_aliases"]),
        "record_created": None,
    }
    for name in CURRENT_LISTS:
        current[name] = []
    applied: list[str] = []
    invalid: list[dict[str, Any]] = []
    for i, event in enumerate(events):
        if not valid[i]:
            invalid.append(invalid_entry(i, event, (reasons or {}).get(i, ())))
            continue
        applied.append(event["event_id"])
        if event["event_type"] == "record_created":
            if current["record_created"] is None:
                current["record_created"] = make_entry(i, event)
        else:
            current.setdefault(list_name(event["event_type"]), []).append(make_entry(i, event))
    return {
        "state_type": STATE_TYPE,
        "state_version": "1.0",
        "pith_number": bundle["pith_number"],
        "merge_version": bundle["merge_version"],
        "event_count": len(events),
        "valid_event_count": len(applied),
        "invalid_event_count": len(invalid),
        "equivocation_count": len(groups),
        "current": current,
        "equivocations": [g.to_json() for g in groups],
        "invalid_events": invalid,
        "applied_event_ids": applied,
    }


def state_sha256(state: Mapping[str, Any]) -> str:
    """`state_sha256` as it should be: H(state without state_sha256)."""
    return H(without(dict(state), "state_sha256"))
