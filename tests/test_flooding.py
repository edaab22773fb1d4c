"""Flooding: one incident is one alert, delivered once, and no sink delays another.

The hostile mirror flaps, replays, serves a new bad body every time, or a webhook never
answers; each case next to a good mirror (`arena`) whose records are archived on every
pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from itertools import count

import anyio
import pytest
from arena import HOSTILE, Arena, arena
from builder import BundleBuilder, TestSigner
from conftest import VANTAGE
from hostile import Handler, respond
from test_alerts import SECRET, calls, down, hook_script, receiver

from pithcrawl.cli import main
from pithcrawl.commands.sync import exit_code
from pithcrawl.store import Store

pytestmark = pytest.mark.anyio


def alternate(*bodies: bytes) -> Handler:
    """Each request gets the next of `bodies`, round and round."""
    turn = count()

    async def handler(writer: asyncio.StreamWriter) -> None:
        await respond(200, bodies[next(turn) % len(bodies)])(writer)

    return handler


def flap(a: Arena) -> BundleBuilder:
    """The hostile mirror serves the record alternately with one more event and as
    before (the good mirror, the newer); it has no state.json (which is optional)."""
    (b,) = a.records
    older = b.bytes()
    b.add_event()
    newer = b.bytes()
    a.good.put(newer)
    a.hostile.route(a.hostile.bundle_path(b.suffix), alternate(newer, older))
    a.hostile.route(a.hostile.state_path(b.suffix), respond(404))
    return b


async def test_a_flapping_mirror_is_one_alert_under_run(tmp_path, signer):
    """A mirror alternating between an older and a newer valid bundle, under `run` at a
    one-second interval: one rollback alert, held open while it keeps coming back, run
    through the hook once; no closes. (It was 40 opens, 38 closes and 66 hook runs in 40
    seconds: every flip closed and reopened the same dedup key.)"""
    async with arena(tmp_path, signer, records=1, extra='interval = "1s"') as a:
        hook = hook_script(tmp_path)
        a.extra += f'\n[alerts]\nhook = "{hook}"\n'
        b = flap(a)
        daemon = a.daemon()
        with anyio.move_on_after(6):
            await daemon.run()
        fetched = a.hostile.hits[a.hostile.bundle_path(b.suffix)]
        assert fetched >= 5  # the mirror was asked often enough to flip and flip back
        async with await Store.open(a.db, readonly=True) as store:
            alerts = await store.alerts.open_alerts()
            log = await store.events()
        (alert,) = alerts
        assert (alert.kind, alert.mirrors) == ("rollback", (HOSTILE,))
        assert alert.recurrences >= 1  # it cleared and came back, and is still the one alert
        assert [e.kind for e in log if e.kind == "alert_closed"] == []
        # Each time the older bundle was served is in the log (and in `history`), as
        # what that snapshot showed; it is one alert, and the hook ran once.
        assert {e.kind for e in log if e.severity == "critical"} == {"rollback"}
        assert [c["env"]["EVENT"] for c in calls(tmp_path)] == ["rollback"]
        await a.assert_good_archived()


async def test_flapping_between_passes_keeps_one_alert_and_exits_by_what_each_pass_saw(
    tmp_path, signer, capsys
):
    """The same flapping seen by `sync` passes: one rollback, held open (status shows it
    open with its recurrences); each pass exits by what it saw: 1 while the older bundle
    is served, 0 while the newer is (the condition is clear; the alert is held)."""
    async with arena(tmp_path, signer, records=1) as a:
        flap(a)
        codes = [exit_code(await a.sync()) for _ in range(5)]
        assert codes == [0, 1, 0, 1, 0]
        async with await Store.open(a.db, readonly=True) as store:
            (alert,) = await store.alerts.open_alerts()
            log = await store.events()
        assert (alert.kind, alert.recurrences) == ("rollback", 1)
        assert alert.cleared_at is not None  # clear now, held for alerts.resolve_after
        assert [e.kind for e in log if e.kind == "alert_closed"] == []
        assert [e.kind for e in log if e.kind == "rollback"] == ["rollback", "rollback"]
        assert a.summaries[-1].alerts_open == 1
        assert [s.alerts_raised for s in a.summaries] == [0, 1, 0, 0, 0]
        cfg = str(a.write_config())
        assert await anyio.to_thread.run_sync(main, ["--config", cfg, "status"]) == 0
        out = capsys.readouterr().out
        assert "open alerts: 1 (1 clear now, held open for alerts.resolve_after)" in out
        assert "came back 1 time(s)" in out


async def test_a_new_bad_body_every_fetch_is_one_alert(tmp_path, signer):
    """A mirror serving a different invalid body of one record on every pass: one
    `untrusted_key` alert while it goes on (it was a new alert, and a page, per body),
    with the first body as its evidence; every body is still archived."""
    async with arena(tmp_path, signer) as a:
        bad = a.records[0]
        rogue = TestSigner("rogue-key")
        bodies = []
        for i in range(3):
            forged = BundleBuilder(rogue, record=bad.record)
            for _ in range(i + 1):
                forged.add_event()
            bodies.append(forged.bytes())
        a.hostile.route(a.hostile.bundle_path(bad.suffix), alternate(*bodies))
        for _ in range(3):
            assert exit_code(await a.sync()) == 1
        async with await Store.open(a.db, readonly=True) as store:
            (alert,) = await store.alerts.open_alerts()
            snaps = await store.snapshots(bad.suffix, mirror=HOSTILE)
        assert alert.kind == "untrusted_key"
        assert alert.dedup_key == f"untrusted_key:{bad.suffix}:{HOSTILE}@{VANTAGE}"
        assert alert.evidence["body_sha256"] == hashlib.sha256(bodies[0]).hexdigest()
        assert len(snaps) == 3 and not any(s.trusted for s in snaps)
        assert [s.alerts_raised for s in a.summaries] == [1, 0, 0]


@asynccontextmanager
async def dead_webhook() -> AsyncIterator[str]:
    """An endpoint that accepts connections, reads the request and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(65536)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(never, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    finally:
        for w in held:
            w.close()
        server.close()


async def test_a_webhook_that_never_answers_delays_no_other_sink(tmp_path, signer):
    """30 alerts, a webhook that never answers (timeout 2 s) and a working hook: the hook
    takes all 30 during the pass, and the pass lasts about one timeout, not 30 (it took
    151 s, and the 30th hook delivery came 146 s late). The webhook's deliveries stay
    queued for its retry, none lost."""
    async with arena(tmp_path, signer, records=30, fetch_timeout="2s") as a, dead_webhook() as url:
        rogue = TestSigner("rogue-key")
        for b in a.records:
            forged = BundleBuilder(rogue, record=b.record)
            forged.add_event()
            a.hostile.route(a.hostile.bundle_path(b.suffix), respond(200, forged.bytes()))
        hook = hook_script(tmp_path)
        a.extra += f'\n[alerts]\nhook = "{hook}"\nwebhook = "{url}"\n'
        started = time.monotonic()
        summary = await a.sync()
        took = time.monotonic() - started
        assert summary.alerts == 30
        assert len(calls(tmp_path)) == 30
        assert took < 12, f"the pass took {took:.1f}s"
        assert summary.delivered == 30
        assert summary.undelivered == 30  # the webhook's, each still queued
        async with await Store.open(a.db, readonly=True) as store:
            pending = [d for d in await store.deliveries.rows() if d.delivered_at is None]
        assert {d.sink for d in pending} == {"webhook"}
        assert max(d.attempts for d in pending) <= 4  # tried a few at once, then put off
        assert sum(d.attempts for d in pending) <= 4


async def test_a_sink_added_later_hears_of_what_is_open_and_of_nothing_else(tmp_path, signer):
    """Alerts raised before any hook was configured: once one is, it is sent every alert
    still open, then the close of those; it never hears of an alert that closed before
    it was added (it was sent only closing notices of alerts it was never told of, and
    never the one still open)."""
    async with arena(tmp_path, signer, records=2) as a, receiver() as r:
        rogue = TestSigner("rogue-key")
        first, second = a.records
        for b in a.records:
            forged = BundleBuilder(rogue, record=b.record)
            forged.add_event()
            a.hostile.route(a.hostile.bundle_path(b.suffix), respond(200, forged.bytes()))
        a.extra += '\n[alerts]\nresolve_after = "0s"\n'
        assert (await a.sync()).alerts == 2  # log only: no sink
        a.hostile.put(second.bytes())  # the second one clears before any sink exists
        assert (await a.sync()).alerts == 1
        hook = hook_script(tmp_path)
        (tmp_path / "secret").write_bytes(SECRET)
        a.extra += f'hook = "{hook}"\nwebhook = "{r.url}"\nwebhook_secret_file = "secret"\n'
        await a.sync()
        a.hostile.put(first.bytes())  # now the first clears too
        await a.sync()
        async with await Store.open(a.db, readonly=True) as store:
            alerts = {x.suffix: x for x in await store.alerts.open_alerts()}
            assert alerts == {}
            log = await store.events(kinds=["untrusted_key"])
        first_alert = next(e for e in log if e.suffix == first.suffix)
        seen = [(c["env"]["EVENT"], c["doc"]["pith_number"]) for c in calls(tmp_path)]
        assert seen == [
            ("untrusted_key", first_alert.pith_number),
            ("alert_closed", first_alert.pith_number),
        ]
        assert [(x["event"], x["pith_number"]) for x in r.received] == seen


async def test_hold_down_closes_only_after_the_condition_stayed_clear(tmp_path):
    """The hold-down on the archive's clock: clear at t, back at t+5m (the same alert,
    recurrences 1), clear again at t+10m, closed by the sweep only at t+40m (30 minutes
    clear), with one closing notice queued for the sink that had the alert."""
    t = datetime(2026, 11, 1, tzinfo=UTC)
    hold = timedelta(minutes=30)

    async with await Store.open(tmp_path / "a.db") as store:
        book = store.alerts
        minutes = [timedelta(minutes=n) for n in range(61)]

        async def check(at: timedelta, reported: bool) -> object:
            now = t + at
            return await book.reconcile(
                "reach:m", [down(now)] if reported else [], now=now, sinks=["hook"], hold=hold
            )

        (alert,) = (await check(minutes[0], True)).opened
        held = await check(minutes[1], False)
        assert (held.closed, held.still_open) == ([], True)
        back = await check(minutes[5], True)
        assert (back.opened, [x.recurrences for x in back.recurred]) == ([], [1])
        await check(minutes[10], False)
        assert await book.close_cleared(t + minutes[39], hold) == []
        closed = await book.close_cleared(t + minutes[40], hold, ["hook"])
        assert [x.id for x in closed] == [alert.id]
        phases = [(d.sink, d.phase) for d in await store.deliveries.rows(alert.id)]
        assert phases == [("hook", "open"), ("hook", "close")]
        stored = await book.get(alert.id)
    assert stored is not None
    assert (stored.recurrences, stored.closed_at) == (1, t + minutes[40])
    assert json.loads(json.dumps(stored.to_json()))["recurrences"] == 1


async def test_one_alert_a_sink_cannot_take_does_not_hold_up_the_others(tmp_path, signer):
    """A hook that refuses one alert (it exits 1 for one record's) and takes the rest:
    every other alert still reaches it, then and later, while the refused one waits for
    its retries (it stood first in the queue, and the sink was put off each time it
    failed: nothing after it was ever delivered)."""
    async with arena(tmp_path, signer, records=4) as a:
        rogue = TestSigner("rogue-key")
        poison = a.records[0]
        script = tmp_path / "hook"
        log = tmp_path / "hook.log"
        script.write_text(
            "#!/bin/sh\n"
            f'case "$PITH_NUMBER" in *{poison.suffix}*) exit 1;; esac\n'
            f'echo "$EVENT $PITH_NUMBER" >> "{log}"\n'
        )
        script.chmod(0o755)
        a.extra += f'\n[alerts]\nhook = "{script}"\n'
        first = a.records[:2]
        for b in first:
            forged = BundleBuilder(rogue, record=b.record)
            forged.add_event()
            a.hostile.route(a.hostile.bundle_path(b.suffix), respond(200, forged.bytes()))
        await a.sync()  # the poisoned alert was opened first
        a.clock.advance(timedelta(hours=2))  # every retry is due again
        for b in a.records[2:]:  # two more alerts, later
            forged = BundleBuilder(rogue, record=b.record)
            forged.add_event()
            a.hostile.route(a.hostile.bundle_path(b.suffix), respond(200, forged.bytes()))
        await a.sync()
        delivered = log.read_text().splitlines()
        assert sorted(line.split()[1][-26:] for line in delivered) == sorted(
            b.suffix for b in a.records[1:]
        )


async def test_a_sink_taken_out_is_not_sent_the_end_of_what_it_never_had(tmp_path, signer):
    """A webhook that never took an alert (it was down), then taken out of the
    configuration: when the alert closes, no closing notice is queued for it and its
    pending notice is dropped (they stayed pending for ever, and would all have been
    sent, stale, had it come back)."""
    async with arena(tmp_path, signer, records=1) as a, dead_webhook() as url:
        (b,) = a.records
        rogue = BundleBuilder(TestSigner("rogue-key"), record=b.record)
        rogue.add_event()
        a.hostile.route(a.hostile.bundle_path(b.suffix), respond(200, rogue.bytes()))
        base = a.extra
        a.extra = base + f'\n[alerts]\nresolve_after = "0s"\nwebhook = "{url}"\n'
        await a.sync()
        a.extra = base + '\n[alerts]\nresolve_after = "0s"\n'
        a.hostile.put(b.bytes())
        await a.sync()
        async with await Store.open(a.db, readonly=True) as store:
            assert await store.alerts.open_alerts() == []
            assert await store.deliveries.rows() == []


async def test_a_webhook_body_shows_nothing_that_could_act_on_a_screen(tmp_path):
    """The JSON a webhook receives escapes every non-printable character (a C1 control,
    a bidi override, a line separator from a mirror's text went raw), and is still the
    same alert once parsed."""
    from pithcrawl.alert import payload
    from pithcrawl.store import Alert

    text = "x\x9b2J\u202eevil\u200b\u2028forged"
    now = datetime.now(UTC)
    alert = Alert(
        1, "k", "s", "state_url_mismatch", "critical", None, None, ("m",), text, {}, now, None
    )
    body = payload(alert, "open")
    assert body.isascii() or all(ch.isprintable() for ch in body.decode())
    assert json.loads(body)["summary"] == text


async def test_a_state_key_as_long_as_a_book_gives_an_alert_of_bounded_text(tmp_path, signer):
    """An unsigned state.json with one top-level key of 140,000 characters (its
    state_sha256 recomputed, as anyone can): a `state_url_mismatch` whose summary and
    hook variables are bounded, and the hook runs (the summary held the key whole:
    the hook could not be started, "Argument list too long", for that alert and, queued
    behind it, every later one)."""
    from builder import H

    async with arena(tmp_path, signer, records=1) as a:
        (b,) = a.records
        state = json.loads(b.bytes())["state"]
        state["K" * 140_000] = 1
        state["state_sha256"] = H({k: v for k, v in state.items() if k != "state_sha256"})
        a.hostile.route(a.hostile.state_path(b.suffix), respond(200, json.dumps(state).encode()))
        hook = hook_script(tmp_path)
        a.extra += f'\n[alerts]\nhook = "{hook}"\n'
        summary = await a.sync()
        assert summary.alerts == 1 and summary.delivered == 1
        (call,) = calls(tmp_path)
        assert call["env"]["EVENT"] == "state_url_mismatch"
        assert len(call["env"]["SUMMARY"]) <= 4096
        assert len(call["doc"]["summary"]) < 1000


async def test_a_body_with_thousands_of_findings_keeps_a_bounded_few(tmp_path, signer):
    """A bundle whose 300 events each break their hash: the snapshot, the event and the
    alert keep the first 50 findings and the total (every finding was copied into each,
    about 200 times the body's own size in the archive)."""
    async with arena(tmp_path, signer, records=1) as a:
        (b,) = a.records
        for n in range(300):
            b.add_event(created_at=f"2026-11-02T01:{n // 60:02d}:{n % 60:02d}Z")
        doc = json.loads(b.bytes())
        for event in doc["events"][1:]:
            event["content_sha256"] = "0" * 64
        a.hostile.route(a.hostile.bundle_path(b.suffix), respond(200, json.dumps(doc).encode()))
        a.good.put(b.bytes())
        summary = await a.sync()
        assert summary.alerts == 1
        async with await Store.open(a.db, readonly=True) as store:
            (alert,) = await store.alerts.open_alerts()
            (snap,) = await store.snapshots(b.suffix, mirror=HOSTILE)
            (entry,) = [e for e in await store.events() if e.kind == alert.kind]
        assert len(alert.evidence["findings"]) == 50
        assert alert.evidence["findings_total"] > 300
        assert len(snap.findings) == 50
        assert entry.evidence["findings_total"] == alert.evidence["findings_total"]


async def test_a_condition_back_after_the_hold_down_is_a_new_alert(tmp_path):
    """Clear at t, back at t+6h (a pass a six hours, a hold-down of 30 minutes): the
    first alert was over, this is a new one, a new page (it was folded into the old
    alert as a recurrence: no alert, no page, `alerts_raised` 0)."""
    t = datetime(2026, 11, 1, tzinfo=UTC)
    hold = timedelta(minutes=30)
    async with await Store.open(tmp_path / "a.db") as store:
        book = store.alerts
        (first,) = (await book.reconcile("reach:m", [down(t)], now=t, hold=hold)).opened
        await book.reconcile("reach:m", [], now=t + timedelta(hours=1), hold=hold)
        back = t + timedelta(hours=7)
        done = await book.reconcile("reach:m", [down(back)], now=back, hold=hold)
        assert [a.id for a in done.closed] == [first.id]
        assert len(done.opened) == 1 and done.opened[0].id != first.id
        assert done.recurred == []


def fresh_junk(size: int) -> Handler:
    """A new body of random bytes on every request (no JSON at all)."""

    async def handler(writer: asyncio.StreamWriter) -> None:
        await respond(200, os.urandom(size))(writer)

    return handler


async def test_junk_bodies_fill_no_disk(tmp_path, signer):
    """A mirror serving a new 200 KB junk body on every fetch, pass after pass: one
    alert, its first bodies archived as evidence (four a day), no more (every body was
    archived: 140 MB in 20 seconds under `run`, then a full disk for everyone)."""
    async with arena(tmp_path, signer, records=1) as a:
        (b,) = a.records
        a.hostile.route(a.hostile.bundle_path(b.suffix), fresh_junk(200_000))
        for _ in range(8):
            assert exit_code(await a.sync()) == 1
        async with await Store.open(a.db, readonly=True) as store:
            snaps = await store.snapshots(b.suffix, mirror=HOSTILE)
            alerts = await store.alerts.open_alerts()
            stats = await store.maintenance.stats()
        assert len(snaps) == 4
        assert [x.kind for x in alerts] == ["document_invalid"]
        assert stats["blob_bytes_stored"] < 5 * 200_000 + 100_000
        a.clock.advance(timedelta(days=1, minutes=1))  # a new day, new evidence
        await a.sync()
        async with await Store.open(a.db, readonly=True) as store:
            assert len(await store.snapshots(b.suffix, mirror=HOSTILE)) == 5
