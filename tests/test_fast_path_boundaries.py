"""The speed contract of verification: the clean path does not give up on
a bundle with nothing wrong at a rule's boundary, or on a chained bundle."""

from __future__ import annotations

from datetime import timedelta

import orjson
from builder import BundleBuilder, TestSigner
from conftest import NOW

from pithcrawl.keys import TrustedKey, TrustSet
from pithcrawl.timestamps import parse_timestamp
from pithcrawl.verify import clean_bundle_report


def _last_signature(doc) -> object:
    times = [
        doc["bundle_signature"]["signed_at"],
        *(e["signature"]["signed_at"] for e in doc["events"]),
    ]
    return max(parse_timestamp(t).at for t in times)  # type: ignore[union-attr]


def test_the_clean_path_takes_a_bundle_signed_exactly_at_now_plus_skew(
    builder: BundleBuilder, test_trust: TrustSet
):
    doc = orjson.loads(builder.bytes())
    latest = parse_timestamp(doc["bundle_signature"]["signed_at"]).at  # type: ignore[union-attr]
    assert clean_bundle_report(doc, test_trust, latest, None) is not None


def test_the_clean_path_takes_a_key_rotating_exactly_at_its_last_signature(
    builder: BundleBuilder, signer: TestSigner
):
    doc = orjson.loads(builder.bytes())
    at = _last_signature(doc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    trust = TrustSet([TrustedKey(signer.key_id, signer.raw, parse_timestamp(at))])
    assert clean_bundle_report(doc, trust, NOW + timedelta(minutes=5), None) is not None


def test_the_clean_path_takes_a_chained_bundle_without_equivocation(
    signer: TestSigner, test_trust: TrustSet
):
    b = BundleBuilder(signer)
    first = b.add_event()
    b.add_event(prev_event=first["event_id"])
    doc = orjson.loads(b.bytes())
    assert clean_bundle_report(doc, test_trust, NOW, None) is not None
