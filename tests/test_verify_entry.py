"""The verifier's entry (verify/__init__.py): routing, state.json, and the reports of
documents that cannot be checked."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from builder import BundleBuilder, serialize
from conftest import NOW

from pithcrawl.canon import parse
from pithcrawl.keys import TrustSet
from pithcrawl.verify import verify, verify_bundle, verify_bundle_document, verify_state


def _state_bytes(builder: BundleBuilder, **change: Any) -> bytes:
    state = dict(builder.build()["state"], **change)
    return serialize(state)


def test_a_state_json_with_a_wrong_hash_is_refused(builder: BundleBuilder):
    data = _state_bytes(builder, state_sha256="00" * 32)
    report = verify_state(data)
    assert [(f.code, f.path) for f in report.findings] == [("state_hash_mismatch", "/state_sha256")]
    assert not report.ok


def test_a_state_json_of_another_record_at_this_address_is_refused(builder: BundleBuilder):
    data = _state_bytes(builder)
    assert verify_state(data).findings == ()
    assert verify_state(data, expected_suffix=builder.suffix).findings == ()
    report = verify_state(data, expected_suffix="A" * 26)
    assert [(f.code, f.path) for f in report.findings] == [("pith_number_mismatch", "/pith_number")]


@pytest.mark.parametrize("read", [verify_state, lambda d: verify(d, TrustSet([]), now=NOW)])
def test_a_malformed_state_or_document_is_one_malformed_json_finding(read):
    report = read(b'{"state_type": ')
    assert [(f.code, f.path) for f in report.findings] == [("malformed_json", "")]
    assert report.kind == ("state" if read is verify_state else "unknown")


def test_a_malformed_bundle_is_a_bundle_report(test_trust: TrustSet):
    report = verify_bundle(b"{", test_trust, now=NOW)
    assert (report.kind, report.codes) == ("bundle", {"malformed_json"})


def test_a_state_that_does_not_fit_its_schema_is_a_state_report(builder: BundleBuilder):
    state = builder.build()["state"]
    del state["current"]
    report = verify_state(serialize(state))
    assert report.kind == "state" and report.codes == {"schema_invalid"}


def test_verify_routes_by_what_the_document_says_it_is(
    builder: BundleBuilder, test_trust: TrustSet
):
    bundle = builder.build()
    assert verify(serialize(bundle["state"]), test_trust, now=NOW).kind == "state"
    assert verify(serialize(bundle), test_trust, now=NOW).kind == "bundle"
    no_type = dict(bundle)
    del no_type["bundle_type"]  # neither says state: a (broken) bundle
    report = verify(serialize(no_type), test_trust, now=NOW)
    assert report.kind == "bundle" and ("schema_invalid", "/bundle_type") in [
        (f.code, f.path) for f in report.findings
    ]
    both = dict(bundle, state_type="pith_open_graph_state")  # says both: a bundle
    assert verify(serialize(both), test_trust, now=NOW).kind == "bundle"


@pytest.mark.parametrize(("number", "claimed"), [("keep", True), (5, False)])
def test_a_schema_invalid_bundle_keeps_the_number_it_claims(
    builder: BundleBuilder, test_trust: TrustSet, number, claimed: bool
):
    bundle = builder.build()
    del bundle["events"]
    if number != "keep":
        bundle["pith_number"] = number
    report = verify_bundle(serialize(bundle), test_trust, now=NOW)
    assert report.kind == "bundle"
    assert report.pith_number == (builder.pith_number if claimed else None)


def test_a_tree_nested_too_deep_by_other_means_is_a_finding(
    builder: BundleBuilder, test_trust: TrustSet
):
    """Built in Python, past what canon writes: malformed_json, with the claimed number."""
    doc = parse(builder.bytes())
    deep: Any = 1
    for _ in range(5000):
        deep = {"a": deep}
    doc["events"][1]["payload"] = deep
    report = verify_bundle_document(doc, test_trust, now=NOW)
    assert [(f.code, f.path) for f in report.findings] == [("malformed_json", "")]
    assert (report.kind, report.pith_number) == ("bundle", builder.pith_number)


def test_the_complete_check_allows_the_clock_skew_too(builder: BundleBuilder, test_trust: TrustSet):
    data = builder.bytes()
    signed = json.loads(data)["bundle_signature"]["signed_at"]
    from pithcrawl.timestamps import parse_timestamp

    now = parse_timestamp(signed).at - timedelta(minutes=1)  # type: ignore[union-attr]
    assert verify_bundle_document(parse(data), test_trust, now=now).findings == ()


def test_a_clean_bundle_signed_within_the_skew_takes_the_fast_path(
    builder: BundleBuilder, test_trust: TrustSet, monkeypatch
):
    """(speed contract) The complete check is not run for a bundle with nothing wrong."""
    import pithcrawl.verify as entry

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the complete check ran")

    monkeypatch.setattr(entry, "BundleCheck", refuse)
    data = builder.bytes()
    signed = json.loads(data)["bundle_signature"]["signed_at"]
    from pithcrawl.timestamps import parse_timestamp

    now = parse_timestamp(signed).at - timedelta(minutes=1)  # type: ignore[union-attr]
    assert verify_bundle(data, test_trust, now=now).findings == ()
