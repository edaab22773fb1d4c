"""A hostile Pith mirror on 127.0.0.1: raw asyncio, so it can misbehave below HTTP.

It serves well-behaved records (bundle and state.json, like `mirror.TestMirror`) next to
paths that misbehave in one chosen way each: a body that drips, never ends, declares a
terabyte, decompresses to a hundred megabytes, stops short or ends in a TCP reset;
redirects; any status with any headers; any bytes at all. Every answer carries
`Connection: close`, so each request is one connection and nothing lingers in a pool.

async with HostileMirror() as h:
    h.put(good.bytes())                                   # a well-behaved record
    h.route(f"/pith/{suffix}/bundle.json", endless())     # one misbehaviour per path
    h.base_url                                            # http://127.0.0.1:PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import struct
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: How long a handler that never finishes on its own (a drip, an endless body) may run.
GIVE_UP_AFTER = 10.0
MIB = 1 << 20

Handler = Callable[[asyncio.StreamWriter], Awaitable[None]]
"""Writes one whole answer (or a broken one) to a fresh connection; the caller closes it."""


def _head(status: int, headers: Mapping[str, str | int]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Whatever')}"]
    lines += [f"{k}: {v}" for k, v in {**headers, "Connection": "close"}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_REASONS = {
    200: "OK",
    302: "Found",
    404: "Not Found",
    410: "Gone",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def respond(
    status: int = 200,
    body: bytes = b"",
    headers: Mapping[str, str | int] | None = None,
    *,
    content_type: str = "application/json",
) -> Handler:
    """An honest answer: any status, any headers, any bytes, with a correct length."""

    async def handler(writer: asyncio.StreamWriter) -> None:
        head = {"Content-Type": content_type, "Content-Length": len(body), **(headers or {})}
        # Two writes, not one of their concatenation: a copy of a large body would count
        # in the heap the memory tests measure (this server runs in the test's process).
        writer.write(_head(status, head))
        writer.write(body)
        await writer.drain()

    return handler


def redirect(location: str, status: int = 302) -> Handler:
    return respond(status, headers={"Location": location})


def drip(every: float = 0.1, declared: int = 100_000) -> Handler:
    """Headers at once, then one byte of the declared body every `every` seconds: each
    read is quick, so only a deadline on the whole body can end it."""

    async def handler(writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, {"Content-Type": "application/json", "Content-Length": declared}))
        for _ in range(min(declared, int(GIVE_UP_AFTER / every))):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(every)

    return handler


def endless(declared: int | None = None) -> Handler:
    """A chunked body that never ends (or, with `declared`, a Content-Length of that many
    bytes, sent for real) as fast as the client reads it. One 64 KiB chunk is reused, so
    the server's own memory stays flat while the client's is measured."""
    piece = b" " * 65536
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)

    async def handler(writer: asyncio.StreamWriter) -> None:
        if declared is None:
            head = {"Transfer-Encoding": "chunked"}
            data = chunk
        else:
            head = {"Content-Length": declared}
            data = piece
        writer.write(_head(200, {"Content-Type": "application/json", **head}))
        deadline = asyncio.get_running_loop().time() + GIVE_UP_AFTER
        while asyncio.get_running_loop().time() < deadline:
            writer.write(data)
            await writer.drain()

    return handler


@functools.cache
def gzip_bomb(mebibytes: int) -> bytes:
    """A valid gzip stream of `mebibytes` MiB of zeros, ~1 KB per MiB, built once.

    Each MiB is compressed once and ended with a full flush, which resets the
    compressor's state, so every later MiB compresses to the same bytes.
    """
    zeros = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(zeros, crc)
    end = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
    trailer = struct.pack("<II", crc, (mebibytes * MIB) & 0xFFFFFFFF)
    return first + block * (mebibytes - 1) + end + trailer


def bomb(mebibytes: int = 100) -> Handler:
    """`Content-Encoding: gzip` over a small, honest Content-Length: the bytes on the
    wire are well under any cap, the decoded ones far over it."""
    return respond(200, gzip_bomb(mebibytes), {"Content-Encoding": "gzip"})


def cut_short(body: bytes, sent: int) -> Handler:
    """Declares `body`'s length, sends its first `sent` bytes, then closes cleanly (FIN)."""

    async def handler(writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, {"Content-Type": "application/json", "Content-Length": len(body)}))
        writer.write(body[:sent])
        await writer.drain()

    return handler


def reset(body: bytes, sent: int) -> Handler:
    """Declares `body`'s length, sends its first `sent` bytes, then a TCP reset (RST)."""

    async def handler(writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, {"Content-Type": "application/json", "Content-Length": len(body)}))
        writer.write(body[:sent])
        await writer.drain()
        await asyncio.sleep(0.05)  # let the client start on the body
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # with linger 0: RST, not FIN

    return handler


@dataclass
class HostileMirror:
    """A mirror on 127.0.0.1 that serves `routes` as told and anything else as 404."""

    __test__ = False  # not a pytest class

    routes: dict[str, Handler] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    """Requests per path, every path (404s included)."""
    requests: list[bytes] | None = None
    """When a list: the head of every request received, appended as it comes."""
    base_url: str = ""
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    def put(self, bundle: bytes, state: bytes | None = None) -> str:
        """Serve a well-behaved record (its state taken from the bundle unless given)."""
        doc = json.loads(bundle)
        suffix: str = doc["pith_number"].rpartition(":")[2]
        if state is None:
            state = json.dumps(doc["state"], separators=(",", ":"), ensure_ascii=False).encode()
        self.route(self.bundle_path(suffix), respond(200, bundle))
        self.route(self.state_path(suffix), respond(200, state))
        return suffix

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    @staticmethod
    def bundle_path(suffix: str) -> str:
        return f"/pith/{suffix}/bundle.json"

    @staticmethod
    def state_path(suffix: str) -> str:
        return f"/pith/{suffix}/state.json"

    def url(self, path: str) -> str:
        return self.base_url + path

    async def __aenter__(self) -> HostileMirror:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if self.requests is not None:
                self.requests.append(head)
            _method, path, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            self.hits[path] += 1
            handler = self.routes.get(path, respond(404, b"not here", content_type="text/plain"))
            await handler(writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client gave up (that is usually the point)
        except asyncio.CancelledError:
            # Only __aexit__ cancels a handler; ending quietly spares asyncio's stream
            # callback, which would report a cancelled connection task as an error.
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def unframed_reset(body: bytes, sent: int) -> Handler:
    """No Content-Length, no chunking (the body ends with the connection): the first
    `sent` bytes, then a TCP reset, which ends such a body as quietly as a close."""

    async def handler(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        )
        writer.write(body[:sent])
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return handler


def raw(response: bytes) -> Handler:
    """Exactly these bytes as the whole answer (headers included), then a close."""

    async def handler(writer: asyncio.StreamWriter) -> None:
        writer.write(response)
        await writer.drain()

    return handler
