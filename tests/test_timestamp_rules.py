"""The timestamp rules (verify/timestamp_rules.py): every §5 finding names its field."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from builder import BundleBuilder, TestSigner, canonical_record, restate, seal, serialize
from conftest import NOW

from pithcrawl.canon import parse
from pithcrawl.keys import TrustedKey, TrustSet
from pithcrawl.timestamps import parse_timestamp
from pithcrawl.verify import DEFAULT_CLOCK_SKEW, verify_bundle, verify_bundle_document


def _resign(i: int) -> Callable[[dict[str, Any], TestSigner], None]:
    def change(b: dict[str, Any], s: TestSigner) -> None:
        event = b["events"][i]
        BundleBuilder.sign_event(None, event, s, event["signature"]["signed_at"])  # type: ignore[arg-type]
        restate(b, s)

    return change


def _set(path: str, value: Any, *then: Callable[[dict[str, Any], TestSigner], None]):
    def change(b: dict[str, Any], s: TestSigner) -> None:
        *parents, last = path.strip("/").split("/")
        node: Any = b
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
        for step in then:
            step(b, s)

    return change


def _reseal(b: dict[str, Any], s: TestSigner) -> None:
    seal(b, s, b["bundle_signature"]["signed_at"])


R = "/events/0/payload/receipt"
PATH_CASES = [
    (
        "event created_at unparsable",
        _set("/events/1/created_at", "yesterday", _resign(1)),
        [("timestamp_invalid", "/events/1/created_at")],
    ),
    (
        "event signed_at unparsable",
        _set("/events/1/signature/signed_at", "yesterday", _reseal),
        [("timestamp_invalid", "/events/1/signature/signed_at")],
    ),
    (
        "event signed before created",
        _set("/events/1/signature/signed_at", "2026-11-02T00:59:59.000000Z", _reseal),
        [("timestamp_order", "/events/1/signature/signed_at")],
    ),
    (
        "receipt signed in the future",
        _set(R + "/signed_at", "2030-01-01T00:00:00Z", _resign(0)),
        [("timestamp_future", R + "/signed_at")],
    ),
    (
        "receipt first_computed_at unparsable",
        _set(R + "/first_computed_at", "soon", _resign(0)),
        [("timestamp_invalid", R + "/first_computed_at")],
    ),
    (
        "receipt last_reissued_at unparsable",
        _set(R + "/last_reissued_at", "soon", _resign(0)),
        [("timestamp_invalid", R + "/last_reissued_at")],
    ),
    (
        "receipt reissued before first computed",
        _set(R + "/last_reissued_at", "2026-11-01T00:00:00.000000Z", _resign(0)),
        [("timestamp_order", R + "/last_reissued_at")],
    ),
    (
        "receipt signed before first computed",
        _set(R + "/signed_at", "2026-11-02T00:00:00.000099Z", _resign(0)),
        [("timestamp_order", R + "/signed_at")],
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"), [c[1:] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES]
)
def test_each_timestamp_finding_names_its_field(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet, change, expected
):
    bundle = builder.build()
    change(bundle, signer)
    data = serialize(bundle)
    report = verify_bundle(data, test_trust, now=NOW)
    assert [(f.code, f.path) for f in report.findings] == expected
    assert verify_bundle_document(parse(data), test_trust, now=NOW).findings == report.findings


def test_a_paper_submitted_in_the_future_is_found_at_submitted_at(
    signer: TestSigner, test_trust: TrustSet
):
    b = BundleBuilder(signer, record=canonical_record(submitted_at="2026-12-01T00:00:00Z"))
    report = verify_bundle(b.bytes(), test_trust, now=NOW)
    assert {(f.code, f.path) for f in report.findings} == {
        ("timestamp_future", "/canonical_record/metadata/submitted_at"),
        ("timestamp_order", "/events/0/created_at"),
    }


def test_a_receipt_signed_after_its_key_rotated_is_key_expired(
    builder: BundleBuilder, signer: TestSigner
):
    """Events and bundle signed before the rotation, only the receipt after it."""
    bundle = builder.build()  # events signed by 02:00:00.5, the bundle at 02:00:00.9
    bundle["events"][0]["payload"]["receipt"]["signed_at"] = "2026-11-02T03:00:00.000000Z"
    _resign(0)(bundle, signer)
    rotated = TrustSet(
        [TrustedKey(signer.key_id, signer.raw, parse_timestamp("2026-11-02T02:30:00.000000Z"))]
    )
    data = serialize(bundle)
    report = verify_bundle(data, rotated, now=NOW)
    assert [(f.code, f.path) for f in report.findings] == [("key_expired", R + "/signed_at")]
    assert verify_bundle_document(parse(data), rotated, now=NOW).findings == report.findings


@pytest.mark.parametrize(("offset", "future"), [(0, False), (1, True)])
def test_rule_1_future_at_its_boundary_on_both_roads(
    builder: BundleBuilder, test_trust: TrustSet, offset: int, future: bool
):
    """Signed exactly at now + skew is not in the future; a microsecond later it is."""
    data = builder.bytes()
    bundle = parse(data)
    latest = parse_timestamp(bundle["bundle_signature"]["signed_at"]).at  # type: ignore[union-attr]
    now = latest - DEFAULT_CLOCK_SKEW - timedelta(microseconds=offset)
    fast = verify_bundle(data, test_trust, now=now)
    complete = verify_bundle_document(parse(data), test_trust, now=now)
    assert fast.findings == complete.findings
    assert ("timestamp_future" in fast.codes) == future
