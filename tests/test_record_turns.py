"""A record's rules run once a pass, when its last pair ends (`crawl.RecordTurn`): what
that must not lose. Found by a review of that change; each failed on it before its fix."""

from __future__ import annotations

import sqlite3
from contextlib import AsyncExitStack

import anyio
import pytest
from aiohttp import web
from mirror import TestMirror
from test_alerts import Env, env, fork, track

from pithcrawl.conditions import Conditions
from pithcrawl.config import Config
from pithcrawl.crawl import Crawler, PairResult, RecordTurn
from pithcrawl.errors import StoreCorrupt, StoreError
from pithcrawl.fetch.client import HttpFetcher
from pithcrawl.keys import TrustSet, load_key
from pithcrawl.mirrors import Site
from pithcrawl.share import Tally
from pithcrawl.store import Store, archive, trusted

pytestmark = pytest.mark.anyio


def _site(name, m):  # type: ignore[no-untyped-def]
    pattern = "{base_url}/pith/{suffix}/"
    return Site(name, m.base_url, pattern + "bundle.json", pattern + "state.json", None, "config")


class HangingMirror(TestMirror):
    """Holds every bundle request open (hostile, or overloaded) until torn down."""

    __test__ = False
    released: anyio.Event | None = None

    async def _bundle(self, request: web.Request) -> web.StreamResponse:
        self.released = self.released or anyio.Event()
        await self.released.wait()
        return web.Response(status=503)

    async def __aexit__(self, *exc: object) -> None:
        if self.released is not None:
            self.released.set()
        await super().__aexit__(*exc)


async def _stopped_pass(e: Env, monkeypatch: pytest.MonkeyPatch, *done: str) -> None:
    """A pass stopped (Ctrl-C, SIGTERM, TimeoutStartSec) once the pairs of the mirrors
    `done` ended (their writes committed), with the others' still under way."""
    real = Crawler.end_turn
    ended: set[str] = set()
    all_ended = anyio.Event()

    async def end_turn(self, result, turn, view=None):  # type: ignore[no-untyped-def]
        await real(self, result, turn, view)
        ended.add(result.mirror)
        if ended >= set(done):
            all_ended.set()

    monkeypatch.setattr(Crawler, "end_turn", end_turn)
    async with anyio.create_task_group() as tg:

        async def stop() -> None:
            with anyio.fail_after(4):  # before the 5 s fetch timeout
                await all_ended.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(stop)
        await e.sync()
        raise AssertionError("the pass ended before it was stopped")


async def test_a_fork_seen_in_passes_that_are_stopped_is_still_alerted(
    tmp_path, signer, monkeypatch
):
    """Two mirrors serve two forks; a third holds every pass until it is stopped, before
    the record's last pair ends: the new snapshots left the rules due, and the next pass
    runs them as it opens (they ran after each pair before turns; turns must not let a
    mirror that stalls every pass keep a divergence from ever being alerted)."""
    async with AsyncExitStack() as stack:
        mirrors = [await stack.enter_async_context(TestMirror()) for _ in range(2)]
        mirrors.append(await stack.enter_async_context(HangingMirror()))
        trust = TrustSet([load_key(signer.public_key())])
        e = Env(tmp_path, mirrors, trust, tmp_path / "archive.db", Config())
        e.configure()
        a, b = fork(signer)
        mirrors[0].put(a.bytes())
        mirrors[1].put(b.bytes())
        await track(e, a)
        for _ in range(2):  # the hostile mirror stops every pass
            await _stopped_pass(e, monkeypatch, "m0", "m1")
        async with e.store() as store:
            kinds = [x.kind for x in await store.alerts.open_alerts()]
            due = await store.rules_due()
        assert kinds == ["mirror_divergence"]  # 4c21148: opened in the first pass
        assert due == []  # they ran: not due any more


async def test_a_database_error_in_the_read_at_commit_is_a_store_error_not_a_bug(
    tmp_path, signer, monkeypatch
):
    """A read at commit that meets damage stops the pass as any statement's error does
    (a `StoreError`), not as a bug in one pair that the pass carries on after."""

    def failing(conn, suffix, known=None):  # type: ignore[no-untyped-def]
        raise sqlite3.DatabaseError("database disk image is malformed")

    async with env(tmp_path, signer) as e:
        a, _ = fork(signer)
        e.mirrors[0].put(a.bytes())
        await track(e, a)
        monkeypatch.setattr(archive, "bundle_view", failing, raising=False)
        monkeypatch.setattr(trusted, "bundle_view", failing)  # a fresh read's too
        async with (
            await Store.open(e.db, exclusive=True) as store,
            HttpFetcher(user_agent="test", timeout=5.0) as fetcher,
        ):
            crawler = Crawler(e.config, store, fetcher, e.trust, e.clock.now)
            with pytest.raises(StoreError, match="damaged"):  # it was a pair_failed "bug"
                await crawler.sync_pair(a.suffix, _site("m0", e.mirrors[0]))


async def test_rules_that_fail_when_a_put_off_pair_ends_are_an_error_of_the_pass(
    tmp_path, signer, monkeypatch
):
    """The rules run when the record's last pair ends, even one put off (its mirror in
    backoff, which counts as no error of the pass): their failing is one."""

    async def damaged(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise StoreCorrupt("snapshot 1 is damaged")

    async with env(tmp_path, signer) as e:
        a, _ = fork(signer)
        e.mirrors[0].put(a.bytes())
        await track(e, a)
        async with (
            await Store.open(e.db, exclusive=True) as store,
            HttpFetcher(user_agent="test", timeout=5.0) as fetcher,
        ):
            crawler = Crawler(e.config, store, fetcher, e.trust, e.clock.now)
            monkeypatch.setattr(Conditions, "check_record", damaged)
            turn, tally = RecordTurn(2), Tally()
            tally.add(await crawler.sync_pair(a.suffix, _site("m0", e.mirrors[0]), turn=turn))
            put_off = PairResult(a.suffix, "m1", error="HTTP 503", deferred=True)
            await crawler.end_turn(put_off, turn)  # the rules run here, and fail
            tally.add(put_off)
        assert put_off.rules_failed
        assert tally.errors == 1  # it was 0: the damage was in no count of the pass
