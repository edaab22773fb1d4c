"""What a fetched document means (`judge`), decided without HTTP or an archive: bundles
built and signed with the test key, verified, then judged."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

from builder import BundleBuilder, H, TestSigner, serialize
from conftest import NOW

from pithcrawl.judge import Before, Fetched, judge_bundle, judge_state, record_number
from pithcrawl.keys import TrustSet
from pithcrawl.verify import verify_bundle, verify_state

AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def fetched(b: BundleBuilder, mirror: str = "m") -> Fetched:
    return Fetched(b.suffix, mirror, f"https://{mirror}/b", AT, "f" * 64)


def test_an_untrusted_bundle_is_one_condition_of_its_record_and_mirror(
    builder: BundleBuilder, test_trust: TrustSet
):
    """Whatever body it is, the condition is keyed by record and mirror, of the kind its
    critical findings say, with the findings as evidence."""
    rogue = BundleBuilder(TestSigner("rogue"), record=builder.record)
    rogue.add_event()
    report = verify_bundle(rogue.bytes(), test_trust, now=NOW)
    judged = judge_bundle(
        report, fetched(rogue), number=rogue.pith_number, before=None, trust=test_trust,
        follow_rotations=False,
    )  # fmt: skip
    (condition,) = judged.conditions
    assert judged.events == judged.conditions
    assert (condition.kind, condition.dedup_key) == (
        "untrusted_key",
        f"untrusted_key:{rogue.suffix}:m",
    )
    assert judged.scope == f"document:{rogue.suffix}:m"
    assert "untrusted_key" in {f["code"] for f in condition.evidence["findings"]}


def test_an_older_bundle_after_a_newer_is_a_rollback_condition(
    builder: BundleBuilder, test_trust: TrustSet
):
    """Judged against the newest history the mirror served: the older one is a rollback,
    naming the body served before."""
    older = verify_bundle(builder.bytes(), test_trust, now=NOW)
    builder.add_event()
    newer = json.loads(builder.bytes())
    judged = judge_bundle(
        older, fetched(builder), number=builder.pith_number,
        before=Before("b" * 64, newer), trust=test_trust, follow_rotations=False,
    )  # fmt: skip
    (condition,) = judged.conditions
    assert condition.kind == "rollback"
    assert condition.evidence["previous_body_sha256"] == "b" * 64
    assert condition.evidence["causes"] == ["built_at_went_back", "events_dropped"]


def test_news_is_no_condition(builder: BundleBuilder, test_trust: TrustSet):
    """A newer bundle after an older: `event_added` news, no condition (the scope's
    conditions, if any, have cleared)."""
    before = json.loads(builder.bytes())
    builder.add_event()
    report = verify_bundle(builder.bytes(), test_trust, now=NOW)
    judged = judge_bundle(
        report, fetched(builder), number=builder.pith_number,
        before=Before("b" * 64, before), trust=test_trust, follow_rotations=False,
    )  # fmt: skip
    assert [e.kind for e in judged.events] == ["event_added"]
    assert judged.conditions == []


def test_announced_keys_are_learned_only_when_rotations_are_followed(
    builder: BundleBuilder, test_trust: TrustSet
):
    second = TestSigner("test-key-2")
    builder.extra_keys.append(second.public_key())
    report = verify_bundle(builder.bytes(), test_trust, now=NOW)
    for follow, learned in ((False, []), (True, ["test-key-2"])):
        judged = judge_bundle(
            report, fetched(builder), number=builder.pith_number, before=None,
            trust=test_trust, follow_rotations=follow,
        )  # fmt: skip
        assert [k.key_id for k in judged.learned] == learned


def test_a_claim_names_the_record_only_when_it_is_this_records():
    """A document claiming another record's number at this address: the alert is about
    this record (its known number, or its suffix)."""
    from pithcrawl.verify import Report

    suffix = "A" * 26
    mine = Report("bundle", f"pith:2026:{suffix}", ())
    theirs = Report("bundle", "pith:2026:" + "B" * 26, ())
    odd = Report("bundle", f"pith:2026:{suffix}\x00", ())
    assert record_number(mine, suffix, None) == f"pith:2026:{suffix}"
    assert record_number(theirs, suffix, "pith:2025:" + suffix) == "pith:2025:" + suffix
    assert record_number(odd, suffix, None) == suffix


def test_a_state_json_other_than_the_bundles_is_one_condition(
    builder: BundleBuilder, test_trust: TrustSet
):
    bundle = verify_bundle(builder.bytes(), test_trust, now=NOW).document
    served = copy.deepcopy(bundle["state"])
    assert (
        judge_state(
            verify_state(serialize(served)), fetched(builder), bundle=bundle, bundle_body_sha256="s"
        ).conditions
        == []
    )
    served["applied_event_ids"].pop()
    served["state_sha256"] = H({k: v for k, v in served.items() if k != "state_sha256"})
    judged = judge_state(
        verify_state(serialize(served)), fetched(builder), bundle=bundle, bundle_body_sha256="s"
    )
    (condition,) = judged.conditions
    assert (condition.kind, condition.dedup_key) == (
        "state_url_mismatch",
        f"state_url_mismatch:{builder.suffix}:m",
    )
    assert judged.scope == f"state:{builder.suffix}:m"
