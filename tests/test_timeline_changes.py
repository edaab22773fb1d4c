"""What changed between two trusted documents (timeline.py): each rule a mutation audit
found no test holding."""

from __future__ import annotations

import copy

import pytest
from builder import BundleBuilder, H, TestSigner, seal
from test_timeline import LATER, MIRROR, causes, trusted

from pithcrawl.keys import TrustSet, load_key
from pithcrawl.timeline import compare, compare_state_url


def test_a_new_key_signing_only_the_bundle_is_a_new_signing_key(
    builder: BundleBuilder, signer: TestSigner
):
    second = TestSigner("test-key-2")
    trust = TrustSet([load_key(signer.public_key()), load_key(second.public_key())])
    builder.extra_keys.append(second.public_key())
    before = trusted(builder.build(), trust)
    after = trusted(builder.build(built_at=LATER, signer=second), trust)
    changes = compare(before, after, mirror=MIRROR)
    assert causes(changes) == [("key_rotation", "info", "new_signing_key")]
    assert changes[0].evidence["key_id"] == "test-key-2"
    assert changes[0].evidence["signatures"] == ["/bundle_signature"]


def _with_rotation(builder: BundleBuilder, rotates_at):
    builder.extra_keys[:] = [TestSigner("test-key-2").public_key(rotates_at=rotates_at)]
    return builder.build()


@pytest.mark.parametrize(
    ("was", "now", "changed"),
    [
        ("2027-06-01T00:00:00Z", "2027-06-01T00:00:00.000000Z", False),  # one moment, two spellings
        ("2027-06-01T00:00:00Z", "2027-06-01T00:00:00Z", False),
        ("2027-06-01T00:00:00Z", "2027-07-01T00:00:00Z", True),
        ("2027-06-01T00:00:00Z", None, True),  # the rotation withdrawn
        (None, "2027-06-01T00:00:00Z", True),
    ],
)
def test_rotates_at_changes_only_when_the_moment_does(
    builder: BundleBuilder, test_trust: TrustSet, was, now, changed: bool
):
    before = trusted(_with_rotation(builder, was), test_trust)
    after = trusted(_with_rotation(builder, now), test_trust)
    changes = compare(before, after, mirror=MIRROR)
    assert causes(changes) == ([("key_rotation", "info", "rotates_at_changed")] if changed else [])
    if changed:
        assert changes[0].evidence["key_id"] == "test-key-2"
        assert changes[0].evidence["rotates_at"] == {"before": was, "after": now}


def test_a_key_no_longer_listed_is_no_change(builder: BundleBuilder, test_trust: TrustSet):
    builder.extra_keys.append(TestSigner("test-key-2").public_key())
    before = trusted(builder.build(), test_trust)
    builder.extra_keys.clear()
    after = trusted(builder.build(), test_trust)
    assert compare(before, after, mirror=MIRROR) == []


def test_a_key_announced_carries_its_fingerprint_and_rotation(
    builder: BundleBuilder, test_trust: TrustSet
):
    before = trusted(builder.build(), test_trust)
    key = TestSigner("test-key-2").public_key(rotates_at="2027-06-01T00:00:00Z")
    builder.extra_keys.append(key)
    after = trusted(builder.build(), test_trust)
    [change] = compare(before, after, mirror=MIRROR)
    assert change.evidence == {
        "pith_number": builder.pith_number,
        "mirror": MIRROR,
        "bundle_sha256": {
            "before": before["bundle_signature"]["bundle_sha256"],
            "after": after["bundle_signature"]["bundle_sha256"],
        },
        "built_at": {"before": before["built_at"], "after": after["built_at"]},
        "cause": "key_announced",
        "key_id": "test-key-2",
        "fingerprint_sha256_hex": key["fingerprint_sha256_hex"],
        "rotates_at": "2027-06-01T00:00:00Z",
    }


def test_the_canonical_record_changing_under_the_same_hash_is_a_rollback(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    """No valid bundle shows it, but the timeline must see it without re-verifying: the
    record changed while canonical_sha256 (the field) did not, and the other way round."""
    before = trusted(builder.build(), test_trust)
    after = copy.deepcopy(before)
    after["canonical_record"]["schema_version"] = "1.1"
    seal(after, signer)
    [change] = compare(before, after, mirror=MIRROR)
    assert causes([change]) == [("rollback", "critical", "canonical_record_changed")]
    assert change.evidence["pith_number_after"] == after["pith_number"]
    only_field = copy.deepcopy(before)
    only_field["canonical_sha256"] = "00" * 32
    seal(only_field, signer)
    assert causes(compare(before, only_field, mirror=MIRROR)) == [
        ("rollback", "critical", "canonical_record_changed")
    ]


def test_a_correction_seen_before_is_not_news_again(builder: BundleBuilder, test_trust: TrustSet):
    old = builder.events[1]["event_id"]
    builder.add_event("correction", {"reason": "typo"}, supersedes=[old])
    before = trusted(builder.build(), test_trust)
    builder.add_event()
    after = trusted(builder.build(), test_trust)
    assert causes(compare(before, after, mirror=MIRROR)) == [
        ("event_added", "info", "events_added")
    ]


def test_any_event_that_supersedes_is_a_correction(builder: BundleBuilder, test_trust: TrustSet):
    """An event of another type than correction that supersedes one: a correction."""
    before = trusted(builder.build(), test_trust)
    old = builder.events[1]["event_id"]
    new = builder.add_event(supersedes=[old])
    after = trusted(builder.build(), test_trust)
    changes = compare(before, after, mirror=MIRROR)
    assert causes(changes) == [
        ("event_added", "info", "events_added"),
        ("correction", "info", "correction_added"),
    ]
    assert {
        k: changes[1].evidence[k] for k in ("event_id", "event_type", "created_at", "supersedes")
    } == {
        "event_id": new["event_id"],
        "event_type": "graph_snapshot",
        "created_at": new["created_at"],
        "supersedes": [old],
    }


def test_a_correction_that_names_nothing_is_still_a_correction(
    builder: BundleBuilder, test_trust: TrustSet
):
    before = trusted(builder.build(), test_trust)
    new = builder.add_event("correction", {"reason": "typo"})
    after = trusted(builder.build(), test_trust)
    changes = compare(before, after, mirror=MIRROR)
    assert causes(changes) == [
        ("event_added", "info", "events_added"),
        ("correction", "info", "correction_added"),
    ]
    assert changes[1].evidence["supersedes"] == []
    assert changes[1].evidence["event_id"] == new["event_id"]


def test_a_state_json_differing_only_in_state_sha256_says_so(
    builder: BundleBuilder, test_trust: TrustSet
):
    bundle = trusted(builder.build(), test_trust)
    served = copy.deepcopy(bundle["state"])
    served["state_sha256"] = "00" * 32
    change = compare_state_url(bundle, served, mirror=MIRROR)
    assert change is not None
    assert change.evidence["first_difference"]["path"] == "/state_sha256"


def test_a_state_url_mismatch_carries_its_whole_evidence(
    builder: BundleBuilder, test_trust: TrustSet
):
    from pithcrawl.canon import canon, sha256_hex

    bundle = trusted(builder.build(), test_trust)
    served = copy.deepcopy(bundle["state"])
    served["applied_event_ids"].pop()
    served["state_sha256"] = H({k: v for k, v in served.items() if k != "state_sha256"})
    change = compare_state_url(bundle, served, mirror=MIRROR)
    assert change is not None
    what = change.evidence["first_difference"]["what"]
    assert change.evidence == {
        "pith_number": bundle["pith_number"],
        "mirror": MIRROR,
        "bundle_sha256": bundle["bundle_signature"]["bundle_sha256"],
        "built_at": bundle["built_at"],
        "state_sha256": {
            "bundle": bundle["state"]["state_sha256"],
            "state_json": served["state_sha256"],
        },
        "canon_sha256": {
            "bundle": sha256_hex(canon(bundle["state"])),
            "state_json": sha256_hex(canon(served)),
        },
        "first_difference": {"path": "/applied_event_ids", "what": what},
    }
    assert what


def test_compare_refuses_a_bundle_whose_built_at_is_no_timestamp(
    builder: BundleBuilder, test_trust: TrustSet
):
    """Only verified bundles: anything else is the caller's bug, said as a ValueError."""
    before = trusted(builder.build(), test_trust)
    after = copy.deepcopy(before)
    after["built_at"] = "yesterday"
    with pytest.raises(ValueError, match="not a timestamp"):
        compare(before, after, mirror=MIRROR)
