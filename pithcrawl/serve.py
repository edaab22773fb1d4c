"""The archive as a conforming Pith mirror: the aiohttp application behind `pithcrawl serve`.

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

import email.utils
import functools
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from pithcrawl.canon import MalformedJSON, canon, parse
from pithcrawl.errors import OperationalError, StoreCorrupt, StoreError
from pithcrawl.keys import TrustSet
from pithcrawl.merge import MERGE_VERSION
from pithcrawl.store import Snapshot, Store
from pithcrawl.timestamps import format_seconds
from pithcrawl.verify import DEFAULT_CLOCK_SKEW, verify_archived

log = structlog.get_logger("pithcrawl.serve")

SUFFIX = re.compile(r"[A-Z2-7]{26}")
"""The only suffixes looked up; anything else is a 404 before the archive is asked."""

BUNDLE_PATTERN = "/pith/{suffix}/bundle.json"
STATE_PATTERN = "/pith/{suffix}/state.json"
WELL_KNOWN_PATTERN = "/.well-known/pith/{suffix}/bundle.json"

CACHE_CONTROL = "public, max-age=60"
#: A cached record is served without asking the archive for this long; past it, one
#: cheap query (its newest snapshot id) decides whether to refill.
REVALIDATE_AFTER = 2.0
CACHE_ENTRIES = 1024
CACHE_BYTES = 64 << 20
#: Past this size, parsing a bundle takes milliseconds: do it off the event loop.
_THREAD_THRESHOLD = 1 << 20
#: Past this size, verifying one does (a 15 KB bundle takes about a millisecond).
_VERIFY_THREAD_THRESHOLD = 128 << 10
#: Distinct archived state.json bodies compared with the bundle's state before falling
#: back to serialising it (the matching one is nearly always the newest).
_STATE_CANDIDATES = 32
#: Trusted bundles of a record tried, newest first, for one that still verifies under
#: the keys of now (after a change of keys, the newest may not).
_BUNDLE_CANDIDATES = 16

_ETAG = re.compile(r'(?:W/)?"([^"]*)"')


@dataclass(frozen=True, slots=True)
class Body:
    """One document as served: its bytes and validators."""

    data: bytes
    etag: str
    """Strong: `"` + sha256 hex of `data` + `"`."""
    last_modified: str
    """An HTTP-date: when the archived body was fetched."""

    @classmethod
    def of(cls, data: bytes, fetched_at: datetime) -> Body:
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        return cls(data, etag, email.utils.format_datetime(fetched_at.astimezone(UTC), True))


@dataclass(frozen=True, slots=True)
class Served:
    """What is served for one record: its newest trusted bundle and a state equal to its
    `state`, as of the archive's snapshot `version`."""

    bundle: Body
    state: Body
    version: int
    """The record's newest snapshot id when this was read."""

    @property
    def size(self) -> int:
        return len(self.bundle.data) + len(self.state.data)


@dataclass(slots=True)
class _Entry:
    served: Served
    checked_at: float


class Catalog:
    """What the archive serves, per record, with a small LRU cache in front of it.

    A cached record is served from memory for `revalidate_after` seconds; then one
    query (its newest snapshot id) tells whether anything was archived since, and only
    then is it read again (blobs decompressed once per fill). Concurrent misses of one
    record wait for a single fill. Records without a trusted bundle are not cached.
    """

    def __init__(
        self,
        store: Store,
        trust: TrustSet,
        *,
        clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
        revalidate_after: float = REVALIDATE_AFTER,
        max_entries: int = CACHE_ENTRIES,
        max_bytes: int = CACHE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.trust = trust
        """The keys a body must verify under to be served (the archive's verdict was
        reached under the keys of its day)."""
        self.clock_skew = clock_skew
        self.revalidate_after = revalidate_after
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.fills = 0
        """How many times a record was read from the archive (for tests and metrics)."""
        self.judged = 0
        """How many bundles were verified before serving (for tests and metrics)."""
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._filling: dict[str, anyio.Lock] = {}
        self._withheld: OrderedDict[str, int] = OrderedDict()
        """Records whose every candidate failed verification, by the archive version
        they were judged at: asked again only once something newer is archived, so a
        flood of requests for one costs a query each, not sixteen verifications."""

    def retrust(self, trust: TrustSet) -> bool:
        """Serve under `trust` from now on (keys learned since the start, say): every
        record is judged again. Whether the keys changed."""
        if trust.digest == self.trust.digest:
            return False
        self.trust = trust
        self._entries.clear()
        self._bytes = 0
        self._withheld.clear()
        return True

    async def get(self, suffix: str) -> Served | None:
        """What to serve for a (well-formed) suffix; None when nothing trusted is archived."""
        hit = self._fresh(suffix)
        if hit is not None:
            return hit
        lock = self._filling.setdefault(suffix, anyio.Lock())
        try:
            async with lock:
                hit = self._fresh(suffix)  # filled while this task waited
                if hit is not None:
                    return hit
                return await self._refresh(suffix)
        finally:
            # The last task out removes the lock: the table holds only fills under way.
            idle = not lock.locked() and lock.statistics().tasks_waiting == 0
            if idle and self._filling.get(suffix) is lock:
                del self._filling[suffix]

    def _fresh(self, suffix: str) -> Served | None:
        entry = self._entries.get(suffix)
        if entry is None or self.clock() - entry.checked_at >= self.revalidate_after:
            return None
        self._entries.move_to_end(suffix)
        return entry.served

    async def _refresh(self, suffix: str) -> Served | None:
        entry = self._entries.get(suffix)
        if (
            entry is not None
            and await self.store.newest_snapshot_id(suffix) == entry.served.version
        ):
            entry.checked_at = self.clock()
            self._entries.move_to_end(suffix)
            return entry.served
        served = await self._load(suffix)
        self._forget(suffix)
        if served is not None:
            self._keep(suffix, served)
        return served

    async def _load(self, suffix: str) -> Served | None:
        # The version is read first: a snapshot archived while we read makes the next
        # check refill, never the reverse.
        version = await self.store.newest_snapshot_id(suffix)
        if version is None or self._withheld.get(suffix) == version:
            return None
        found = await self._verified_bundle(suffix)
        if found is None:
            self._withheld[suffix] = version
            self._withheld.move_to_end(suffix)
            while len(self._withheld) > self.max_entries:
                self._withheld.popitem(last=False)
            return None
        self._withheld.pop(suffix, None)
        snap, data = found
        self.fills += 1
        compact, expected = await _state_of(data, snap)
        state = await self._matching_state(suffix, compact, expected)
        return Served(
            Body.of(data, snap.fetched_at),
            state if state is not None else Body.of(compact, snap.fetched_at),
            version,
        )

    async def _verified_bundle(self, suffix: str) -> tuple[Snapshot, bytes] | None:
        """The newest trusted bundle that verifies under `trust` (as of its fetch: the
        archive's one rule, `verify_archived`), and its bytes."""
        judged: set[str] = set()
        for snap in await self.store.trusted.newest_bundles(suffix, limit=_BUNDLE_CANDIDATES):
            if snap.body_sha256 in judged:
                continue  # the same bytes from another mirror, or judged again: one verdict
            judged.add(snap.body_sha256)
            data = await self.store.get_blob(snap.body_sha256)
            judge = functools.partial(
                verify_archived,
                data,
                "bundle",
                self.trust,
                fetched_at=snap.fetched_at,
                clock_skew=self.clock_skew,
                expected_suffix=suffix,
            )
            big = len(data) > _VERIFY_THREAD_THRESHOLD  # long work: off the event loop
            report = await anyio.to_thread.run_sync(judge) if big else judge()
            self.judged += 1
            if report.ok:
                return snap, data
            log.warning(
                "serve_withheld",
                suffix=suffix,
                snapshot_id=snap.id,
                body_sha256=snap.body_sha256,
                findings=sorted({f.code for f in report.findings}),
            )
        return None

    async def _matching_state(self, suffix: str, compact: bytes, expected: bytes) -> Body | None:
        """A trusted archived state.json whose content is the bundle's `state`, if any."""
        compact_sha = hashlib.sha256(compact).hexdigest()
        seen: set[str] = set()
        for snap in await self.store.trusted.states(suffix, limit=_STATE_CANDIDATES):
            if snap.body_sha256 in seen:
                continue
            seen.add(snap.body_sha256)
            if snap.body_sha256 == compact_sha:
                return Body.of(compact, snap.fetched_at)  # the same bytes: no need to read
            data = await self.store.get_blob(snap.body_sha256)
            try:
                if canon(parse(data)) == expected:
                    return Body.of(data, snap.fetched_at)
            except MalformedJSON:
                continue
        return None

    def _forget(self, suffix: str) -> None:
        entry = self._entries.pop(suffix, None)
        if entry is not None:
            self._bytes -= entry.served.size

    def _keep(self, suffix: str, served: Served) -> None:
        self._entries[suffix] = _Entry(served, self.clock())
        self._bytes += served.size
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_entries or self._bytes > self.max_bytes
        ):
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.served.size


async def _state_of(data: bytes, snap: Snapshot) -> tuple[bytes, bytes]:
    """The bundle's `state` serialised compactly, and as canonical JSON."""
    if len(data) > _THREAD_THRESHOLD:
        return await anyio.to_thread.run_sync(_state_forms, data, snap)
    return _state_forms(data, snap)


def _state_forms(data: bytes, snap: Snapshot) -> tuple[bytes, bytes]:
    try:
        doc = parse(data)
    except MalformedJSON as e:
        raise StoreCorrupt(f"trusted snapshot {snap.id} is not JSON: {e}") from e
    state = doc.get("state") if isinstance(doc, dict) else None
    if not isinstance(state, dict):
        raise StoreCorrupt(f"trusted snapshot {snap.id} is a bundle without a state object")
    compact = json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode()
    return compact, canon(state)


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


def _app(h: _Handlers) -> web.Application:
    """The mirror's routes; HEAD is answered for every GET route."""
    app = web.Application()
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
) -> AsyncIterator[Server]:
    """Serve `store` on HOST:PORT (0: any free port) until the block ends; a bundle is
    served only if it verifies under `trust`.

    `OperationalError` when the address cannot be bound. Leaving the block (a cancel
    included) stops accepting, lets in-flight requests finish briefly, and closes.
    """
    catalog = catalog or Catalog(store, trust, clock_skew=clock_skew)
    server_log = logging.getLogger("aiohttp.server")
    if _not_a_client_error not in server_log.filters:
        server_log.addFilter(_not_a_client_error)
    handlers = _Handlers(catalog, base_url)
    runner = web.AppRunner(
        _app(handlers),
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
