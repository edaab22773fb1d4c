"""A record's rules run once a pass, when its last pair ends (`crawl.RecordTurn`): what
that must not lose. Found by a review of that change; each failed on it before its fix."""

from __future__ import annotations

import sqlite3
from contextlib import AsyncExitStack
from datetime import timedelta

import anyio
import pytest
from aiohttp import web
from builder import BundleBuilder
from mirror import TestMirror
from test_alerts import Env, env, fork, track
from test_sync import records

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
    """Holds its bundle requests open while `hang` (hostile, or overloaded): a pass then
    ends only when it is stopped."""

    __test__ = False
    hang: bool = True
    released: anyio.Event | None = None

    async def _bundle(self, request: web.Request) -> web.StreamResponse:
        if not self.hang:
            return await super()._bundle(request)
        self.released = self.released or anyio.Event()
        await self.released.wait()
        return web.Response(status=503)

    def let_go(self) -> None:
        """Answer again (those held, a 503)."""
        self.hang = False
        if self.released is not None:
            self.released.set()

    async def __aexit__(self, *exc: object) -> None:
        self.let_go()
        await super().__aexit__(*exc)


async def _three(stack: AsyncExitStack, tmp_path, signer) -> Env:  # type: ignore[no-untyped-def]
    """Two mirrors that answer, and a third that holds every request (m2)."""
    mirrors = [await stack.enter_async_context(TestMirror()) for _ in range(2)]
    mirrors.append(await stack.enter_async_context(HangingMirror()))
    e = Env(
        tmp_path, mirrors, TrustSet([load_key(signer.public_key())]), tmp_path / "a.db", Config()
    )
    e.configure()
    return e


def _alert_kinds(db) -> list[str]:  # type: ignore[no-untyped-def]
    with sqlite3.connect(db) as c:
        return [r[0] for r in c.execute("SELECT kind FROM alerts ORDER BY id")]


def _due(db) -> set[str]:  # type: ignore[no-untyped-def]
    with sqlite3.connect(db) as c:
        return {r[0] for r in c.execute("SELECT suffix FROM rules_due")}


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


async def test_a_fork_seen_in_a_pass_that_is_stopped_is_alerted_by_the_next_one(
    tmp_path, signer, monkeypatch
):
    """Two mirrors serve two forks; a third holds the pass until it is stopped, before the
    record's last pair ends: the rules did not run, but the new snapshots left them due
    (they ran after each pair before turns), and the next pass runs them."""
    async with AsyncExitStack() as stack:
        e = await _three(stack, tmp_path, signer)
        a, b = fork(signer)
        e.mirrors[0].put(a.bytes())
        e.mirrors[1].put(b.bytes())
        await track(e, a)
        await _stopped_pass(e, monkeypatch, "m0", "m1")
        monkeypatch.undo()
        assert _alert_kinds(e.db) == []
        assert _due(e.db) == {a.suffix}
        e.mirrors[2].let_go()  # type: ignore[attr-defined]
        await e.sync()  # m0 and m1 unchanged (304s): only the marks say the rules are due
        assert _alert_kinds(e.db) == ["mirror_divergence"]
        assert _due(e.db) == set()  # they ran: not due any more


async def test_rules_left_due_are_judged_after_the_next_pass_not_before_it(
    tmp_path, signer, monkeypatch
):
    """A pass stopped after m0 archived v2, before m1's pair ended. Three days later m1
    has caught up: the rules left due see this pass's fetch of m1, so no `mirror_stale`
    (judged as the pass opened, on the stopped pass's picture, they called it stale)."""
    async with AsyncExitStack() as stack:
        e = await _three(stack, tmp_path, signer)
        e.mirrors[2].let_go()  # type: ignore[attr-defined]
        b = BundleBuilder(signer)
        b.add_event()
        for m in e.mirrors:
            m.put(b.bytes())
        await track(e, b)
        await e.sync()  # all serve v1
        b.add_event()
        e.mirrors[0].put(b.bytes())  # m0 has v2
        e.mirrors[2].hang = True  # type: ignore[attr-defined]
        e.mirrors[2].released = None  # type: ignore[attr-defined]
        await _stopped_pass(e, monkeypatch, "m0", "m1")
        monkeypatch.undo()
        assert _due(e.db) == {b.suffix}
        e.clock.advance(timedelta(days=3))
        e.mirrors[2].let_go()  # type: ignore[attr-defined]
        for m in e.mirrors[1:]:
            m.put(b.bytes())  # caught up, long before this pass
        await e.sync()
        assert "mirror_stale" not in _alert_kinds(e.db)
        assert _due(e.db) == set()


async def test_damage_in_a_record_left_due_costs_its_rules_not_the_pass(
    tmp_path, signer, monkeypatch
):
    """A stopped pass left x and y due; one of x's rows is then damaged (fsck's to
    report). The next pass crawls everything (y's new version archived) and stays due
    for x only, which the pass after judges again."""
    async with AsyncExitStack() as stack:
        e = await _three(stack, tmp_path, signer)
        x, y = records(signer, 2)
        for r in (x, y):
            r.add_event()
            e.mirrors[0].put(r.bytes())
            e.mirrors[1].put(r.bytes())
        await track(e, x, y)
        await _stopped_pass(e, monkeypatch, "m0", "m1")
        monkeypatch.undo()
        assert _due(e.db) == {x.suffix, y.suffix}
        with sqlite3.connect(e.db) as c:
            c.execute(
                "UPDATE snapshots SET fetched_at = 'garbage' WHERE id ="
                " (SELECT min(id) FROM snapshots WHERE suffix = ? AND mirror = 'm1')",
                (x.suffix,),
            )
        e.mirrors[2].let_go()  # type: ignore[attr-defined]
        y.add_event()
        for m in e.mirrors:
            m.put(y.bytes())
        await e.sync()
        with sqlite3.connect(e.db) as c:
            (events,) = c.execute(
                "SELECT max(event_count) FROM snapshots WHERE suffix = ? AND kind = 'bundle'",
                (y.suffix,),
            ).fetchone()
        assert events == len(y.events)  # y's newest version archived despite x's damage
        assert _due(e.db) == {x.suffix}


async def test_a_record_untracked_while_its_rules_are_due_gets_no_alert(
    tmp_path, signer, monkeypatch
):
    """Untracking a record drops its marks with its bookkeeping: no alert is opened later
    for a record nobody watches (one nothing would ever close)."""
    async with AsyncExitStack() as stack:
        e = await _three(stack, tmp_path, signer)
        (x,) = records(signer, 1)
        x.add_event()
        e.mirrors[0].put(x.bytes())
        await track(e, x)
        await _stopped_pass(e, monkeypatch, "m0")
        monkeypatch.undo()
        assert _due(e.db) == {x.suffix}
        async with await Store.open(e.db) as store:
            await store.watchlist.untrack([x.suffix])
        assert _due(e.db) == set()
        e.mirrors[2].let_go()  # type: ignore[attr-defined]
        e.clock.advance(timedelta(days=3))
        await e.sync()
        assert _alert_kinds(e.db) == []


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
