"""Archived bodies in the `blobs` table: choosing a delta base on the way in, following
bases on the way out, and a small cache of recent bodies.

Owns the reads that storing and reading a body need; the codec and its checks are
`blobs`'. A body is stored as a delta against a related body already archived (the
previous body of its series, or for a state.json the bundle it was compared with) when
that pays (`blobs.packed`); reading it decompresses its bases first. Bases are never
deleted, and every base is shallower than the blob naming it, so following them ends.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Mapping

import anyio

from pithcrawl.errors import StoreCorrupt, StoreError
from pithcrawl.store.blobs import MAX_DEPTH, Base, PackedBlob, packed, unpack
from pithcrawl.store.connection import Database
from pithcrawl.store.rows import FetchOutcome

#: Bodies kept decoded in memory as the likely next bases (by sha256, so never stale).
CACHE_BYTES = 8 << 20
#: Past this size a body is packed before its write, in a worker thread: compressing it
#: takes long enough that the write transaction (and the database thread) should not wait.
LARGE_BODY = 1 << 20

# The named blob and the chain of its bases, deepest (self-contained) first.
_CHAIN = """
WITH RECURSIVE chain (sha256, size, codec, base, depth, data, n) AS (
    SELECT sha256, size, codec, base, depth, data, 0 FROM blobs WHERE sha256 = ?
    UNION ALL
    SELECT b.sha256, b.size, b.codec, b.base, b.depth, b.data, c.n + 1
    FROM blobs AS b JOIN chain AS c ON b.sha256 = c.base
    WHERE c.n < ?
)
SELECT sha256, size, codec, base, depth, data FROM chain ORDER BY n DESC
"""

_NEWEST_OF_SERIES = """
SELECT body_sha256 FROM snapshots WHERE suffix = ? AND mirror = ? AND kind = ?
ORDER BY id DESC LIMIT 1
"""

_BLOB_PLACE = "SELECT sha256, base, depth FROM blobs WHERE sha256 = ?"

#: The series' newest body was not read by the caller (`Bodies.pack_in`).
UNREAD = object()


class Bodies:
    """The `blobs` table of one archive.

    Packing a body runs in the database thread, inside the write that stores it
    (`pack_in`): choosing its base and reading that base are statements of the same
    call, and compressing there keeps zstd off the event loop. The cache is shared by
    that thread and the event loop's, so it is locked.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def pack_in(
        self,
        conn: sqlite3.Connection,
        fetch: FetchOutcome,
        at_hand: Mapping[str, tuple[PackedBlob, bytes]] | None = None,
        newest: str | object | None = UNREAD,
    ) -> PackedBlob | None:
        """`fetch`'s body as it will be stored (None if it has none), a delta if that
        pays. Runs in the database thread (`Session.call`). `at_hand`: the blobs just
        written in the same call and their bodies, by sha256 (not read back to serve as
        a base); `newest`: the sha256 of the newest body of `fetch`'s series (None: it
        has none), when the caller has read it."""
        if fetch.body is None:
            return None
        return packed(fetch.body, self._base(conn, fetch, at_hand or {}, newest))

    async def pack_large(self, fetch: FetchOutcome) -> PackedBlob | None:
        """`pack_in` for a body over `LARGE_BODY`, before its write: the base is chosen
        and read in a read turn, the compression runs in a worker thread. None for any
        other body (the write packs it). Bases are never deleted, but a read turn sees
        an open group's writes, which may yet be rolled back: the write checks that the
        base is there and packs the body again if it is not (`Store._write_fetch`)."""
        if fetch.body is None or len(fetch.body) <= LARGE_BODY:
            return None
        async with self._db.read("choose a delta base") as s:
            base = await s.call(self._base, fetch, {}, UNREAD)
        return await anyio.to_thread.run_sync(packed, fetch.body, base)

    def remember(self, blob: PackedBlob, body: bytes) -> None:
        """`body` was stored as `blob`: keep it at hand as the likely next base."""
        self._keep(blob.sha256, body)

    async def get(self, sha256: str) -> bytes:
        """The exact bytes once fetched with this sha256 (`StoreCorrupt` if damaged).

        Always read from the file and checked: the cache only serves choosing bases."""
        async with self._db.read("read a blob") as s:
            return await s.call(self._read, sha256)

    def _read(self, conn: sqlite3.Connection, sha256: str) -> bytes:
        rows = conn.execute(_CHAIN, (sha256, MAX_DEPTH)).fetchall()
        if not rows or rows[-1]["sha256"] != sha256:
            # Every reference to a body is checked on writing: one missing is damage.
            raise StoreCorrupt(f"no blob with sha256 {sha256} in the archive {self._db.path}")
        body: bytes | None = None
        below: str | None = None
        for row in rows:  # deepest first: each frame's dictionary is the one before it
            if row["base"] != below:
                raise StoreCorrupt(
                    f"blob {row['sha256']} names base {row['base']}, which is missing"
                    " or deeper than allowed"
                )
            try:
                body = unpack(row["sha256"], row["size"], row["codec"], row["data"], body)
            except StoreCorrupt as e:
                if row["sha256"] == sha256:
                    raise
                raise StoreCorrupt(f"{e} (it is a delta base of blob {sha256})") from e
            below = row["sha256"]
        assert body is not None
        self._keep(sha256, body)
        return body

    def _base(
        self,
        conn: sqlite3.Connection,
        fetch: FetchOutcome,
        at_hand: Mapping[str, tuple[PackedBlob, bytes]],
        newest: str | object | None,
    ) -> Base | None:
        """The best archived body to store `fetch`'s body against, if any: the related
        body the caller names, else the newest body of its series."""
        if newest is UNREAD:
            row = conn.execute(_NEWEST_OF_SERIES, (fetch.suffix, fetch.mirror, fetch.kind))
            found = row.fetchone()
            newest = None if found is None else found[0]
        for candidate in (fetch.related_sha256, newest):
            if not isinstance(candidate, str):
                continue
            held = at_hand.get(candidate)
            if held is not None:
                blob, body = held
                place: tuple[str, str | None, int] = (blob.sha256, blob.base, blob.depth)
            else:
                row = conn.execute(_BLOB_PLACE, (candidate,)).fetchone()
                if row is None:
                    continue
                place, body = (row["sha256"], row["base"], int(row["depth"])), None
            return self._stand_on(conn, place, body)
        return None

    def _stand_on(
        self, conn: sqlite3.Connection, place: tuple[str, str | None, int], body: bytes | None
    ) -> Base | None:
        """The blob at `place` (sha256, base, depth) as a base, or its own base when it
        is too deep to stand on; its bytes from `body`, the cache or the archive."""
        sha256, below, depth = place
        if depth >= MAX_DEPTH:  # too deep to stand on: its base is one level shallower
            if below is None:
                return None
            sha256, depth, body = below, depth - 1, None
        if body is None:
            with self._lock:
                body = self._cache.get(sha256)
                if body is not None:
                    self._cache.move_to_end(sha256)
        if body is not None:
            return Base(sha256, depth, body)
        try:
            body = self._read(conn, sha256)
        except StoreError:
            # A damaged or missing base is fsck's news; the new body is stored alone (an
            # error here would fail every write grouped with this one).
            return None
        return Base(sha256, depth, body)

    def _keep(self, sha256: str, body: bytes) -> None:
        if len(body) > CACHE_BYTES // 8:
            return
        with self._lock:
            if sha256 in self._cache:
                return
            self._cache[sha256] = body
            self._cached_bytes += len(body)
            while self._cached_bytes > CACHE_BYTES:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= len(old)
