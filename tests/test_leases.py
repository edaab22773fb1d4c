"""Leases: the nodes of one vantage share its due pairs, each taken by one node at a time.

On both databases (`archive_at`). The daemons that take them run in tests/test_nodes.py.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
import structlog
from conftest import NOW, REAL_SUFFIX
from test_store import mirror

from pithcrawl import alert as alert_module
from pithcrawl.alert import Sinks, deliver_to
from pithcrawl.clock import SEEN_SETTING, Clock
from pithcrawl.config import AlertsConfig, Config, NodeConfig
from pithcrawl.daemon import Daemon
from pithcrawl.location import PgUrl
from pithcrawl.mirrors import Site
from pithcrawl.sdnotify import Notifier
from pithcrawl.store import FetchOutcome, NewEvent, Store
from pithcrawl.store.archive import Due
from pithcrawl.store.leases import Lease

pytestmark = pytest.mark.anyio

OTHER = "A" * 26
LEASE = timedelta(minutes=2)


def fetched(suffix: str, vantage: str, *, at: timedelta, due_in: timedelta) -> FetchOutcome:
    """A 304 of `suffix`'s bundle from mirror m, for `vantage`, due again `due_in` later."""
    return FetchOutcome(
        suffix=suffix,
        mirror="m",
        kind="bundle",
        url=f"https://m.example/pith/{suffix}/bundle.json",
        fetched_at=NOW + at,
        status=304,
        next_due=NOW + at + due_in,
        node=vantage,
        vantage=vantage,
    )


@pytest.fixture
async def store(archive_at: Path | PgUrl) -> AsyncIterator[Store]:
    async with await Store.open(archive_at, exclusive=True) as s:
        await s.watchlist.track([REAL_SUFFIX, OTHER], NOW)
        await s.watchlist.upsert_mirror(mirror("m"))
        yield s


async def take(store: Store, node: str, *pairs: str, at: timedelta = timedelta(0), **kw: object):
    now = NOW + at
    return await store.leases.take(
        [(p, "m") for p in pairs],
        vantage="v",
        node=node,
        now=now,
        until=now + LEASE,
        **kw,  # type: ignore[arg-type]  # done=
    )


async def test_a_pair_is_one_nodes_until_its_lease_expires(store: Store) -> None:
    """The first node takes a due pair; a second node of the vantage is refused it (and
    no longer sees it due) until the lease expires, then takes it."""
    assert [lease.suffix for lease in await take(store, "a", REAL_SUFFIX, OTHER)] == [
        REAL_SUFFIX,
        OTHER,
    ]
    assert await take(store, "b", REAL_SUFFIX) == []
    assert await store.due(NOW, vantage="v") == []
    assert await store.leases.held(NOW) == {"a": 2}
    # Another vantage covers every pair on its own: a's leases are not its business.
    assert len(await store.due(NOW, vantage="w")) == 2
    # Expired (its node died): due again, and the other node takes it.
    later = LEASE + timedelta(seconds=1)
    assert {d.suffix for d in await store.due(NOW + later, vantage="v")} == {REAL_SUFFIX, OTHER}
    assert [lease.suffix for lease in await take(store, "b", REAL_SUFFIX, at=later)] == [
        REAL_SUFFIX
    ]
    assert await store.leases.held(NOW + later) == {"b": 1}


async def test_a_pair_fetched_meanwhile_is_not_taken_again(store: Store) -> None:
    """A node that read a pair due, while another node fetched it and let go, is refused
    it: its bundle is not due any more (no pair is fetched twice in one interval)."""
    await take(store, "a", REAL_SUFFIX)
    await store.record_fetch(fetched(REAL_SUFFIX, "v", at=timedelta(0), due_in=timedelta(hours=6)))
    assert await take(store, "a", OTHER, done=[(REAL_SUFFIX, "m")]) != []
    assert await store.leases.held(NOW) == {"a": 1}  # REAL_SUFFIX's let go, OTHER's taken
    assert await take(store, "b", REAL_SUFFIX, at=timedelta(seconds=1)) == []
    # Due again after its interval: whoever asks first takes it.
    assert await take(store, "b", REAL_SUFFIX, at=timedelta(hours=7)) != []


async def test_letting_go(store: Store) -> None:
    """A node lets go of its pairs one by one, or of all it holds (its round ended, or
    it starts again after being killed); never of another node's."""
    await take(store, "a", REAL_SUFFIX)
    await take(store, "b", OTHER)
    assert await store.leases.let_go("a", [(OTHER, "m")], vantage="v") == 0
    assert await store.leases.let_go("a", [(REAL_SUFFIX, "m")], vantage="v") == 1
    assert await store.leases.held(NOW) == {"b": 1}
    assert await store.leases.let_go("b", vantage="v") == 1
    assert await store.leases.held(NOW) == {}
    assert len(await store.due(NOW, vantage="v")) == 2


async def test_next_due_waits_for_a_dead_nodes_lease(store: Store) -> None:
    """The idle scheduler wakes when a pair leased to another node becomes due for it:
    at the lease's end, not at the pair's (past) due time."""
    for suffix in (REAL_SUFFIX, OTHER):
        await store.record_fetch(fetched(suffix, "v", at=timedelta(0), due_in=timedelta(hours=1)))
    await take(store, "a", REAL_SUFFIX, at=timedelta(hours=1))
    assert await store.next_due(["m"], vantage="v") == NOW + timedelta(hours=1)
    await take(store, "a", OTHER, at=timedelta(hours=1))
    assert await store.next_due(["m"], vantage="v") == NOW + timedelta(hours=1) + LEASE


async def test_a_delivery_is_taken_by_one_node(store: Store) -> None:
    """Two nodes see the same due delivery: one takes it, the other is refused; once
    recorded as failed it is due again at its retry time, for either."""
    alert = NewEvent(
        kind="mirror_unreachable",
        severity="error",
        at=NOW,
        pith_number=None,
        mirrors=("m",),
        summary="down",
        evidence={},
        dedup_key="mirror_unreachable:m",
    )
    await store.alerts.reconcile("mirror:m", [alert], now=NOW, sinks=["hook"])
    ((delivery, _),) = await store.deliveries.due_deliveries(NOW, sinks=["hook"])
    assert await store.deliveries.take(delivery, NOW, NOW + timedelta(minutes=10))
    assert not await store.deliveries.take(delivery, NOW, NOW + timedelta(minutes=10))
    assert await store.deliveries.due_deliveries(NOW, sinks=["hook"]) == []
    await store.deliveries.failed(delivery, "exit 1", NOW + timedelta(minutes=1))
    later = NOW + timedelta(minutes=1)
    assert await store.deliveries.take(delivery, later, later + timedelta(minutes=10))
    await store.deliveries.delivered(delivery, later)
    assert not await store.deliveries.take(delivery, NOW + timedelta(hours=1), NOW)


async def test_each_node_keeps_its_own_clock(store: Store) -> None:
    """Two nodes whose clocks differ by more than a step: neither takes the other's
    last wall time for a step of its own, and a real step back moves its vantage's
    schedule only."""
    for vantage in ("v", "w"):
        await store.record_fetch(fetched(REAL_SUFFIX, vantage, at=timedelta(0), due_in=LEASE))
    ahead = Clock(wall=lambda: NOW + timedelta(minutes=5)).of("a", "v")
    behind = Clock(wall=lambda: NOW).of("b", "w")
    await ahead.seen(store)
    assert await behind.since_last_run(store) == timedelta(0)
    await behind.seen(store)
    assert await store.setting(f"{SEEN_SETTING}@a") is not None
    # a's clock is set back an hour between two runs: a's vantage's schedule moves.
    stepped = Clock(wall=lambda: NOW + timedelta(minutes=5) - timedelta(hours=1)).of("a", "v")
    assert await stepped.since_last_run(store) == -timedelta(hours=1)
    v = await store.fetch_state(REAL_SUFFIX, "m", "bundle", vantage="v")
    w = await store.fetch_state(REAL_SUFFIX, "m", "bundle", vantage="w")
    assert v is not None and w is not None
    assert v.next_due == NOW + LEASE - timedelta(hours=1)
    assert w.next_due == NOW + LEASE


async def test_a_slow_sinks_queue_is_not_delivered_twice_by_two_nodes(
    archive_at: Path | PgUrl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node a works through a queue of deliveries to a slow hook, longer than a claim;
    node b's delivery loop runs meanwhile. Each delivery is claimed from the moment it
    is taken (not from when a read its queue): every alert's hook runs once."""
    monkeypatch.setattr(alert_module, "DELIVERY_CLAIM", timedelta(seconds=1.5))
    calls = tmp_path / "calls"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$ALERT_ID $NODE" >> "{calls}"\nsleep 0.4\n')
    hook.chmod(0o755)
    config = AlertsConfig(hook=hook, hook_timeout=timedelta(seconds=0.7))
    async with await Store.open(archive_at) as a, await Store.open(archive_at) as b:
        now = datetime.now(UTC)
        for i in range(8):
            down = NewEvent(
                kind="mirror_unreachable",
                severity="error",
                at=now,
                pith_number=None,
                mirrors=(f"m{i}",),
                summary="down",
                evidence={},
                dedup_key=f"mirror_unreachable:m{i}",
            )
            await a.alerts.reconcile(f"mirror:m{i}", [down], now=now, sinks=["hook"])

        async def node(store: Store, name: str, start: float, rounds: int) -> None:
            sinks = Sinks(config, None, env={**os.environ, "NODE": name})
            await anyio.sleep(start)
            for _ in range(rounds):
                await deliver_to(store, sinks, "hook", datetime.now(UTC), random.Random(1))
                await anyio.sleep(0.3)

        async with anyio.create_task_group() as tg:
            tg.start_soon(node, a, "a", 0.0, 1)
            tg.start_soon(node, b, "b", 1.7, 8)
        assert await a.deliveries.undelivered_count() == 0
    runs = [line.split()[0] for line in calls.read_text().splitlines()]
    assert sorted(runs) == sorted(set(runs)) and len(runs) == 8, calls.read_text()


async def test_next_due_wakes_for_a_dead_nodes_pair_never_fetched(store: Store) -> None:
    """A node killed in its first round held pairs nobody ever fetched: the others'
    idle schedulers wake when those leases end, not a poll later."""
    await take(store, "a", OTHER)
    assert await store.next_due(["m"], vantage="v") == NOW + LEASE
    assert await store.next_due(["m"], vantage="w") is None


async def test_a_step_of_one_nodes_clock_moves_nothing_while_others_crawl(store: Store) -> None:
    """Node a's clock steps back an hour while node b (of a's vantage) crawls: the
    shared schedule, retries and hold-downs are b's too, and b's clock did not step:
    nothing moves (b would otherwise crawl the vantage again at once)."""
    await store.record_fetch(fetched(REAL_SUFFIX, "v", at=timedelta(0), due_in=LEASE))
    for name in ("a", "b"):
        await store.nodes.seen(name, "v", NOW, interval=timedelta(hours=1))
    ahead = Clock(wall=lambda: NOW + timedelta(minutes=5)).of("a", "v")
    await ahead.seen(store)
    stepped = Clock(wall=lambda: NOW + timedelta(minutes=5) - timedelta(hours=1)).of("a", "v")
    with structlog.testing.capture_logs() as logs:
        assert await stepped.since_last_run(store) == -timedelta(hours=1)
    v = await store.fetch_state(REAL_SUFFIX, "m", "bundle", vantage="v")
    assert v is not None and v.next_due == NOW + LEASE
    (step,) = [e for e in logs if e["event"] == "clock_stepped"]
    assert (step["schedule_moved"], step["other_nodes_crawling"]) == (0, 1)
    # Its own last wall time is the new one: the step is told once.
    assert await stepped.since_last_run(store) == timedelta(0)


async def test_a_pair_cut_off_on_its_way_to_a_worker_is_not_left_in_flight(
    tmp_path: Path, store: Store
) -> None:
    """A reload (or a stop) cancels the scheduler while it hands a pair over: the pair
    is not left counted in flight (it would hold one of its mirror's `per_host` slots
    for good, and never be fetched again until a restart)."""
    config = Config(node=NodeConfig(name="a", vantage="v"))
    daemon = Daemon(lambda: config, tmp_path / "unused.db", lambda _: None, Notifier({}))  # type: ignore[arg-type,return-value]
    daemon.store = store
    daemon.free = anyio.Semaphore(4)
    site = Site(
        "m", "https://m.example", "{base_url}/b/{suffix}", "{base_url}/s/{suffix}", None, "config"
    )
    send, receive = anyio.create_memory_object_stream[object](0)  # nobody receives
    due = [Due(REAL_SUFFIX, "m", NOW)]
    with anyio.move_on_after(0.5):
        await daemon._hand_out(send, due, due, {"m": site})
    assert daemon.inflight == set()
    assert await store.leases.held(datetime.now(UTC)) == {"a": 1}  # let go at round start
    send.close()
    receive.close()


async def test_a_pair_of_a_record_untracked_since_it_was_read_is_not_taken(store: Store) -> None:
    """The scheduler's queue was read before `untrack`: the take refuses the pair, so an
    untracked record is never fetched again."""
    await store.watchlist.untrack([REAL_SUFFIX])
    assert await take(store, "a", REAL_SUFFIX, OTHER) == [Lease(OTHER, "m", NOW + LEASE)]


async def test_a_node_whose_clock_ran_ahead_then_stepped_back_moves_nothing(store: Store) -> None:
    """Node a's clock ran two days ahead (its own sightings are two days ahead too), then
    NTP set it right while node b crawls: b counts as crawling (a's sightings, written
    by the clock in doubt, are no reference), and the shared schedule stays."""
    await store.record_fetch(fetched(REAL_SUFFIX, "v", at=timedelta(0), due_in=LEASE))
    ahead = NOW + timedelta(days=2)
    await store.nodes.seen("a", "v", ahead, interval=timedelta(hours=1))
    await store.nodes.seen("b", "v", NOW, interval=timedelta(hours=1))
    await Clock(wall=lambda: ahead).of("a", "v").seen(store)
    right = Clock(wall=lambda: NOW).of("a", "v")
    assert await right.since_last_run(store) == -timedelta(days=2)
    v = await store.fetch_state(REAL_SUFFIX, "m", "bundle", vantage="v")
    assert v is not None and v.next_due == NOW + LEASE
