"""`pithcrawl serve`: the archive as a conforming Pith mirror.

- `catalog`: what is served per record (the newest trusted bundle that still verifies,
  a state.json equal to its `state`), cached in front of the archive;
- `http`: the aiohttp application: routes, validators, the manifest, the server;
- `pages`: the status pages for people (routes, templates, headers), and `views`, what
  each page shows (read from the archive, shaped for its template).
"""

from __future__ import annotations

from pithcrawl.serve.catalog import Body, Catalog, Served
from pithcrawl.serve.http import Server, follow_keys, manifest, not_modified, serving
from pithcrawl.serve.pages import Ui

__all__ = [
    "Body",
    "Catalog",
    "Served",
    "Server",
    "Ui",
    "follow_keys",
    "manifest",
    "not_modified",
    "serving",
]
