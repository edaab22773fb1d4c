"""The fetcher against real aiohttp servers on loopback: where the network is the subject."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import struct
import subprocess
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given
from hypothesis import strategies as st

from pithcrawl.addresses import PublicResolver, is_public_address
from pithcrawl.errors import (
    BadResponse,
    ConnectionFailed,
    FetchError,
    FetchTimeout,
    IncompleteBody,
    RedirectError,
    RedirectRefused,
    TLSError,
    TooLarge,
)
from pithcrawl.fetch import (
    FetchResult,
    parse_retry_after,
    user_agent,
)
from pithcrawl.fetch.client import HttpFetcher

MIB = 1 << 20
NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def serve(
    *routes: web.RouteDef, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Run an aiohttp app on 127.0.0.1, port chosen by the kernel; yield its base URL."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serve_raw(response: bytes) -> AsyncIterator[str]:
    """A server that answers any request with exactly `response`, then closes: for the
    malformed answers aiohttp.web cannot be made to send."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def fetcher(**options: Any) -> AsyncIterator[HttpFetcher]:
    settings: dict[str, Any] = {"user_agent": "pithcrawl-test/1", "timeout": 2.0}
    settings.update(options)
    async with HttpFetcher(**settings) as f:
        yield f


async def get(base: str, path: str, **options: Any) -> FetchResult:
    async with fetcher(**options) as f:
        return await f.get(base + path)


def gzip_bomb(mebibytes: int) -> Iterator[bytes]:
    """A valid gzip stream of `mebibytes` MiB of zeros, produced lazily (~1 KB per MiB).

    Each MiB is compressed once and ended with a full flush, which resets the
    compressor's state, so every later MiB compresses to the same bytes: a 1 GiB bomb
    costs two small compress calls here instead of five seconds of deflate. The CRC of
    the trailer is only computed if a client reads that far.
    """
    zeros = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    yield compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    for _ in range(mebibytes - 1):
        yield block
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(zeros, crc)
    final_block = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
    yield final_block + struct.pack("<II", crc, (mebibytes * MIB) & 0xFFFFFFFF)


def test_gzip_bomb_helper_is_valid_gzip() -> None:
    """The bomb below is a real gzip stream that decodes to zeros of the stated size."""
    decoded = zlib.decompress(b"".join(gzip_bomb(3)), 16 + zlib.MAX_WBITS)
    assert decoded == bytes(3 * MIB)


# --- ordinary answers ------------------------------------------------------------


@pytest.mark.anyio
async def test_ok_returns_body_and_validators() -> None:
    """A 200 comes back with its exact body, ETag, Last-Modified and Content-Type."""

    async def bundle(request: web.Request) -> web.Response:
        return web.Response(
            body=b'{"a":1}',
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "ETag": '"v1"',
                "Last-Modified": "Fri, 01 May 2026 10:00:00 GMT",
            },
        )

    async with serve(web.get("/bundle.json", bundle)) as base:
        before = datetime.now(UTC)
        result = await get(base, "/bundle.json")
    assert result.status == 200
    assert result.ok
    assert result.body == b'{"a":1}'
    assert result.etag == '"v1"'
    assert result.last_modified == "Fri, 01 May 2026 10:00:00 GMT"
    assert result.content_type == "application/json; charset=utf-8"
    assert result.url == result.final_url == base + "/bundle.json"
    assert result.retry_after is None
    assert before <= result.fetched_at <= datetime.now(UTC)
    assert result.fetched_at.tzinfo is UTC
    assert 0 < result.elapsed < 10  # generous: a loaded CI machine is slow, not wrong


@pytest.mark.anyio
async def test_conditional_get_returns_304_with_empty_body() -> None:
    """A matching ETag gets a 304 with an empty body; without one, the full body."""

    async def bundle(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.Response(body=b"full")

    async with serve(web.get("/b", bundle)) as base, fetcher() as f:
        result = await f.get(
            base + "/b", etag='"v1"', last_modified="Fri, 01 May 2026 10:00:00 GMT"
        )
        unconditional = await f.get(base + "/b")
    assert result.status == 304
    assert result.not_modified
    assert result.body == b""
    assert result.etag == '"v1"'
    assert unconditional.body == b"full"


@pytest.mark.anyio
async def test_conditional_headers_are_sent() -> None:
    """Both validators arrive at the server exactly as given."""
    seen: list[tuple[str | None, str | None]] = []

    async def bundle(request: web.Request) -> web.Response:
        seen.append(
            (request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since"))
        )
        return web.Response(status=304)

    async with serve(web.get("/b", bundle)) as base, fetcher() as f:
        await f.get(base + "/b", etag='W/"x"', last_modified="Fri, 01 May 2026 10:00:00 GMT")
    assert seen == [('W/"x"', "Fri, 01 May 2026 10:00:00 GMT")]


@pytest.mark.anyio
async def test_user_agent_arrives() -> None:
    """The configured User-Agent is what the server sees, and only gzip/deflate are offered."""
    seen: list[tuple[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append((request.headers["User-Agent"], request.headers["Accept-Encoding"]))
        return web.Response(body=b"")

    async with serve(web.get("/", echo)) as base:
        await get(base, "/", user_agent=user_agent("ops@example.org"))
    assert seen == [("pithcrawl/0.1.0 (+ops@example.org)", "gzip, deflate")]


@pytest.mark.anyio
async def test_gzip_body_is_decoded() -> None:
    """A gzip-encoded body comes back decoded."""

    async def gz(request: web.Request) -> web.Response:
        body = zlib.compress(b'{"ok":true}', wbits=16 + zlib.MAX_WBITS)
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})

    async with serve(web.get("/", gz)) as base:
        result = await get(base, "/")
    assert result.body == b'{"ok":true}'


@pytest.mark.anyio
@pytest.mark.parametrize("status", [404, 410, 500, 503])
async def test_error_statuses_are_results(status: int) -> None:
    """4xx and 5xx are returned, body included, for the caller to judge."""

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=status, body=b"nope")

    async with serve(web.get("/", fail)) as base:
        result = await get(base, "/")
    assert (result.status, result.body, result.ok, result.retry_after) == (
        status,
        b"nope",
        False,
        None,
    )


@pytest.mark.anyio
async def test_429_retry_after_seconds() -> None:
    """Retry-After in delta-seconds is returned as seconds."""

    async def limited(request: web.Request) -> web.Response:
        return web.Response(status=429, headers={"Retry-After": "120"})

    async with serve(web.get("/", limited)) as base:
        result = await get(base, "/")
    assert (result.status, result.retry_after) == (429, 120.0)


@pytest.mark.anyio
async def test_503_retry_after_http_date() -> None:
    """Retry-After as an HTTP-date becomes seconds from when the answer arrived."""

    async def limited(request: web.Request) -> web.Response:
        when = datetime.now(UTC) + timedelta(seconds=120)
        return web.Response(status=503, headers={"Retry-After": format_datetime(when, True)})

    async with serve(web.get("/", limited)) as base:
        result = await get(base, "/")
    assert result.status == 503
    assert result.retry_after is not None
    assert 118 <= result.retry_after <= 120  # the date has one-second resolution


# --- Retry-After parsing (pure) ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        (" 30 ", 30.0),
        ("Fri, 01 May 2026 12:02:00 GMT", 120.0),
        ("Friday, 01-May-26 12:00:30 GMT", 30.0),  # RFC 850
        ("Fri May  1 12:00:10 2026", 10.0),  # asctime
        ("Fri, 01 May 2026 11:00:00 GMT", 0.0),  # in the past: now
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        ("٣", None),  # a digit, but not an ASCII one
        ("Mon, 01 Jan 99999999999999999999 00:00:00 GMT", None),  # OverflowError inside
        ("Mon, 01 Jan 2024 00:00:00 +99999999999999999999", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Both forms of Retry-After, relative to now; anything else is None."""
    assert parse_retry_after(value, NOW) == expected


@given(st.integers(min_value=0, max_value=10**30))
def test_parse_retry_after_delta_seconds_roundtrip(seconds: int) -> None:
    """Any delta-seconds value parses to itself."""
    assert parse_retry_after(str(seconds), NOW) == float(seconds)


# --- the byte cap ------------------------------------------------------------------


@pytest.mark.anyio
async def test_declared_length_over_cap_is_refused_early() -> None:
    """A Content-Length over the cap is refused before the body is read."""

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=bytes(2 * MIB))

    async with serve(web.get("/", big)) as base:
        with pytest.raises(TooLarge, match=r"Content-Length 2097152 exceeds the 1048576-byte"):
            await get(base, "/", max_bytes=MIB)


@pytest.mark.anyio
async def test_chunked_body_over_cap_stops_at_cap() -> None:
    """Without a Content-Length, reading stops once more than the cap has arrived."""
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(1024):
                await resp.write(bytes(64 * 1024))
                sent += 64 * 1024
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass
        return resp

    async with serve(web.get("/", endless)) as base:
        with pytest.raises(TooLarge, match=r"body exceeds the 1048576-byte limit$"):
            await get(base, "/", max_bytes=MIB)
    assert sent < 16 * MIB  # the client hung up rather than draining 64 MiB


@pytest.mark.anyio
async def test_body_exactly_at_cap_is_accepted() -> None:
    """The cap is inclusive: max_bytes bytes are fine."""

    async def exact(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1000)

    async with serve(web.get("/", exact)) as base:
        result = await get(base, "/", max_bytes=1000)
    assert len(result.body) == 1000


@pytest.mark.anyio
async def test_gzip_bomb_stops_at_cap_with_bounded_memory() -> None:
    """1 GiB of gzipped zeros (~1 MB on the wire) fails at the cap on decoded bytes,
    and memory grows by a few MiB, not by the gigabyte."""

    async def bomb(request: web.Request) -> web.StreamResponse:
        # No Content-Length: the compressed size (~1 MB) would be under the cap anyway.
        resp = web.StreamResponse(headers={"Content-Encoding": "gzip"})
        await resp.prepare(request)
        try:
            for piece in gzip_bomb(1024):
                await resp.write(piece)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass
        return resp

    already_tracing = tracemalloc.is_tracing()
    async with serve(web.get("/", bomb)) as base:
        if not already_tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        try:
            with pytest.raises(TooLarge, match=r"limit after gzip decoding"):
                await get(base, "/", max_bytes=2 * MIB)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            if not already_tracing:
                tracemalloc.stop()
    growth = peak - before
    # The 2 MiB kept below the cap, plus a few decoded chunks in flight: not 1 GiB.
    assert growth < 8 * MIB, f"memory grew by {growth / MIB:.1f} MiB"


@pytest.mark.anyio
async def test_decoded_body_is_read_in_pieces_without_an_extra_copy() -> None:
    """100 MiB of gzipped zeros under a small, honest Content-Length, at a 1 MB cap: the
    heap holds the bytes kept below the cap and aiohttp's buffers, not a copy of all it
    had buffered at once (reading that whole took ~3.3 MB here, the fixed pieces ~1.9)."""
    bomb = b"".join(gzip_bomb(100))

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip"})

    cap = 1_000_000
    already_tracing = tracemalloc.is_tracing()
    async with serve(web.get("/", handler)) as base, fetcher(max_bytes=cap) as f:
        await f.get(base + "/nothing")  # the first request's one-time allocations
        if not already_tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        try:
            with pytest.raises(TooLarge, match=r"limit after gzip decoding"):
                await f.get(base + "/")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            if not already_tracing:
                tracemalloc.stop()
    growth = peak - before
    assert growth < 2.5 * cap, f"memory grew by {growth / 1e6:.1f} MB"


@pytest.mark.anyio
async def test_undecodable_gzip_is_a_bad_response() -> None:
    """A body that claims gzip but is not is a BadResponse naming the URL."""

    async def broken(request: web.Request) -> web.Response:
        return web.Response(body=b"definitely not gzip", headers={"Content-Encoding": "gzip"})

    async with serve(web.get("/", broken)) as base:
        with pytest.raises(BadResponse, match=r"127\.0\.0\.1.*could not be decoded"):
            await get(base, "/")


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


BODY = b'{"hello": "' + b"mirror " * 5000 + b'"}'


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", _gzip),
        ("x-gzip", _gzip),
        ("deflate", zlib.compress),  # the zlib wrapper, as RFC 9110 says
        ("deflate", lambda d: zlib.compress(d)[2:-4]),  # raw deflate, as some servers send
        ("gzip", lambda d: _gzip(d[:1000]) + _gzip(d[1000:])),  # two members (RFC 1952)
        ("identity", lambda d: d),
    ],
    ids=["gzip", "x-gzip", "deflate-zlib", "deflate-raw", "gzip-two-members", "identity"],
)
async def test_each_encoding_decodes_to_the_exact_body(encoding, encode) -> None:
    """Every encoding pithcrawl asks for (and the forms servers really send) decodes to
    exactly the bytes that were encoded."""
    sent = encode(BODY)
    async with serve_raw(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (encoding.encode(), len(sent), sent)
    ) as base:
        result = await get(base, "/")
    assert result.body == BODY


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_stream_cut_short_is_an_incomplete_body(encoding) -> None:
    """A compressed stream that stops before its end, under an honest Content-Length for
    the bytes that were sent, is a transfer that did not complete (aiohttp's own decoder
    handed the half body over as if whole, which then read as malformed JSON)."""
    whole = _gzip(BODY) if encoding == "gzip" else zlib.compress(BODY)
    sent = whole[: len(whole) // 2]
    async with serve_raw(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (encoding.encode(), len(sent), sent)
    ) as base:
        cut = rf"127\.0\.0\.1.*the {encoding} stream was cut short"
        with pytest.raises(IncompleteBody, match=cut):
            await get(base, "/")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("encoding", "body", "message"),
    [
        ("gzip", _gzip(BODY)[:-8] + b"\0" * 8, "could not be decoded"),  # a bad CRC
        ("gzip", _gzip(BODY) + b"trailing junk", "data after the end of the gzip stream"),
        ("br", b"whatever", "a Content-Encoding that was not asked for: 'br'"),
    ],
    ids=["bad-crc", "junk-after-the-end", "unasked-encoding"],
)
async def test_a_stream_that_is_not_what_it_says_is_a_bad_response(encoding, body, message):
    """A body whose encoding is broken or was never asked for is a BadResponse (exit 3)."""
    async with serve_raw(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (encoding.encode(), len(body), body)
    ) as base:
        with pytest.raises(BadResponse, match=re.escape(message)):
            await get(base, "/")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "header",
    [
        b'ETag: "caf\xe9"',  # Latin-1: not UTF-8 at all
        b'ETag: "a\x01b"',  # a control byte aiohttp would refuse to send back
        b'ETag: "a\x7fb"',
        b"Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\x01",
        b"Last-Modified: L\xe9 1 janvier",
    ],
)
async def test_a_validator_unfit_to_send_back_is_left_out_and_named(header) -> None:
    """An ETag or Last-Modified holding a byte that is not visible ASCII is not kept (it
    could be neither stored as text nor sent back), and the result names it."""
    name = header.split(b":")[0].decode()
    async with serve_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n%s\r\n\r\n{}" % header) as base:
        result = await get(base, "/")
    assert (result.status, result.body) == (200, b"{}")
    assert (result.etag, result.last_modified) == (None, None)
    assert [h.lower() for h in result.refused] == [name.lower()]


@pytest.mark.anyio
async def test_a_validator_unfit_to_send_is_not_sent() -> None:
    """A validator an older pithcrawl archived with a control byte in it is not sent (it
    made aiohttp refuse the request, on every pass); the fit one still is."""
    seen: list[tuple[str | None, str | None]] = []

    async def ok(request: web.Request) -> web.Response:
        seen.append(
            (request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since"))
        )
        return web.Response(body=b"{}")

    async with serve(web.get("/", ok)) as base, fetcher() as f:
        await f.get(base + "/", etag='"a\x01b"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
        await f.get(base + "/", etag='"fine"', last_modified="\x7f")
    assert seen == [(None, "Mon, 01 Jan 2024 00:00:00 GMT"), ('"fine"', None)]


# --- broken peers ------------------------------------------------------------------


@pytest.mark.anyio
async def test_truncated_body_is_incomplete() -> None:
    """A body shorter than its Content-Length, then a clean close, is an IncompleteBody."""

    async def short(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"x" * 500)
        assert request.transport is not None
        request.transport.close()
        return resp

    async with serve(web.get("/", short)) as base:
        with pytest.raises(IncompleteBody, match=r"127\.0\.0\.1.*cut short"):
            await get(base, "/")


@pytest.mark.anyio
async def test_connection_reset_mid_body_is_incomplete() -> None:
    """A TCP reset after part of the body is an IncompleteBody naming the URL."""

    async def reset(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 100_000
        await resp.prepare(request)
        await resp.write(b"x" * 1000)
        await anyio.sleep(0.05)  # let the client start on the body
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()  # with linger 0: RST, not FIN
        return resp

    async with serve(web.get("/", reset)) as base:
        with pytest.raises(IncompleteBody, match=r"127\.0\.0\.1"):
            await get(base, "/")


@pytest.mark.anyio
async def test_slow_drip_times_out() -> None:
    """A server that drips bytes slower than the timeout allows is a FetchTimeout."""

    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(50):
                await resp.write(b"x")
                await anyio.sleep(0.05)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass
        return resp

    async with serve(web.get("/", drip)) as base:
        started = time.monotonic()
        with pytest.raises(
            FetchTimeout, match=r"timed out while reading the body \(timeout 0.5s\)"
        ):
            await get(base, "/", timeout=0.5)
    assert time.monotonic() - started < 10  # generous bound: a loaded machine is slow


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("response", "error", "message"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", BadResponse, "Bad status line"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", BadResponse, "Got more than"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", ConnectionFailed, "server closed the connection"),
        (b"", ConnectionFailed, "server closed the connection"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nhello",
            IncompleteBody,
            "cut short",
        ),
        (
            b"HTTP/1.1 302 Found\r\nLocation: http://[::1\r\nContent-Length: 0\r\n\r\n",
            BadResponse,
            "invalid Location 'http://\\[::1'",
        ),
    ],
    ids=["not-http", "huge-header", "cut-headers", "empty", "cut-chunked", "bad-location"],
)
async def test_malformed_responses_are_fetch_errors(
    response: bytes, error: type[FetchError], message: str
) -> None:
    """Whatever a broken server sends, the error is ours, one line, naming the URL."""
    async with serve_raw(response) as base:
        with pytest.raises(error, match=message) as caught:
            await get(base, "/doc")
    text = str(caught.value)
    assert text.startswith(base + "/doc: ")
    assert "\n" not in text
    assert len(text) < 300


@pytest.mark.anyio
async def test_connection_refused() -> None:
    """Nobody listening is a ConnectionFailed naming the URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionFailed, match=rf"127\.0\.0\.1:{port}/x"):
        await get(f"http://127.0.0.1:{port}", "/x")


@pytest.mark.anyio
async def test_tls_to_a_plain_http_server_is_a_tls_error() -> None:
    """A failed TLS handshake is a TLSError, not a bare ssl exception."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=b"plain")

    async with serve(web.get("/", ok)) as base:
        with pytest.raises(TLSError, match=r"TLS failed"):
            await get(base.replace("http://", "https://"), "/")


@pytest.fixture
def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.mark.anyio
async def test_untrusted_certificate_is_a_tls_error(self_signed: ssl.SSLContext) -> None:
    """A self-signed certificate fails verification as a TLSError."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=b"secret")

    async with serve(web.get("/", ok), ssl_context=self_signed) as base:
        with pytest.raises(TLSError, match=r"certificate"):
            await get(base, "/")


@pytest.mark.anyio
async def test_not_an_http_url() -> None:
    """A URL that is not absolute http(s) is refused before any connection."""
    async with fetcher() as f:
        for url in ("ftp://example.org/x", "/relative", "http://"):
            with pytest.raises(FetchError, match="not an absolute http"):
                await f.get(url)


@pytest.mark.anyio
async def test_get_outside_context_is_a_bug() -> None:
    """Using the fetcher without `async with` is a programming error."""
    with pytest.raises(RuntimeError, match="outside `async with`"):
        await HttpFetcher(user_agent="x").get("http://127.0.0.1/")


# --- redirects ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_redirects_are_followed_and_vetted() -> None:
    """Each hop's absolute target goes through allow_url; the final URL is reported."""
    vetted: list[str] = []

    async def first(request: web.Request) -> web.Response:
        raise web.HTTPFound("/second")

    async def second(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/final?x=1")

    async def final(request: web.Request) -> web.Response:
        return web.Response(body=b"here")

    def allow(url: str) -> bool:
        vetted.append(url)
        return True

    routes = (web.get("/first", first), web.get("/second", second), web.get("/final", final))
    async with serve(*routes) as base:
        result = await get(base, "/first", allow_url=allow)
    assert (result.status, result.body) == (200, b"here")
    assert result.url == base + "/first"
    assert result.final_url == base + "/final?x=1"
    assert vetted == [base + "/second", base + "/final?x=1"]


@pytest.mark.anyio
async def test_redirect_loop_is_an_error() -> None:
    """A → B → A is refused as a loop, showing the chain."""

    async def a(request: web.Request) -> web.Response:
        raise web.HTTPFound("/b")

    async def b(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/a")

    async with serve(web.get("/a", a), web.get("/b", b)) as base:
        with pytest.raises(RedirectError, match=r"redirect loop: .*/a → .*/b → .*/a$"):
            await get(base, "/a")


@pytest.mark.anyio
async def test_too_many_redirects_is_an_error() -> None:
    """An endless chain of fresh URLs stops after max_redirects hops."""
    hits = 0

    async def hop(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        raise web.HTTPFound(f"/r/{int(request.match_info['n']) + 1}")

    async with serve(web.get("/r/{n}", hop)) as base:
        with pytest.raises(RedirectError, match=r"more than 3 redirects"):
            await get(base, "/r/0", max_redirects=3)
    assert hits == 4  # the original request and three followed hops


@pytest.mark.anyio
async def test_redirect_refused_by_allow_url() -> None:
    """A target the hook refuses raises RedirectRefused and is never requested."""
    requested: list[str] = []

    async def out(request: web.Request) -> web.Response:
        requested.append(request.path)
        raise web.HTTPFound("http://10.0.0.1/internal")

    async with serve(web.get("/out", out)) as base:
        with pytest.raises(
            RedirectRefused, match=r"redirect to http://10\.0\.0\.1/internal refused"
        ):
            await get(base, "/out", allow_url=lambda url: "10.0.0.1" not in url)
    assert requested == ["/out"]


@pytest.mark.anyio
async def test_redirect_to_a_non_http_scheme_is_an_error() -> None:
    """A redirect to file:// or similar is refused."""

    async def out(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "file:///etc/passwd"})

    async with serve(web.get("/", out)) as base:
        with pytest.raises(RedirectError, match=r"non-HTTP URL 'file:///etc/passwd'"):
            await get(base, "/")


@pytest.mark.anyio
async def test_redirect_without_location_is_a_result() -> None:
    """A 3xx without Location cannot be followed; it comes back as it is."""

    async def odd(request: web.Request) -> web.Response:
        return web.Response(status=302, body=b"where?")

    async with serve(web.get("/", odd)) as base:
        result = await get(base, "/")
    assert (result.status, result.body) == (302, b"where?")


# --- concurrency -------------------------------------------------------------------


async def _max_concurrent(requests: int, delay: float = 0.05, **options: Any) -> int:
    """Fire `requests` GETs at once at one host; the most the server saw in flight."""
    in_flight = peak = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(delay)
        in_flight -= 1
        return web.Response(body=b"ok")

    async with (
        serve(web.get("/{n}", slow)) as base,
        fetcher(**options) as f,
        anyio.create_task_group() as tg,
    ):
        for n in range(requests):
            tg.start_soon(f.get, f"{base}/{n}")
    return peak


@pytest.mark.anyio
async def test_per_host_limit_is_respected() -> None:
    """No more than per_host requests to one host are in flight at once."""
    assert await _max_concurrent(8, per_host=2, concurrency=10) == 2


@pytest.mark.anyio
async def test_global_limit_is_respected() -> None:
    """The global limit caps requests even when the per-host limit is higher."""
    assert await _max_concurrent(6, per_host=4, concurrency=1) == 1


@pytest.mark.anyio
async def test_queued_requests_do_not_use_up_their_timeout() -> None:
    """Waiting for a slot does not count against a request's timeout."""
    # 6 requests of 0.4 s through one slot take 2.4 s in all: longer than the timeout.
    assert await _max_concurrent(6, delay=0.4, per_host=1, timeout=2.0) == 1


# -- public addresses only (mirrors nobody configured) ------------------------------------


class _Answers(AbstractResolver):
    """A resolver that answers every name with fixed addresses."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        return None


@pytest.mark.anyio
async def test_the_public_resolver_keeps_public_addresses_only() -> None:
    mixed = PublicResolver(_Answers("10.0.0.7", "93.184.216.34", "::1", "2606:4700::1111"))
    kept = await mixed.resolve("mirror.example", 443)
    assert [r["host"] for r in kept] == ["93.184.216.34", "2606:4700::1111"]
    for private in ("127.0.0.1", "169.254.169.254", "192.168.1.2", "fd00::1", "0.0.0.0"):
        with pytest.raises(OSError, match="resolves to no public address"):
            await PublicResolver(_Answers(private)).resolve("rebound.example", 443)


@pytest.mark.anyio
async def test_a_public_only_get_never_connects_to_a_private_address() -> None:
    """`localhost` resolves to loopback: refused at connect time (the server is never
    asked), while the same GET without `public_only` is answered."""
    hits: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"{}")

    async with serve(web.get("/x", handler)) as base:
        url = base.replace("127.0.0.1", "localhost") + "/x"
        async with fetcher() as f:
            with pytest.raises(FetchError, match="no public address"):
                await f.get(url, public_only=True)
            assert hits == []
            assert (await f.get(url)).status == 200
    assert hits == ["/x"]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b:1::a00:1", False),  # local-use NAT64
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("2001:0:4136:e378::1", False),  # Teredo
        ("::a00:1", False),  # IPv4-compatible (deprecated)
    ],
)
def test_public_addresses_exclude_ipv6_forms_that_reach_ipv4_gateways(address, public):
    assert is_public_address(address) is public


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]"])
async def test_a_public_only_get_refuses_a_private_address_literal(host: str) -> None:
    """aiohttp connects to a literal without the resolver: the fetcher refuses it first."""
    hits: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"{}")

    async with serve(web.get("/x", handler)) as base, fetcher() as f:
        url = base.replace("127.0.0.1", host) + "/x"
        with pytest.raises(FetchError, match="is not a public address"):
            await f.get(url, public_only=True)
    assert hits == []


@pytest.mark.anyio
async def test_leaving_on_a_cancellation_still_closes_both_sessions() -> None:
    """A reload or a stop cancels the crawl inside `async with HttpFetcher`: its sessions
    must close anyway (each left open keeps its sockets, and aiohttp writes "Unclosed
    client session" to stderr, a line that breaks `jq` over the JSON log)."""
    sessions: list[aiohttp.ClientSession] = []
    with anyio.CancelScope() as scope:
        async with fetcher() as f:
            sessions += [f._session, f._public_session]  # type: ignore[list-item]
            scope.cancel()
            await anyio.sleep(1)
    assert len(sessions) == 2
    assert all(s.closed for s in sessions)


@pytest.mark.anyio
async def test_hosts_nobody_is_fetching_from_are_forgotten() -> None:
    """Each request redirected to a new host name: the per-host limits of hosts no
    longer in use are dropped (one was kept per name until the fetcher closed: 8,000
    redirects, 8,000 entries)."""

    async def hop(request: web.Request) -> web.Response:
        n = int(request.query.get("n", "0"))
        if n < 30:
            port = request.url.port
            raise web.HTTPFound(f"http://h{n}.localhost:{port}/?n={n + 1}")
        return web.Response(body=b"{}")

    class Loopback(AbstractResolver):
        async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[ResolveResult]:
            return [
                {
                    "hostname": host,
                    "host": "127.0.0.1",
                    "port": port,
                    "family": socket.AF_INET,
                    "proto": 0,
                    "flags": 0,
                }
            ]

        async def close(self) -> None:
            pass

    async with serve(web.get("/", hop)) as base, fetcher(max_redirects=40) as f:
        assert f._session is not None
        f._session._connector._resolver = Loopback()  # type: ignore[attr-defined]
        for _ in range(5):
            result = await f.get(base + "/")
            assert result.status == 200
        assert len(f._host_slots) == 0
