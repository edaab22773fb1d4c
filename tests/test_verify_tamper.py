"""Tampering: change one thing in a valid bundle, expect exactly one finding code.

Bundles are built and signed with a test key (tests/builder.py); after a change the
outer layers are re-signed where a forger could, so only the broken rule shows. Where
the change makes an event invalid, the served state (which still counts it) differs
from the recomputed one, and `state_merge_mismatch` is expected beside the code.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from builder import BundleBuilder, TestSigner, restate, seal, serialize
from conftest import NOW, REAL, REAL_SUFFIX, load_json

from pithcrawl.canon import MalformedJSON, parse
from pithcrawl.keys import TrustedKey, TrustSet, load_key
from pithcrawl.timestamps import parse_timestamp
from pithcrawl.verify import verify_bundle, verify_bundle_document

OTHER = TestSigner("intruder-key")


def other_signature(signer: TestSigner) -> str:
    return signer.sign_digest("00" * 32)


def resign_event(b: dict[str, Any], i: int, signer: TestSigner) -> None:
    """Re-hash and re-sign event i as the signer would, then restate and re-seal."""
    event = b["events"][i]
    BundleBuilder.sign_event(None, event, signer, event["signature"]["signed_at"])  # type: ignore[arg-type]
    restate(b, signer)


def _set(path: str, value: Any) -> Callable[[dict[str, Any], TestSigner], None]:
    def change(b: dict[str, Any], s: TestSigner) -> None:
        *parents, last = path.strip("/").split("/")
        node: Any = b
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


def then(*steps: Callable[[dict[str, Any], TestSigner], None]):
    def change(b: dict[str, Any], s: TestSigner) -> None:
        for step in steps:
            step(b, s)

    return change


def reseal(b: dict[str, Any], s: TestSigner) -> None:
    seal(b, s, b["bundle_signature"]["signed_at"])


def restate_(b: dict[str, Any], s: TestSigner) -> None:
    restate(b, s)


def resign(i: int):
    return lambda b, s: resign_event(b, i, s)


def fix_state_hash(b: dict[str, Any], s: TestSigner) -> None:
    from builder import H

    state = {k: v for k, v in b["state"].items() if k != "state_sha256"}
    b["state"]["state_sha256"] = H(state)


def sign_bundle_with(signer: TestSigner):
    return lambda b, s: seal(b, signer, b["bundle_signature"]["signed_at"])


def sign_event_with(i: int, signer: TestSigner):
    def change(b: dict[str, Any], s: TestSigner) -> None:
        event = b["events"][i]
        event["signer"] = signer.signer()
        BundleBuilder.sign_event(None, event, signer, event["signature"]["signed_at"])  # type: ignore[arg-type]
        restate(b, s)

    return change


MERGE = "state_merge_mismatch"
SHA0 = "00" * 32

CASES: list[tuple[str, Callable[[dict[str, Any], TestSigner], None], set[str]]] = [
    ("missing events", lambda b, s: b.pop("events"), {"schema_invalid"}),
    ("built_at not a string", _set("/built_at", 5), {"schema_invalid"}),
    ("event without signature", lambda b, s: b["events"][1].pop("signature"), {"schema_invalid"}),
    ("wrong bundle_type", _set("/bundle_type", "other"), {"schema_invalid"}),
    ("unsupported algorithm", _set("/bundle_signature/algorithm", "rsa"), {"schema_invalid"}),
    ("no record_created", lambda b, s: b["events"].pop(0), {"schema_invalid"}),
    (
        "bundle canonical_sha256",
        then(_set("/canonical_sha256", SHA0), reseal),
        {"canonical_hash_mismatch"},
    ),
    (
        "receipt canonical_sha256",
        then(_set("/events/0/payload/receipt/canonical_sha256", SHA0), resign(0)),
        {"canonical_hash_mismatch"},
    ),
    (
        "payload canonical_sha256",
        then(_set("/events/0/payload/canonical_sha256", SHA0), resign(0)),
        {"canonical_hash_mismatch"},
    ),
    (
        "payload canonical_record",
        then(_set("/events/0/payload/canonical_record/schema_version", "2.0"), resign(0)),
        {"canonical_hash_mismatch"},
    ),
    (
        "pith_number",
        then(_set("/pith_number", "pith:2025:" + "A" * 26), restate_),
        {"pith_number_mismatch"},
    ),
    (
        "short_pith_number",
        then(_set("/short_pith_number", "pith:AAAAAAAA"), restate_),
        {"pith_number_mismatch"},
    ),
    (
        "pith_short_12 alias",
        then(_set("/source_aliases/2/alias_value", "AAAAAAAAAAAA"), restate_),
        {"pith_number_mismatch"},
    ),
    (
        "state pith_number",
        then(_set("/state/pith_number", "pith:2026:" + "A" * 26), fix_state_hash, reseal),
        {"pith_number_mismatch", MERGE},
    ),
    (
        "receipt signature",
        then(
            lambda b, s: b["events"][0]["payload"]["receipt"].update(
                signature_b64=other_signature(s)
            ),
            resign(0),
        ),
        {"receipt_signature_invalid"},
    ),
    (
        "event content_sha256",
        then(_set("/events/1/content_sha256", SHA0), restate_),
        {"event_hash_mismatch", MERGE},
    ),
    (
        "event event_id",
        then(_set("/events/1/event_id", "sha256:" + SHA0), restate_),
        {"event_hash_mismatch", MERGE},
    ),
    (
        "event payload, hashes recomputed",
        then(
            _set("/events/1/payload", {"graph_snapshot": {"forged": True}}),
            lambda b, s: b["events"][1].update(
                content_sha256=_content(b["events"][1]),
                event_id="sha256:" + _content(b["events"][1]),
            ),
            restate_,
        ),
        {"event_signature_invalid", MERGE},
    ),
    (
        "event signature",
        then(
            lambda b, s: b["events"][2]["signature"].update(signature_b64=other_signature(s)),
            restate_,
        ),
        {"event_signature_invalid", MERGE},
    ),
    (
        "event subject",
        then(_set("/events/2/subject_pith_number", "pith:2026:" + "B" * 26), resign(2)),
        {"event_subject_mismatch", MERGE},
    ),
    ("bundle_sha256", _set("/bundle_signature/bundle_sha256", SHA0), {"bundle_hash_mismatch"}),
    (
        "bundle body, no reseal",
        _set("/links", {"bundle": "https://evil.test/"}),
        {"bundle_hash_mismatch", "bundle_signature_invalid"},
    ),
    (
        "bundle signature",
        lambda b, s: b["bundle_signature"].update(signature_b64=other_signature(s)),
        {"bundle_signature_invalid"},
    ),
    ("state_sha256", then(_set("/state/state_sha256", SHA0), reseal), {"state_hash_mismatch"}),
    (
        "state body",
        then(_set("/state/valid_event_count", 7), fix_state_hash, reseal),
        {MERGE},
    ),
    ("bundle signed by an unknown key", sign_bundle_with(OTHER), {"untrusted_key"}),
    ("event signed by an unknown key", sign_event_with(2, OTHER), {"untrusted_key", MERGE}),
    (
        "published key bytes differ from the trusted key",
        then(_set("/public_keys/0/public_key_hex", OTHER.raw.hex()), restate_),
        {"key_mismatch"},
    ),
    (
        "published key fingerprint is not of its bytes",
        then(_set("/public_keys/0/fingerprint_sha256_hex", "ab" * 16), restate_),
        {"key_mismatch"},
    ),
    (
        "bundle signature fingerprint",
        _set("/bundle_signature/public_key_fingerprint", "ab" * 16),
        {"key_mismatch"},
    ),
    (
        "event signer names another key than its signature",
        then(_set("/events/1/signer/key_id", "other"), resign(1)),
        {"key_mismatch", MERGE},
    ),
    (
        "bundle announces a rotation before the last event was signed",
        then(_set("/public_keys/0/rotates_at", "2026-11-02T01:30:00Z"), restate_),
        {"key_expired", MERGE},
    ),
    ("built_at unparsable", then(_set("/built_at", "yesterday"), restate_), {"timestamp_invalid"}),
    (
        "built_at with an offset, not Z",
        then(_set("/built_at", "2026-11-02T02:00:00+00:00"), restate_),
        {"timestamp_invalid"},
    ),
    (
        "built and signed in the future",
        then(
            _set("/built_at", "2030-01-01T00:00:00Z"),
            lambda b, s: seal(b, s, "2030-01-01T00:00:01.000000Z"),
        ),
        {"timestamp_future"},
    ),
    (
        "built before its last event",
        then(_set("/built_at", "2026-11-02T01:30:00Z"), restate_),
        {"timestamp_order"},
    ),
    (
        "bundle signed before it was built",
        lambda b, s: seal(b, s, "2026-11-02T01:59:59.000000Z"),
        {"timestamp_order"},
    ),
    (
        "event signed before it was created",
        then(
            lambda b, s: BundleBuilder.sign_event(
                None,  # type: ignore[arg-type]
                b["events"][1],
                s,
                "2026-11-02T00:59:59.000000Z",
            ),
            restate_,
        ),
        {"timestamp_order"},
    ),
    (
        "receipt reissued before first computed",
        then(
            _set("/events/0/payload/receipt/last_reissued_at", "2026-11-01T00:00:00.000000Z"),
            resign(0),
        ),
        {"timestamp_order"},
    ),
    (
        "receipt signed before first computed",  # rule 3's second half
        then(
            _set("/events/0/payload/receipt/signed_at", "2026-11-02T00:00:00.000099Z"),
            resign(0),
        ),
        {"timestamp_order"},
    ),
    (
        "receipt signed as it was first computed",  # the rule's boundary: allowed
        then(
            _set("/events/0/payload/receipt/signed_at", "2026-11-02T00:00:00.000100Z"),
            resign(0),
        ),
        set(),
    ),
    (
        "alias created after the bundle was built",  # rule 5's alias half
        then(_set("/source_aliases/1/created_at", "2026-11-02T02:00:01Z"), restate_),
        {"timestamp_order"},
    ),
    (
        "alias created as the bundle was built",
        then(_set("/source_aliases/1/created_at", "2026-11-02T02:00:00Z"), restate_),
        set(),
    ),
]


def _content(event: dict[str, Any]) -> str:
    from builder import H

    return H(
        {k: v for k, v in event.items() if k not in ("signature", "content_sha256", "event_id")}
    )


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_change_gives_exactly_its_finding(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet, change, expected
):
    """Each tampering is caught, by exactly the rule it breaks."""
    bundle = builder.build()
    assert verify_bundle(serialize(bundle), test_trust, now=NOW).findings == ()
    change(bundle, signer)
    report = verify_bundle(serialize(bundle), test_trust, now=NOW)
    assert report.codes == expected, [f.to_json() for f in report.findings]
    assert not report.ok or expected in ({MERGE}, set())
    for f in report.findings:
        assert f.path == "" or f.path.startswith("/")


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_both_roads_give_the_same_report_for_each_change(
    builder: BundleBuilder, signer: TestSigner, test_trust: TrustSet, change, expected
):
    """The fast path (`verify_bundle`) and the complete check alone agree on every
    tampering: neither passes what the other refuses, at a rule's boundary included."""
    bundle = builder.build()
    change(bundle, signer)
    data = serialize(bundle)
    fast = verify_bundle(data, test_trust, now=NOW)
    try:
        doc = parse(data)
    except MalformedJSON:
        assert fast.codes == {"malformed_json"}
        return
    complete = verify_bundle_document(doc, test_trust, now=NOW)
    assert fast.findings == complete.findings
    assert fast.codes == expected


def _signature_times(bundle: dict[str, Any]) -> list[str]:
    return [
        bundle["bundle_signature"]["signed_at"],
        *(e["signature"]["signed_at"] for e in bundle["events"]),
    ]


@pytest.mark.parametrize(("offset", "expired"), [(0, False), (-1, True), (1, False)])
def test_rule_6_at_its_boundary_on_both_roads(
    builder: BundleBuilder, signer: TestSigner, offset: int, expired: bool
):
    """A key rotating exactly when it made its last signature signed nothing after it;
    a microsecond earlier, it did. Both roads say the same (one was `>`, one `>=`)."""
    bundle = builder.build()
    last = max(parse_timestamp(t).at for t in _signature_times(bundle))  # type: ignore[union-attr]
    rotates = last + timedelta(microseconds=offset)
    trust = TrustSet([TrustedKey(signer.key_id, signer.raw, parse_timestamp(_stamp(rotates)))])
    data = serialize(bundle)
    fast = verify_bundle(data, trust, now=NOW)
    complete = verify_bundle_document(parse(data), trust, now=NOW)
    assert fast.findings == complete.findings
    assert ("key_expired" in fast.codes) == expired


def _stamp(at: Any) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"a":2}',
        b'{"bundle_type": "pith_open_graph_bundle", "bundle_type": "pith_open_graph_bundle"}',
        b"\xff\xfe",
        b"[NaN]",
        b"[Infinity]",
        b"[1e400]",
        b'"\\ud800"',
        b"[" * 100_000 + b"]" * 100_000,
        b"",
        b"<html>nope</html>",
        b"\xef\xbb\xbf{}",
        b"1" * 5000,
    ],
)
def test_malformed_json(data: bytes, test_trust: TrustSet):
    """Bytes that two parsers could read differently are refused before hashing."""
    report = verify_bundle(data, test_trust, now=NOW)
    assert report.codes == {"malformed_json"}
    assert report.findings[0].path == ""


def test_record_created_before_submission(signer: TestSigner, test_trust: TrustSet):
    """Rule 2: a record cannot be created before its paper was submitted."""
    from builder import canonical_record

    b = BundleBuilder(signer, record=canonical_record(submitted_at="2026-11-03T00:00:00Z"))
    report = verify_bundle(b.bytes(), test_trust, now=NOW)
    assert report.codes == {"timestamp_order"}
    assert report.findings[0].path == "/events/0/created_at"


def test_wrong_record_at_this_address(builder: BundleBuilder, test_trust: TrustSet):
    """A valid bundle of another record served at this record's URL."""
    report = verify_bundle(builder.bytes(), test_trust, now=NOW, expected_suffix="A" * 26)
    assert report.codes == {"pith_number_mismatch"}


def test_trusted_key_with_other_bytes(builder: BundleBuilder, signer: TestSigner):
    """A trust set that knows the key id with other bytes: nothing it signed holds."""
    impostor = TrustSet([TrustedKey(signer.key_id, OTHER.raw)])
    report = verify_bundle(builder.bytes(), impostor, now=NOW)
    assert "key_mismatch" in report.codes
    assert not report.ok


def test_trusted_key_rotated_before_signing(builder: BundleBuilder, signer: TestSigner):
    """A configured rotates_at in the past expires every later signature."""
    rotated = TrustSet(
        [TrustedKey(signer.key_id, signer.raw, parse_timestamp("2026-11-01T00:00:00Z"))]
    )
    report = verify_bundle(builder.bytes(), rotated, now=NOW)
    assert report.codes == {"key_expired", MERGE}


def test_clock_skew_is_configurable(builder: BundleBuilder, test_trust: TrustSet):
    """A bundle built a minute ahead of our clock passes with 5m skew, fails with none."""
    data = builder.bytes()
    early = parse_timestamp(json.loads(data)["bundle_signature"]["signed_at"])
    assert early is not None
    now = early.at - timedelta(minutes=1)
    assert verify_bundle(data, test_trust, now=now).findings == ()
    late = verify_bundle(data, test_trust, now=now, clock_skew=timedelta(0))
    assert "timestamp_future" in late.codes


def test_equivocation_in_one_bundle(signer: TestSigner, test_trust: TrustSet):
    """Two valid events naming the same prev_event: an equivocation, both still applied."""
    b = BundleBuilder(signer)
    first = b.add_event()
    b.add_event(prev_event=first["event_id"], payload={"graph_snapshot": {"v": "a"}})
    b.add_event(prev_event=first["event_id"], payload={"graph_snapshot": {"v": "b"}})
    report = verify_bundle(b.bytes(), test_trust, now=NOW)
    assert report.codes == {"equivocation", MERGE}
    assert report.state is not None
    assert report.state["equivocation_count"] == 1
    assert report.state["valid_event_count"] == 4
    (equivocation,) = [f for f in report.findings if f.code == "equivocation"]
    assert equivocation.path == "/events/3"  # the later of the two claimants


def test_real_bundle_tampered_is_caught(real_bundle_bytes: bytes, real_trust: TrustSet):
    """On the real fixture: a changed title hash breaks the record, number and signatures."""
    doc = json.loads(real_bundle_bytes)
    doc["canonical_record"]["metadata"]["title_canon_sha256"] = "0" * 64
    report = verify_bundle(serialize(doc), real_trust, now=NOW, expected_suffix=REAL_SUFFIX)
    assert {"canonical_hash_mismatch", "pith_number_mismatch", "bundle_signature_invalid"} <= (
        report.codes
    )


def test_real_bundle_under_a_test_key_is_untrusted(real_bundle_bytes: bytes, test_trust: TrustSet):
    """The trust set comes from configuration, never from the document's own keys."""
    report = verify_bundle(real_bundle_bytes, test_trust, now=NOW)
    assert "untrusted_key" in report.codes
    assert not report.ok


def test_key_file_shape_matches_bundle_keys():
    """The fixture key file loads as a trusted key."""
    key = load_key(load_json(REAL / "pith-v1-2026-05.key.json"))
    assert key.key_id == "pith-v1-2026-05"
    assert base64.b64encode(key.raw).decode() == "stVStoiQhXFxp4s2pdzPNoqVNBMojDU/fJ2db5S3CbM="
    assert copy.deepcopy(key) == key


@pytest.mark.parametrize("value", [True, 5, "keys", {"key_id": "k"}])
def test_public_keys_of_another_type_is_a_schema_finding(
    builder: BundleBuilder, test_trust: TrustSet, value: Any
):
    """public_keys that is no array: one schema finding, never an exception."""
    doc = builder.build()
    doc["public_keys"] = value
    report = verify_bundle(serialize(doc), test_trust, now=NOW)
    assert [(f.code, f.path) for f in report.findings] == [("schema_invalid", "/public_keys")]


def test_an_archived_body_is_judged_as_of_when_it_was_fetched(
    builder: BundleBuilder, test_trust: TrustSet
):
    """`verify_archived`, the one rule for bodies read back (fsck, serve, learned keys):
    a bundle built an hour after it was fetched was from the future then, and stays
    untrusted however late it is read back; fetched after it was built, it verifies."""
    from pithcrawl.verify import verify_archived

    data = builder.bytes()
    built = parse_timestamp(json.loads(data)["built_at"])
    assert built is not None
    early = built.at - timedelta(hours=1)
    late = built.at + timedelta(hours=1)
    assert "timestamp_future" in verify_archived(data, "bundle", test_trust, fetched_at=early).codes
    assert verify_archived(data, "bundle", test_trust, fetched_at=late).ok
