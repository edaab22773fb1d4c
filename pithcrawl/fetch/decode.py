"""Undoing a response's `Content-Encoding` (gzip, deflate), strictly and within a cap.

aiohttp decodes bodies itself, but it accepts a gzip stream that stops short of its end
(the Content-Length honest, the stream inside cut off): the half body it hands over then
looks like a mirror serving malformed JSON, a security finding, when it is only a
transfer that did not complete. So pithcrawl asks aiohttp for the bytes as sent and
decodes them here, where the end of the stream is checked.

Owns `Decoder`: fed the body's bytes as they arrive, it returns decoded pieces of at most
`PIECE` bytes (so a bomb is counted as it expands, never inflated whole), and `finish`
says whether the stream really ended. It raises `IncompleteBody` for a stream cut short,
`BadResponse` for one that is not what it says (a bad CRC, a bad header, data after the
end) or an encoding we did not ask for. Pure: no I/O; the cap on the decoded total is the
caller's, which counts the pieces.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from pithcrawl.errors import BadResponse, IncompleteBody

#: The most decoded bytes handed over at once.
PIECE = 1 << 16
#: The encodings pithcrawl asks for (`Accept-Encoding`) and so accepts.
ACCEPTED = ("gzip", "deflate")
_GZIP_MAGIC = b"\x1f\x8b"


def _zlib_header(data: bytes) -> bool:
    """Whether `data` starts like RFC 1950's zlib wrapper (deflate as servers mostly
    send it); otherwise it is a raw RFC 1951 stream, which some servers send instead."""
    return len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0


class Decoder:
    """One body's decoding; see the module docstring. `encoding` is the header's value
    (None or "identity": the bytes pass through)."""

    __slots__ = ("_encoding", "_inflate", "_pending", "_where")

    def __init__(self, encoding: str | None, where: str) -> None:
        value = (encoding or "identity").strip().lower()
        if value == "x-gzip":
            value = "gzip"
        if value not in (*ACCEPTED, "identity"):
            raise BadResponse(f"{where}: a Content-Encoding that was not asked for: {value!r}")
        self._encoding = value
        self._where = where
        self._inflate: zlib._Decompress | None = None
        self._pending = b""  # deflate: the first bytes, until the wrapper can be told

    @property
    def encoding(self) -> str | None:
        return None if self._encoding == "identity" else self._encoding

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded pieces of the next bytes of the body."""
        if self._encoding == "identity":
            if data:
                yield data
            return
        if self._inflate is None:
            data = self._pending + data
            if len(data) < 2:
                self._pending = data
                return
            self._pending = b""
            self._inflate = self._start(data)
        yield from self._run(data)

    def _start(self, data: bytes) -> zlib._Decompress:
        if self._encoding == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        return zlib.decompressobj(zlib.MAX_WBITS if _zlib_header(data) else -zlib.MAX_WBITS)

    def _run(self, data: bytes) -> Iterator[bytes]:
        inflate = self._inflate
        assert inflate is not None
        while data:
            if inflate.eof:
                data = self._next_member(data)
                inflate = self._inflate
                assert inflate is not None
            try:
                piece = inflate.decompress(data, PIECE)
            except zlib.error as e:
                raise BadResponse(
                    f"{self._where}: the body could not be decoded ({self._encoding}: {e})"
                ) from None
            if piece:
                yield piece
            data = inflate.unconsumed_tail or inflate.unused_data
        # The input is used up, but the last piece may have stopped at the size of a
        # piece with more output held inside (a run the last bytes expand to).
        while not inflate.eof:
            try:
                piece = inflate.decompress(b"", PIECE)
            except zlib.error as e:
                raise BadResponse(
                    f"{self._where}: the body could not be decoded ({self._encoding}: {e})"
                ) from None
            if not piece:
                break
            yield piece

    def _next_member(self, data: bytes) -> bytes:
        """After the end of a gzip member, only another member may follow (RFC 1952
        allows several); anything else is refused rather than silently dropped."""
        if self._encoding != "gzip" or not data.startswith(_GZIP_MAGIC[: len(data)]):
            raise BadResponse(f"{self._where}: data after the end of the {self._encoding} stream")
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return data

    def finish(self) -> None:
        """The body's bytes ended: the stream must have ended with them."""
        if self._encoding == "identity":
            return
        if self._inflate is None:
            if not self._pending:
                return  # an empty body: nothing was encoded
            raise IncompleteBody(f"{self._where}: the {self._encoding} stream was cut short")
        if not self._inflate.eof:
            raise IncompleteBody(f"{self._where}: the {self._encoding} stream was cut short")
