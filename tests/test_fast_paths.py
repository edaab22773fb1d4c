"""The verifier's shortcuts agree with the definitions they replace, on many inputs."""

from __future__ import annotations

import base64
import json
from typing import Any

import oracle
import orjson
import pytest
from builder import BundleBuilder, TestSigner, seal, serialize
from conftest import NOW, REAL_SUFFIX
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pithcrawl import schema
from pithcrawl.canon import canon, parse
from pithcrawl.keys import TrustSet, load_key
from pithcrawl.pith import pith_suffix, pith_suffix_reference
from pithcrawl.verify import (
    DEFAULT_CLOCK_SKEW,
    Report,
    clean_bundle_report,
    verify_bundle,
    verify_bundle_document,
    verify_state,
    verify_state_document,
)

SIGNER = TestSigner("fast-key")
TRUST = TrustSet([load_key(SIGNER.public_key())])


def _bundle() -> dict[str, Any]:
    b = BundleBuilder(SIGNER)
    b.add_event()
    return b.build()


BUNDLE_BYTES = serialize(_bundle())


def _paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every member and item of `doc`, inner ones included."""
    if isinstance(doc, dict):
        items: list[tuple[Any, Any]] = list(doc.items())
    elif isinstance(doc, list):
        items = list(enumerate(doc))
    else:
        return []
    return [p for k, v in items for p in [(*path, k), *_paths(v, (*path, k))]]


def test_generated_schema_validator_agrees_when_any_member_is_removed():
    """Removing any one member or item: 'fits' exactly when no problem is explained."""
    for path in _paths(json.loads(BUNDLE_BYTES)):
        doc = json.loads(BUNDLE_BYTES)
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        del parent[path[-1]]
        fits = schema.fits(doc, schema.BUNDLE)
        assert fits == (list(schema._explain(doc, schema.BUNDLE)) == []), path


@given(st.binary(min_size=32, max_size=32))
def test_pith_suffix_is_the_base32_of_the_spec(digest):
    """The integer-based suffix equals base64.b32encode's of the whole digest, for any
    digest (the tests' own oracle, and the product's reference)."""
    assert pith_suffix(digest.hex()) == oracle.suffix(digest.hex())
    assert pith_suffix_reference(digest.hex()) == oracle.suffix(digest.hex())


def _reference(data: bytes, trust: TrustSet, **kw: Any) -> Report:
    """The complete check alone, on the exact reading: what the fast path must match."""
    return verify_bundle_document(parse(data), trust, now=NOW, **kw)


def _same_report(data: bytes, trust: TrustSet, **kw: Any) -> None:
    fast, ref = verify_bundle(data, trust, now=NOW, **kw), _reference(data, trust, **kw)
    assert fast.findings == ref.findings
    assert (fast.kind, fast.pith_number, fast.bundle_sha256, fast.built_at) == (
        ref.kind,
        ref.pith_number,
        ref.bundle_sha256,
        ref.built_at,
    )
    assert fast.events == ref.events
    assert fast.state == ref.state
    assert fast.equivocations == ref.equivocations
    assert canon(fast.document) == canon(ref.document)


def test_clean_path_report_is_the_complete_checks_on_the_real_bundle(
    real_bundle_bytes: bytes, real_trust: TrustSet
):
    """The real bundle: the fast path's report is the one the complete check gives."""
    assert clean_bundle_report(
        json.loads(real_bundle_bytes), real_trust, NOW + DEFAULT_CLOCK_SKEW, REAL_SUFFIX
    )
    _same_report(real_bundle_bytes, real_trust, expected_suffix=REAL_SUFFIX)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 5))
def test_clean_path_report_is_the_complete_checks_on_built_bundles(events):
    """Bundles of every size the builder makes: same report by either road."""
    b = BundleBuilder(SIGNER)
    for j in range(events):
        b.add_event(payload={"graph_snapshot": {"n": j, "x": 1.5, "big": 2**40}})
    data = b.bytes()
    assert clean_bundle_report(json.loads(data), TRUST, NOW + DEFAULT_CLOCK_SKEW, None)
    _same_report(data, TRUST)


def _change_one(doc: Any, path: tuple[Any, ...], data: Any, values: Any) -> None:
    """Remove the member at `path`, or give it one of `values`."""
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    if data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(values)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(_paths(json.loads(BUNDLE_BYTES))), st.data())
def test_clean_path_declines_whatever_the_complete_check_finds(path, data):
    """Any one member changed: a report only when the complete check finds nothing."""
    doc = json.loads(BUNDLE_BYTES)
    _change_one(doc, path, data, st.none() | st.booleans() | st.integers() | st.text())
    clean = clean_bundle_report(doc, TRUST, NOW + DEFAULT_CLOCK_SKEW, None)
    if clean is not None:
        assert _reference(serialize(doc), TRUST).findings == ()
    _same_report(serialize(doc), TRUST)


@given(
    st.text(alphabet="ABCXYZabcxyz0189+/=\n -_", max_size=12)
    | st.binary(max_size=70).map(lambda b: base64.b64encode(b).decode())
)
def test_signature_text_decodes_as_the_definition_says(text):
    """Whatever strict decoding accepts, b64decode(validate=True) reads the same way."""
    from pithcrawl.keys import _signature_bytes

    try:
        expected: bytes | None = base64.b64decode(text, validate=True)
    except ValueError:
        expected = None
    try:
        got: bytes | None = _signature_bytes(text)
    except ValueError:
        got = None
    assert got == expected


@given(st.binary(min_size=32, max_size=32), st.integers(0, 25), st.text(max_size=2))
def test_reading_a_suffix_back_agrees_with_encoding_it(digest, at, insert):
    """is_suffix_of is true of the suffix, false of any other text."""
    from pithcrawl.pith import is_suffix_of

    suffix = pith_suffix(digest.hex())
    assert is_suffix_of(suffix, digest.hex())
    other = suffix[:at] + insert + suffix[at + 1 :]
    assert is_suffix_of(other, digest.hex()) == (other == suffix)
    assert not is_suffix_of(suffix.lower(), digest.hex())


@settings(max_examples=12, deadline=None)
@given(
    st.sampled_from([None, "2026-11-01T00:00:00Z", "2026-12-31T00:00:00Z"]),
    st.sampled_from([None, "2026-11-01T00:00:00Z", "2026-12-31T00:00:00Z", "not a time"]),
)
def test_clean_path_agrees_on_key_rotations(configured, announced):
    """A rotation configured, announced by the bundle, both or neither: same report."""
    from pithcrawl.keys import TrustedKey
    from pithcrawl.timestamps import parse_timestamp

    trust = TrustSet(
        [TrustedKey(SIGNER.key_id, SIGNER.raw, configured and parse_timestamp(configured))]
    )
    doc = _bundle()
    for key in doc["public_keys"]:
        key["rotates_at"] = announced
    data = serialize(seal(doc, SIGNER))
    _same_report(data, trust)
    if "2026-11-01T00:00:00Z" not in (configured, announced) and announced != "not a time":
        assert clean_bundle_report(json.loads(data), trust, NOW + DEFAULT_CLOCK_SKEW, None)


STATE_BYTES = serialize(json.loads(BUNDLE_BYTES)["state"])


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(_paths(json.loads(STATE_BYTES))), st.data())
def test_a_state_read_fast_gets_the_exact_readings_report(path, data):
    """`verify_state` reads compact bytes fast; whatever one member is changed to, its
    report is the one the exact reading gives."""
    doc = json.loads(STATE_BYTES)
    finite = st.floats(allow_nan=False, allow_infinity=False)  # parse refuses the others
    _change_one(doc, path, data, st.none() | st.booleans() | st.integers() | finite)
    raw = serialize(doc)
    suffix = data.draw(st.sampled_from([None, json.loads(STATE_BYTES)["pith_number"][-26:]]))
    got = verify_state(raw, expected_suffix=suffix)
    want = verify_state_document(parse(raw), expected_suffix=suffix)
    assert (got.pith_number, got.findings, canon(got.document)) == (
        want.pith_number,
        want.findings,
        canon(want.document),
    )


@pytest.mark.parametrize("value", [1e-7, 1e-5, 2.5e-9, 3e-5, -4.2e-6])
def test_a_float_hashed_the_way_orjson_writes_it_is_not_trusted(monkeypatch, value):
    """The spec hashes Python's json.dumps: `1e-07`, not orjson's `1e-7` (the two differ
    for 0 < |x| < 1e-4 only). A bundle whose hashes and signatures were made over
    orjson's writing must fail by either road (the fast one accepted it)."""
    import builder as bundle_builder

    with monkeypatch.context() as m:
        m.setattr(bundle_builder, "canon", lambda x: orjson.dumps(x, option=orjson.OPT_SORT_KEYS))
        b = BundleBuilder(SIGNER)
        b.add_event(payload={"graph_snapshot": {"score": value}})
        data = orjson.dumps(b.build())
    report = verify_bundle(data, TRUST, now=NOW)
    assert not report.ok and "event_hash_mismatch" in report.codes
    _same_report(data, TRUST)


def test_a_float_the_spec_writes_is_trusted_by_either_road():
    """The same floats, hashed as the spec says: trusted (by the complete check)."""
    b = BundleBuilder(SIGNER)
    b.add_event(payload={"graph_snapshot": {"scores": [1e-7, 1e-5, 0.5, 1e16, 1e-300]}})
    data = b.bytes()
    assert verify_bundle(data, TRUST, now=NOW).ok
    _same_report(data, TRUST)


def test_an_untrusted_keys_rotation_time_must_parse_too():
    """Rule 1 holds for every timestamp, in the keys nobody trusts as well."""
    other = TestSigner("other-key")
    b = BundleBuilder(SIGNER, extra_keys=[other.public_key(rotates_at="not-a-time")])
    b.add_event()
    data = b.bytes()
    assert verify_bundle(data, TRUST, now=NOW).codes == {"timestamp_invalid"}
    _same_report(data, TRUST)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_key_listed_twice_rotates_at_the_earlier_time(reverse):
    """Rule 6: whichever listing comes first, the earliest announced rotation counts (a
    later listing used to cancel an earlier one)."""
    b = BundleBuilder(SIGNER, extra_keys=[SIGNER.public_key(rotates_at="2030-01-01T00:00:00Z")])
    b.add_event()
    doc = b.build()
    doc["public_keys"][0]["rotates_at"] = "2026-11-01T00:00:00Z"  # before every signature
    if reverse:
        doc["public_keys"].reverse()
    data = serialize(seal(doc, SIGNER))
    assert "key_expired" in verify_bundle(data, TRUST, now=NOW).codes
    _same_report(data, TRUST)


@pytest.mark.parametrize("depth", [254, 300, 900])
def test_deep_nesting_is_a_finding_not_an_exception(depth):
    """orjson reads deeper than it writes: the fast reading declines, and the exact one
    reports (as for any document that is not a bundle)."""
    data = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    assert not verify_bundle(data, TRUST, now=NOW).ok
    assert not verify_state(data).ok


def test_the_signature_cache_holds_only_texts_that_can_be_signatures():
    """A document's 5 MB `signature_b64` is judged invalid without being kept."""
    from pithcrawl.keys import _verify_signature, verify_signature

    _verify_signature.cache_clear()
    assert not verify_signature(SIGNER.raw, "0" * 64, "A" * 5_000_000)
    assert not verify_signature(SIGNER.raw, "0" * 5_000_000, "A" * 88)
    assert _verify_signature.cache_info().currsize == 0
    assert not verify_signature(SIGNER.raw, "0" * 64, "A" * 88)  # the lengths that can be
    assert _verify_signature.cache_info().currsize == 1


@given(st.floats(allow_nan=False, allow_infinity=False) | st.floats(-1e-4, 1e-4))
def test_orjson_writes_a_float_as_repr_does_unless_the_fast_reading_declines(x):
    """The fast reading trusts orjson's float writing only where it is Python's repr."""
    from pithcrawl.canon import _orjson_own_float

    written = orjson.dumps({"x": x})
    if written.decode() != '{"x":' + repr(x) + "}":
        assert 0 < abs(x) < 1e-4
        assert _orjson_own_float(written)


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_a_signed_bundle_nested_as_deep_as_canon_allows_verifies():
    """A payload nested to within a few levels of canon.MAX_DEPTH (with the bundle's own
    levels around it) is read, hashed and verified like any other."""
    from pithcrawl.canon import MAX_DEPTH

    b = BundleBuilder(SIGNER)
    b.add_event(payload={"graph_snapshot": {"deep": _nested(MAX_DEPTH - 10)}})
    data = b.bytes()
    assert verify_bundle(data, TRUST, now=NOW).ok
    _same_report(data, TRUST)


@pytest.mark.parametrize("depth", [*range(250, 262), 600, *range(930, 1000, 3)])
def test_a_bundle_nested_too_deep_is_malformed_json_however_deep(depth):
    """Past canon.MAX_DEPTH a bundle is `malformed_json`, whatever the depth: one nested
    ~980 deep used to pass `parse` and then exhaust the interpreter's recursion limit in
    the complete check's canonical writer (RecursionError out of verify_bundle, and out
    of a crawl pass), a window that moved with the caller's stack."""
    from pithcrawl.canon import MAX_DEPTH

    b = BundleBuilder(SIGNER)
    b.add_event(payload={"graph_snapshot": {"n": 1}})
    nested = b"[" * depth + b"]" * depth
    data = b.bytes().replace(b'"graph_snapshot":{"n":1}', b'"graph_snapshot":' + nested)
    report = verify_bundle(data, TRUST, now=NOW)
    # The deepest copy is the state's: {state, current, graph_snapshots, [i], payload}.
    if depth + 6 <= MAX_DEPTH:
        assert report.ok or "malformed_json" not in report.codes
    else:
        assert report.codes == {"malformed_json"}, report.codes
        (found,) = report.findings
        assert "nested too deeply" in found.message


#: Any JSON value a payload may hold: every number the spec can write (floats of every
#: size, integers past 64 bits), every code point a string may hold, nesting.
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=["Cs"]), max_size=4), inner, max_size=3
        )
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_JSON)
def test_any_payload_signed_over_the_spec_is_judged_alike_by_both_roads(value):
    """A payload of any JSON value, signed over the spec's canonical bytes, verifies, and
    both roads give the same report (tests/test_fast_paths.py's float tests cover the
    bytes orjson writes differently)."""
    b = BundleBuilder(SIGNER)
    b.add_event(payload={"graph_snapshot": {"v": value}})
    data = b.bytes()
    assert verify_bundle(data, TRUST, now=NOW).ok
    _same_report(data, TRUST)
