"""The JSON Patch `history` and `diff` show: always correct, never a quadratic search on
what a hostile mirror made large."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
from hypothesis import given, settings
from hypothesis import strategies as st

from pithcrawl.commands.patch import BUDGET, SHALLOW, SMALL, make_patch

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


def _chain(depth: int, leaf: Any) -> Any:
    d = leaf
    for i in range(depth):
        d = [d, i, i + 1]
    return d


def test_deep_chains_and_whole_document_budget_stay_cheap(monkeypatch):
    """Lists nested 250 deep (jsonpatch re-costs every level: seconds a member), in many
    members: never handed to jsonpatch, replaced whole; and however many small members
    differ, jsonpatch is given at most BUDGET values in all. The patch still applies."""
    from pithcrawl.commands import patch as module

    given: list[tuple[int, int]] = []
    real = jsonpatch.make_patch

    def counted(a, b):
        given.append(
            (
                module._size(a, 10**9) + module._size(b, 10**9),
                max(module._depth(a, 10**9), module._depth(b, 10**9)),
            )
        )
        return real(a, b)

    monkeypatch.setattr(module.jsonpatch, "make_patch", counted)
    before = {f"m{i}": _chain(250, i) for i in range(40)}
    after = {f"m{i}": _chain(250, i + 1) for i in range(40)}
    patch = make_patch(before, after)
    assert given == []
    assert jsonpatch.apply_patch(copy.deepcopy(before), patch) == after
    assert {op["op"] for op in patch} == {"replace"} and len(patch) == 40
    many_before = {f"k{i}": list(range(2000)) for i in range(100)}
    many_after = {f"k{i}": [*range(1999), -1] for i in range(100)}
    patch = make_patch(many_before, many_after)
    assert jsonpatch.apply_patch(copy.deepcopy(many_before), patch) == many_after
    assert sum(size for size, _ in given) <= BUDGET
    assert all(depth <= SHALLOW for _, depth in given)
    assert len(given) < 100  # past the budget the rest were replaced whole


def test_equal_parts_are_found_equal_by_value_not_form():
    """1, 1.0 and True are different JSON values; the same object in another key order
    is the same."""
    assert make_patch({"a": 1}, {"a": 1.0}) == [{"op": "replace", "path": "/a", "value": 1.0}]
    assert make_patch({"a": [1]}, {"a": [True]}) != []
    assert make_patch({"a": {"x": 1, "y": 2}}, {"a": {"y": 2, "x": 1}}) == []
    assert make_patch([0.0], [-0.0]) != []
