"""The real, registry-signed fixtures verify exactly as pith-format.md says."""

from __future__ import annotations

import base64
import json

from conftest import NOW, REAL, REAL_SUFFIX, load_json

from pithcrawl.canon import H, canon, parse
from pithcrawl.keys import TrustSet, fingerprint_b32, fingerprint_hex, verify_signature
from pithcrawl.pith import pith_number
from pithcrawl.trust import load_trust, registry_key
from pithcrawl.verify import verify, verify_bundle, verify_state


def test_real_bundle_verifies_with_no_finding(real_bundle_bytes: bytes, real_trust: TrustSet):
    """The bundle as served verifies: every hash, signature, time and the merge."""
    report = verify_bundle(real_bundle_bytes, real_trust, now=NOW, expected_suffix=REAL_SUFFIX)
    assert report.findings == ()
    assert report.ok
    assert report.pith_number == f"pith:2026:{REAL_SUFFIX}"
    assert (
        report.bundle_sha256 == json.loads(real_bundle_bytes)["bundle_signature"]["bundle_sha256"]
    )
    assert [e.valid for e in report.events] == [True, True]


def test_recomputed_state_equals_served_state_byte_for_byte(
    real_bundle_bytes: bytes, real_state_bytes: bytes, real_trust: TrustSet
):
    """The merge reproduces the served state exactly, in canonical form."""
    report = verify_bundle(real_bundle_bytes, real_trust, now=NOW)
    assert report.state is not None
    served = parse(real_state_bytes)
    assert canon(report.state) == canon(served)
    assert canon(report.state) == canon(parse(real_bundle_bytes)["state"])


def test_real_state_file_verifies(real_state_bytes: bytes, real_trust: TrustSet):
    """state.json alone: its state_sha256 holds."""
    report = verify_state(real_state_bytes, expected_suffix=REAL_SUFFIX)
    assert report.kind == "state"
    assert report.findings == ()
    assert verify(real_state_bytes, real_trust, now=NOW).kind == "state"


def test_every_real_record_gives_its_published_hash_and_number():
    """All 20 records: canonical JSON, canonical_sha256 and Pith Number recompute."""
    records = load_json(REAL / "records.json")
    assert len(records) == 20
    for rec in records:
        assert canon(rec["canonical_record"]).decode() == rec["canonical_json"]
        assert H(rec["canonical_record"]) == rec["canonical_sha256"]
        submitted = rec["canonical_record"]["metadata"]["submitted_at"]
        assert pith_number(rec["canonical_sha256"], submitted) == rec["pith_number"]
        assert rec["pith_number"].rpartition(":")[2] in rec["source_url"]


def test_every_real_receipt_verifies(real_trust: TrustSet):
    """Receipt signatures are over the raw bytes of canonical_sha256."""
    receipts = load_json(REAL / "receipts.json")
    key = real_trust["pith-v1-2026-05"]
    for r in receipts:
        assert verify_signature(key.raw, r["canonical_sha256"], r["signature_b64"])
        # ...and not over the hex text of it.
        flipped = bytearray(base64.b64decode(r["signature_b64"]))
        flipped[0] ^= 1
        assert not verify_signature(
            key.raw, r["canonical_sha256"], base64.b64encode(bytes(flipped)).decode()
        )


def test_real_key_fingerprints_recompute():
    """Both fingerprints derive from the raw key bytes."""
    doc = load_json(REAL / "pith-v1-2026-05.key.json")
    raw = base64.b64decode(doc["public_key_b64"])
    assert raw.hex() == doc["public_key_hex"]
    assert (
        fingerprint_hex(raw) == doc["fingerprint_sha256_hex"] == "8d4b5ee74e4693bcd1df2446408b0d54"
    )
    assert fingerprint_b32(raw) == doc["fingerprint_sha256_b32_first128bits"]


def test_shipped_registry_key_is_the_real_key(real_trust: TrustSet):
    """The package ships pith-v1-2026-05, and it is the default trust set."""
    assert registry_key() == real_trust["pith-v1-2026-05"]
    assert dict(load_trust()) == dict(real_trust)


def test_manifest_key_is_the_registry_key():
    """The mirror manifest publishes the same key."""
    manifest = load_json(REAL / "pith-mirrors.json")
    assert manifest["mirrors"][0]["public_key"]["public_key_hex"] == registry_key().raw.hex()
