"""Blinding: one hostile mirror must never stop the pass, the daemon or the other mirrors.

Each attack is played next to a good mirror (`arena`), over several passes, and each pass
must still archive the good mirror's records as it serves them.
"""

from __future__ import annotations

import sqlite3
import zlib

import pytest
from arena import HOSTILE, arena
from hostile import respond

from pithcrawl.commands.sync import exit_code
from pithcrawl.store import Store

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
        a.hostile.route(a.hostile.bundle_path(bad.suffix), respond(200, bad.bytes(), headers))
        for _ in range(3):
            summary = await a.sync()
            assert (summary.errors, summary.alerts) == (0, 0)
            assert exit_code(summary) == 0
            a.advance()
        async with await Store.open(a.db, readonly=True) as store:
            state = await store.fetch_state(bad.suffix, HOSTILE, "bundle")
        assert state is not None
        assert (state.etag, state.last_modified, state.failures) == (None, None, 0)
        # Fetched whole each time (nothing to be conditional on), never refused.
        assert a.hostile.hits[a.hostile.bundle_path(bad.suffix)] == 3


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
            state = await store.fetch_state(bad.suffix, HOSTILE, "bundle")
            assert await store.snapshots(bad.suffix, mirror=HOSTILE) == []
            assert await store.alerts.open_alerts() == []
        assert state is not None and state.last_error is not None
        assert state.last_error.endswith("the gzip stream was cut short")
