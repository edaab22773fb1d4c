"""Bundles freshly signed with a test key verify: the builder and the verifier agree."""

from __future__ import annotations

from builder import BundleBuilder, TestSigner
from conftest import NOW

from pithcrawl.canon import canon, parse
from pithcrawl.keys import TrustSet
from pithcrawl.verify import verify_bundle


def test_record_with_only_record_created(signer: TestSigner, test_trust: TrustSet):
    b = BundleBuilder(signer)
    report = verify_bundle(b.bytes(), test_trust, now=NOW)
    assert report.findings == ()
    assert [e.event_type for e in report.events] == ["record_created"]


def test_record_with_several_events(signer: TestSigner, test_trust: TrustSet):
    b = BundleBuilder(signer)
    for _ in range(5):
        b.add_event()
    data = b.bytes()
    report = verify_bundle(data, test_trust, now=NOW)
    assert report.findings == ()
    assert len(report.events) == 6
    assert canon(report.state) == canon(parse(data)["state"])


def test_correction_superseding_an_event(signer: TestSigner, test_trust: TrustSet):
    """A correction-like event with `supersedes` lands in current.corrections."""
    b = BundleBuilder(signer)
    snapshot = b.add_event()
    fix = b.add_event(
        "correction", {"correction": {"reason": "typo"}}, supersedes=[snapshot["event_id"]]
    )
    report = verify_bundle(b.bytes(), test_trust, now=NOW)
    assert report.findings == ()
    assert report.state is not None
    corrections = report.state["current"]["corrections"]
    assert [c["event_id"] for c in corrections] == [fix["event_id"]]
    assert report.equivocations == ()


def test_two_corrections_of_one_event_equivocate(signer: TestSigner, test_trust: TrustSet):
    """Superseding the same event twice is an equivocation, even without prev_event."""
    b = BundleBuilder(signer)
    snapshot = b.add_event()
    b.add_event("correction", {"correction": {"v": 1}}, supersedes=[snapshot["event_id"]])
    b.add_event("correction", {"correction": {"v": 2}}, supersedes=[snapshot["event_id"]])
    report = verify_bundle(b.bytes(), test_trust, now=NOW)
    assert "equivocation" in report.codes
    assert report.equivocations[0].kind == "supersedes"
    assert report.equivocations[0].ref == snapshot["event_id"]


def test_events_signed_by_a_second_trusted_key(signer: TestSigner):
    """Any key of the trust set may sign events; each signer is checked on its own."""
    second = TestSigner("test-key-2")
    from pithcrawl.keys import load_key

    trust = TrustSet([load_key(signer.public_key()), load_key(second.public_key())])
    b = BundleBuilder(signer, extra_keys=[second.public_key()])
    b.add_event(signer=second)
    assert verify_bundle(b.bytes(), trust, now=NOW).findings == ()
