"""The timeline: pith-format.md §5 rule 7 and the contract's info kinds, one rule per test.

Snapshots are built and signed with the test key (tests/builder.py) and verified, so
each test compares two bundles a mirror could really serve. The exceptions are the
ones no valid bundle can show (an event_id over other content, another record at the
same address): the timeline must still see them without re-verifying.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from builder import BundleBuilder, H, TestSigner, seal, serialize
from conftest import NOW
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pithcrawl.keys import TrustSet, load_key
from pithcrawl.timeline import Change, compare, compare_state_url
from pithcrawl.verify import verify_bundle

MIRROR = "primary"
LATER = "2026-11-10T00:00:00Z"


def trusted(bundle: dict[str, Any], trust: TrustSet) -> dict[str, Any]:
    """The bundle as the verifier hands it on, after checking it is a valid input."""
    report = verify_bundle(serialize(bundle), trust, now=NOW)
    assert report.ok, [f.to_json() for f in report.findings]
    return report.document  # type: ignore[no-any-return]


def causes(changes: list[Change]) -> list[tuple[str, str, str]]:
    return [(c.kind, c.severity, c.evidence["cause"]) for c in changes]


def test_unchanged_snapshot_is_no_change(builder: BundleBuilder, test_trust: TrustSet):
    """The same bundle served again changes nothing."""
    before = trusted(builder.build(), test_trust)
    after = trusted(builder.build(), test_trust)
    assert compare(before, after, mirror=MIRROR) == []


def test_resigned_rebuild_is_no_change(builder: BundleBuilder, test_trust: TrustSet):
    """A rebuild that re-signs the same events later is neither a rollback nor news."""
    before = trusted(builder.build(), test_trust)
    for event in builder.events:
        builder.sign_event(event, signed_at="2026-11-09T12:00:00.123456Z")
    after = trusted(builder.build(built_at=LATER), test_trust)
    assert after["events"][1]["signature"] != before["events"][1]["signature"]
    assert [e["event_id"] for e in after["events"]] == [e["event_id"] for e in before["events"]]
    assert compare(before, after, mirror=MIRROR) == []


def test_event_added(builder: BundleBuilder, test_trust: TrustSet):
    """A new event is `event_added` (info), naming the event and its type, and nothing else."""
    before = trusted(builder.build(), test_trust)
    new = builder.add_event()
    after = trusted(builder.build(), test_trust)
    [change] = compare(before, after, mirror=MIRROR)
    assert (change.kind, change.severity) == ("event_added", "info")
    assert change.evidence["events"] == [
        {"event_id": new["event_id"], "event_type": "graph_snapshot"}
    ]
    assert change.evidence["bundle_sha256"] == {
        "before": before["bundle_signature"]["bundle_sha256"],
        "after": after["bundle_signature"]["bundle_sha256"],
    }
    assert change.evidence["built_at"] == {"before": before["built_at"], "after": after["built_at"]}
    assert (
        change.dedup_key
        == f"event_added:{builder.pith_number}:{MIRROR}:events_added:{new['event_id']}"
    )


def test_correction(builder: BundleBuilder, test_trust: TrustSet):
    """An event that supersedes another is `event_added` and a `correction` naming both."""
    before = trusted(builder.build(), test_trust)
    old = builder.events[1]["event_id"]
    new = builder.add_event("correction", {"reason": "typo"}, supersedes=[old], target="graph")
    after = trusted(builder.build(), test_trust)
    changes = compare(before, after, mirror=MIRROR)
    assert causes(changes) == [
        ("event_added", "info", "events_added"),
        ("correction", "info", "correction_added"),
    ]
    assert changes[1].evidence["event_id"] == new["event_id"]
    assert changes[1].evidence["supersedes"] == [old]


def test_new_key_announced(builder: BundleBuilder, test_trust: TrustSet):
    """A key_id in public_keys that was not there before is a `key_rotation`."""
    before = trusted(builder.build(), test_trust)
    builder.extra_keys.append(TestSigner("test-key-2").public_key())
    after = trusted(builder.build(), test_trust)
    [change] = compare(before, after, mirror=MIRROR)
    assert (change.kind, change.evidence["cause"]) == ("key_rotation", "key_announced")
    assert change.evidence["key_id"] == "test-key-2"


def test_new_signing_key(builder: BundleBuilder, signer: TestSigner):
    """An event signed by a key that signed nothing before is a `key_rotation`."""
    second = TestSigner("test-key-2")
    trust = TrustSet([load_key(signer.public_key()), load_key(second.public_key())])
    builder.extra_keys.append(second.public_key())
    before = trusted(builder.build(), trust)
    builder.add_event(signer=second)
    after = trusted(builder.build(), trust)
    changes = compare(before, after, mirror=MIRROR)
    assert causes(changes) == [
        ("event_added", "info", "events_added"),
        ("key_rotation", "info", "new_signing_key"),
    ]
    assert changes[1].evidence["signatures"] == ["/events/3/signature"]


def test_changed_rotates_at(builder: BundleBuilder, test_trust: TrustSet):
    """A key whose rotates_at changes is a `key_rotation` giving both values."""
    second = TestSigner("test-key-2")
    builder.extra_keys.append(second.public_key())
    before = trusted(builder.build(), test_trust)
    builder.extra_keys[0] = second.public_key(rotates_at="2027-06-01T00:00:00Z")
    after = trusted(builder.build(), test_trust)
    [change] = compare(before, after, mirror=MIRROR)
    assert (change.kind, change.evidence["cause"]) == ("key_rotation", "rotates_at_changed")
    assert change.evidence["rotates_at"] == {"before": None, "after": "2027-06-01T00:00:00Z"}


def test_built_at_going_back_is_rollback(builder: BundleBuilder, test_trust: TrustSet):
    """An older built_at than before is a `rollback` (critical)."""
    before = trusted(builder.build(built_at=LATER), test_trust)
    after = trusted(builder.build(), test_trust)
    [change] = compare(before, after, mirror=MIRROR)
    assert causes([change]) == [("rollback", "critical", "built_at_went_back")]
    assert change.evidence["built_at"] == {"before": LATER, "after": after["built_at"]}


def test_dropped_event_is_rollback(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    """An event served before and missing now is a `rollback` naming it."""
    before = trusted(builder.build(), test_trust)
    dropped = builder.events[2]["event_id"]
    shorter = BundleBuilder(signer, events=copy.deepcopy(builder.events[:2]))
    after = trusted(shorter.build(built_at=LATER), test_trust)
    [change] = compare(before, after, mirror=MIRROR)
    assert causes([change]) == [("rollback", "critical", "events_dropped")]
    assert change.evidence["events"] == [{"event_id": dropped, "event_type": "graph_snapshot"}]
    assert change.dedup_key == f"rollback:{builder.pith_number}:{MIRROR}"


def test_changed_content_under_same_id_is_rollback(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    """An event_id over other content is a `rollback`, whatever its content_sha256 says."""
    before = trusted(builder.build(), test_trust)
    after = copy.deepcopy(before)
    event = after["events"][1]
    event["payload"] = {"graph_snapshot": {"n": "rewritten"}}
    event["content_sha256"] = H(
        {k: event[k] for k in event if k not in ("signature", "content_sha256", "event_id")}
    )
    seal(after, signer)
    [change] = compare(before, after, mirror=MIRROR)
    assert causes([change]) == [("rollback", "critical", "event_content_changed")]
    [item] = change.evidence["changed_events"]
    assert item["event_id"] == event["event_id"]
    assert item["content_sha256"] == {
        "before": before["events"][1]["content_sha256"],
        "after": event["content_sha256"],
    }


def test_other_canonical_record_is_rollback(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    """Another canonical record than before is a `rollback`."""
    before = trusted(builder.build(), test_trust)
    other = BundleBuilder(signer, record=dict(builder.record, schema_version="1.1"))
    after = trusted(other.build(built_at=LATER), test_trust)
    changes = compare(before, after, mirror=MIRROR)
    [change] = [c for c in changes if c.kind == "rollback"]
    assert "canonical_record_changed" in change.evidence["causes"]
    assert change.severity == "critical"
    assert change.evidence["canonical_sha256"] == {
        "before": before["canonical_sha256"],
        "after": after["canonical_sha256"],
    }


def test_a_replayed_older_bundle_is_one_rollback_with_every_cause(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    """An older bundle served again moves built_at back and drops events: one incident,
    so one `rollback` whose summary and evidence carry both causes (it was two alerts,
    two pages), keyed by the record and the mirror alone."""
    older = trusted(builder.build(), test_trust)
    dropped = builder.add_event()
    newer = trusted(builder.build(built_at=LATER), test_trust)
    [change] = compare(newer, older, mirror=MIRROR)
    assert (change.kind, change.severity) == ("rollback", "critical")
    assert change.evidence["causes"] == ["built_at_went_back", "events_dropped"]
    assert change.evidence["cause"] == "built_at_went_back+events_dropped"
    assert change.evidence["built_at"] == {"before": LATER, "after": older["built_at"]}
    assert change.evidence["events"] == [
        {"event_id": dropped["event_id"], "event_type": "graph_snapshot"}
    ]
    assert change.summary == (
        f"built_at went back from {LATER} to {older['built_at']}; 1 event(s) served before"
        f" are missing: {dropped['event_id']}"
    )
    assert change.dedup_key == f"rollback:{builder.pith_number}:{MIRROR}"


def test_state_json_differing_from_bundle(builder: BundleBuilder, test_trust: TrustSet):
    """A state.json other than the bundle's own state is a `state_url_mismatch`."""
    bundle = trusted(builder.build(), test_trust)
    served = copy.deepcopy(bundle["state"])
    served["applied_event_ids"].pop()
    served["state_sha256"] = H({k: v for k, v in served.items() if k != "state_sha256"})
    change = compare_state_url(bundle, served, mirror=MIRROR)
    assert change is not None
    assert (change.kind, change.severity) == ("state_url_mismatch", "critical")
    assert change.evidence["first_difference"]["path"] == "/applied_event_ids"
    assert change.evidence["bundle_sha256"] == bundle["bundle_signature"]["bundle_sha256"]
    assert change.evidence["state_sha256"] == {
        "bundle": bundle["state"]["state_sha256"],
        "state_json": served["state_sha256"],
    }


def test_state_json_identical_to_bundle(builder: BundleBuilder, test_trust: TrustSet):
    """A state.json equal to the bundle's state is no change."""
    bundle = trusted(builder.build(), test_trust)
    assert compare_state_url(bundle, copy.deepcopy(bundle["state"]), mirror=MIRROR) is None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(min_value=0, max_value=8))
def test_snapshot_compared_with_itself_is_no_change(n: int):
    """compare(x, x) is empty for a bundle with any number of events."""
    b = BundleBuilder(TestSigner("test-key-1"))
    for _ in range(n):
        b.add_event()
    bundle = b.build()
    assert compare(bundle, bundle, mirror=MIRROR) == []
    assert compare(bundle, copy.deepcopy(bundle), mirror=MIRROR) == []


@pytest.mark.parametrize("kept", [1, 2, 3])
def test_appending_events_is_never_a_rollback(
    kept: int, signer: TestSigner, builder: BundleBuilder, test_trust: TrustSet
):
    """A later snapshot that only appends events raises no critical change."""
    for _ in range(2):
        builder.add_event()
    prefix = BundleBuilder(signer, events=copy.deepcopy(builder.events[:kept]))
    before = trusted(prefix.build(), test_trust)
    after = trusted(builder.build(), test_trust)
    assert {c.kind for c in compare(before, after, mirror=MIRROR)} == {"event_added"}
