"""The complete check (verify/complete.py) — every finding at
its path, no exception on odd shapes, and the reasons an invalid event is listed with."""

from __future__ import annotations

import pytest
from builder import BundleBuilder, TestSigner, restate, seal, serialize
from conftest import NOW
from test_verify_tamper import CASES, OTHER, other_signature

from pithcrawl.canon import parse
from pithcrawl.keys import TrustedKey, TrustSet
from pithcrawl.merge import merge
from pithcrawl.timestamps import parse_timestamp
from pithcrawl.verify import verify_bundle, verify_bundle_document

MERGE = "state_merge_mismatch"
R = "/events/0/payload/receipt"
PATHS: dict[str, list[tuple[str, str]]] = {
    "missing events": [("schema_invalid", "/events")],
    "built_at not a string": [("schema_invalid", "/built_at")],
    "event without signature": [("schema_invalid", "/events/1/signature")],
    "wrong bundle_type": [("schema_invalid", "/bundle_type")],
    "unsupported algorithm": [("schema_invalid", "/bundle_signature/algorithm")],
    "no record_created": [("schema_invalid", "/events")],
    "bundle canonical_sha256": [("canonical_hash_mismatch", "/canonical_sha256")],
    "receipt canonical_sha256": [("canonical_hash_mismatch", R + "/canonical_sha256")],
    "payload canonical_sha256": [("canonical_hash_mismatch", "/events/0/payload/canonical_sha256")],
    "payload canonical_record": [("canonical_hash_mismatch", "/events/0/payload/canonical_record")],
    "pith_number": [
        ("pith_number_mismatch", "/pith_number"),
        ("pith_number_mismatch", "/state/pith_number"),
    ],
    "short_pith_number": [("pith_number_mismatch", "/short_pith_number")],
    "pith_short_12 alias": [("pith_number_mismatch", "/source_aliases/2/alias_value")],
    "state pith_number": [
        ("pith_number_mismatch", "/state/pith_number"),
        (MERGE, "/state/pith_number"),
    ],
    "receipt signature": [("receipt_signature_invalid", R + "/signature_b64")],
    "event content_sha256": [
        ("event_hash_mismatch", "/events/1/content_sha256"),
        (MERGE, "/state/applied_event_ids"),
    ],
    "event event_id": [
        ("event_hash_mismatch", "/events/1/event_id"),
        (MERGE, "/state/applied_event_ids"),
    ],
    "event payload, hashes recomputed": [
        ("event_signature_invalid", "/events/1/signature/signature_b64"),
        (MERGE, "/state/applied_event_ids"),
    ],
    "event signature": [
        ("event_signature_invalid", "/events/2/signature/signature_b64"),
        (MERGE, "/state/applied_event_ids"),
    ],
    "event subject": [
        ("event_subject_mismatch", "/events/2/subject_pith_number"),
        (MERGE, "/state/applied_event_ids"),
    ],
    "bundle_sha256": [("bundle_hash_mismatch", "/bundle_signature/bundle_sha256")],
    "bundle body, no reseal": [
        ("bundle_hash_mismatch", "/bundle_signature/bundle_sha256"),
        ("bundle_signature_invalid", "/bundle_signature/signature_b64"),
    ],
    "bundle signature": [("bundle_signature_invalid", "/bundle_signature/signature_b64")],
    "state_sha256": [("state_hash_mismatch", "/state/state_sha256")],
    "state body": [(MERGE, "/state/valid_event_count")],
    "bundle signed by an unknown key": [("untrusted_key", "/bundle_signature/key_id")],
    "event signed by an unknown key": [
        ("untrusted_key", "/events/2/signature/key_id"),
        (MERGE, "/state/applied_event_ids"),
    ],
    "published key bytes differ from the trusted key": [
        ("key_mismatch", "/public_keys/0/public_key_hex"),
        ("key_mismatch", "/public_keys/0"),
    ],
    "published key fingerprint is not of its bytes": [
        ("key_mismatch", "/public_keys/0/fingerprint_sha256_hex")
    ],
    "bundle signature fingerprint": [("key_mismatch", "/bundle_signature/public_key_fingerprint")],
    "event signer names another key than its signature": [
        ("key_mismatch", "/events/1/signer/key_id"),
        (MERGE, "/state/applied_event_ids"),
    ],
    "bundle announces a rotation before the last event was signed": [
        ("key_expired", "/events/2/signature/signed_at"),
        ("key_expired", "/bundle_signature/signed_at"),
        (MERGE, "/state/applied_event_ids"),
    ],
    "built_at unparsable": [
        ("timestamp_invalid", "/built_at"),
        ("timestamp_invalid", "/bundle_signature/signed_at"),
    ],
    "built_at with an offset, not Z": [
        ("timestamp_invalid", "/built_at"),
        ("timestamp_invalid", "/bundle_signature/signed_at"),
    ],
    "built and signed in the future": [
        ("timestamp_future", "/built_at"),
        ("timestamp_future", "/bundle_signature/signed_at"),
    ],
    "built before its last event": [("timestamp_order", "/built_at")],
    "bundle signed before it was built": [("timestamp_order", "/bundle_signature/signed_at")],
    "event signed before it was created": [("timestamp_order", "/events/1/signature/signed_at")],
    "receipt reissued before first computed": [("timestamp_order", R + "/last_reissued_at")],
    "receipt signed before first computed": [("timestamp_order", R + "/signed_at")],
    "receipt signed as it was first computed": [],
    "alias created after the bundle was built": [("timestamp_order", "/built_at")],
    "alias created as the bundle was built": [],
}


@pytest.mark.parametrize(("name", "change"), [c[:2] for c in CASES], ids=[c[0] for c in CASES])
def test_each_change_gives_its_findings_at_their_paths(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet, name: str, change
):
    bundle = builder.build()
    change(bundle, signer)
    report = verify_bundle(serialize(bundle), test_trust, now=NOW)
    assert [(f.code, f.path) for f in report.findings] == PATHS[name]


def test_a_served_address_of_another_record_is_found_at_pith_number(
    builder: BundleBuilder, test_trust: TrustSet
):
    report = verify_bundle(builder.bytes(), test_trust, now=NOW, expected_suffix="A" * 26)
    assert [(f.code, f.path) for f in report.findings] == [("pith_number_mismatch", "/pith_number")]


def test_an_unparsable_signed_at_under_a_rotating_key_is_one_finding(
    builder: BundleBuilder, signer: TestSigner
):
    """A trusted key that rotates (later): a signature time that does not parse is
    timestamp_invalid, not an exception."""
    trust = TrustSet(
        [TrustedKey(signer.key_id, signer.raw, parse_timestamp("2030-01-01T00:00:00Z"))]
    )
    bundle = builder.build()
    bundle["events"][1]["signature"]["signed_at"] = "yesterday"
    seal(bundle, signer, bundle["bundle_signature"]["signed_at"])
    report = verify_bundle(serialize(bundle), trust, now=NOW)
    assert [(f.code, f.path) for f in report.findings] == [
        ("timestamp_invalid", "/events/1/signature/signed_at")
    ]


def test_an_event_that_is_no_object_is_a_schema_finding(
    builder: BundleBuilder, test_trust: TrustSet
):
    doc = builder.build()
    doc["events"].append(5)
    report = verify_bundle(serialize(doc), test_trust, now=NOW)
    assert [(f.code, f.path) for f in report.findings] == [("schema_invalid", "/events/3")]


def test_the_rotation_of_a_key_published_with_other_bytes_is_not_applied(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    impostor = OTHER.public_key(rotates_at="2026-11-01T00:00:00Z")
    impostor["key_id"] = signer.key_id
    bundle = builder.build()
    bundle["public_keys"] = [impostor]
    restate(bundle, signer)
    report = verify_bundle(serialize(bundle), test_trust, now=NOW)
    assert [(f.code, f.path) for f in report.findings] == [("key_mismatch", "/public_keys/0")]


def test_an_invalid_event_listed_with_its_reasons_in_the_served_state_agrees(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    """Event 2's signature is bad and it was signed before it was created; the served
    state lists it invalid for the one reason that invalidates it (not the timestamp):
    no state_merge_mismatch, and the report's state is the served one."""
    bundle = builder.build()
    event = bundle["events"][2]
    event["signature"]["signature_b64"] = other_signature(signer)
    event["signature"]["signed_at"] = "2026-11-02T01:59:59.500000Z"
    valid = [True, True, False]
    bundle["state"] = merge(bundle, valid, {2: ["event_signature_invalid"]})
    seal(bundle, signer)
    data = serialize(bundle)
    report = verify_bundle(data, test_trust, now=NOW)
    assert [(f.code, f.path) for f in report.findings] == [
        ("timestamp_order", "/events/2/signature/signed_at"),
        ("event_signature_invalid", "/events/2/signature/signature_b64"),
    ]
    assert report.state == bundle["state"]
    assert [e.valid for e in report.events] == valid
    assert verify_bundle_document(parse(data), test_trust, now=NOW).findings == report.findings
