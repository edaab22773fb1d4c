"""The JSON Patch `history` and `diff` show: always correct, never a quadratic search on
what a hostile mirror made large."""

from __future__ import annotations

import copy

import jsonpatch
from hypothesis import given, settings
from hypothesis import strategies as st

from pithcrawl.commands.patch import SMALL, make_patch

values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=6)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(values, values, st.sampled_from([0, 1, 3, 10, SMALL]))
def test_a_patch_applied_gives_the_second_document(before, after, small):
    """Whatever the two documents, and whatever is small enough to hand jsonpatch whole,
    the patch turns the first into the second."""
    patch = make_patch(before, after, small=small)
    assert jsonpatch.apply_patch(copy.deepcopy(before), patch) == after


def test_large_parts_are_compared_by_member_or_replaced_whole():
    """A list of 150,000 numbers, then the same reversed (two minutes of `history`): one
    `replace` of that member, found without a search; the small members beside it are
    still told apart."""
    items = list(range(150_000))
    before = {"x": items, "meta": {"a": 1, "b": 2}}
    after = {"x": items[::-1], "meta": {"a": 1, "b": 3}}
    patch = make_patch(before, after)
    assert patch == [
        {"op": "replace", "path": "/x", "value": items[::-1]},
        {"op": "replace", "path": "/meta/b", "value": 3},
    ]
    assert jsonpatch.apply_patch(copy.deepcopy(before), patch) == after


def test_small_documents_get_jsonpatchs_own_patch():
    """Below the bound nothing changes: the same operations jsonpatch finds."""
    before = {"events": [{"id": i} for i in range(10)], "built_at": "a"}
    after = {"events": [{"id": i} for i in range(11)], "built_at": "b"}
    assert SMALL > 100
    assert make_patch(before, after) == jsonpatch.make_patch(before, after).patch
