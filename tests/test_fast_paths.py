"""The verifier's shortcuts agree with the definitions they replace, on many inputs."""

from __future__ import annotations

import json
from typing import Any

from builder import BundleBuilder, TestSigner, serialize
from hypothesis import given
from hypothesis import strategies as st

from pithcrawl import schema
from pithcrawl.pith import pith_suffix, pith_suffix_reference

SIGNER = TestSigner("fast-key")


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
    """The integer-based suffix equals base64.b32encode's, for any digest."""
    assert pith_suffix(digest.hex()) == pith_suffix_reference(digest.hex())
