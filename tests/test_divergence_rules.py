"""The divergence rules (divergence.py): each rule a mutation audit found no test holding."""

from __future__ import annotations

from datetime import timedelta

from builder import BundleBuilder, TestSigner
from test_divergence import DAY, T0, h, kinds, seen

from pithcrawl.divergence import claims_of, conditions


def test_claims_of_names_each_place_an_event_claims(signer: TestSigner):
    b = BundleBuilder(signer)
    first = b.add_event()
    second = b.add_event("correction", supersedes=[first["event_id"]], prev_event=first["event_id"])
    assert claims_of(b.build()) == (
        ("prev_event", first["event_id"], second["event_id"]),
        ("supersedes", first["event_id"], second["event_id"]),
    )


def test_two_mirrors_superseding_one_event_differently_equivocate(signer: TestSigner):
    """A fork through `supersedes` (no prev_event): claims_of must carry it."""
    b = BundleBuilder(signer)
    first = b.add_event()
    base = [e.copy() for e in b.events]
    b.add_event("correction", supersedes=[first["event_id"]], payload={"fix": "a"})
    in_a = b.build()
    b.events[:] = base
    b.add_event("correction", supersedes=[first["event_id"]], payload={"fix": "b"})
    in_b = b.build()
    a = seen("a", "rfA", claims=claims_of(in_a))
    c = seen("b", "rfB", claims=claims_of(in_b))
    found = {x.kind: x for x in conditions(h([a, c]), T0, 2 * DAY)}
    assert found["equivocation"].evidence["place"] == {
        "kind": "supersedes",
        "ref": first["event_id"],
    }
    assert (
        found["equivocation"].dedup_key
        == f"equivocation:pith:2026:X:supersedes:{first['event_id']}"
    )


def test_a_split_view_is_one_condition_however_many_archived_bundles_show_it():
    a, b = seen("a", "rx"), seen("b", "ry")
    assert kinds(h([a, b], [a, b, seen("b", "ryz", T0 - DAY)])) == ["mirror_divergence"]


def test_a_mirror_behind_exactly_stale_after_is_not_yet_stale():
    hist = h([seen("a", "rxy", T0), seen("b", "rx")])
    assert kinds(hist, now=T0 + 2 * DAY, stale=2 * DAY) == []
    assert kinds(hist, now=T0 + 2 * DAY + timedelta(microseconds=1), stale=2 * DAY) == [
        "mirror_stale"
    ]


def test_a_mirror_behind_its_own_past_is_not_stale():
    """Serving less than it once served itself is a rollback (the timeline's), not lag."""
    hist = h([seen("a", "rx")], [seen("a", "rxy", T0 - 3 * DAY), seen("a", "rx")])
    assert kinds(hist, now=T0) == []


def _doc(mirror: str, events: str) -> dict:
    return {
        "mirror": mirror,
        "url": f"https://{mirror}/b",
        "fetched_at": "2026-11-01T00:00:00.000000Z",
        "body_sha256": f"sha-{mirror}-{events}",
        "built_at": "2026-11-01T00:00:00Z",
        "event_count": len(events),
    }


def test_each_condition_carries_its_whole_evidence():
    (split,) = conditions(h([seen("a", "rx"), seen("b", "ry")]), T0, 2 * DAY)
    assert split.evidence == {
        "pith_number": "pith:2026:X",
        "documents": [_doc("a", "rx"), _doc("b", "ry")],
        "only_in": {"a": ["x"], "b": ["y"]},
    }
    (stale,) = conditions(h([seen("a", "rxy"), seen("b", "rx")]), T0 + 3 * DAY, 2 * DAY)
    assert stale.evidence == {
        "pith_number": "pith:2026:X",
        "behind_since": "2026-11-01T00:00:00.000000Z",
        "documents": [_doc("b", "rx"), _doc("a", "rxy")],
        "missing_event_ids": ["y"],
    }
    a = seen("a", "rx", claims=[("prev_event", "r", "x")])
    b = seen("a", "rxy", claims=[("prev_event", "r", "x"), ("prev_event", "r", "y")])
    (eq,) = [c for c in conditions(h([b], [a, b]), T0, 2 * DAY) if c.kind == "equivocation"]
    assert eq.evidence == {
        "pith_number": "pith:2026:X",
        "place": {"kind": "prev_event", "ref": "r"},
        "event_ids": ["x", "y"],
        "documents": [_doc("a", "rx"), _doc("a", "rxy")],
    }
    assert eq.mirrors == ("a",)
