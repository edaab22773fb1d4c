"""The interpreter, as every pithcrawl process sets it up (the command line, a worker).

Owns tuning the cyclic garbage collector for what a pass is: thousands of parsed
documents, each a tree of a few thousand dicts, lists and strings that reference
counting frees on its own (a JSON tree has no cycles). Left at its defaults, the
collector walks the young objects every 700 allocations, many times per document, and
the imported modules' objects at every full collection; a cold pass spent about a tenth
of its CPU there.
"""

from __future__ import annotations

import gc

#: Allocations (net of frees) between collections of the youngest generation: a few
#: documents' worth, not a fraction of one.
YOUNG = 50_000


def tune_gc() -> None:
    """Collect less often, and never walk what is alive at start-up again (the modules,
    the configuration): `gc.freeze` moves it out of the collector's sight."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
