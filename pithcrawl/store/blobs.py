"""How fetched bodies are kept: zstd-compressed, addressed by the sha256 of the raw bytes.

Owns the codec and the check on the way out (size and sha256 of the decompressed bytes),
so a damaged blob is reported as `StoreCorrupt` rather than served. The bytes in are
exactly the bytes received: signatures cover them, so nothing here normalises anything.
It runs no SQL.

A body may be stored as a delta: a zstd frame compressed with the exact bytes of another
blob (its *base*) as a raw-content dictionary. A record's next bundle is mostly its last
one, and a state.json is a copy of its bundle's `state`, so a changed record costs a few
hundred bytes instead of a few kilobytes. A delta is kept only when it is at most
`DELTA_MAX_RATIO` of the body; bases are at most `MAX_DEPTH` deep, so reading any body
decompresses a bounded number of frames.
"""

from __future__ import annotations

import hashlib
import queue
from dataclasses import dataclass

import zstandard

from pithcrawl.errors import StoreCorrupt

CODEC = "zstd"
#: A whole body (the first of a record, or one too unlike its last to be a delta): zstd's
#: default level. On the benchmark's bundles level 6 saves 4.6% of a frame (2,766 B
#: against 2,893) at three times the time (107 us against 37), on every cold pass.
_WHOLE_LEVEL = 3
#: A delta against its base: the level a bumped bundle's frame is smallest at for its
#: time; most stored bodies after the first pass are these.
_DELTA_LEVEL = 6
#: A delta frame's base may itself be a delta, up to this many frames deep.
MAX_DEPTH = 2
#: A delta larger than this fraction of the raw body is not worth a dependency: the body
#: is stored on its own (a self-contained frame is ~20-30% of a JSON body).
DELTA_MAX_RATIO = 0.125


@dataclass(frozen=True, slots=True)
class PackedBlob:
    sha256: str
    size: int
    codec: str
    data: bytes
    base: str | None = None
    """The blob whose bytes are this frame's dictionary (None: a self-contained frame)."""
    depth: int = 0
    """How many frames reading this one decompresses beyond itself."""


@dataclass(frozen=True, slots=True)
class Base:
    """A stored blob offered as the dictionary of a new one."""

    sha256: str
    depth: int
    body: bytes


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def packed(body: bytes, base: Base | None = None) -> PackedBlob:
    """A body as stored: a delta against `base` when that is small enough, else alone."""
    sha = sha256_hex(body)
    if base is not None and base.depth < MAX_DEPTH and base.sha256 != sha:
        # A compressor per base (its dictionary is the base's bytes).
        data = zstandard.ZstdCompressor(
            level=_DELTA_LEVEL, dict_data=_dictionary(base.body)
        ).compress(body)
        if len(data) <= DELTA_MAX_RATIO * len(body):
            return PackedBlob(sha, len(body), CODEC, data, base.sha256, base.depth + 1)
    return PackedBlob(sha, len(body), CODEC, _compressed(body))


#: Bodies up to this size are compressed by a pooled compressor; a larger one gets its
#: own, so a pooled one never grows its working memory to a hostile body's size and keeps it.
_REUSED_UP_TO = 256 * 1024

#: Idle compressors for whole frames, shared by the process's threads: making one costs
#: more than compressing a bundle with it, and zstandard's objects are not safe to use
#: from two threads at once, so each is taken out while in use (the pool grows to the
#: most compressions ever at once: the database thread and a few packing large bodies).
_idle: queue.SimpleQueue[zstandard.ZstdCompressor] = queue.SimpleQueue()


def _compressed(body: bytes) -> bytes:
    if len(body) > _REUSED_UP_TO:
        return zstandard.ZstdCompressor(level=_WHOLE_LEVEL).compress(body)
    try:
        compressor = _idle.get_nowait()
    except queue.Empty:
        compressor = zstandard.ZstdCompressor(level=_WHOLE_LEVEL)
    try:
        return compressor.compress(body)
    finally:
        _idle.put(compressor)


def _dictionary(base: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def unpack(sha256: str, size: int, codec: str, data: bytes, base: bytes | None = None) -> bytes:
    """The original bytes of a stored blob, checked against its size and sha256.

    `base`: the exact bytes of the blob it names as its base, for a delta frame."""
    if codec != CODEC:
        raise StoreCorrupt(f"blob {sha256} has unknown codec {codec!r}; expected {CODEC!r}")
    try:
        # zstandard allocates what the frame's header declares, whatever max_output_size
        # says: a damaged header must not size that allocation (one flipped bit claims
        # gigabytes). Our frames declare their size; -1 is a frame that does not say.
        declared = zstandard.frame_content_size(data)
        if declared not in (size, -1):
            raise StoreCorrupt(f"blob {sha256} should hold {size} bytes, its frame says {declared}")
        d = zstandard.ZstdDecompressor(dict_data=_dictionary(base) if base is not None else None)
        body: bytes = d.decompress(data, max_output_size=size)
    except (zstandard.ZstdError, MemoryError, ValueError) as e:
        raise StoreCorrupt(f"blob {sha256} does not decompress: {e}") from e
    if len(body) != size:
        raise StoreCorrupt(f"blob {sha256} should hold {size} bytes, found {len(body)}")
    actual = sha256_hex(body)
    if actual != sha256:
        raise StoreCorrupt(f"blob {sha256} is corrupt: its bytes hash to {actual}")
    return body
