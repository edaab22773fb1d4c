"""Hostile mirrors, end to end: each misbehaviour of a real loopback server, one `sync`
pass (`sync.sync_once`) over two records on it, the hostile one and a good one.

For every case: the exact outcome for the hostile record (a finding and its alert, or an
operational error with its retry time and no alert); the good record archived and trusted
in the same pass; nothing of the hostile record trusted; the bytes it sent kept as
evidence when they were a whole body; and, where a body could exhaust memory, the peak
of the Python heap during the pass, measured with tracemalloc.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import structlog
from builder import BundleBuilder, TestSigner, canonical_record
from clocks import TestClock
from conftest import VANTAGE
from hostile import (
    Handler,
    HostileMirror,
    bomb,
    cut_short,
    drip,
    endless,
    redirect,
    reset,
    respond,
)
from mirror import TestMirror

from pithcrawl.commands.sync import exit_code
from pithcrawl.config import Config, parse_config
from pithcrawl.crawl import Crawler
from pithcrawl.fetch.client import HttpFetcher
from pithcrawl.keys import TrustSet, load_key
from pithcrawl.mirrors import Site
from pithcrawl.store import Store
from pithcrawl.sync import Summary, sync_once

pytestmark = pytest.mark.anyio

MAX_BYTES = 1_000_000
#: How much the heap may grow during a pass in which a body is refused at the fetcher's
#: cap (the endless body, the huge Content-Length, the gzip bomb): the bytes kept below
#: the cap and aiohttp's buffers. Buffered without bound, any of them costs 100+ MB.
FETCH_HEAP_BOUND = 3 * MAX_BYTES
#: How much it may grow while a body under the cap fails verification: large bodies are
#: read by the standard parser (orjson's working memory is a dozen bytes per byte, so it
#: only reads bodies up to `canon.COMPACT_MAX_BYTES`) and refused before any tree is built
#: when they hold too many values. The body is read in a thread while the pass goes on:
#: its peak (the body, its text, the parser's copy: 2.8 MB for a 900 KB body) can meet up
#: to ~0.3 MB the pass holds meanwhile for its other requests, by timing alone.
PARSE_HEAP_BOUND = 3 * MAX_BYTES + 500_000
MIRROR = "hostile"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record(signer: TestSigner, i: int, events: int = 1) -> BundleBuilder:
    b = BundleBuilder(signer, record=canonical_record(f"2611.{i:05d}", title=f"P{i}"))
    for _ in range(events):
        b.add_event()
    return b


@dataclass
class Scene:
    """A hostile mirror with two tracked records: `good` served honestly, `bad` not."""

    tmp: Path
    mirror: HostileMirror
    good: BundleBuilder
    bad: BundleBuilder
    trust: TrustSet
    config: Config
    peak: int | None = None
    """Heap growth (bytes) at its peak during the last measured pass."""
    clock: TestClock = field(default_factory=TestClock)

    @property
    def db(self) -> Path:
        return self.tmp / "archive.db"

    @property
    def bad_url(self) -> str:
        return self.mirror.url(self.mirror.bundle_path(self.bad.suffix))

    def configure(self, extra: str = "discover = false", alerts: str = "") -> None:
        """The hostile mirror; alerts close as soon as they clear (no hold-down)."""
        self.config = parse_config(
            f'db = "archive.db"\n[crawl]\ntimeout = "1s"\nmax_bytes = {MAX_BYTES}\n{extra}\n'
            f'[alerts]\nresolve_after = "0s"\n{alerts}\n'
            f'[[mirrors]]\nname = "{MIRROR}"\nbase_url = "{self.mirror.base_url}"\n',
            base_dir=self.tmp,
        )

    def serve_bad(self, handler: Handler) -> None:
        self.mirror.route(self.mirror.bundle_path(self.bad.suffix), handler)

    async def sync(self, *, measure: bool = False) -> Summary:
        """One pass; with `measure`, the heap's peak growth during it goes to `peak`."""
        if not measure:
            return await sync_once(self.config, self.db, [], self.trust, clock=self.clock.clock)
        # A pass of the good record alone into another archive first: what a process
        # allocates once (lazy imports, caches, the first schema) is not the body's doing.
        await sync_once(
            self.config, self.tmp / "warm-up" / "archive.db", [self.good.suffix], self.trust
        )
        tracing = tracemalloc.is_tracing()
        if not tracing:
            tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            summary = await sync_once(self.config, self.db, [], self.trust, clock=self.clock.clock)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            if not tracing:
                tracemalloc.stop()
        self.peak = peak - before
        return summary

    @asynccontextmanager
    async def store(self) -> AsyncIterator[Store]:
        async with await Store.open(self.db, readonly=True) as store:
            yield store


@asynccontextmanager
async def scene(tmp_path: Path, signer: TestSigner) -> AsyncIterator[Scene]:
    async with HostileMirror() as mirror:
        good, bad = _record(signer, 1), _record(signer, 2, events=2)
        mirror.put(good.bytes())
        mirror.put(bad.bytes())
        s = Scene(tmp_path, mirror, good, bad, TrustSet([load_key(signer.public_key())]), Config())
        s.configure()
        async with await Store.open(s.db) as store:
            await store.watchlist.track([good.suffix, bad.suffix], datetime.now(UTC))
        yield s


async def assert_good_archived(s: Scene) -> None:
    """The honest record on the same mirror was archived and trusted in the same pass."""
    async with s.store() as store:
        bundle = await store.latest_snapshot(s.good.suffix, MIRROR, "bundle", trusted=True)
        state = await store.latest_snapshot(s.good.suffix, MIRROR, "state", trusted=True)
        fetched = await store.fetch_state(s.good.suffix, MIRROR, "bundle", vantage=VANTAGE)
        assert bundle is not None, "the good record was not archived"
        assert await store.get_blob(bundle.body_sha256) == s.good.bytes()
        assert state is not None
        assert fetched is not None
        assert (fetched.failures, fetched.last_error) == (0, None)


async def assert_bad_untrusted(s: Scene) -> None:
    """Nothing of the hostile record is trusted, and no Pith Number was learnt from it."""
    async with s.store() as store:
        for kind in ("bundle", "state"):
            assert await store.latest_snapshot(s.bad.suffix, MIRROR, kind, trusted=True) is None
        (record,) = [r for r in await store.watchlist.tracked() if r.suffix == s.bad.suffix]
        assert record.pith_number is None


# -- operational failures: an error to retry, never an alert, nothing kept ----------------

BASE = "{base}"
URL = "{url}"
SIZE = "{size}"


@dataclass(frozen=True)
class Failure:
    """A misbehaviour that is the mirror failing, not lying: what `last_error` must say
    (`{url}` the bundle URL, `{base}` the mirror's, `{size}` the honest bundle's length),
    the HTTP status if one came, and the least `Retry-After` the next attempt honours."""

    handler: Callable[[Scene], Handler]
    error: str
    status: int | None = None
    retry_after: float | None = None
    heap: int | None = None
    """The bound on the heap's growth during the pass, where memory is the weapon."""


def _future_date(seconds: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)


FAILURES = {
    "slow_drip": Failure(
        lambda s: drip(every=0.1),
        f"{URL}: timed out while reading the body (timeout 1s)",
    ),
    "body_never_ends": Failure(
        lambda s: endless(),
        f"{URL}: body exceeds the {MAX_BYTES}-byte limit",
        heap=FETCH_HEAP_BOUND,
    ),
    "huge_content_length": Failure(
        lambda s: endless(declared=10**12),
        f"{URL}: Content-Length {10**12} exceeds the {MAX_BYTES}-byte limit",
        heap=FETCH_HEAP_BOUND,
    ),
    "gzip_bomb": Failure(
        lambda s: bomb(mebibytes=100),
        f"{URL}: body exceeds the {MAX_BYTES}-byte limit after gzip decoding",
        heap=FETCH_HEAP_BOUND,
    ),
    "body_cut_short": Failure(
        lambda s: cut_short(s.bad.bytes(), sent=1000),
        f"{URL}: the body was cut short: Not enough data to satisfy content length header "
        f"(received 1000 of {SIZE} bytes).",
    ),
    "reset_mid_body": Failure(
        lambda s: reset(s.bad.bytes(), sent=1000),
        f"{URL}: the body was cut short: Not enough data to satisfy content length header "
        f"(received 1000 of {SIZE} bytes).",
    ),
    "redirect_loop": Failure(
        lambda s: redirect("/loop/a"),
        f"{URL}: redirect loop: {URL} → {BASE}/loop/a → {BASE}/loop/b → {BASE}/loop/a",
    ),
    "not_found": Failure(lambda s: respond(404), f"HTTP 404 from {URL}", status=404),
    "gone": Failure(lambda s: respond(410), f"HTTP 410 from {URL}", status=410),
    "too_many_requests_retry_after_seconds": Failure(
        lambda s: respond(429, headers={"Retry-After": "120"}),
        f"HTTP 429 from {URL}",
        status=429,
        retry_after=120,
    ),
    "unavailable_retry_after_date": Failure(
        lambda s: respond(503, headers={"Retry-After": _future_date(600)}),
        f"HTTP 503 from {URL}",
        status=503,
        retry_after=598,  # an HTTP-date has whole seconds, and a second may pass meanwhile
    ),
    "unavailable_retry_after_absurd": Failure(
        lambda s: respond(503, headers={"Retry-After": "9" * 400}),
        f"HTTP 503 from {URL}",
        status=503,
        retry_after=86_400,  # clamped to a day: a mirror cannot park itself for ever
    ),
    "server_error": Failure(lambda s: respond(500), f"HTTP 500 from {URL}", status=500),
}


@pytest.mark.parametrize("case", list(FAILURES), ids=list(FAILURES))
async def test_mirror_failure_is_an_operational_error(tmp_path, signer, case):
    """A mirror failing one record: an error with a retry time, no alert, nothing kept,
    the other record archived, and bounded memory where the body is the weapon."""
    failure = FAILURES[case]
    async with scene(tmp_path, signer) as s:
        s.serve_bad(failure.handler(s))
        s.mirror.route("/loop/a", redirect("/loop/b"))
        s.mirror.route("/loop/b", redirect(f"{s.mirror.base_url}/loop/a"))
        started = s.clock.at  # the pass's clock
        t0 = time.monotonic()
        summary = await s.sync(measure=failure.heap is not None)
        elapsed = time.monotonic() - t0
        ended = s.clock.at

        assert (summary.errors, summary.alerts, summary.untrusted) == (1, 0, 0)
        assert summary.new_snapshots == 2  # the good record's bundle and state.json
        assert elapsed < 3.0  # a drip cannot hold the pass past crawl.timeout
        await assert_good_archived(s)
        await assert_bad_untrusted(s)
        async with s.store() as store:
            state = await store.fetch_state(s.bad.suffix, MIRROR, "bundle", vantage=VANTAGE)
            assert state is not None
            error = (
                failure.error.replace(URL, s.bad_url)
                .replace(BASE, s.mirror.base_url)
                .replace(SIZE, str(len(s.bad.bytes())))
            )
            assert state.last_error == error
            assert (state.status, state.failures, state.body_sha256) == (failure.status, 1, None)
            assert state.next_due is not None
            if failure.retry_after is None:  # our backoff: one to two minutes, jittered
                assert started <= state.next_due <= ended + timedelta(seconds=120)
            else:
                assert state.next_due >= started + timedelta(seconds=failure.retry_after)
                assert state.next_due <= ended + timedelta(seconds=max(failure.retry_after, 601))
            assert await store.snapshots(s.bad.suffix) == []
            assert (await store.maintenance.stats())[
                "blobs"
            ] == 2  # the good record's two bodies only
            assert await store.alerts.open_alerts() == []
            assert [e for e in await store.events() if e.suffix == s.bad.suffix] == []
        assert s.mirror.hits[s.mirror.state_path(s.bad.suffix)] == 0
        if failure.heap is not None:
            assert s.peak is not None
            assert s.peak < failure.heap, f"the heap grew by {s.peak / 1e6:.1f} MB"

        if failure.retry_after is not None:
            hits = sum(s.mirror.hits.values())
            again = await s.sync()
            assert (again.deferred, again.errors, again.alerts) == (1, 0, 0)
            # Only the good record was asked again (bundle and state.json).
            assert sum(s.mirror.hits.values()) == hits + 2


async def test_storm_of_500s_backs_off_and_ends_as_mirror_unreachable(tmp_path, signer):
    """Every request for one record answers 500, pass after pass: at most one request
    per pass, never an alert of a security kind, and only once the failure outlasts
    `unreachable_after` one `mirror_unreachable` (severity error) for the mirror."""
    async with scene(tmp_path, signer) as s:
        s.configure(alerts='unreachable_after = "1h"')
        for path in (
            s.mirror.bundle_path(s.bad.suffix),
            s.mirror.state_path(s.bad.suffix),
            f"/.well-known/pith/{s.bad.suffix}/bundle.json",
        ):
            s.mirror.route(path, respond(500, b"<h1>500</h1>", content_type="text/html"))
        first = await s.sync()
        assert (first.errors, first.alerts, first.warnings) == (1, 0, 0)
        s.clock.advance(timedelta(hours=1, seconds=1))  # the failure outlasts unreachable_after
        passes = [await s.sync() for _ in range(3)]
        # Each pass either fetched and failed, or put the pair off (backoff): one each.
        assert all((p.errors + p.deferred, p.alerts) == (1, 0) for p in passes)
        assert all(exit_code(p) == 3 for p in passes)
        assert passes[-1].warnings == 1
        bad_hits = sum(n for path, n in s.mirror.hits.items() if s.bad.suffix in path)
        assert bad_hits <= 4  # one per pass at most: no retry loop inside a pass
        await assert_good_archived(s)
        await assert_bad_untrusted(s)
        async with s.store() as store:
            (alert,) = await store.alerts.open_alerts()
            state = await store.fetch_state(s.bad.suffix, MIRROR, "bundle", vantage=VANTAGE)
        assert (alert.kind, alert.severity, alert.mirrors) == (
            "mirror_unreachable",
            "error",
            (MIRROR,),
        )
        assert alert.evidence["records"] == 1
        assert alert.evidence["examples"][0]["suffix"] == s.bad.suffix
        assert state is not None
        assert state.last_error == f"HTTP 500 from {s.bad_url}"
        assert 1 <= state.failures <= 4


# -- lies: a finding on an untrusted snapshot, a critical alert, the body kept -----------


@dataclass(frozen=True)
class Lie:
    """A body that must not be trusted: the findings' codes, the alert's kind, and (for a
    single finding) a pattern its message must match."""

    body: Callable[[Scene], bytes]
    codes: frozenset[str]
    kind: str = "document_invalid"
    message: str | None = None
    content_type: str = "application/json"
    heap: int | None = None
    """The bound on the heap's growth during the pass, where memory is the weapon."""


def _invalid_utf8(s: Scene) -> bytes:
    return s.bad.bytes().replace(b'"test key"', b'"test \xffkey"', 1)


def _other_signer(s: Scene) -> bytes:
    rogue = BundleBuilder(TestSigner("rogue-key"), record=s.bad.record)
    rogue.add_event()
    assert rogue.suffix == s.bad.suffix
    return rogue.bytes()


LIES = {
    "invalid_utf8": Lie(
        _invalid_utf8,
        frozenset({"malformed_json"}),
        message=r"invalid UTF-8 at byte \d+",
    ),
    "duplicate_keys": Lie(
        lambda s: b'{"built_at":"2099-01-01T00:00:00Z",' + s.bad.bytes()[1:],
        frozenset({"malformed_json"}),
        message=r"duplicate object key 'built_at'",
    ),
    "nan": Lie(
        lambda s: s.bad.bytes().replace(b'"event_count":3', b'"event_count":NaN', 1),
        frozenset({"malformed_json"}),
        message=r"NaN is not JSON",
    ),
    "nesting_100000_deep": Lie(
        lambda s: b'{"bundle_type":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        frozenset({"malformed_json"}),
        message=r"nested too deeply",
        # A 0.2 MB body: orjson's reserve (~2.4 MB) and the pass (~0.3 MB) measure ~2.7 MB;
        # a tree of 100,000 nested lists would add 5.6 MB more.
        heap=4 * MAX_BYTES,
    ),
    "nested_300_deep": Lie(
        # Past canon.MAX_DEPTH, but read by `parse` before it: a little deeper (~980), the
        # complete check's canonical writer then exhausted the interpreter's recursion
        # limit (tests/test_fast_paths.py scans that window).
        lambda s: s.bad.bytes().replace(b"{", b'{"deep":' + b"[" * 300 + b"]" * 300 + b",", 1),
        frozenset({"malformed_json"}),
        message=r"nested too deeply \(more than 254 levels\)",
    ),
    "enormous_integer": Lie(
        lambda s: b'{"event_count":' + b"9" * 900_000 + b"}",
        frozenset({"malformed_json"}),
        message=r"not JSON: Exceeds the limit \(4300 digits\) for integer string conversion.*",
        heap=PARSE_HEAP_BOUND,
    ),
    "enormous_exponent": Lie(
        lambda s: b'{"built_at":1e999999,"pad":"' + b"x" * 900_000 + b'"}',
        frozenset({"malformed_json"}),
        message=r"number '1e999999' is out of range",
        heap=PARSE_HEAP_BOUND,
    ),
    "html_with_200": Lie(
        lambda s: b"<!DOCTYPE html><html><body><h1>Welcome to nginx!</h1></body></html>",
        frozenset({"malformed_json"}),
        message=r"not JSON: Expecting value: line 1 column 1 \(char 0\)",
        content_type="text/html",
    ),
    "bundle_of_another_record": Lie(
        lambda s: s.good.bytes(),
        frozenset({"pith_number_mismatch"}),
        message=r"served at the address of [A-Z2-7]{26}, but the bundle is pith:2026:[A-Z2-7]{26}",
    ),
    "signed_by_an_unknown_key": Lie(
        _other_signer,
        # Every signature (receipt, events, bundle) by the rogue key; and, its events not
        # being applied, the served state is not the merge (a warning, not the reason).
        frozenset({"untrusted_key", "state_merge_mismatch"}),
        kind="untrusted_key",
    ),
}


@pytest.mark.parametrize("case", list(LIES), ids=list(LIES))
async def test_untrustworthy_body_is_a_finding_with_evidence(tmp_path, signer, case):
    """A body that fails verification: an untrusted snapshot with the exact findings, one
    critical alert naming the body's sha256, the bytes kept, the other record archived."""
    lie = LIES[case]
    async with scene(tmp_path, signer) as s:
        body = lie.body(s)
        s.serve_bad(respond(200, body, content_type=lie.content_type))
        summary = await s.sync(measure=lie.heap is not None)

        assert (summary.errors, summary.alerts, summary.untrusted) == (0, 1, 1)
        await assert_good_archived(s)
        await assert_bad_untrusted(s)
        async with s.store() as store:
            snap = await store.latest_snapshot(s.bad.suffix, MIRROR, "bundle")
            assert snap is not None
            assert not snap.trusted
            assert {f.code for f in snap.findings} == lie.codes
            if lie.message is not None:
                (only,) = snap.findings
                assert re.fullmatch(lie.message, only.message), only.message
            assert snap.body_sha256 == _sha(body)
            assert await store.get_blob(snap.body_sha256) == body
            (alert,) = await store.alerts.open_alerts()
            state = await store.fetch_state(s.bad.suffix, MIRROR, "bundle", vantage=VANTAGE)
        assert (alert.kind, alert.severity, alert.mirrors) == (lie.kind, "critical", (MIRROR,))
        assert alert.suffix == s.bad.suffix
        # The alert is about the record whose address served the lie, never about the
        # record a document claims to be (for a bundle of another record, that one).
        assert alert.pith_number in (s.bad.pith_number, s.bad.suffix)
        assert alert.evidence["body_sha256"] == _sha(body)
        assert alert.evidence["url"] == s.bad_url
        assert {f["code"] for f in alert.evidence["findings"]} == lie.codes
        assert state is not None
        assert (state.failures, state.last_error) == (0, None)  # the mirror answered
        # An untrusted bundle is the end of it: its state.json is not even asked for.
        assert s.mirror.hits[s.mirror.state_path(s.bad.suffix)] == 0
        if lie.heap is not None:
            assert s.peak is not None
            assert s.peak < lie.heap, f"the heap grew by {s.peak / 1e6:.1f} MB"


async def test_state_json_of_another_record_is_state_url_mismatch(tmp_path, signer):
    """A valid bundle, but the other record's state.json at its state URL: the bundle is
    trusted, the state is not, one critical state_url_mismatch with the state's sha256."""
    async with scene(tmp_path, signer) as s:
        other = s.good.build()["state"]
        body = json.dumps(other, separators=(",", ":")).encode()
        s.mirror.route(s.mirror.state_path(s.bad.suffix), respond(200, body))
        summary = await s.sync()

        assert (summary.errors, summary.alerts) == (0, 1)
        await assert_good_archived(s)
        async with s.store() as store:
            assert await store.latest_snapshot(s.bad.suffix, MIRROR, "bundle", trusted=True)
            assert await store.latest_snapshot(s.bad.suffix, MIRROR, "state", trusted=True) is None
            snap = await store.latest_snapshot(s.bad.suffix, MIRROR, "state")
            assert snap is not None
            assert {f.code for f in snap.findings} == {"pith_number_mismatch"}
            assert await store.get_blob(snap.body_sha256) == body
            (alert,) = await store.alerts.open_alerts()
        assert (alert.kind, alert.severity, alert.suffix) == (
            "state_url_mismatch",
            "critical",
            s.bad.suffix,
        )
        assert alert.evidence["state_body_sha256"] == _sha(body)
        assert alert.evidence["bundle_body_sha256"] == _sha(s.bad.bytes())


async def test_replay_of_an_older_valid_bundle_is_a_rollback(tmp_path, signer):
    """A mirror that served two events replays its older one-event bundle and state
    (valid, signed): one critical rollback (built_at went back, an event dropped: one
    incident, one alert) naming both bodies, both kept; the archive's newest history of
    the record is still the new one; the good record goes on."""
    async with scene(tmp_path, signer) as s:
        old = _record(signer, 2, events=1).bytes()
        new = s.bad.bytes()
        assert (await s.sync()).alerts == 0
        async with s.store() as store:
            before = await store.latest_snapshot(s.bad.suffix, MIRROR, "bundle", trusted=True)
        assert before is not None
        s.mirror.put(old)
        summary = await s.sync()

        assert (summary.errors, summary.alerts, summary.untrusted) == (0, 1, 0)
        await assert_good_archived(s)
        async with s.store() as store:
            (alert,) = await store.alerts.open_alerts()
            assert await store.get_blob(_sha(old)) == old
            assert await store.get_blob(_sha(new)) == new
            newest = await store.trusted.newest_bundle(s.bad.suffix)
            latest = await store.latest_snapshot(s.bad.suffix, MIRROR, "bundle", trusted=True)
        assert alert.evidence["causes"] == ["built_at_went_back", "events_dropped"]
        assert (alert.kind, alert.severity, alert.suffix) == ("rollback", "critical", s.bad.suffix)
        assert alert.evidence["body_sha256"] == _sha(old)
        assert alert.evidence["previous_body_sha256"] == _sha(new)
        # What `serve` and the divergence rules take as the record's history: the newer.
        assert newest is not None
        assert newest.body_sha256 == _sha(new)
        # The replayed bundle is kept (it verifies: it is evidence of what was served),
        # but news is judged against the newest history the mirror ever served: when
        # the mirror recovers, the rollbacks close and nothing is announced again.
        assert latest is not None
        s.mirror.put(new)
        recovered = await s.sync()
        assert (recovered.alerts, recovered.events) == (0, 0)
        async with s.store() as store:
            assert await store.alerts.open_alerts() == []
            assert await store.events(kinds=["event_added"]) == []


# -- discovery: mirror_hints and redirects to internal addresses --------------------------


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Every structlog line, whatever level an earlier test configured."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**saved)


INTERNAL_HINTS = {
    "https://127.0.0.1:8443": "127.0.0.1",
    "https://localhost": "127.0.0.1",
    "https://10.1.2.3": "10.1.2.3",
    "https://169.254.169.254": "169.254.169.254",
    "https://[::1]": "::1",
    "https://[::ffff:127.0.0.1]": "::ffff:127.0.0.1",
    "https://0.0.0.0": "0.0.0.0",
    "https://2130706433": "127.0.0.1",  # 127.0.0.1 as one decimal number
    "http://mirror.example": None,  # plain http: refused before any lookup
}


async def test_a_hint_whose_fallback_address_is_internal_is_refused(tmp_path, signer, logs):
    """The well-known fallback a hint names is fetched too: it is vetted like the rest."""
    async with scene(tmp_path, signer) as s:
        hinted = _record(signer, 2, events=2)
        base = "https://93.184.216.34"  # public, and a literal: no lookup needed
        for name, fallback in (
            ("plain-http", f"http://169.254.169.254/.well-known/pith/{hinted.suffix}/bundle.json"),
            ("internal", f"https://10.1.2.3/.well-known/pith/{hinted.suffix}/bundle.json"),
        ):
            hinted.mirror_hints.append(
                {
                    "mirror_type": "https",
                    "name": name,
                    "base_url": base,
                    "bundle_url": f"{base}/pith/{hinted.suffix}/bundle.json",
                    "state_url": f"{base}/pith/{hinted.suffix}/state.json",
                    "well_known_bundle_url": fallback,
                    "status": "mirror",
                }
            )
        s.mirror.put(hinted.bytes())
        s.configure("discover = true")
        await s.sync()
        async with s.store() as store:
            assert [m for m in await store.watchlist.mirrors() if m.origin == "discovered"] == []
        reasons = sorted(e["reason"] for e in logs if e["event"] == "mirror_hint_refused")
        assert reasons[0].startswith("10.1.2.3 resolves to a non-public address (10.1.2.3")
        assert reasons[1].startswith("http://169.254.169.254/.well-known/pith/")
        assert reasons[1].endswith("is not https")


async def test_mirror_hints_to_internal_addresses_are_refused(tmp_path, signer, logs):
    """A valid bundle whose mirror_hints name internal addresses: the bundle is trusted,
    no hinted mirror is added, one `mirror_hint_refused` line per hint says why."""
    async with scene(tmp_path, signer) as s:
        hinted = _record(signer, 2, events=2)
        for base in INTERNAL_HINTS:
            hinted.mirror_hints.append(
                {
                    "mirror_type": "https",
                    "name": f"internal-{len(hinted.mirror_hints)}",
                    "base_url": base,
                    "bundle_url": f"{base}/pith/{hinted.suffix}/bundle.json",
                    "state_url": f"{base}/pith/{hinted.suffix}/state.json",
                    "status": "mirror",
                }
            )
        s.mirror.put(hinted.bytes())
        s.configure("discover = true")
        summary = await s.sync()

        assert (summary.errors, summary.alerts, summary.mirrors) == (0, 0, 1)
        await assert_good_archived(s)
        async with s.store() as store:
            assert await store.latest_snapshot(s.bad.suffix, MIRROR, "bundle", trusted=True)
            assert [m for m in await store.watchlist.mirrors() if m.origin == "discovered"] == []
        refused = {e["mirror"]: e["reason"] for e in logs if e["event"] == "mirror_hint_refused"}
        assert not [e for e in logs if e["event"] == "mirror_discovered"]
        assert len(refused) == len(INTERNAL_HINTS)
        for i, (base, address) in enumerate(INTERNAL_HINTS.items()):
            (reason,) = [r for name, r in refused.items() if name.startswith(f"internal-{i} ")]
            if address is None:
                assert reason == f"{base} is not https"
            else:
                prefix = f"{urlsplit(base).hostname} resolves to a non-public address ("
                assert reason.startswith(prefix), reason
                assert address in reason[len(prefix) : -1].split(", "), reason


#: Loopback only, in the spellings a guard must see through: a test must not send
#: requests to a real private network or a cloud metadata service. The same predicate
#: that refuses these refuses 10/8 and 169.254/16 (see the hints test above).
INTERNAL_TARGETS = {
    "loopback": "http://127.0.0.1:{port}",
    "localhost": "http://localhost:{port}",
    "loopback_as_a_number": "http://2130706433:{port}",
    "ipv4_mapped_loopback": "http://[::ffff:127.0.0.1]:{port}",
    "ipv6_loopback": "http://[::1]:{port}",
}


@pytest.mark.parametrize("target", list(INTERNAL_TARGETS), ids=list(INTERNAL_TARGETS))
async def test_redirect_from_a_discovered_mirror_to_an_internal_address_is_refused(
    tmp_path, signer, target
):
    """A discovered mirror (it passed the guard when found) redirects a record's bundle to
    an internal address: nothing there is asked for, nothing is archived from that
    mirror; the configured mirror's copy of the record is unaffected. (This mirror is on
    loopback itself, so its own address is refused before the redirect is seen; a public
    one's redirect meets `allow_url`, tested in test_fetch.)"""
    async with scene(tmp_path, signer) as s, TestMirror() as internal, HostileMirror() as found:
        internal.put(s.bad.bytes())  # an internal service that would answer
        port = internal.base_url.rpartition(":")[2]
        where = INTERNAL_TARGETS[target].format(port=port)
        found.route(
            found.bundle_path(s.bad.suffix), redirect(f"{where}/pith/{s.bad.suffix}/bundle.json")
        )
        s.configure("discover = true")
        site = Site(
            "found (mirror.example)",
            found.base_url,
            "{base_url}/pith/{suffix}/bundle.json",
            "{base_url}/pith/{suffix}/state.json",
            None,
            "discovered",
        )
        # A pass would not even crawl this mirror (it is on loopback: `resolve` re-checks
        # discovered mirrors each time); so the crawler is asked directly, as it would be
        # for a public mirror that turned hostile after it was found.
        async with await Store.open(s.db, exclusive=True) as store:
            await store.watchlist.track([s.bad.suffix], datetime.now(UTC))
            async with HttpFetcher(user_agent="test", timeout=1.0) as fetcher:
                crawler = Crawler(s.config, store, fetcher, s.trust, lambda: datetime.now(UTC))
                result = await crawler.sync_pair(s.bad.suffix, site)
            await store.watchlist.upsert_mirror(site.row(datetime.now(UTC)))
        assert result.error is not None
        assert "is not a public address" in result.error  # refused, not a failed connect
        assert sum(internal.hits.values()) == 0
        summary = await s.sync()
        assert summary.mirrors == 1  # and a pass leaves the loopback "discovered" mirror out
        assert summary.alerts == 0
        await assert_good_archived(s)
        assert sum(internal.hits.values()) == 0
        async with s.store() as store:
            assert await store.snapshots(s.bad.suffix, mirror="found (mirror.example)") == []


@pytest.mark.parametrize(
    "location", ["http://a..b/", "http://" + "a" * 64 + ".example/", "http://xn--zz-/"]
)
async def test_a_redirect_to_a_host_no_one_can_look_up_fails_that_record_only(
    tmp_path, signer, location
):
    """A host name IDNA cannot encode (an empty label, one over 63 characters): the
    record's fetch fails and is retried later; the pass goes on (it used to end it)."""
    async with scene(tmp_path, signer) as s:
        s.serve_bad(redirect(location))
        summary = await s.sync()
        assert summary.errors == 1
        await assert_good_archived(s)
