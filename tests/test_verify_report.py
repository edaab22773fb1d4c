"""What a report says (verify/report.py): the first difference, rotations, the skew."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from builder import BundleBuilder, H, TestSigner, restate, seal, serialize
from conftest import NOW

from pithcrawl.keys import TrustedKey, TrustSet
from pithcrawl.timestamps import parse_timestamp
from pithcrawl.verify import verify_bundle

MERGE = "state_merge_mismatch"


def _served(bundle: dict[str, Any], signer: TestSigner) -> None:
    """Re-hash the (edited) served state and re-seal, as a registry would."""
    state = bundle["state"]
    state["state_sha256"] = H({k: v for k, v in state.items() if k != "state_sha256"})
    seal(bundle, signer, bundle["bundle_signature"]["signed_at"])


def _merge_paths(bundle, trust) -> list[str]:
    report = verify_bundle(serialize(bundle), trust, now=NOW)
    assert report.codes == {MERGE}, [f.to_json() for f in report.findings]
    return [f.path for f in report.findings]


def test_an_extra_member_in_the_served_state_is_named(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    bundle = builder.build()
    bundle["state"]["extra"] = 1
    _served(bundle, signer)
    assert _merge_paths(bundle, test_trust) == ["/state/extra"]


def test_a_list_differing_in_one_item_names_that_item(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    bundle = builder.build()
    ids = bundle["state"]["applied_event_ids"]
    ids[1], ids[2] = ids[2], ids[1]
    _served(bundle, signer)
    assert _merge_paths(bundle, test_trust) == ["/state/applied_event_ids/1"]


def test_an_object_where_a_list_is_expected_is_named_not_raised(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet
):
    bundle = builder.build()
    bundle["state"]["current"]["graph_snapshots"] = {"n": 1}
    _served(bundle, signer)
    assert _merge_paths(bundle, test_trust) == ["/state/current/graph_snapshots"]


def test_a_nested_member_named_state_sha256_is_compared(signer: TestSigner, test_trust: TrustSet):
    b = BundleBuilder(signer)
    b.add_event(payload={"state_sha256": "a", "z": 1})
    bundle = b.build()
    bundle["state"] = copy.deepcopy(bundle["state"])  # the build shares payloads with events
    bundle["state"]["current"]["graph_snapshots"][0]["payload"]["state_sha256"] = "b"
    _served(bundle, signer)
    assert _merge_paths(bundle, test_trust) == [
        "/state/current/graph_snapshots/0/payload/state_sha256"
    ]


def test_a_difference_deeper_than_32_levels_is_named_at_the_32nd(
    signer: TestSigner, test_trust: TrustSet
):
    """Objects and arrays alternate 40 deep; the path stops 33 levels below the state."""
    deep: Any = "leaf"
    for _ in range(20):
        deep = {"k": [deep]}
    b = BundleBuilder(signer)
    b.add_event(payload={"graph_snapshot": deep})
    bundle = b.build()
    bundle["state"] = copy.deepcopy(bundle["state"])
    node = bundle["state"]["current"]["graph_snapshots"][0]["payload"]["graph_snapshot"]
    for _ in range(19):
        node = node["k"][0]
    node["k"][0] = "other"
    _served(bundle, signer)
    (path,) = _merge_paths(bundle, test_trust)
    assert path.split("/")[1:] == (
        ["state", "current", "graph_snapshots", "0", "payload", "graph_snapshot"] + ["k", "0"] * 14
    )


def test_the_default_clock_skew_is_five_minutes(builder: BundleBuilder, test_trust: TrustSet):
    data = builder.bytes()
    signed = parse_timestamp("2026-11-02T02:00:00.900000Z").at  # the bundle's signed_at
    at_skew = verify_bundle(data, test_trust, now=signed - timedelta(minutes=5))
    assert at_skew.findings == ()
    past = verify_bundle(data, test_trust, now=signed - timedelta(minutes=5, microseconds=1))
    assert "timestamp_future" in past.codes


@pytest.mark.parametrize(
    ("announced", "configured"),
    [
        ("2026-11-02T01:30:00Z", "2026-12-01T00:00:00Z"),  # the bundle's is earlier
        ("2026-12-01T00:00:00Z", "2026-11-02T01:30:00Z"),  # the configured one is
    ],
)
def test_the_earlier_of_an_announced_and_a_configured_rotation_counts(
    builder: BundleBuilder, signer: TestSigner, announced: str, configured: str
):
    # Events signed at 00:00:00.5, 01:00:00.5, 02:00:00.5; the bundle at 02:00:00.9.
    bundle = builder.build()
    bundle["public_keys"][0]["rotates_at"] = announced
    restate(bundle, signer)
    trust = TrustSet([TrustedKey(signer.key_id, signer.raw, parse_timestamp(configured))])
    report = verify_bundle(serialize(bundle), trust, now=NOW)
    assert [(f.code, f.path) for f in report.findings if f.code == "key_expired"] == [
        ("key_expired", "/events/2/signature/signed_at"),
        ("key_expired", "/bundle_signature/signed_at"),
    ]
