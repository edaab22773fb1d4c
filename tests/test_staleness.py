"""Divergence and staleness across mirrors that serve the same bytes, mirrors taken out
of the configuration, and mirrors that go back: each lagging mirror is told about, no
other (real loopback mirrors, a real archive, `sync_once`)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from builder import BundleBuilder
from test_alerts import SECRET, calls, env, hook_script, track

from pithcrawl.config import parse_config

pytestmark = pytest.mark.anyio


def configure(e, names, **alerts):
    lines = "".join(f'{k} = "{v}"\n' for k, v in alerts.items())
    mirrors = "".join(
        f'[[mirrors]]\nname = "m{i}"\nbase_url = "{m.base_url}"\n'
        for i, m in enumerate(e.mirrors)
        if f"m{i}" in names
    )
    (e.tmp / "secret").write_bytes(SECRET + b"\n")
    e.config = parse_config(
        f'db = "archive.db"\n[crawl]\ntimeout = "5s"\ndiscover = false\n'
        f"[alerts]\n{lines}\n{mirrors}",
        base_dir=e.tmp,
    )


async def open_alerts(e):
    async with e.store() as store:
        return [(a.kind, a.mirrors) for a in await store.alerts.open_alerts()]


async def test_a_mirror_lagging_one_that_served_its_bytes_is_stale(tmp_path, signer):
    """m1 serves B1; m0 (added later) serves the same bytes, then moves on to B2. m1 lags
    B2 past stale_after: it is stale (it used to be taken for m0, which lags nobody)."""
    async with env(tmp_path, signer) as e:
        b = BundleBuilder(signer)
        b.add_event()
        b1 = b.bytes()
        e.mirrors[1].put(b1)
        e.mirrors[0].put(b1)
        await track(e, b)
        configure(e, {"m1"}, stale_after="1s")
        await e.sync()  # only m1 known
        configure(e, {"m0", "m1"}, stale_after="1s")
        await e.sync()  # m0 archived with the same bytes, later id
        b.add_event()
        e.mirrors[0].put(b.bytes())  # m0 moves on; m1 stays at B1
        await e.sync()
        e.clock.advance(timedelta(seconds=2))  # past stale_after
        await e.sync()
        assert ("mirror_stale", ("m1",)) in await open_alerts(e)


async def test_a_mirror_lagging_another_is_stale(tmp_path, signer):
    async with env(tmp_path, signer) as e:
        b = BundleBuilder(signer)
        b.add_event()
        e.mirrors[1].put(b.bytes())
        e.mirrors[0].put(b.bytes())
        await track(e, b)
        e.configure(stale_after="1s")
        await e.sync()
        b.add_event()
        e.mirrors[0].put(b.bytes())
        await e.sync()
        e.clock.advance(timedelta(seconds=2))  # past stale_after
        await e.sync()
        assert ("mirror_stale", ("m1",)) in await open_alerts(e)


async def test_two_mirrors_lagging_with_the_same_bytes_are_each_stale(tmp_path, signer):
    async with env(tmp_path, signer, n=3) as e:
        b = BundleBuilder(signer)
        b.add_event()
        e.mirrors[0].put(b.bytes())
        e.mirrors[1].put(b.bytes())
        b.add_event()
        e.mirrors[2].put(b.bytes())
        await track(e, b)
        e.configure(stale_after="1s")
        await e.sync()
        e.clock.advance(timedelta(seconds=2))  # past stale_after
        await e.sync()
        async with e.store() as store:
            alerts = await store.alerts.open_alerts()
        got = sorted((a.kind, a.mirrors, a.evidence["documents"][0]["mirror"]) for a in alerts)
        assert got == [("mirror_stale", ("m0",), "m0"), ("mirror_stale", ("m1",), "m1")]


async def test_a_fork_is_told_against_each_mirror_of_the_other_side(tmp_path, signer):
    """A fork, with the other side one event longer and past stale_after: a divergence
    against each mirror of the other side, and nothing else (a fork is not a lag: the
    shorter side is not stale)."""
    async with env(tmp_path, signer, n=3) as e:
        a, c = BundleBuilder(signer), BundleBuilder(signer)
        a.add_event(payload={"graph_snapshot": {"side": "a"}})
        a.add_event(payload={"graph_snapshot": {"side": "a2"}})
        c.add_event(payload={"graph_snapshot": {"side": "c"}})
        e.mirrors[0].put(a.bytes())
        e.mirrors[1].put(a.bytes())
        e.mirrors[2].put(c.bytes())
        await track(e, a)
        configure(e, {"m0", "m1", "m2"}, stale_after="1s", resolve_after="0s")
        await e.sync()
        e.clock.advance(timedelta(seconds=2))  # past stale_after: a lag would be stale now
        await e.sync()
        got = sorted((k, m) for k, m in await open_alerts(e))
        assert got == [
            ("mirror_divergence", ("m0", "m2")),
            ("mirror_divergence", ("m1", "m2")),
        ]


async def test_a_mirror_taken_out_of_the_configuration_is_never_stale(tmp_path, signer):
    """m1 is taken out of the configuration; m0 keeps changing. m1's last bundle is
    history, not what it serves now: no alert (one used to open and close per change)."""
    async with env(tmp_path, signer) as e:
        b = BundleBuilder(signer)
        b.add_event()
        for m in e.mirrors:
            m.put(b.bytes())
        await track(e, b)
        e.configure(stale_after="1s")
        await e.sync()
        configure(e, {"m0"}, stale_after="1s", hook=str(hook_script(tmp_path)))  # m1 removed
        b.add_event()
        e.mirrors[0].put(b.bytes())
        await e.sync()
        e.clock.advance(timedelta(seconds=2))  # past stale_after
        b.add_event()
        e.mirrors[0].put(b.bytes())
        await e.sync()
        b.add_event()
        e.mirrors[0].put(b.bytes())
        await e.sync()
        async with e.store() as store:
            opened = await store.events(kinds=["mirror_stale"])
            closed = await store.events(kinds=["alert_closed"])
            deliveries = await store.deliveries.rows()
        assert opened == [] and closed == []
        assert calls(tmp_path) == [] and deliveries == []


async def test_mirrors_serving_the_same_old_bytes_are_stale(tmp_path, signer):
    """m1 had B2, then goes back to B1, the bytes m0 still serves. Both lag B2, though
    they serve the same bytes: m0 is stale too (the record was never rechecked)."""
    async with env(tmp_path, signer) as e:
        b = BundleBuilder(signer)
        b.add_event()
        b1 = b.bytes()
        for m in e.mirrors:
            m.put(b1)
        await track(e, b)
        e.configure(stale_after="1s")
        await e.sync()
        b.add_event()
        e.mirrors[1].put(b.bytes())
        await e.sync()
        e.mirrors[1].put(b1)  # m1 replays the old bundle
        await e.sync()
        e.clock.advance(timedelta(seconds=2))  # past stale_after
        await e.sync()
        got = await open_alerts(e)
        assert ("mirror_stale", ("m0",)) in got
