"""What the verifier says, and what both of its checks share.

`Report` and `EventInfo` are the verdict; `Parts` holds a bundle's large parts serialised
once; `first_difference` says where two values part. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

from pithcrawl.canon import Piece, canon
from pithcrawl.findings import PATH_MAX, Finding, is_critical, pointer
from pithcrawl.keys import TrustSet
from pithcrawl.merge import Equivocation, entry
from pithcrawl.text import bounded
from pithcrawl.timestamps import Timestamp

DEFAULT_CLOCK_SKEW = timedelta(minutes=5)
#: Codes that make a single event invalid (not applied by the merge).
EVENT_INVALIDATING = frozenset(
    {
        "event_hash_mismatch",
        "event_signature_invalid",
        "event_subject_mismatch",
        "untrusted_key",
        "key_mismatch",
        "key_expired",
    }
)


class EventInfo(NamedTuple):
    """What the verifier learnt about one event of a bundle.

    A named tuple rather than a frozen dataclass: one is made per event verified, and a
    frozen dataclass's __init__ (one object.__setattr__ per field) costs seven times more.
    """

    # The event's place in the bundle. It hides tuple.index, which nobody calls on these.
    index: int  # type: ignore[assignment]
    event_id: str
    event_type: str
    content_sha256: str
    key_id: str
    prev_event: str | None
    supersedes: tuple[str, ...]
    valid: bool


@dataclass(frozen=True, slots=True)
class Report:
    """The verdict on one document: findings, and what later stages need from it."""

    kind: str  # "bundle", "state" or "unknown"
    pith_number: str | None
    findings: tuple[Finding, ...]
    document: Any = None
    bundle_sha256: str | None = None
    built_at: str | None = None
    events: tuple[EventInfo, ...] = ()
    state: dict[str, Any] | None = None
    equivocations: tuple[Equivocation, ...] = ()

    @property
    def ok(self) -> bool:
        """No critical finding: the document may be trusted."""
        return not is_critical(self.findings)

    @property
    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def to_json(self) -> dict[str, Any]:
        return {
            "pith_number": self.pith_number,
            "ok": self.ok,
            "findings": [f.to_json() for f in self.findings],
        }


UNSIGNED_EVENT_FIELDS = ("signature", "content_sha256", "event_id")


@dataclass(slots=True)
class Parts:
    """Canonical bytes of a bundle's large parts, each serialised once.

    The canonical JSON of an object is assembled from the canonical JSON of its values,
    so every hash the format defines (record, event content, state, bundle) and the
    recomputed state are built around these pre-serialised pieces (`canon.Piece`),
    exactly, without serialising an event payload or the state's `current` twice.
    """

    record: Piece
    payloads: list[Piece]
    current: Piece

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Parts:
        return cls(
            Piece(doc["canonical_record"]),
            [Piece(e["payload"]) for e in doc["events"]],
            Piece(doc["state"]["current"]),
        )

    def _event(self, i: int, event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "payload": self.payloads[i]}

    def event_content(self, i: int, event: dict[str, Any]) -> bytes:
        # A copy less three keys, not a comprehension: dict.copy clones the table whole.
        content = event.copy()
        for name in UNSIGNED_EVENT_FIELDS:
            del content[name]  # all three are required: the bundle fits schema.EVENT
        content["payload"] = self.payloads[i]
        return canon(content)

    def entry(self, i: int, event: Any) -> dict[str, Any]:
        made = entry(event)
        made["payload"] = self.payloads[i]
        return made

    def state_without_sha256(self, state: dict[str, Any]) -> bytes:
        copy = state.copy()
        del copy["state_sha256"]  # required by schema.STATE
        copy["current"] = self.current
        return canon(copy)

    def bundle(self, doc: dict[str, Any]) -> bytes:
        """canon(bundle without bundle_signature)."""
        top = doc.copy()
        del top["bundle_signature"]  # required by schema.BUNDLE
        top["canonical_record"] = self.record
        top["events"] = [self._event(i, e) for i, e in enumerate(doc["events"])]
        top["state"] = doc["state"] | {"current": self.current}
        return canon(top)


def add_configured_rotations(rotates: dict[str, Timestamp], trust: TrustSet) -> None:
    """Complete the rotations a bundle announces (`rotates`, by key id) with the trust
    set's own: a configured rotation wins when it is earlier (rule 6)."""
    for key_id, trusted in trust.items():
        if trusted.rotates_at is not None and (
            key_id not in rotates or trusted.rotates_at.at < rotates[key_id].at
        ):
            rotates[key_id] = trusted.rotates_at


def first_difference(a: Any, b: Any, path: str, depth: int = 0) -> tuple[str, str]:
    """The first place where two JSON values differ, as (pointer, description); the
    pointer is cut to `findings.PATH_MAX` (a document's keys can be any length)."""
    found, what = _first_difference(a, b, path, depth)
    return bounded(found, PATH_MAX), what


def _first_difference(a: Any, b: Any, path: str, depth: int) -> tuple[str, str]:
    if depth > 32 or type(a) is not type(b):
        return path, f"found {brief(a)}, expected {brief(b)}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b)):
            if key == "state_sha256" and depth == 0:
                continue
            here = path + pointer(key)
            if key not in a:
                return here, "missing"
            if key not in b:
                return here, "not expected"
            if canon(a[key]) != canon(b[key]):
                return _first_difference(a[key], b[key], here, depth + 1)
    elif isinstance(a, list):
        if len(a) != len(b):
            return path, f"{len(a)} items, expected {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if canon(x) != canon(y):
                return _first_difference(x, y, f"{path}/{i}", depth + 1)
    return path, f"found {brief(a)}, expected {brief(b)}"


def brief(value: Any) -> str:
    text = canon(value).decode("utf-8", "replace")
    return text if len(text) <= 80 else text[:77] + "..."
