"""An unchanged pair: its bundle's 304 (or unchanged body) and its state.json are
written together, when the pair ends (`Crawler._flush`): whatever state.json does after
the 304 (fails, stalls, serves junk, is missing, trips a bug), the bundle's bookkeeping
is still written; a pass stopped between the two writes neither, and the pair is simply
due again; under a `run` node's lease the pair is one fenced transaction, and a pair cut
short at its lease every time fails every time, until `mirror_unreachable`.

Real loopback mirrors, real signed bundles, a real SQLite archive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from aiohttp import web
from builder import BundleBuilder, TestSigner, canonical_record, serialize
from clocks import TestClock
from mirror import TestMirror

import pithcrawl.crawl as crawl_module
from pithcrawl.config import Config, parse_config
from pithcrawl.crawl import Crawler
from pithcrawl.fetch.client import HttpFetcher
from pithcrawl.keys import TrustSet, load_key
from pithcrawl.mirrors import Site
from pithcrawl.store import Store
from pithcrawl.store.leases import LEASED
from pithcrawl.sync import sync_once

pytestmark = pytest.mark.anyio
SIGNER = TestSigner("attack-key")
TRUST = TrustSet([load_key(SIGNER.public_key())])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class StateMirror(TestMirror):
    """A TestMirror whose state.json alone can fail, stall or serve junk."""

    __test__ = False
    state_status: int | None = None
    state_junk: bytes | None = None
    state_delay: float = 0.0

    async def _state(self, request: web.Request) -> web.StreamResponse:
        if self.state_delay:
            await asyncio.sleep(self.state_delay)
        if self.state_status is not None:
            return web.Response(status=self.state_status)
        if self.state_junk is not None:
            return web.Response(body=self.state_junk, content_type="application/json")
        return await super()._state(request)


def config(tmp: Path, base: str, extra: str = "") -> Config:
    return parse_config(
        f'db = "archive.db"\n[crawl]\ntimeout = "1s"\ndiscover = false\nworkers = 1\n'
        f'interval = "1h"\n{extra}'
        f'[[mirrors]]\nname = "m"\nbase_url = "{base}"\n',
        base_dir=tmp,
    )


def site(m: TestMirror) -> Site:
    return Site(
        "m",
        m.base_url,
        "{base_url}/pith/{suffix}/bundle.json",
        "{base_url}/pith/{suffix}/state.json",
        "{base_url}/.well-known/pith/{suffix}/bundle.json",
        "config",
    )


@asynccontextmanager
async def world(tmp: Path, *, tampered: bool = False) -> AsyncIterator[tuple]:
    async with StateMirror() as m:
        b = BundleBuilder(SIGNER, record=canonical_record("2611.00001"))
        b.add_event()
        body = b.bytes()
        if tampered:
            doc = b.build()
            doc["events"][1]["payload"] = {"graph_snapshot": {"forged": True}}
            body = serialize(doc)
        m.put(body)
        cfg = config(tmp, m.base_url)
        async with await Store.open(tmp / "archive.db") as store:
            await store.watchlist.track([b.suffix], datetime.now(UTC))
        yield m, cfg, tmp / "archive.db", b.suffix


async def rows(db: Path, suffix: str):
    async with await Store.open(db, readonly=True) as store:
        from pithcrawl.config import host_name

        v = host_name()
        return (
            await store.fetch_state(suffix, "m", "bundle", vantage=v),
            await store.fetch_state(suffix, "m", "state", vantage=v),
        )


async def two_passes(tmp: Path, spoil, *, tampered: bool = False):
    clock = TestClock()
    async with world(tmp, tampered=tampered) as (m, cfg, db, suffix):
        await sync_once(cfg, db, [], TRUST, clock=clock.clock)
        b1, s1 = await rows(db, suffix)
        clock.advance(timedelta(hours=2))
        spoil(m)
        summary = await sync_once(cfg, db, [], TRUST, clock=clock.clock)
        b2, s2 = await rows(db, suffix)
        return m, summary, (b1, s1), (b2, s2)


def bundle_bookkept(b1, b2) -> None:
    """The second pass's unchanged bundle was written down: its last fetch and success
    moved on, and it is due an interval later."""
    assert b2.last_fetch_at > b1.last_fetch_at, (b1, b2)
    assert b2.last_success_at > b1.last_success_at
    assert b2.failures == 0
    assert b2.next_due > b1.next_due


async def test_state_500_after_an_unchanged_bundle(tmp_path: Path) -> None:
    def spoil(m):
        m.state_status = 500

    m, summary, (b1, _), (b2, s2) = await two_passes(tmp_path, spoil)
    assert summary.errors == 1
    assert sum(m.conditional_hits.values()) >= 1
    bundle_bookkept(b1, b2)
    assert s2.failures == 1 and s2.status == 500


async def test_state_timeout_after_an_unchanged_bundle(tmp_path: Path) -> None:
    def spoil(m):
        m.state_delay = 1.5  # > crawl.timeout

    _, summary, (b1, _), (b2, s2) = await two_passes(tmp_path, spoil)
    assert summary.errors == 1
    bundle_bookkept(b1, b2)
    assert s2.failures == 1 and "timed out" in s2.last_error


async def test_state_junk_after_an_unchanged_bundle(tmp_path: Path) -> None:
    def spoil(m):
        m.state_junk = b'{"not": "a state"}'

    _, summary, (b1, _), (b2, s2) = await two_passes(tmp_path, spoil)
    bundle_bookkept(b1, b2)
    assert s2.failures == 0 and s2.body_trusted is False
    assert summary.alerts >= 1


async def test_state_404_after_an_unchanged_bundle(tmp_path: Path) -> None:
    def spoil(m):
        m.state_status = 404

    _, summary, (b1, _), (b2, _) = await two_passes(tmp_path, spoil)
    assert summary.errors == 0
    bundle_bookkept(b1, b2)


async def test_untrusted_bundle_unchanged(tmp_path: Path) -> None:
    """Never trusted, then a 304: `serves_untrusted`, no state.json fetched, the bundle's
    304 still written."""
    _, _summary, (b1, _), (b2, s2) = await two_passes(tmp_path, lambda m: None, tampered=True)
    assert b1.body_trusted is False
    bundle_bookkept(b1, b2)
    assert s2 is None


async def test_a_bug_in_the_state_step(tmp_path: Path, monkeypatch) -> None:
    """judge_state raises (a bug met on what the mirror sent): the pair's error, and the
    bundle's 304 still written by `_flush_after_error`."""

    def spoil(m):
        m.states = {k: v.replace(b"{", b'{"extra":1,', 1) for k, v in m.states.items()}

        def boom(*a, **kw):
            raise RuntimeError("boom")

        monkeypatch.setattr(crawl_module, "judge_state", boom)

    _, summary, (b1, s1), (b2, s2) = await two_passes(tmp_path, spoil)
    assert summary.errors == 1
    bundle_bookkept(b1, b2)
    assert s2.last_fetch_at == s1.last_fetch_at  # the state's own write is lost (as before)


async def test_cancelled_between_the_two_fetches(tmp_path: Path) -> None:
    """A pass stopped (cancelled) while state.json is in flight: what is written of the
    bundle's 304? Nothing: the pair is due again, as if never fetched."""
    clock = TestClock()
    async with world(tmp_path) as (m, cfg, db, suffix):
        await sync_once(cfg, db, [], TRUST, clock=clock.clock)
        b1, _ = await rows(db, suffix)
        clock.advance(timedelta(hours=2))
        m.state_delay = 0.9
        with anyio.move_on_after(0.5):
            await sync_once(cfg, db, [], TRUST, clock=clock.clock)
        b2, _ = await rows(db, suffix)
        assert b2.last_fetch_at == b1.last_fetch_at


async def cut_short_pass(crawler, store, s, suffix, clock, *, lease_s: float):
    """What the daemon's worker does with a leased pair (daemon.Daemon._worker)."""
    now = clock.now()
    taken = await store.leases.take(
        [(suffix, "m")],
        vantage=crawler.config.node.vantage_name,
        node=crawler.config.node.node_name,
        now=now,
        until=now + timedelta(seconds=lease_s),
    )
    assert taken, "pair not due"
    with anyio.move_on_after(lease_s - 0.25) as scope:
        result = await crawler.sync_pair(suffix, s)
    if scope.cancelled_caught:
        result = await crawler.cut_short(suffix, s, timedelta(seconds=lease_s))
    await store.leases.let_go(
        crawler.config.node.node_name, vantage=crawler.config.node.vantage_name
    )
    return result, scope.cancelled_caught


async def test_repeated_cut_shorts_after_an_unchanged_bundle(tmp_path: Path) -> None:
    """run: the bundle answers (a quick 304), state.json is slow, and the pair outruns
    its lease every time: nothing of it is written but its failure, so the failures pile
    up (the backoff grows), the first failure and the last success stay, and the mirror
    is `mirror_unreachable` after `alerts.unreachable_after`."""
    clock = TestClock()
    async with world(tmp_path) as (m, _, db, suffix):
        leased = config(
            tmp_path,
            m.base_url,
            '[node]\nname = "a"\nvantage = "v"\nlease = "2.5s"\n'
            '[alerts]\nunreachable_after = "3h"\n',
        )
        s = site(m)
        async with (
            await Store.open(db, exclusive=True) as store,
            HttpFetcher(user_agent="t", timeout=1.0) as fetcher,
        ):
            await store.watchlist.upsert_mirror(s.row(clock.now()))
            await store.nodes.seen("a", "v", clock.now(), interval=timedelta(hours=1))
            crawler = Crawler(leased, store, fetcher, TRUST, clock.now)
            LEASED.set(("v", "a"))
            r, cut = await cut_short_pass(crawler, store, s, suffix, clock, lease_s=2.5)
            assert not cut and r.error is None
            first = await store.fetch_state(suffix, "m", "bundle", vantage="v")
            # The bundle a quick 304; state.json slow (within crawl.timeout): the pair
            # outruns its lease (here a short one handed to the harness directly; in a
            # daemon: a valid lease plus time waiting for the fetcher's per-host slots,
            # which crawl.timeout does not count, a slow archive write, ...).
            m.state_delay = 0.9
            seen = []
            for _ in range(4):
                clock.advance(timedelta(hours=2))
                r, cut = await cut_short_pass(crawler, store, s, suffix, clock, lease_s=1.0)
                assert cut, r
                st = await store.fetch_state(suffix, "m", "bundle", vantage="v")
                seen.append((st.failures, st.first_failure_at, st.last_success_at))
                await store.nodes.seen("a", "v", clock.now(), interval=timedelta(hours=1))
            opened = await crawler.conditions.check_mirrors(["m"])
    # The change: the failures run of the bundle is never reset by the 304s in between.
    assert [f for f, _, _ in seen] == [1, 2, 3, 4]  # never reset by the 304s in between
    assert seen[-1][2] == first.last_success_at
    assert [a.kind for a in opened] == ["mirror_unreachable"]


async def test_unchanged_pair_under_a_lease_is_one_commit(tmp_path: Path) -> None:
    """run: an unchanged pair is written in one fenced transaction."""
    clock = TestClock()
    async with world(tmp_path) as (m, _, db, suffix):
        leased = config(tmp_path, m.base_url, '[node]\nname = "a"\nvantage = "v"\nlease = "5s"\n')
        s = site(m)
        async with (
            await Store.open(db, exclusive=True) as store,
            HttpFetcher(user_agent="t", timeout=1.0) as fetcher,
        ):
            await store.watchlist.upsert_mirror(s.row(clock.now()))
            crawler = Crawler(leased, store, fetcher, TRUST, clock.now)
            LEASED.set(("v", "a"))
            await cut_short_pass(crawler, store, s, suffix, clock, lease_s=5)
            clock.advance(timedelta(hours=2))
            now = clock.now()
            await store.leases.take(
                [(suffix, "m")], vantage="v", node="a", now=now, until=now + timedelta(seconds=5)
            )
            before = store._db.commits
            r = await crawler.sync_pair(suffix, s)
            commits = store._db.commits - before
            assert r.error is None and r.new_snapshots == 0
    assert commits == 1


HOSTILE_STATES = {
    "lone_surrogate": b'{"x":"\\ud800","title":"\\udfff"}',
    "nul": b'{"x":"\\u0000a\\u0000"}',
    "huge_int": b'{"x":' + b"9" * 5000 + b"}",
    "deep": b"[" * 3000 + b"]" * 3000,
    "empty": b"",
    "bom": b"\xef\xbb\xbf{}",
    "bad_utf8": b'{"x":"\xff\xfe"}',
    "array": b"[1,2,3]",
    "dup_keys": b'{"a":1,"a":2}',
    "float_nan": b'{"x":NaN}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_STATES))
async def test_hostile_state_after_an_unchanged_bundle(tmp_path: Path, name: str, caplog) -> None:
    """Whatever state.json a mirror serves after a 304 of its bundle: no bug, and the
    bundle's 304 is written (otherwise the pair would be due again at once in `run`)."""
    body = HOSTILE_STATES[name]

    def spoil(m):
        m.state_junk = body

    _, _summary, (b1, _), (b2, s2) = await two_passes(tmp_path, spoil)
    bundle_bookkept(b1, b2)
    assert s2 is not None and s2.last_fetch_at > b1.last_fetch_at
    assert "internal error" not in (s2.last_error or "")


async def test_a_pair_whose_write_fails_is_put_off_not_due_again_at_once(
    tmp_path: Path, monkeypatch
) -> None:
    """The pair's write fails (a bug, or damage) after an unchanged bundle and a changed
    state.json: nothing of the pair is written, and its bundle is recorded a failed
    fetch with the usual backoff (else it stayed due, and `run` fetched it again every
    second for as long as the write failed)."""
    from pithcrawl.store import Store as StoreClass

    original = StoreClass.record_fetches

    async def failing(self, fetches, **kw):
        if any(i.outcome.kind == "state" and i.outcome.body is not None for i in fetches):
            raise RuntimeError("the state's write fails")
        return await original(self, fetches, **kw)

    def spoil(m):
        m.states = {k: v.replace(b"{", b'{"extra":1,', 1) for k, v in m.states.items()}
        monkeypatch.setattr(StoreClass, "record_fetches", failing)

    _, summary, (b1, _), (b2, _) = await two_passes(tmp_path, spoil)
    assert summary.errors == 1
    assert b2.failures == 1 and "internal error" in (b2.last_error or "")
    assert b2.last_fetch_at > b1.last_fetch_at
    assert b2.next_due > b2.last_fetch_at  # put off by the backoff
    assert b2.last_success_at == b1.last_success_at  # nothing of the pair written
