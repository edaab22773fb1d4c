"""A JSON Patch (RFC 6902) between two archived documents, at a bounded cost.

`jsonpatch.make_patch` pairs the items of two lists by a longest-common-subsequence
search: on a hostile mirror's bodies (a list of 150,000 numbers, then reversed) `history`
ran for two minutes. `make_patch` here gives it only parts small enough: two objects are
compared member by member, and any pair of values too large to hand over whole, that are
not both objects, is one `replace`. Any patch it makes is correct (applied to the first
document, it gives the second); it is the shortest only where the parts were small.
"""

from __future__ import annotations

from typing import Any

import jsonpatch

from pithcrawl.canon import canon
from pithcrawl.findings import pointer

#: The most JSON values two compared parts may hold before they are compared by member
#: (objects) or replaced whole (anything else).
SMALL = 5_000


def make_patch(
    before: Any, after: Any, path: str = "", *, small: int = SMALL
) -> list[dict[str, Any]]:
    """The operations that turn `before` into `after` (at `path` of a larger document;
    `small`: what jsonpatch is given whole)."""
    if canon(before) == canon(after):
        return []
    if _size(before, small) + _size(after, small) <= small:
        ops: list[dict[str, Any]] = jsonpatch.make_patch(before, after).patch
        return [{**op, "path": path + op["path"]} for op in _moved(ops, path)]
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[dict[str, Any]] = []
        for key in before:
            if key not in after:
                out.append({"op": "remove", "path": path + pointer(key)})
        for key, value in after.items():
            here = path + pointer(key)
            if key not in before:
                out.append({"op": "add", "path": here, "value": value})
            else:
                out += make_patch(before[key], value, here, small=small)
        return out
    return [{"op": "replace", "path": path, "value": after}]


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
