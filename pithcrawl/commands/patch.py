"""A JSON Patch (RFC 6902) between two archived documents, at a bounded cost.

`jsonpatch.make_patch` pairs the items of two lists by a longest-common-subsequence
search, and re-costs every subtree at every level of nesting: on a hostile mirror's
bodies (a list of 150,000 numbers, then reversed; a chain of lists 250 deep) `history`
and the status pages' diff ran for minutes. `make_patch` here gives it only parts small
and shallow enough, and no more of them than a budget for the whole document: two
objects are compared member by member, and any other pair of values it cannot hand over
is one `replace`. Which parts are equal is known from a digest of every subtree, computed
once, bottom up (never a comparison repeated at each level). Any patch it makes is
correct (applied to the first document, it gives the second); it is the shortest only
where the parts were small.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jsonpatch

from pithcrawl.findings import pointer

#: The most JSON values two compared parts may hold before they are compared by member
#: (objects) or replaced whole (anything else).
SMALL = 5_000

#: The deepest part handed to jsonpatch whole (its cost grows with depth times size).
SHALLOW = 12

#: The most JSON values handed to jsonpatch over a whole document; past it, parts that
#: differ are replaced whole.
BUDGET = 50_000

#: The deepest path compared member by member; deeper, two objects that differ are
#: replaced whole.
DEEPEST = 64


def make_patch(
    before: Any, after: Any, path: str = "", *, small: int = SMALL, budget: int = BUDGET
) -> list[dict[str, Any]]:
    """The operations that turn `before` into `after` (at `path` of a larger document;
    `small`: what jsonpatch is given whole; `budget`: how much it is given in all)."""
    digests = _digests(before)
    digests.update(_digests(after))
    state = _State(digests, small, budget)
    _patch(before, after, path, 0, state)
    return state.out


class _State:
    __slots__ = ("budget", "digests", "out", "small")

    def __init__(self, digests: dict[int, bytes], small: int, budget: int) -> None:
        self.digests, self.small, self.budget = digests, small, budget
        self.out: list[dict[str, Any]] = []


def _patch(before: Any, after: Any, path: str, level: int, state: _State) -> None:
    out = state.out
    if _digest(before, state.digests) == _digest(after, state.digests):
        return
    size = _size(before, state.small) + _size(after, state.small)
    if (
        size <= state.small
        and size <= state.budget
        and max(_depth(before, SHALLOW), _depth(after, SHALLOW)) <= SHALLOW
    ):
        state.budget -= size
        ops: list[dict[str, Any]] = jsonpatch.make_patch(before, after).patch
        out.extend({**op, "path": path + op["path"]} for op in _moved(ops, path))
        return
    if isinstance(before, dict) and isinstance(after, dict) and level < DEEPEST:
        for key in before:
            if key not in after:
                out.append({"op": "remove", "path": path + pointer(key)})
        for key, value in after.items():
            here = path + pointer(key)
            if key not in before:
                out.append({"op": "add", "path": here, "value": value})
            else:
                _patch(before[key], value, here, level + 1, state)
        return
    out.append({"op": "replace", "path": path, "value": after})


def _scalar(value: Any) -> bytes:
    """A scalar's identity for comparison: its type and exact form (1, 1.0 and True are
    three different JSON values, and so are 0.0 and -0.0)."""
    return f"{type(value).__name__}:{value!r}".encode("utf-8", "surrogatepass")


def _digests(doc: Any) -> dict[int, bytes]:
    """A digest of every object and array in `doc`, keyed by `id`: equal digests, equal
    JSON (object keys in any order). Computed bottom up, each node once, without
    recursion."""
    digests: dict[int, bytes] = {}
    stack: list[tuple[Any, bool]] = [(doc, False)]
    while stack:
        node, ready = stack.pop()
        if not isinstance(node, dict | list):
            continue
        if not ready:
            stack.append((node, True))
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, False) for c in children if isinstance(c, dict | list))
            continue
        h = hashlib.blake2b(digest_size=16)
        if isinstance(node, dict):
            h.update(b"{")
            for key in sorted(node):
                h.update(_scalar(key))
                h.update(_digest(node[key], digests))
        else:
            h.update(b"[")
            for item in node:
                h.update(_digest(item, digests))
        digests[id(node)] = h.digest()
    return digests


def _digest(value: Any, digests: dict[int, bytes]) -> bytes:
    if isinstance(value, dict | list):
        return b"c" + digests[id(value)]
    return b"s" + hashlib.blake2b(_scalar(value), digest_size=16).digest()


def _depth(value: Any, limit: int) -> int:
    """How deep `value` nests arrays and objects, counting no further than `limit` + 1."""
    depth, level = 0, [value]
    while level and depth <= limit:
        containers = [v for v in level if isinstance(v, dict | list)]
        if not containers:
            break
        depth += 1
        level = [c for v in containers for c in (v.values() if isinstance(v, dict) else v)]
    return depth


def _moved(ops: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """`from` pointers of move and copy operations, under `path` too."""
    return [{**op, "from": path + op["from"]} if "from" in op else op for op in ops]


def _size(value: Any, limit: int) -> int:
    """How many JSON values `value` holds, counting no further than `limit`."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count
