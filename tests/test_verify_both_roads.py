"""Both roads of verification agree: the clean path (verify/clean.py) never passes what
the complete check refuses, nor raises where it gives findings (the rules a mutation
audit found no test holding)."""

from __future__ import annotations

from typing import Any

import pytest
from builder import BundleBuilder, TestSigner, restate, seal, serialize
from conftest import NOW

from pithcrawl.canon import parse
from pithcrawl.keys import TrustedKey, TrustSet, load_key
from pithcrawl.merge import merge
from pithcrawl.timestamps import parse_timestamp
from pithcrawl.verify import verify_bundle, verify_bundle_document

OTHER = TestSigner("intruder-key")


def _resign(b: dict[str, Any], i: int, s: TestSigner) -> None:
    event = b["events"][i]
    BundleBuilder.sign_event(None, event, s, event["signature"]["signed_at"])  # type: ignore[arg-type]


def _both(data: bytes, trust: TrustSet):
    fast = verify_bundle(data, trust, now=NOW)
    complete = verify_bundle_document(parse(data), trust, now=NOW)
    assert fast.findings == complete.findings
    return fast


def test_a_receipt_that_does_not_fit_its_schema_is_refused(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    """record_created's payload is checked (RECEIPT: algorithm is ed25519) on both roads."""
    bundle = builder.build()
    bundle["events"][0]["payload"]["receipt"]["algorithm"] = "rsa"
    _resign(bundle, 0, signer)
    restate(bundle, signer)
    report = _both(serialize(bundle), test_trust)
    assert [(f.code, f.path) for f in report.findings] == [
        ("schema_invalid", "/events/0/payload/receipt/algorithm")
    ]


def test_a_signed_bundle_without_record_created_is_refused(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    """Signed, hashed and with the state the merge gives, but no record_created."""
    bundle = builder.build()
    bundle["events"].pop(0)
    bundle["state"] = merge(bundle, [True] * len(bundle["events"]))
    seal(bundle, signer)
    report = _both(serialize(bundle), test_trust)
    assert report.codes == {"schema_invalid"}
    assert not report.ok


def test_an_inconsistent_untrusted_key_beside_a_good_one_is_a_key_mismatch(
    signer: TestSigner, test_trust: TrustSet
):
    """Any key with a problem counts, not only when every key has one."""
    bad = OTHER.public_key()
    bad["fingerprint_sha256_hex"] = "ab" * 16
    b = BundleBuilder(signer, extra_keys=[bad])
    b.add_event()
    report = _both(b.bytes(), test_trust)
    assert "key_mismatch" in report.codes
    assert not report.ok


@pytest.mark.parametrize("drop", [(), ("public_key_b64",), ("public_key_hex",)])
def test_the_trusted_key_id_published_with_other_consistent_bytes_is_refused(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet, drop: tuple[str, ...]
):
    """A key entry, internally consistent, naming the trusted key id with other bytes
    (in both spellings, or only one of them)."""
    impostor = OTHER.public_key()
    impostor["key_id"] = signer.key_id
    for name in drop:
        del impostor[name]
    bundle = builder.build()
    bundle["public_keys"] = [impostor]
    restate(bundle, signer)
    report = _both(serialize(bundle), test_trust)
    assert [(f.code, f.path) for f in report.findings] == [("key_mismatch", "/public_keys/0")]


def test_a_rotation_of_another_trusted_key_does_not_break_the_clean_path(
    builder: BundleBuilder, signer: TestSigner
):
    """A trust set where only some other key rotates: the bundle still verifies."""
    trust = TrustSet(
        [
            load_key(signer.public_key()),
            TrustedKey(OTHER.key_id, OTHER.raw, parse_timestamp("2026-11-01T00:00:00Z")),
        ]
    )
    assert _both(builder.bytes(), trust).findings == ()


def test_an_alias_without_created_at_verifies(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    """created_at is optional in an alias: no finding, and no exception on either road."""
    bundle = builder.build()
    del bundle["source_aliases"][0]["created_at"]
    restate(bundle, signer)
    assert _both(serialize(bundle), test_trust).findings == ()


def test_a_signer_fingerprint_other_than_the_signatures_is_a_key_mismatch(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    bundle = builder.build()
    bundle["events"][1]["signer"]["public_key_fingerprint"] = "ab" * 16
    _resign(bundle, 1, signer)
    restate(bundle, signer)
    report = _both(serialize(bundle), test_trust)
    assert ("key_mismatch", "/events/1/signer/public_key_fingerprint") in [
        (f.code, f.path) for f in report.findings
    ]
    assert not report.ok


class _WrongYear(BundleBuilder):
    @property
    def pith_number(self) -> str:
        return f"pith:2025:{self.suffix}"


class _WrongSuffix(BundleBuilder):
    @property
    def suffix(self) -> str:
        return "A" * 26


def test_a_pith_number_with_the_wrong_year_is_refused(signer: TestSigner, test_trust: TrustSet):
    """Everything consistent with pith:2025:<suffix>, for a paper submitted in 2026."""
    b = _WrongYear(signer)
    b.add_event()
    report = _both(b.bytes(), test_trust)
    assert ("pith_number_mismatch", "/pith_number") in [(f.code, f.path) for f in report.findings]


def test_a_pith_number_not_of_the_record_is_refused(signer: TestSigner, test_trust: TrustSet):
    """Number, short number, aliases, subjects and state all agree on a suffix that is not
    the record's."""
    b = _WrongSuffix(signer)
    b.add_event()
    report = _both(b.bytes(), test_trust)
    assert ("pith_number_mismatch", "/pith_number") in [(f.code, f.path) for f in report.findings]


def test_an_equivocation_among_events_that_all_name_a_prev_event_is_found(
    signer: TestSigner, test_trust: TrustSet
):
    """Every event chained (record_created too): the equivocation is still looked for."""
    b = BundleBuilder(signer)
    anchor = "sha256:" + "11" * 32
    b.events[0]["prev_event"] = anchor
    b.sign_event(b.events[0])
    b.add_event(prev_event=anchor)
    report = _both(b.bytes(), test_trust)
    assert "equivocation" in report.codes


# Times without "0.0000" in them: canon.parse_compact leaves a document holding that
# text to the exact reading, so such a bundle never reaches the clean path.
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("last_reissued_at", "2026-11-01T12:34:56.123456Z"),
        ("signed_at", "2026-11-01T23:59:59.999999Z"),
    ],
)
def test_rule_3_on_the_clean_path(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet, field: str, value: str
):
    """The receipt reissued, or signed, before it was first computed: refused by the road
    a bundle of usual times takes."""
    bundle = builder.build()
    bundle["events"][0]["payload"]["receipt"][field] = value
    _resign(bundle, 0, signer)
    restate(bundle, signer)
    data = serialize(bundle)
    assert b"0.0000" not in data
    report = _both(data, test_trust)
    assert [(f.code, f.path) for f in report.findings] == [
        ("timestamp_order", f"/events/0/payload/receipt/{field}")
    ]


def test_a_key_with_another_algorithm_is_a_schema_finding(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    bundle = builder.build()
    bundle["public_keys"][0]["algorithm"] = "rsa"
    restate(bundle, signer)
    report = _both(serialize(bundle), test_trust)
    assert [(f.code, f.path) for f in report.findings] == [
        ("schema_invalid", "/public_keys/0/algorithm")
    ]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ([5], [("schema_invalid", "/public_keys/0")]),
        ([{"algorithm": "rsa"}], [("schema_invalid", "/public_keys/0/key_id")]),
        ([{"key_id": None, "algorithm": "rsa"}], [("schema_invalid", "/public_keys/0/key_id")]),
    ],
)
def test_a_key_that_is_no_key_is_one_schema_finding(
    builder: BundleBuilder, test_trust: TrustSet, keys: list[Any], expected
):
    """A key that is not an object, or has no key_id: its one schema finding, no exception
    and no second finding about its algorithm."""
    doc = builder.build()
    doc["public_keys"] = keys
    report = verify_bundle(serialize(doc), test_trust, now=NOW)
    assert [(f.code, f.path) for f in report.findings] == expected
