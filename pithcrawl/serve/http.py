"""The archive as a conforming Pith mirror: the aiohttp application behind `pithcrawl serve`.

(What is served per record is `serve.catalog`'s; this module is the HTTP side.)

Owns the HTTP side of serving: the routes of pith-format.md §3 (`/pith/{suffix}/bundle.json`,
its `.well-known` twin, `/pith/{suffix}/state.json`), a `pith_mirror_manifest` describing
this server, `/healthz`, conditional GET (a strong ETag, the sha256 of the body;
`If-None-Match` with lists and `*`, RFC 9110 §13.1.2), and `Catalog`, a small in-memory
cache of what is served per record, refilled when the archive's newest snapshot of that
record changes.

What it serves: the exact bytes of the trusted bundle snapshot with the newest `built_at`
(from whichever mirror) that still verifies under the keys `serve` was started with, and
a state.json equal to that bundle's own `state`: a trusted archived one when one matches
(compared as canonical JSON), else the bundle's `state` serialised compactly. A record
with no such bundle is a 404: an untrusted body is never served, and neither is one
trusted when it was archived under keys since taken out of the trust set. A suffix is
checked against its shape before any lookup, and nothing from a request ever becomes a
file path.

What it does not do: write to the archive (it opens it read-only), or sign anything. The
manifest therefore carries no `public_key`: the bundles carry the registry's
signatures, which any client checks itself; a mirror adds none.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from pithcrawl.errors import OperationalError, StoreError
from pithcrawl.keys import TrustSet
from pithcrawl.merge import MERGE_VERSION
from pithcrawl.serve.catalog import Body, Catalog, Served
from pithcrawl.serve.pages import Ui, add_pages
from pithcrawl.store import Store
from pithcrawl.timestamps import format_seconds
from pithcrawl.verify import DEFAULT_CLOCK_SKEW

log = structlog.get_logger("pithcrawl.serve")

SUFFIX = re.compile(r"[A-Z2-7]{26}")
"""The only suffixes looked up; anything else is a 404 before the archive is asked."""

BUNDLE_PATTERN = "/pith/{suffix}/bundle.json"
STATE_PATTERN = "/pith/{suffix}/state.json"
WELL_KNOWN_PATTERN = "/.well-known/pith/{suffix}/bundle.json"

CACHE_CONTROL = "public, max-age=60"

_ETAG = re.compile(r'(?:W/)?"([^"]*)"')


def not_modified(if_none_match: Iterable[str], etag: str) -> bool:
    """Whether `If-None-Match` (every header line) matches `etag` (RFC 9110 §13.1.2):
    `*` matches any representation; entity tags compare weakly (W/ is ignored)."""
    opaque = etag.strip('"')
    for line in if_none_match:
        if line.strip() == "*":
            return True
        if any(m.group(1) == opaque for m in _ETAG.finditer(line)):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Server:
    """A running mirror."""

    url: str
    """`http://HOST:PORT` as bound (the real port when 0 was asked for)."""
    name: str
    """Its name in `/pith-mirrors.json`."""
    catalog: Catalog


class _Handlers:
    def __init__(self, catalog: Catalog, base_url: str | None) -> None:
        self.catalog = catalog
        self.base_url = base_url
        self.name = "pithcrawl"  # set once the address is bound
        self.bound = ""
        """HOST:PORT this server listens on (for a request whose Host is unusable)."""

    async def bundle(self, request: web.Request) -> web.StreamResponse:
        served = await self._served(request)
        return served if isinstance(served, web.Response) else _document(request, served.bundle)

    async def state(self, request: web.Request) -> web.StreamResponse:
        served = await self._served(request)
        return served if isinstance(served, web.Response) else _document(request, served.state)

    async def _served(self, request: web.Request) -> Served | web.Response:
        suffix = request.match_info["suffix"]
        if SUFFIX.fullmatch(suffix) is None:
            return _error(404, "not a Pith suffix (26 characters of A-Z and 2-7)")
        try:
            served = await self.catalog.get(suffix)
        except StoreError as e:
            log.error("serve_failed", suffix=suffix, error=str(e))
            return _error(503, "the archive cannot be read")
        if served is None:
            return _error(404, "no trusted bundle of this record in the archive")
        return served

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        host = request.host
        if not _plain_host(host):
            host = self.bound  # a Host header that is no host[:port] names nothing
        base = self.base_url or f"{request.scheme}://{host}"
        doc = manifest(self.name, base, datetime.now(UTC))
        headers = {"Cache-Control": CACHE_CONTROL}
        if self.base_url is None:
            headers["Vary"] = "Host"  # the URLs come from the request
        return web.json_response(doc, headers=headers, dumps=_dumps)

    async def health(self, request: web.Request) -> web.StreamResponse:
        try:
            records = await self.catalog.store.trusted.record_count()
        except StoreError as e:
            log.error("health_failed", error=str(e))
            return web.json_response(
                {"status": "unavailable", "error": str(e)}, status=503, dumps=_dumps
            )
        return web.json_response(
            {"status": "ok", "records": records},
            headers={"Cache-Control": "no-store"},
            dumps=_dumps,
        )

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return _error(404, "not found")


def manifest(name: str, base_url: str, now: datetime) -> dict[str, Any]:
    """A `pith_mirror_manifest` listing this server (pith-format.md §3), without a
    `public_key`: pithcrawl signs nothing."""
    base = base_url.rstrip("/")
    return {
        "manifest_type": "pith_mirror_manifest",
        "manifest_version": "1.0",
        "generated_at": format_seconds(now),
        "merge_version": MERGE_VERSION,
        "mirrors": [
            {
                "name": name,
                "mirror_type": "https" if base.startswith("https:") else "http",
                "base_url": base,
                "bundle_pattern": base + BUNDLE_PATTERN,
                "state_pattern": base + STATE_PATTERN,
                "well_known_pattern": base + WELL_KNOWN_PATTERN,
                "status": "mirror",
            }
        ],
        "notes": "A pithcrawl archive serving the exact bytes it verified. It signs nothing:"
        " check every bundle against the registry's keys.",
    }


def _document(request: web.Request, body: Body) -> web.Response:
    headers = {
        "ETag": body.etag,
        "Cache-Control": CACHE_CONTROL,
        "Last-Modified": body.last_modified,
        "X-Content-Type-Options": "nosniff",
    }
    if not_modified(request.headers.getall("If-None-Match", ()), body.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body.data, content_type="application/json", headers=headers)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status, dumps=_dumps)


def _dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def _app(h: _Handlers, ui: Ui | None = None) -> web.Application:
    """The mirror's routes, and the status pages unless `ui` is None; HEAD is answered for
    every GET route."""
    app = web.Application()
    if ui is not None:
        add_pages(app, h.catalog.store, ui)
    app.router.add_get(BUNDLE_PATTERN, h.bundle)
    app.router.add_get(WELL_KNOWN_PATTERN, h.bundle)
    app.router.add_get(STATE_PATTERN, h.state)
    app.router.add_get("/pith-mirrors.json", h.manifest)
    app.router.add_get("/healthz", h.health)
    app.router.add_get("/{tail:.*}", h.not_found)
    return app


#: How long a client may take to send a request, or stay idle between two.
IDLE_CLIENT_SECONDS = 15.0


#: How often `serve` looks for keys learned (`trust.follow_rotations`) since it started.
KEYS_REFRESH = 60.0


async def follow_keys(
    catalog: Catalog, keys: Callable[[], Awaitable[TrustSet]], every: float = KEYS_REFRESH
) -> None:
    """Forever: the trust set again every `every` seconds (a `run` alongside may learn a
    rotated key, or drop one whose voucher no longer verifies), served under at once."""
    while True:
        await anyio.sleep(every)
        trust = await keys()
        if catalog.retrust(trust):
            log.info("serve_keys_changed", keys=sorted(trust))


def _not_a_client_error(record: logging.LogRecord) -> bool:
    """aiohttp logs every malformed request with its traceback: the client got its 400,
    and a client sending thousands must not fill the operator's log."""
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, HttpProcessingError)


@asynccontextmanager
async def serving(
    store: Store,
    host: str,
    port: int,
    *,
    name: str | None = None,
    base_url: str | None = None,
    trust: TrustSet,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    catalog: Catalog | None = None,
    ui: Ui | None = None,
) -> AsyncIterator[Server]:
    """Serve `store` on HOST:PORT (0: any free port) until the block ends; a bundle is
    served only if it verifies under `trust`. With `ui`, the status pages too.

    `OperationalError` when the address cannot be bound. Leaving the block (a cancel
    included) stops accepting, lets in-flight requests finish briefly, and closes.
    """
    catalog = catalog or Catalog(store, trust, clock_skew=clock_skew)
    server_log = logging.getLogger("aiohttp.server")
    if _not_a_client_error not in server_log.filters:
        server_log.addFilter(_not_a_client_error)
    handlers = _Handlers(catalog, base_url)
    runner = web.AppRunner(
        _app(handlers, ui),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5.0,
        # From the connection's start: a client that sends no whole request in this
        # long (or stays idle between two) is dropped, so slow or silent ones cannot
        # hold every descriptor (aiohttp's default is an hour).
        keepalive_timeout=IDLE_CLIENT_SECONDS,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        try:
            await site.start()
        except OSError as e:
            raise OperationalError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
        bound = _hostport(runner.addresses[0])
        handlers.name = name or f"pithcrawl@{bound}"
        handlers.bound = bound
        yield Server(f"http://{bound}", handlers.name, catalog)
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


# Labels as names are used (underscores in service names too), and a trailing dot.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+\])(?::([0-9]{{1,5}}))?")


def _plain_host(host: str) -> bool:
    """Whether a Host header is a host name or address with an optional port, and no more
    (no userinfo, path, spaces or list), so it can go into a URL the manifest gives."""
    m = _HOST.fullmatch(host)
    return m is not None and (m.group(1) is None or 0 < int(m.group(1)) < 65536)


def _hostport(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
