"""HTTP GETs of mirror documents: the one module that talks to the network.

Owns `HttpFetcher`, the real `Fetcher`: the aiohttp sessions (one of them connects to
public addresses only, for mirrors nobody configured) and everything about a single GET:
conditional requests (ETag / Last-Modified, only such as are fit to send back; unfit
ones a mirror sends are left out and named in `FetchResult.refused`), the byte cap (on
the declared length and the decoded bytes, decoded by `fetch.decode`, so a gzip bomb
stops at the cap and a stream cut short is an incomplete body), redirects
(bounded, looped chains refused, every target vetted by the caller's `allow_url` hook),
global and per-host concurrency limits, and the translation of every aiohttp, socket,
TLS and timeout error into a `FetchError` subclass (nothing foreign escapes). What a
fetch is (`FetchResult`, the `Fetcher` protocol, `user_agent`, `Retry-After` parsing) is
the `fetch` package's own (its `__init__`), not this module's. It does not judge
statuses: 404, 410, 429 and 5xx come back as results for `crawl` to decide on. It does
not retry, parse or verify bodies, or schedule.
"""

from __future__ import annotations

import inspect
import socket
import ssl
import time
from datetime import UTC, datetime
from types import TracebackType

import aiohttp
import anyio
from aiohttp import hdrs
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from yarl import URL

from pithcrawl.addresses import PublicResolver, is_public_address, literal_address
from pithcrawl.config import CrawlConfig
from pithcrawl.errors import (
    BadResponse,
    ConfigError,
    ConnectionFailed,
    FetchError,
    FetchTimeout,
    IncompleteBody,
    RedirectError,
    RedirectRefused,
    TLSError,
    TooLarge,
)
from pithcrawl.fetch import AllowUrl, FetchResult, parse_retry_after, user_agent
from pithcrawl.fetch.decode import Decoder
from pithcrawl.text import escaped, header_token, storable

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# A peer that goes quiet this long while connecting or between two reads is gone, even
# when the total timeout is generous.
_SOCK_TIMEOUT_MAX = 10.0
_ACCEPT_ENCODING = "gzip, deflate"
_DETAIL_MAX = 200
# Bytes taken from aiohttp's buffer per read of a body.
_READ_CHUNK = 1 << 16


def fetcher_for(crawl: CrawlConfig) -> HttpFetcher:
    """The one HTTP client of a pass or a round, as `[crawl]` configures it.

    `ConfigError` when `crawl.source_address` cannot be bound here (not an address of
    this machine): better said once, at the start, than as every fetch's error."""
    if crawl.source_address is not None:
        check_bindable(crawl.source_address)
    return HttpFetcher(
        user_agent=user_agent(crawl.contact),
        timeout=crawl.timeout.total_seconds(),
        max_bytes=crawl.max_bytes,
        concurrency=crawl.concurrency,
        per_host=crawl.per_host,
        source_address=crawl.source_address,
    )


def check_bindable(address: str) -> None:
    """`ConfigError` unless a socket can be bound to `address` (any free port)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError as e:
        raise ConfigError(
            f"crawl.source_address: cannot send from {address}: {e.strerror or e}"
            " (is it an address of this machine?)"
        ) from None


class HttpFetcher:
    """The real `Fetcher`: aiohttp, one session, used as `async with HttpFetcher(...) as f`.

    `timeout` bounds a whole GET: every hop of its redirects, each one's connect,
    headers and body (time spent waiting for a free slot excluded).
    `allow_url` sees every redirect target (not the URL asked for, which the caller
    chose); returning False refuses it with `RedirectRefused`.
    """

    __slots__ = (
        "_allow_url",
        "_concurrency",
        "_host_slots",
        "_max_bytes",
        "_max_redirects",
        "_per_host",
        "_public_session",
        "_session",
        "_slots",
        "_source_address",
        "_timeout",
        "_user_agent",
    )

    def __init__(
        self,
        *,
        user_agent: str,
        timeout: float = 30.0,
        max_bytes: int = 16_000_000,
        concurrency: int = 32,
        per_host: int = 4,
        max_redirects: int = 5,
        allow_url: AllowUrl | None = None,
        source_address: str | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        if concurrency < 1 or per_host < 1:
            raise ValueError(
                f"concurrency and per_host must be >= 1, got {concurrency}, {per_host}"
            )
        if max_redirects < 0:
            raise ValueError(f"max_redirects must be >= 0, got {max_redirects}")
        self._user_agent = user_agent
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._concurrency = concurrency
        self._per_host = per_host
        self._max_redirects = max_redirects
        self._allow_url = allow_url
        self._source_address = source_address
        self._session: aiohttp.ClientSession | None = None
        self._public_session: aiohttp.ClientSession | None = None
        self._slots: anyio.Semaphore | None = None
        self._host_slots: dict[str, anyio.Semaphore] = {}

    async def __aenter__(self) -> HttpFetcher:
        if self._session is not None:
            raise RuntimeError("HttpFetcher is already open")
        # fast_acquire: a free slot is taken without a trip through the event loop (the
        # request that follows yields anyway).
        self._slots = anyio.Semaphore(self._concurrency, fast_acquire=True)
        # Every connection from `source_address` (a vantage's own network), when set.
        local = None if self._source_address is None else (self._source_address, 0)
        self._session = self._new_session(
            aiohttp.TCPConnector(
                limit=self._concurrency, limit_per_host=self._per_host, local_addr=local
            )
        )
        # For public_only GETs: names are resolved at connect time to public addresses
        # only, so a name checked as public cannot be pointed elsewhere in between.
        self._public_session = self._new_session(
            aiohttp.TCPConnector(
                limit=self._concurrency,
                limit_per_host=self._per_host,
                resolver=PublicResolver(),
                local_addr=local,
            )
        )
        return self

    @staticmethod
    def _hop_timeout(budget: float) -> aiohttp.ClientTimeout:
        sock = min(budget, _SOCK_TIMEOUT_MAX)
        return aiohttp.ClientTimeout(total=budget, sock_connect=sock, sock_read=sock)

    def _new_session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            # Our semaphores queue requests before the timeout starts; the connector's
            # limits only back them up, so a request never times out waiting for a
            # pooled connection.
            connector=connector,
            timeout=self._hop_timeout(self._timeout),
            headers={hdrs.USER_AGENT: self._user_agent, hdrs.ACCEPT_ENCODING: _ACCEPT_ENCODING},
            cookie_jar=aiohttp.DummyCookieJar(),  # mirrors are static: no state between GETs
            raise_for_status=False,
            # Bodies are decoded by `fetch.decode`, which notices a gzip stream cut short
            # (aiohttp's decoder takes it for the whole body).
            auto_decompress=False,
            trust_env=False,
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        sessions = (self._session, self._public_session)
        self._session = self._public_session = None
        self._host_slots.clear()
        # Shielded: leaving on a cancellation (a reload, a stop) must still close both,
        # or each leaves its sockets open and an "Unclosed client session" line on stderr.
        with anyio.CancelScope(shield=True):
            for session in sessions:
                if session is not None:
                    await session.close()

    async def get(
        self,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        allow_url: AllowUrl | None = None,
        public_only: bool = False,
    ) -> FetchResult:
        """GET `url`, following redirects; see the module docstring for what raises.

        `public_only`: connect to public addresses only (`is_public_address`), whatever
        a name resolves to at that moment: for mirrors nobody configured."""
        allow = allow_url or self._allow_url
        session = self._public_session if public_only else self._session
        if session is None:
            raise RuntimeError("HttpFetcher.get() called outside `async with`")
        current = _http_url(url)
        if current is None:
            raise FetchError(f"{url}: not an absolute http(s) URL")
        headers: dict[str, str] = {}
        # Validators are what a mirror sent: only those fit to send back are (one kept
        # by an older pithcrawl may hold a byte aiohttp refuses to send).
        etag = header_token(etag, etag=True)
        last_modified = header_token(last_modified, etag=False)
        if etag is not None:
            headers[hdrs.IF_NONE_MATCH] = etag
        if last_modified is not None:
            headers[hdrs.IF_MODIFIED_SINCE] = last_modified
        chain = [str(current)]
        elapsed = 0.0
        while True:
            # The timeout bounds the whole chain of redirects, not each hop: a mirror
            # answering each hop just in time cannot hold a fetch for six timeouts.
            budget = self._timeout - elapsed
            if budget <= 0:
                raise FetchTimeout(
                    f"{url}: timed out following redirects (timeout {self._timeout:g}s"
                    f" for the whole chain): {' → '.join(chain)}"
                )
            literal = literal_address(current.host) if public_only else None
            if literal is not None and not is_public_address(literal):
                # aiohttp connects to a literal without asking the resolver.
                raise ConnectionFailed(
                    f"{url}: {literal} is not a public address (refused for a mirror"
                    " nobody configured)"
                )
            slots = await self._take_slots(current)
            started = time.monotonic()
            try:
                outcome = await self._hop(session, url, current, headers, budget, elapsed=elapsed)
            finally:
                elapsed += time.monotonic() - started
                self._give_back(slots)
            if isinstance(outcome, FetchResult):
                return outcome
            current = await self._follow(url, chain, outcome, allow)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST `body` (a webhook delivery); the response status. Redirects are not
        followed (a webhook that moved should be reconfigured, not chased)."""
        if self._session is None:
            raise RuntimeError("HttpFetcher.post() outside `async with`")
        target = URL(url)
        slots = await self._take_slots(target)
        try:
            async with self._session.post(
                target,
                data=body,
                headers={**headers, hdrs.USER_AGENT: self._user_agent},
                allow_redirects=False,
            ) as resp:
                await resp.content.read(65536)  # a reply body is not used; bound it anyway
                return resp.status
        except (aiohttp.ClientError, OSError, TimeoutError, UnicodeError) as exc:
            raise self._translate(exc, target, reading_body=False) from exc
        finally:
            self._give_back(slots)

    async def _follow(self, url: str, chain: list[str], target: URL, allow: AllowUrl | None) -> URL:
        """Vet one redirect target against the loop, the count and the caller's hook."""
        text = str(target)
        hops = " → ".join([*chain, text])
        if text in chain:
            raise RedirectError(f"{url}: redirect loop: {hops}")
        if len(chain) > self._max_redirects:
            raise RedirectError(f"{url}: more than {self._max_redirects} redirects: {hops}")
        allowed = True if allow is None else allow(text)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        if not allowed:
            raise RedirectRefused(f"{url}: redirect to {text} refused by policy: {hops}")
        chain.append(text)
        return target

    async def _take_slots(self, url: URL) -> tuple[str, anyio.Semaphore]:
        """A slot of `url`'s host, then one of the whole (give them back with
        `_give_back`). Plain calls, not a context manager: a pass of 100,000 records
        takes them 200,000 times."""
        assert self._slots is not None  # set with the session
        # By host and port, as aiohttp's connector counts them: two services on one
        # machine are two mirrors.
        host = f"{(url.host or '').lower()}:{url.port}"
        host_slot = self._host_slots.get(host)
        if host_slot is None:
            host_slot = self._host_slots[host] = anyio.Semaphore(self._per_host, fast_acquire=True)
        # Host first: a request queued behind a busy host must not hold a global slot
        # that requests to idle hosts could use. A free slot is taken without awaiting
        # (no trip through the event loop: the request after it awaits soon enough).
        try:
            host_slot.acquire_nowait()
        except anyio.WouldBlock:
            await host_slot.acquire()
        try:
            try:
                self._slots.acquire_nowait()
            except anyio.WouldBlock:
                await self._slots.acquire()
        except BaseException:
            self._give_back((host, host_slot), whole=False)
            raise
        return host, host_slot

    def _give_back(self, slots: tuple[str, anyio.Semaphore], *, whole: bool = True) -> None:
        host, host_slot = slots
        if whole:
            assert self._slots is not None
            self._slots.release()
        host_slot.release()
        # A host nobody is fetching from now is forgotten: a mirror redirecting to a new
        # name each time must not grow this table for as long as a round lasts.
        if host_slot.value == self._per_host and not host_slot.statistics().tasks_waiting:
            self._host_slots.pop(host, None)

    async def _hop(
        self,
        session: aiohttp.ClientSession,
        origin: str,
        url: URL,
        headers: dict[str, str],
        budget: float,
        *,
        elapsed: float,
    ) -> FetchResult | URL:
        """One request, within `budget` seconds: its result (`elapsed` the seconds of
        the hops before it), or a redirect's target."""
        reading_body = False
        started = time.monotonic()
        # The session's own timeout, unless hops before this one used part of it.
        timeout = self._hop_timeout(budget) if budget < self._timeout else aiohttp.helpers.sentinel
        try:
            async with session.get(
                url, headers=headers, allow_redirects=False, timeout=timeout
            ) as resp:
                fetched_at = datetime.now(UTC)
                location = resp.headers.get(hdrs.LOCATION)
                if resp.status in _REDIRECT_STATUSES and location is not None:
                    return _redirect_target(origin, url, location)
                reading_body = True
                body = b"" if resp.status == 304 else await self._read_body(resp, url)
                h = resp.headers
                etag, last_modified = h.get(hdrs.ETAG), h.get(hdrs.LAST_MODIFIED)
                kept_etag = header_token(etag, etag=True)
                kept_last_modified = header_token(last_modified, etag=False)
                refused = tuple(
                    name
                    for name, sent, kept in (
                        (hdrs.ETAG, etag, kept_etag),
                        (hdrs.LAST_MODIFIED, last_modified, kept_last_modified),
                    )
                    if sent is not None and kept is None
                )
                content_type = h.get(hdrs.CONTENT_TYPE)
                chunked = "chunked" in h.get(hdrs.TRANSFER_ENCODING, "").lower()
                framed = resp.status == 304 or hdrs.CONTENT_LENGTH in h or chunked
                return FetchResult(
                    url=origin,
                    final_url=str(url),
                    status=resp.status,
                    body=body,
                    etag=kept_etag,
                    last_modified=kept_last_modified,
                    content_type=None if content_type is None else storable(content_type),
                    retry_after=parse_retry_after(h.get(hdrs.RETRY_AFTER), fetched_at),
                    fetched_at=fetched_at,
                    elapsed=elapsed + time.monotonic() - started,
                    framed=framed,
                    refused=refused,
                )
        except FetchError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, UnicodeError) as exc:
            raise self._translate(exc, url, reading_body=reading_body) from exc

    async def _read_body(self, resp: aiohttp.ClientResponse, url: URL) -> bytes:
        cap = self._max_bytes
        declared = resp.content_length
        if declared is not None and declared > cap:
            resp.close()
            raise TooLarge(
                f"{url}: Content-Length {declared} exceeds the {cap}-byte limit",
                status=resp.status,
            )
        # Every Content-Encoding header (two of them are two layers, as a list in one is).
        encodings = resp.headers.getall(hdrs.CONTENT_ENCODING, [])
        decoder = Decoder(", ".join(encodings) if encodings else None, str(url))
        parts: list[bytes] = []
        size = 0
        # Read in pieces of a fixed size, decoded a piece at a time (aiohttp pauses the
        # socket while we hold unread data): memory stays bounded, and the count below is
        # of decoded bytes, so a bomb stops here at the cap. Not `iter_any()`: that joins
        # everything aiohttp has buffered into one more copy.
        content = resp.content
        while chunk := await content.read(_READ_CHUNK):
            for piece in decoder.feed(chunk):
                size += len(piece)
                if size > cap:
                    resp.close()
                    how = f" after {decoder.encoding} decoding" if decoder.encoding else ""
                    raise TooLarge(
                        f"{url}: body exceeds the {cap}-byte limit{how}", status=resp.status
                    )
                parts.append(piece)
        decoder.finish()
        return b"".join(parts)

    def _translate(self, exc: BaseException, url: URL, *, reading_body: bool) -> FetchError:
        """The one place aiohttp's, ssl's and the socket's exceptions become ours."""
        where = "while reading the body" if reading_body else "before the response headers"
        if isinstance(exc, UnicodeError):  # IDNA: a label too long, empty, or not encodable
            detail = _one_line(str(exc))
            return ConnectionFailed(f"{url}: the host name cannot be looked up: {detail}")
        if isinstance(exc, TimeoutError):  # also aiohttp's connect and sock_read timeouts
            return FetchTimeout(f"{url}: timed out {where} (timeout {self._timeout:g}s)")
        if isinstance(
            exc, aiohttp.ClientSSLError | aiohttp.ServerFingerprintMismatch | ssl.SSLError
        ):
            return TLSError(f"{url}: TLS failed: {_one_line(str(exc))}")
        detail = _one_line(str(exc) or type(exc).__name__)
        if isinstance(exc, aiohttp.ClientPayloadError):
            cause = exc.__cause__
            if isinstance(cause, HttpProcessingError):
                detail = _one_line(cause.message)
            if isinstance(cause, ContentEncodingError):
                return BadResponse(f"{url}: the body could not be decoded: {detail}")
            return IncompleteBody(f"{url}: the body was cut short: {detail}")
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            detail = "the server closed the connection"
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return ConnectionFailed(f"{url}: could not resolve the host: {detail}")
        if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.strerror is None:
            # aiohttp's text then ends in "[None]": the cause is in the error's own words
            # (no local address of the mirror's family to send from, say).
            detail = _one_line(f"cannot connect to {exc.host}:{exc.port}: {exc.os_error}")
        if self._source_address is not None:
            detail += f" (sending from crawl.source_address {self._source_address})"
        if isinstance(exc, aiohttp.ClientConnectionError | OSError):
            if reading_body:
                return IncompleteBody(f"{url}: the connection failed {where}: {detail}")
            return ConnectionFailed(f"{url}: the connection failed {where}: {detail}")
        if isinstance(exc, aiohttp.ClientResponseError):
            return BadResponse(f"{url}: not a valid HTTP response: {_one_line(exc.message)}")
        return FetchError(f"{url}: the request failed {where}: {detail}")


def _one_line(text: str) -> str:
    """aiohttp's parser messages, fit for one log line: no caret diagrams, no 8 KiB
    header, and nothing of the mirror's that is not printable (`text.escaped`)."""
    words = [escaped(word) for word in text.split() if word != "^"]
    line = " ".join(words)
    return line if len(line) <= _DETAIL_MAX else line[: _DETAIL_MAX - 1] + "…"


def _http_url(text: str) -> URL | None:
    try:
        url = URL(text)
    except (TypeError, ValueError):
        return None
    if url.scheme not in ("http", "https") or not url.host:
        return None
    return url


def _redirect_target(origin: str, url: URL, location: str) -> URL:
    """The absolute URL a `Location` header points to, relative ones resolved."""
    try:
        target = url.join(URL(location))
    except (TypeError, ValueError) as exc:
        raise BadResponse(f"{origin}: {url} redirects to an invalid Location {location!r}") from exc
    if target.scheme not in ("http", "https") or not target.host:
        raise RedirectError(f"{origin}: {url} redirects to a non-HTTP URL {location!r}")
    return target.with_fragment(None)
