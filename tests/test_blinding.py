"""Blinding: one hostile mirror must never stop the pass, the daemon or the other mirrors.

Each attack is played next to a good mirror (`arena`), over several passes, and each pass
must still archive the good mirror's records as it serves them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest
import structlog
from arena import HOSTILE, arena
from builder import BundleBuilder
from conftest import VANTAGE, write_config
from hostile import Handler, raw, redirect, respond, unframed_reset

from pithcrawl.clock import Clock
from pithcrawl.commands.sync import exit_code
from pithcrawl.errors import StoreError
from pithcrawl.store import Store
from pithcrawl.sync import sync_once

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "headers",
    [
        {"ETag": '"caf\xe9"'},  # Latin-1 é: not UTF-8, it could not be stored as text
        {"ETag": '"a\x01b"'},  # a control byte: stored, it crashed every later pass
        {"ETag": '"a\x7fb"'},
        {"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT\x01"},
        {"Last-Modified": "L\xe9 1er janvier"},
    ],
    ids=["etag-latin1", "etag-control", "etag-del", "last-modified-control", "lm-latin1"],
)
async def test_validators_with_odd_bytes_cost_nothing(tmp_path, signer, headers):
    """A mirror sending an ETag or Last-Modified that is not visible ASCII: the value is
    left out (one warning), the record is fetched without it, and every pass goes on to
    archive the good mirror's records (the write they share crashed, pass after pass)."""
    async with arena(tmp_path, signer) as a:
        bad = a.records[0]
        sent: list[bytes] = []
        a.hostile.route(a.hostile.bundle_path(bad.suffix), respond(200, bad.bytes(), headers))
        a.hostile.requests = sent  # every request's head, as received
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                summary = await a.sync()
                assert (summary.errors, summary.alerts) == (0, 0)
                assert exit_code(summary) == 0
                a.advance()
        async with await Store.open(a.db, readonly=True) as store:
            state = await store.fetch_state(bad.suffix, HOSTILE, "bundle", vantage=VANTAGE)
        assert state is not None
        assert (state.etag, state.last_modified, state.failures) == (None, None, 0)
        # Fetched whole each time, nothing of the odd value sent back, one warning a pass.
        heads = [h for h in sent if bad.suffix.encode() in h and b"bundle.json" in h]
        assert len(heads) == 3
        assert not any(b"If-None-Match" in h or b"If-Modified-Since" in h for h in heads)
        assert len([e for e in logs if e["event"] == "header_refused"]) == 3


async def test_a_validator_archived_with_a_control_byte_is_not_sent_back(tmp_path, signer):
    """An archive written by an older pithcrawl holds an ETag with a control byte: the
    next pass does not send it (aiohttp refused the request: every pass, every mirror,
    and `run` restarted into the same crash)."""
    async with arena(tmp_path, signer) as a:
        await a.sync()
        bad = a.records[0]
        with sqlite3.connect(a.db) as conn:
            conn.execute(
                "UPDATE fetch_state SET etag = ?, last_modified = ? WHERE suffix = ?",
                ('"\x01"', "\x7f", bad.suffix),
            )
        a.advance()
        summary = await a.sync()
        assert (summary.errors, summary.alerts) == (0, 0)


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


async def test_a_gzip_stream_cut_short_is_an_operational_error(tmp_path, signer):
    """A gzip stream that stops before its end (the Content-Length honest for what was
    sent) is an incomplete transfer: exit 3, no alert, nothing archived of it. It was
    taken for the whole body and became a `malformed_json` security alert (exit 1)."""
    async with arena(tmp_path, signer) as a:
        bad = a.records[0]
        whole = _gzip(bad.bytes())
        cut = whole[: len(whole) - 40]
        a.hostile.route(
            a.hostile.bundle_path(bad.suffix),
            respond(200, cut, {"Content-Encoding": "gzip"}),
        )
        for _ in range(2):
            summary = await a.sync()
            assert (summary.alerts, summary.untrusted) == (0, 0)
            assert summary.errors + summary.deferred == 1
            assert exit_code(summary) == 3
            a.advance()
        async with await Store.open(a.db, readonly=True) as store:
            state = await store.fetch_state(bad.suffix, HOSTILE, "bundle", vantage=VANTAGE)
            assert await store.snapshots(bad.suffix, mirror=HOSTILE) == []
            assert await store.alerts.open_alerts() == []
        assert state is not None and state.last_error is not None
        assert state.last_error.endswith("the gzip stream was cut short")


# -- the daemon: a clock that steps back, an archive deleted under it ---------------------


async def test_a_clock_stepped_back_under_run_does_not_stop_the_crawl(tmp_path, signer):
    """The wall clock steps back a day under `run` (an NTP correction, a VM restored):
    the step is logged and the schedule moves back with it, so the pairs come due as
    before. (Every pair was due a day later by the new clock: crawling stopped, with
    nothing logged and the lag metric at 0.)"""
    async with arena(tmp_path, signer, extra='interval = "1s"') as a:
        offset = [timedelta(0)]
        clock = Clock(wall=lambda: datetime.now(UTC) + offset[0])
        daemon = a.daemon(clock=clock)
        path = a.good.hits
        bundle = f"/pith/{a.records[0].suffix}/bundle.json"
        with structlog.testing.capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(daemon.run)
                await until(lambda: path[bundle] >= 2)
                offset[0] = -timedelta(days=1)
                before = path[bundle]
                await anyio.sleep(3)
                after = path[bundle]
                tg.cancel_scope.cancel()
        assert after >= before + 2, f"{before} then {after} fetches: the crawl stalled"
        (step,) = [e for e in logs if e["event"] == "clock_stepped"]
        assert step["by_seconds"] == pytest.approx(-86400, abs=5)
        assert step["schedule_moved"] >= 4  # both records' bundle and state, both mirrors
        assert step["log_level"] == "warning"
        await a.assert_good_archived()


async def test_a_clock_stepped_back_between_runs_moves_the_schedule(tmp_path, signer):
    """The last pass ran with the clock a day ahead (every time it wrote is a day ahead),
    then the clock was set right while nothing ran: the next pass logs the step and moves
    the archive's times back, so a pair its mirror put off for an hour is asked again an
    hour later, not a day and an hour later."""
    async with arena(tmp_path, signer) as a:
        bad = a.records[0]
        later = respond(503, headers={"Retry-After": "3600"})
        a.hostile.route(a.hostile.bundle_path(bad.suffix), later)
        await a.sync()
        day = timedelta(days=1)

        def ahead(text: str) -> str:
            at = datetime.fromisoformat(text.replace("Z", "+00:00")) + day
            return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        with sqlite3.connect(a.db) as conn:  # as if written by a clock a day ahead
            rows = conn.execute("SELECT suffix, mirror, kind, next_due FROM fetch_state")
            for suffix, mirror, kind, due in rows.fetchall():
                conn.execute(
                    "UPDATE fetch_state SET next_due = ? WHERE suffix = ? AND mirror = ?"
                    " AND kind = ?",
                    (ahead(due), suffix, mirror, kind),
                )
            # (each node keeps its own: this one is named after the host)
            (name, seen) = conn.execute(
                "SELECT name, value FROM settings WHERE name LIKE 'clock:seen@%'"
            ).fetchone()
            conn.execute("UPDATE settings SET value = ? WHERE name = ?", (ahead(seen), name))
        with structlog.testing.capture_logs() as logs:
            assert (await a.sync()).deferred == 1  # still put off: for an hour
        (step,) = [e for e in logs if e["event"] == "clock_stepped"]
        assert step["by_seconds"] == pytest.approx(-86400, abs=5)
        path = a.hostile.bundle_path(bad.suffix)
        hits = a.hostile.hits[path]
        a.clock.advance(timedelta(minutes=61))
        summary = await a.sync()
        assert (summary.deferred, a.hostile.hits[path]) == (0, hits + 1)


async def test_a_clock_stepped_forward_under_run_makes_no_failure_older(tmp_path, signer):
    """A mirror failing for a few seconds when the wall clock jumps two days forward: no
    `mirror_unreachable` (a failure of seconds looked two days old), and the schedule
    keeps its spacing (the step is logged)."""
    async with arena(
        tmp_path, signer, extra='interval = "1s"\n[alerts]\nunreachable_after = "1d"'
    ) as a:
        bad = a.records[0]
        a.hostile.route(a.hostile.bundle_path(bad.suffix), respond(500))
        offset = [timedelta(0)]
        clock = Clock(wall=lambda: datetime.now(UTC) + offset[0])
        daemon = a.daemon(clock=clock)
        path = a.hostile.bundle_path(bad.suffix)
        with structlog.testing.capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(daemon.run)
                await until(lambda: a.hostile.hits[path] >= 1)
                offset[0] = timedelta(days=2)
                await anyio.sleep(1.5)  # the next minute's check comes at 0.2 s here
                tg.cancel_scope.cancel()
        assert [e for e in logs if e["event"] == "clock_stepped"]
        async with await Store.open(a.db, readonly=True) as store:
            assert [x.kind for x in await store.alerts.open_alerts()] == []


async def test_the_archive_deleted_under_run_stops_it_with_a_clear_error(tmp_path, signer):
    """The archive's file is deleted while `run` has it open: the daemon stops with a
    StoreError naming it within seconds, for systemd to restart it, instead of writing
    into a file no one can open again (and losing everything at exit)."""
    async with arena(tmp_path, signer, extra='interval = "1s"') as a:
        daemon = a.daemon()

        async def delete_it() -> None:
            await until(lambda: bool(a.good.hits))
            for extra in ("", "-wal", "-shm"):
                os.unlink(f"{a.db}{extra}")
            await anyio.sleep(5)  # the daemon has stopped long before

        async def run_it() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(daemon.run)
                tg.start_soon(delete_it)

        with pytest.raises(BaseExceptionGroup) as raised:
            await run_it()
        errors = _leaves(raised.value)
        assert [type(e) for e in errors] == [StoreError], errors
        assert f"the archive {a.db} was deleted" in str(errors[0])


def test_run_stops_with_exit_3_when_its_archive_is_replaced(tmp_path, signer, mirror):
    """`pithcrawl run` whose archive is moved aside and replaced by another file: exit 3
    and one line saying so (what systemd's Restart=on-failure restarts), no traceback."""
    b = BundleBuilder(signer)
    b.add_event()
    mirror.put(b.bytes())
    cfg = write_config(tmp_path, signer, mirror.base_url)
    cfg.write_text(cfg.read_text().replace("[crawl]\n", '[crawl]\ninterval = "1s"\n'))
    base = [sys.executable, "-m", "pithcrawl", "--config", str(cfg), "--log-format", "json"]
    subprocess.run([*base, "track", b.suffix], check=True)
    proc = subprocess.Popen([*base, "run"], stderr=subprocess.PIPE, text=True)
    try:
        db = tmp_path / "archive.db"
        deadline = time.monotonic() + 10
        while not mirror.hits and time.monotonic() < deadline:
            time.sleep(0.05)
        db.rename(tmp_path / "moved-aside.db")
        db.write_bytes(b"")
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    assert code == 3, err
    assert "was replaced by another file" in err
    assert "Traceback" not in err


async def until(check: Callable[[], bool]) -> None:
    """Wait until `check()` holds (the daemon's progress is seen from outside it)."""
    with anyio.fail_after(10):
        while not check():  # noqa: ASYNC110 - polling what another task changes
            await anyio.sleep(0.05)


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


# -- more of what one mirror may send (an attack on loopback found each) -------------------


async def test_a_retry_after_date_no_clock_can_hold_costs_its_pair_only(tmp_path, signer):
    """`Retry-After` with a year of twenty digits: an unparseable header (it raised an
    OverflowError through the pass: nothing archived, and `run` crashed on every
    restart), so one error to retry, and the good mirror archived."""
    async with arena(tmp_path, signer) as a:
        bad = a.records[0]
        date = "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"
        a.hostile.route(
            a.hostile.bundle_path(bad.suffix), respond(503, headers={"Retry-After": date})
        )
        for _ in range(2):
            summary = await a.sync()
            assert summary.errors + summary.deferred == 1 and summary.alerts == 0
            a.advance()


async def test_a_304_to_a_request_for_a_body_is_a_failure_of_its_pair(tmp_path, signer):
    """state.json answering 304 to a request without validators (nothing of it was
    archived to stand for): an error for that pair (it failed an assertion and ended the
    pass, and `run`, on every restart; after an earlier failure it was reported as damage
    to the archive)."""
    async with arena(tmp_path, signer) as a:
        bad = a.records[0]
        a.hostile.route(a.hostile.state_path(bad.suffix), respond(304))
        for _ in range(3):
            summary = await a.sync()
            assert (summary.errors, summary.alerts) == (1, 0), summary
            a.advance()
            a.hostile.put(bad.bytes())  # the bundle changes; state.json still answers 304
            a.hostile.route(a.hostile.state_path(bad.suffix), respond(304))
        async with await Store.open(a.db, readonly=True) as store:
            state = await store.fetch_state(bad.suffix, HOSTILE, "state", vantage=VANTAGE)
        assert state is not None and state.last_error is not None
        assert state.last_error.endswith("304 Not Modified to a request for a body")


async def test_a_reset_ending_a_body_without_a_length_is_no_finding(tmp_path, signer):
    """A 200 without Content-Length whose connection is reset halfway: the body may be
    cut short, nothing can tell, so it is an error to retry (exit 3), not a
    `malformed_json` security alert (exit 1)."""
    async with arena(tmp_path, signer) as a:
        bad = a.records[0]
        body = bad.bytes()
        a.hostile.route(a.hostile.bundle_path(bad.suffix), unframed_reset(body, len(body) // 2))
        summary = await a.sync()
        assert (summary.alerts, summary.untrusted, summary.errors) == (0, 0, 1)
        assert exit_code(summary) == 3


async def test_two_content_encoding_headers_are_two_layers(tmp_path, signer):
    """Two `Content-Encoding: gzip` headers over a body gzipped once: refused as an
    encoding not asked for (exit 3), as one header listing both is; only the first was
    read, and the half-decoded body became a security alert."""
    async with arena(tmp_path, signer) as a:
        bad = a.records[0]
        once = _gzip(bad.bytes())
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(once)
        )
        a.hostile.route(a.hostile.bundle_path(bad.suffix), raw(head + once))
        summary = await a.sync()
        assert (summary.alerts, summary.errors) == (0, 1)
        async with await Store.open(a.db, readonly=True) as store:
            state = await store.fetch_state(bad.suffix, HOSTILE, "bundle", vantage=VANTAGE)
        assert state is not None and "not asked for: 'gzip, gzip'" in (state.last_error or "")


def slow_hop(location: str, delay: float) -> Handler:
    """A redirect to `location`, sent just before `delay` seconds are up."""

    async def handler(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)
        await redirect(location)(writer)

    return handler


async def test_a_chain_of_slow_redirects_costs_one_timeout(tmp_path, signer):
    """Each hop of five redirects answers just before the timeout: the whole fetch is
    bounded by the timeout (each hop had its own, and the well-known fallback another
    chain: 12 timeouts for one record)."""
    async with arena(tmp_path, signer, fetch_timeout="1s") as a:
        bad = a.records[0]
        hops = [f"/hop/{i}" for i in range(6)]
        a.hostile.route(a.hostile.bundle_path(bad.suffix), slow_hop(hops[0], 0.8))
        for here, there in itertools.pairwise(hops):
            a.hostile.route(here, slow_hop(there, 0.8))
        started = time.monotonic()
        summary = await a.sync()
        took = time.monotonic() - started
        assert summary.errors == 1
        assert took < 3, f"the pass took {took:.1f}s"
        assert a.hostile.hits[f"/.well-known/pith/{bad.suffix}/bundle.json"] == 0


def silent() -> Handler:
    """Takes the request and never answers (until the client gives up)."""

    async def handler(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    return handler


async def test_a_mirror_that_never_answers_holds_its_own_lane_only(tmp_path, signer):
    """A hostile mirror that never answers any of 16 records (timeout 1 s, two at a time
    per host): the good mirror's records are all archived at the start of the pass,
    not at its end (each worker waited on the silent host's slots in turn, so the good
    mirror's last record waited as long as the whole pass)."""
    async with arena(tmp_path, signer, records=16, extra="concurrency = 4\nper_host = 2") as a:
        for b in a.records:
            a.hostile.route(a.hostile.bundle_path(b.suffix), silent())
        started = datetime.now(UTC)
        summary = await sync_once(a.config(), a.db, [], a.trust, clock=Clock())
        took = (datetime.now(UTC) - started).total_seconds()
        assert summary.errors == 16 and took > 6  # 16 timeouts, two at a time
        async with await Store.open(a.db, readonly=True) as store:
            good = [
                await store.fetch_state(b.suffix, "good", "bundle", vantage=VANTAGE)
                for b in a.records
            ]
        done = max(s.last_success_at for s in good if s and s.last_success_at)
        assert (done - started).total_seconds() < took / 3, (done - started, took)
