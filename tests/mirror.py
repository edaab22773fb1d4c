"""A real Pith mirror on 127.0.0.1 for the tests: aiohttp, conditional GET, faults on demand.

async with TestMirror() as m:
    m.put(builder.bytes())           # serves /pith/{suffix}/bundle.json and state.json
    m.fail(suffix, 503, retry_after="120")
    m.base_url                       # http://127.0.0.1:PORT
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Fault:
    status: int
    retry_after: str | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class TestMirror:
    __test__ = False  # not a pytest class

    bundles: dict[str, bytes] = field(default_factory=dict)
    states: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, Fault] = field(default_factory=dict)
    extra: dict[str, bytes] = field(default_factory=dict)
    """Other paths served as they are (a manifest, say)."""
    hidden: set[str] = field(default_factory=set)
    """Suffixes served only at the .well-known address."""
    hits: Counter[str] = field(default_factory=Counter)
    conditional_hits: Counter[str] = field(default_factory=Counter)
    peers: Counter[str] = field(default_factory=Counter)
    """The addresses the documents were asked for from, and how often."""
    to_peer: dict[str, TestMirror] = field(default_factory=dict)
    """What a client address is served instead (its own bundles and states): a mirror
    that tells one vantage something else."""
    delay: float = 0.0
    """Seconds each bundle and state.json takes to answer (a mirror far away)."""
    base_url: str = ""
    _runner: web.AppRunner | None = None

    def put(self, bundle: bytes, state: bytes | None = None) -> str:
        """Serve a bundle (and its state, taken from it unless given); returns the suffix."""
        doc = json.loads(bundle)
        suffix = doc["pith_number"].rpartition(":")[2]
        self.bundles[suffix] = bundle
        if state is None:
            state = json.dumps(doc["state"], separators=(",", ":"), ensure_ascii=False).encode()
        self.states[suffix] = state
        return suffix

    def fail(
        self,
        suffix: str,
        status: int,
        retry_after: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.faults[suffix] = Fault(status, retry_after, headers=headers or {})

    def heal(self, suffix: str) -> None:
        self.faults.pop(suffix, None)

    async def __aenter__(self) -> TestMirror:
        app = web.Application()
        app.router.add_get("/pith/{suffix}/bundle.json", self._bundle)
        app.router.add_get("/.well-known/pith/{suffix}/bundle.json", self._well_known)
        app.router.add_get("/pith/{suffix}/state.json", self._state)
        app.router.add_get("/{path:.*}", self._extra)
        # Stopped, it waits for the requests in flight a second at most (aiohttp's 60 s
        # would hold a test, or the demo's Ctrl-C, while a client keeps a connection).
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _bundle(self, request: web.Request) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.match_info["suffix"] in self.hidden:
            self.hits[request.path] += 1
            return web.Response(status=404)
        return self._serve(request, self._seen_by(request).bundles)

    async def _extra(self, request: web.Request) -> web.StreamResponse:
        body = self.extra.get(request.path)
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type="application/json")

    async def _well_known(self, request: web.Request) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        return self._serve(request, self.bundles)

    async def _state(self, request: web.Request) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        return self._serve(request, self._seen_by(request).states)

    def _seen_by(self, request: web.Request) -> TestMirror:
        return self.to_peer.get(request.remote or "", self)

    def _serve(self, request: web.Request, table: dict[str, bytes]) -> web.StreamResponse:
        suffix = request.match_info["suffix"]
        self.hits[request.path] += 1
        self.peers[request.remote or ""] += 1
        fault = self.faults.get(suffix)
        if fault is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            headers.update(fault.headers)
            return web.Response(status=fault.status, body=fault.body, headers=headers)
        body = table.get(suffix)
        if body is None:
            return web.Response(status=404)
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        if request.headers.get("If-None-Match") == etag:
            self.conditional_hits[request.path] += 1
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type="application/json", headers={"ETag": etag})
