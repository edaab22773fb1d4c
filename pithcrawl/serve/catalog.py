"""What `serve` serves: per record, the newest trusted bundle that still verifies, and a
state.json equal to that bundle's own `state`, with a small cache in front of the archive.

Owns `Catalog` (the LRU cache, refilled when the archive's newest snapshot of a record
changes, and the lookup behind it: trusted bundles newest first, each judged again by
`verify_archived` under the keys of now, then a matching archived state.json or the
bundle's `state` serialised compactly), and `Body`/`Served`, what is handed to the HTTP
side (`serve.http`), which owns routes, validators and the server.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
import structlog

from pithcrawl.canon import MalformedJSON, canon, parse
from pithcrawl.errors import StoreCorrupt
from pithcrawl.keys import TrustSet
from pithcrawl.store import Snapshot, Store
from pithcrawl.verify import DEFAULT_CLOCK_SKEW, verify_archived

log = structlog.get_logger("pithcrawl.serve")

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
