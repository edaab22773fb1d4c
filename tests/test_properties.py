"""Properties over many inputs: canonical form, bit flips, hostile JSON."""

from __future__ import annotations

import base64
import json
from typing import Any

import oracle
import pytest
from builder import BundleBuilder, TestSigner, serialize
from conftest import NOW
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import has_lone_surrogate

from pithcrawl.canon import MalformedJSON, canon, parse
from pithcrawl.keys import TrustSet, load_key
from pithcrawl.verify import verify, verify_bundle

SIGNER = TestSigner("prop-key")
TRUST = TrustSet([load_key(SIGNER.public_key())])


def _bundle() -> dict[str, Any]:
    b = BundleBuilder(SIGNER)
    b.add_event()
    b.add_event(
        "correction", {"correction": {"note": "é ünïcode ☃"}}, supersedes=[b.events[1]["event_id"]]
    )
    return b.build()


BUNDLE = _bundle()
BUNDLE_BYTES = serialize(BUNDLE)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def _leaves(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _leaves(v, (*path, k))]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _leaves(v, (*path, i))]
    return [path]


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _put(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


SIGNED_LEAVES = [p for p in _leaves(BUNDLE) if p[0] != "bundle_signature"]
SIGNATURES = [p for p in _leaves(BUNDLE) if p[-1] == "signature_b64"]


@given(st.sampled_from(SIGNATURES), st.integers(0, 63), st.integers(0, 7))
def test_flipping_any_bit_of_any_signature_never_verifies(path, byte, bit):
    """Receipt, event and bundle signatures: one flipped bit and the bundle is refused."""
    doc = json.loads(BUNDLE_BYTES)
    sig = bytearray(base64.b64decode(_get(doc, path)))
    sig[byte] ^= 1 << bit
    _put(doc, path, base64.b64encode(bytes(sig)).decode())
    assert not verify_bundle(serialize(doc), TRUST, now=NOW).ok


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SIGNED_LEAVES), st.data())
def test_changing_any_signed_field_never_verifies(path, data):
    """Every field outside bundle_signature is covered by a signature."""
    doc = json.loads(BUNDLE_BYTES)
    old = _get(doc, path)
    new = data.draw(json_scalars.filter(lambda v: canon(v) != canon(old)))
    _put(doc, path, new)
    assert not verify_bundle(serialize(doc), TRUST, now=NOW).ok


@given(json_values)
def test_arbitrary_json_never_raises(doc):
    """Any JSON document gives a report, never an exception."""
    report = verify(json.dumps(doc).encode(), TRUST, now=NOW)
    assert not report.ok or report.kind == "state"


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data):
    report = verify(data, TRUST, now=NOW)
    assert isinstance(report.findings, tuple)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([*_leaves(BUNDLE), ("events",), ("state",), ("events", 1)]), json_values)
def test_any_subtree_replaced_never_raises(path, value):
    """A bundle-shaped document with any part replaced by arbitrary JSON: a report."""
    doc = json.loads(BUNDLE_BYTES)
    _put(doc, path, value)
    report = verify_bundle(json.dumps(doc).encode(), TRUST, now=NOW)
    assert not report.ok or canon(doc) == canon(json.loads(BUNDLE_BYTES))


def _parsed_or_refused(data: bytes, doc: Any) -> Any:
    """`parse(data)`, which must refuse exactly the documents holding a lone surrogate
    (UTF-8 cannot carry one; json.loads would take it) and read every other."""
    if has_lone_surrogate(doc):
        with pytest.raises(MalformedJSON):
            parse(data)
        return None
    return parse(data)


@given(json_values)
def test_canon_equals_the_spec_definition(doc):
    """The canonical form is byte-identical to the spec's json.dumps definition, computed
    by the tests' own oracle (not the product's reference, which canon falls back to)."""
    for data in (
        json.dumps(doc).encode(),
        json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass"),
    ):
        parsed = _parsed_or_refused(data, doc)
        if parsed is not None:
            assert canon(parsed) == oracle.canon(data)


@given(json_values)
def test_parse_reads_what_json_reads(doc):
    """Strict parsing agrees with the standard parser on every valid document, and
    refuses the others."""
    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )
    parsed = _parsed_or_refused(data, doc)
    if parsed is not None:
        assert canon(parsed) == oracle.canon(data)


@given(st.sampled_from([*_leaves(BUNDLE), ("events",), ("state",), ("events", 1)]), json_values)
def test_generated_schema_validator_agrees_with_the_explainer(path, value):
    """The fast, generated schema check says 'fits' exactly when no problem is explained."""
    from pithcrawl import schema

    doc = json.loads(BUNDLE_BYTES)
    _put(doc, path, value)
    assert schema.fits(doc, schema.BUNDLE) == (list(schema._explain(doc, schema.BUNDLE)) == [])


@given(json_values)
def test_compact_reading_agrees_with_the_exact_one(doc):
    """parse_compact reads a document only when it reads it as parse does."""
    from pithcrawl.canon import parse_compact

    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )
    fast = parse_compact(data)
    if fast is None:
        return
    assert not has_lone_surrogate(doc)
    # What Python's json.dumps wrote, orjson reads and canonicalises as the spec does.
    assert canon(fast) == canon(parse(data)) == oracle.canon(data)


def test_the_merge_never_changes_the_bundle_it_reads() -> None:
    """An event type whose plural is another field of `current` ("source_aliase" →
    `source_aliases`) goes to that list by the inferred rule, in the state only."""
    from pithcrawl.merge import derive

    aliases = [{"alias_type": "arxiv", "alias_value": "2611.00001"}]
    bundle = {
        "pith_number": "pith:2026:" + "A" * 26,
        "merge_version": "1",
        "canonical_record": {"title": "x"},
        "source_aliases": aliases,
        "events": [
            {
                "event_id": "sha256:" + "1" * 64,
                "event_type": "source_aliase",
                "target": "graph",
                "created_at": "2026-11-01T00:00:00Z",
                "signer": {"key_id": "k"},
                "payload": {},
            },
        ],
    }
    before = json.loads(json.dumps(bundle))
    state = derive(bundle, [True], {}, [])
    assert bundle == before
    assert len(state["current"]["source_aliases"]) == 2
