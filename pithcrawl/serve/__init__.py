"""`pithcrawl serve`: the archive as a conforming Pith mirror.

- `catalog`: what is served per record (the newest trusted bundle that still verifies,
  a state.json equal to its `state`), cached in front of the archive;
- `http`: the aiohttp application: routes, validators, the manifest, the server.
"""

from __future__ import annotations

from pithcrawl.serve.catalog import Body, Catalog, Served
from pithcrawl.serve.http import Server, follow_keys, manifest, not_modified, serving

__all__ = [
    "Body",
    "Catalog",
    "Served",
    "Server",
    "follow_keys",
    "manifest",
    "not_modified",
    "serving",
]
