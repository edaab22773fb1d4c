"""Alerts end to end: divergence across real loopback mirrors, delivery to a real hook
script and a real webhook receiver (HMAC checked), retries that survive a restart."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import random
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from aiohttp import web
from builder import BundleBuilder, TestSigner
from clocks import TestClock
from conftest import db_setting
from mirror import TestMirror
from postgres import raw

from pithcrawl.alert import Sinks, deliver_due, read_secret
from pithcrawl.config import Config, parse_config
from pithcrawl.crawl import Crawler, PairResult, RecordTurn
from pithcrawl.fetch.client import HttpFetcher
from pithcrawl.keys import TrustSet, load_key
from pithcrawl.location import PgUrl
from pithcrawl.mirrors import Site
from pithcrawl.store import NewEvent, Store
from pithcrawl.sync import Summary, sync_once

pytestmark = pytest.mark.anyio
SECRET = b"s3cret-for-tests"


@dataclass
class Receiver:
    """A webhook endpoint on 127.0.0.1 that checks each delivery's HMAC."""

    received: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    fail_next: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        want = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Pithcrawl-Signature-256", ""), want):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=503)
        self.received.append({"event": request.headers["X-Pithcrawl-Event"], **json.loads(body)})
        return web.Response(status=204)


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    r.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    try:
        yield r
    finally:
        await runner.cleanup()


def hook_script(tmp_path: Path, *, fail_first: int = 0, sleep: float = 0.0) -> Path:
    """An executable that appends its environment and JSON file to calls.jsonl."""
    script = tmp_path / "on-alert"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys, time, pathlib\n"
        f"base = pathlib.Path({str(tmp_path)!r})\n"
        "count = base / 'count'\n"
        "n = int(count.read_text()) if count.exists() else 0\n"
        "count.write_text(str(n + 1))\n"
        f"time.sleep({sleep})\n"
        f"if n < {fail_first}:\n"
        "    print('not yet', file=sys.stderr); sys.exit(1)\n"
        "doc = json.loads(pathlib.Path(os.environ['JSON_FILENAME']).read_text())\n"
        "keys = ['EVENT', 'SEVERITY', 'SUMMARY', 'PITH_NUMBER', 'MIRRORS', 'ALERT_ID']\n"
        "with open(base / 'calls.jsonl', 'a') as f:\n"
        "    f.write(json.dumps({'env': {k: os.environ.get(k) for k in keys}, 'doc': doc,\n"
        "                        'notify': os.environ.get('NOTIFY_SOCKET')}) + '\\n')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    log = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@dataclass
class Env:
    tmp: Path
    mirrors: list[TestMirror]
    trust: TrustSet
    db: Path | PgUrl
    config: Config
    clock: TestClock = field(default_factory=TestClock)
    """The passes' wall clock: `clock.advance` stands for time passing."""

    def configure(self, **alerts: str) -> None:
        """The mirrors, and `[alerts]` as given; alerts close as soon as their condition
        clears unless `resolve_after` says otherwise (the hold-down has tests of its own)."""
        alerts.setdefault("resolve_after", "0s")
        lines = "".join(f'{k} = "{v}"\n' for k, v in alerts.items())
        mirrors = "".join(
            f'[[mirrors]]\nname = "m{i}"\nbase_url = "{m.base_url}"\n'
            for i, m in enumerate(self.mirrors)
        )
        (self.tmp / "secret").write_bytes(SECRET + b"\n")
        self.config = parse_config(
            f"db = {json.dumps(db_setting(self.db))}\n"
            '[crawl]\ntimeout = "5s"\ndiscover = false\n'
            f"[alerts]\n{lines}\n{mirrors}",
            base_dir=self.tmp,
        )

    async def sync(self) -> Summary:
        return await sync_once(self.config, self.db, [], self.trust, clock=self.clock.clock)

    @asynccontextmanager
    async def store(self) -> AsyncIterator[Store]:
        async with await Store.open(self.db, readonly=True) as store:
            yield store


@asynccontextmanager
async def env(
    tmp_path: Path, signer: TestSigner, n: int = 2, *, db: Path | PgUrl | None = None
) -> AsyncIterator[Env]:
    """`n` loopback mirrors, and the archive at `db` (`archive_at`), else in `tmp_path`."""
    async with AsyncExitStack() as stack:
        mirrors = [await stack.enter_async_context(TestMirror()) for _ in range(n)]
        e = Env(
            tmp_path,
            mirrors,
            TrustSet([load_key(signer.public_key())]),
            tmp_path / "archive.db" if db is None else db,
            Config(),
        )
        e.configure()
        yield e


async def track(e: Env, *builders: BundleBuilder) -> None:
    async with await Store.open(e.db) as store:
        await store.watchlist.track([b.suffix for b in builders], datetime.now(UTC))


def fork(signer: TestSigner) -> tuple[BundleBuilder, BundleBuilder]:
    """One record, two histories: each side adds an event the other does not have."""
    a, b = BundleBuilder(signer), BundleBuilder(signer)
    a.add_event(payload={"graph_snapshot": {"side": "a"}})
    b.add_event(payload={"graph_snapshot": {"side": "b"}})
    return a, b


async def lagging(e: Any, signer: TestSigner) -> BundleBuilder:
    """A tracked record whose second mirror serves it one event behind the first."""
    b = BundleBuilder(signer)
    b.add_event()
    e.mirrors[1].put(b.bytes())
    b.add_event()
    e.mirrors[0].put(b.bytes())
    await track(e, b)
    return b


async def test_consistent_mirrors_raise_no_alert(archive_at, tmp_path, signer):
    async with env(tmp_path, signer, db=archive_at) as e:
        b = BundleBuilder(signer)
        b.add_event()
        for m in e.mirrors:
            m.put(b.bytes())
        await track(e, b)
        summary = await e.sync()
        assert (summary.alerts, summary.warnings) == (0, 0)
        async with e.store() as store:
            assert await store.alerts.open_alerts() == []


async def test_lag_is_not_divergence_until_stale_after(archive_at, tmp_path, signer):
    """A mirror behind the newest history: quiet, then mirror_stale, then cleared."""
    async with env(tmp_path, signer, db=archive_at) as e:
        b = await lagging(e, signer)
        summary = await e.sync()
        assert (summary.alerts, summary.warnings) == (0, 0)
        e.clock.advance(timedelta(days=2, seconds=1))  # past stale_after (two days)
        summary = await e.sync()
        assert (summary.alerts, summary.warnings) == (0, 1)
        async with e.store() as store:
            (alert,) = await store.alerts.open_alerts()
            assert await store.alerts.open_scopes() == {alert.scope}
            assert await store.alerts.open_counts("kind") == {"mirror_stale": 1}
            assert await store.alerts.open_counts("severity", tracked=True) == {alert.severity: 1}
            assert await store.alerts.open_counts("severity", suffixes=["A" * 26]) == {}
        assert alert.kind == "mirror_stale"
        assert alert.mirrors == ("m1",)
        e.mirrors[1].put(b.bytes())  # caught up
        summary = await e.sync()
        assert (summary.alerts, summary.warnings) == (0, 0)
        async with e.store() as store:
            assert await store.alerts.open_alerts() == []
            closed = await store.events(kinds=["alert_closed"])
        assert closed[0].evidence["kind"] == "mirror_stale"


async def test_fork_is_a_divergence_delivered_once_to_hook_and_webhook(
    archive_at, tmp_path, signer
):
    """Two mirrors with forked histories: one mirror_divergence naming both, delivered
    exactly once to each sink, the webhook's HMAC correct, and still open next pass."""
    async with env(tmp_path, signer, db=archive_at) as e, receiver() as r:
        a, b = fork(signer)
        e.mirrors[0].put(a.bytes())
        e.mirrors[1].put(b.bytes())
        await track(e, a)
        e.configure(hook=str(hook_script(tmp_path)), webhook=r.url, webhook_secret_file="secret")
        summary = await e.sync()
        assert summary.alerts == 1
        assert summary.delivered == 2
        async with e.store() as store:
            logged = await store.events()
        # The pass counts every entry it logged, the record-level divergence included.
        assert "mirror_divergence" in {x.kind for x in logged}
        assert summary.events == len(logged)
        assert (await e.sync()).delivered == 0  # no second delivery of the same alert
        (call,) = calls(tmp_path)
        assert call["env"]["EVENT"] == "mirror_divergence"
        assert call["env"]["SEVERITY"] == "critical"
        assert call["env"]["MIRRORS"] == "m0 m1"
        assert call["env"]["PITH_NUMBER"] == a.pith_number
        assert call["notify"] is None
        (hooked,) = r.received
        assert r.bad_signatures == 0
        assert hooked["event"] == "mirror_divergence"
        assert hooked["mirrors"] == ["m0", "m1"]
        assert hooked["dedup_key"] == call["doc"]["dedup_key"]
        docs = {d["mirror"]: d["body_sha256"] for d in hooked["evidence"]["documents"]}
        assert docs == {
            "m0": hashlib.sha256(a.bytes()).hexdigest(),
            "m1": hashlib.sha256(b.bytes()).hexdigest(),
        }


def _site(name: str, mirror: TestMirror) -> Site:
    return Site(
        name,
        mirror.base_url,
        "{base_url}/pith/{suffix}/bundle.json",
        "{base_url}/pith/{suffix}/state.json",
        None,
        "config",
    )


async def test_a_records_rules_wait_for_its_last_pair_of_the_pass_even_one_put_off(
    archive_at, tmp_path, signer
):
    """In a pass, a record's rules run once its last pair ends: not while another
    mirror's pair of it is still to come (that mirror would be judged by what it served
    before), and also when that last pair is one put off (its mirror in backoff)."""
    async with env(tmp_path, signer, db=archive_at) as e:
        a, b = fork(signer)
        e.mirrors[0].put(a.bytes())
        e.mirrors[1].put(b.bytes())
        await track(e, a)
        m0, m1 = _site("m0", e.mirrors[0]), _site("m1", e.mirrors[1])
        async with (
            await Store.open(e.db, exclusive=True) as store,
            HttpFetcher(user_agent="test", timeout=5.0) as fetcher,
        ):
            crawler = Crawler(e.config, store, fetcher, e.trust, e.clock.now)
            alone = await crawler.sync_pair(a.suffix, m1)  # no turn: its rules at once
            assert (alone.new_snapshots, alone.record_alerts) == (2, [])
            turn = RecordTurn(2)
            first = await crawler.sync_pair(a.suffix, m0, turn=turn)
            assert first.new_snapshots == 2
            assert first.record_alerts == []  # m1's pair of the record is to come
            assert await store.alerts.open_alerts() == []
            put_off = PairResult(a.suffix, "m1", error="failing", deferred=True)
            await crawler.end_turn(put_off, turn)
        assert [x.kind for x in put_off.record_alerts] == ["mirror_divergence"]
        async with e.store() as store:
            assert [x.kind for x in await store.alerts.open_alerts()] == ["mirror_divergence"]


async def test_log_lines_are_named_by_kind_at_the_level_of_their_severity(
    archive_at, tmp_path, signer
):
    """A fork, a rogue bundle and a dead mirror in one pass: every event-log entry has a
    log line of its kind at its severity's level (`mirror_divergence` had none), next to
    an `alert_opened` at the same level; a failed fetch is a warning (it was info), and
    nothing of an alert is below error (`document_invalid` was a warning beside its
    `alert_opened` at error)."""
    async with env(tmp_path, signer, n=3, db=archive_at) as e:
        a, b = fork(signer)
        e.mirrors[0].put(a.bytes())
        e.mirrors[1].put(b.bytes())
        rogue = BundleBuilder(TestSigner("rogue-key"), record=a.record)
        rogue.add_event()
        e.mirrors[2].put(rogue.bytes())
        await track(e, a)
        e.configure()
        with structlog.testing.capture_logs() as logs:
            await e.sync()
        e.mirrors[2].fail(a.suffix, 503)  # then failing: a failed fetch
        with structlog.testing.capture_logs() as later:
            await e.sync()
    level = {(x["event"], x.get("kind")): x["log_level"] for x in logs}
    assert level[("mirror_divergence", None)] == "critical"
    assert level[("alert_opened", "mirror_divergence")] == "critical"
    assert level[("untrusted_key", None)] == "critical"
    assert level[("alert_opened", "untrusted_key")] == "critical"
    assert {x["log_level"] for x in later if x["event"] == "fetch_failed"} == {"warning"}


def test_events_show_each_alert_delivery_state(tmp_path, signer, capsys, mirror):
    """`events --json`: an alert's entry carries its state and every sink's delivery."""
    from pithcrawl.cli import main

    b = BundleBuilder(signer)
    doc = b.build()
    doc["built_at"] = "yesterday"
    mirror.put(json.dumps(doc).encode())
    key = tmp_path / "k.json"
    key.write_text(json.dumps(signer.public_key()))
    hook = hook_script(tmp_path, fail_first=1)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'db = "a.db"\n[trust]\nkeys = ["k.json"]\n[alerts]\nhook = "{hook}"\n'
        f'[[mirrors]]\nname = "m"\nbase_url = "{mirror.base_url}"\n'
    )
    assert main(["--config", str(cfg), "sync", b.pith_number]) == 1
    capsys.readouterr()
    assert main(["--config", str(cfg), "events", "--json", "--kind", "document_invalid"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    entry = json.loads(line)
    alert = entry["alert"]
    assert alert["status"] == "open"
    # `id` is the alert's, as status and `evidence ALERT_ID` know it; `log_id` the entry's.
    assert entry["id"] == alert["id"] and isinstance(entry["log_id"], int)
    assert main(["--config", str(cfg), "status", "--json"]) == 0
    (opened,) = json.loads(capsys.readouterr().out)["open_alerts"]
    assert opened["id"] == entry["id"]
    code = main(["--config", str(cfg), "evidence", str(entry["id"]), "--out", str(tmp_path / "ev")])
    assert code == 0
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["alert"]["id"] == entry["id"]
    (delivery,) = alert["deliveries"]
    assert (delivery["sink"], delivery["delivered"], delivery["attempts"]) == ("hook", False, 1)
    assert "not yet" in delivery["last_error"]


async def test_equivocation_across_mirrors_each_consistent_alone(archive_at, tmp_path, signer):
    """Each mirror's bundle verifies on its own; together they hold two events claiming
    the same prev_event: an equivocation."""
    async with env(tmp_path, signer, db=archive_at) as e:
        a, b = BundleBuilder(signer), BundleBuilder(signer)
        root = a.events[0]["event_id"]
        a.add_event(prev_event=root, payload={"graph_snapshot": {"v": 1}})
        b.add_event(prev_event=root, payload={"graph_snapshot": {"v": 2}})
        e.mirrors[0].put(a.bytes())
        e.mirrors[1].put(b.bytes())
        await track(e, a)
        summary = await e.sync()
        async with e.store() as store:
            kinds = {x.kind for x in await store.alerts.open_alerts()}
            invalid = await store.events(kinds=["document_invalid", "equivocation"])
        assert "equivocation" in kinds
        assert summary.untrusted == 0  # each bundle alone is trusted
        assert all(x.evidence.get("place", {}).get("ref") == root for x in invalid)


async def test_failing_hook_is_retried_and_the_alert_survives_a_restart(
    archive_at, tmp_path, signer
):
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = BundleBuilder(signer)
        doc = b.build()
        doc["bundle_signature"]["bundle_sha256"] = "0" * 64
        e.mirrors[0].put(json.dumps(doc).encode())
        await track(e, b)
        e.configure(hook=str(hook_script(tmp_path, fail_first=1)))
        summary = await e.sync()
        assert (summary.alerts, summary.delivered, summary.undelivered) == (1, 0, 1)
        async with e.store() as store:
            (d,) = await store.deliveries.rows()
        assert d.delivered_at is None
        assert d.attempts == 1
        assert "exited 1: not yet" in (d.last_error or "")
        # A new process, after the backoff: the same alert is delivered, once.
        async with await Store.open(e.db) as store, HttpFetcher(user_agent="t") as f:
            later = datetime.now(UTC) + timedelta(hours=2)
            sinks = Sinks(e.config.alerts, f)
            assert await deliver_due(store, sinks, later, random.Random(1)) == (1, 0)
            assert await deliver_due(store, sinks, later, random.Random(1)) == (0, 0)
        assert [c["env"]["EVENT"] for c in calls(tmp_path)] == ["document_invalid"]


async def test_hanging_hook_times_out_and_is_retried(archive_at, tmp_path, signer):
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = BundleBuilder(signer)
        doc = b.build()
        doc["built_at"] = "not a time"
        e.mirrors[0].put(json.dumps(doc).encode())
        await track(e, b)
        e.configure(hook=str(hook_script(tmp_path, sleep=30)), hook_timeout="1s")
        started = time.monotonic()
        summary = await e.sync()
        assert time.monotonic() - started < 10
        assert summary.undelivered == 1
        async with e.store() as store:
            (d,) = await store.deliveries.rows()
        assert "did not finish within 1s" in (d.last_error or "")


async def test_webhook_failure_is_retried_with_the_same_signed_body(archive_at, tmp_path, signer):
    async with env(tmp_path, signer, n=1, db=archive_at) as e, receiver() as r:
        b = BundleBuilder(signer)
        doc = b.build()
        doc["events"][0]["subject_pith_number"] = "pith:2026:" + "A" * 26
        e.mirrors[0].put(json.dumps(doc).encode())
        await track(e, b)
        e.configure(webhook=r.url, webhook_secret_file="secret")
        r.fail_next = 1
        summary = await e.sync()
        assert summary.undelivered == 1
        async with await Store.open(e.db) as store, HttpFetcher(user_agent="t") as f:
            sinks = Sinks(e.config.alerts, f, read_secret(e.tmp / "secret", os.environ))
            later = datetime.now(UTC) + timedelta(hours=2)
            assert await deliver_due(store, sinks, later, random.Random(1)) == (1, 0)
        assert r.bad_signatures == 0
        assert [x["event"] for x in r.received] == ["document_invalid"]


async def test_closing_notice_is_delivered_when_the_condition_clears(archive_at, tmp_path, signer):
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = BundleBuilder(signer)
        good = b.bytes()
        doc = json.loads(good)
        doc["bundle_signature"]["signature_b64"] = doc["events"][0]["signature"]["signature_b64"]
        e.mirrors[0].put(json.dumps(doc).encode())
        await track(e, b)
        e.configure(hook=str(hook_script(tmp_path)))
        assert (await e.sync()).alerts == 1
        e.mirrors[0].put(good)
        summary = await e.sync()
        assert summary.alerts == 0
        envs = [c["env"] for c in calls(tmp_path)]
        assert [x["EVENT"] for x in envs] == ["document_invalid", "alert_closed"]
        assert calls(tmp_path)[1]["doc"]["status"] == "closed"


async def test_transient_failure_is_quiet_persistent_one_is_mirror_unreachable(
    archive_at, tmp_path, signer
):
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = BundleBuilder(signer)
        e.mirrors[0].put(b.bytes())
        e.mirrors[0].fail(b.suffix, 500)
        await track(e, b)
        e.configure(unreachable_after="1d")
        summary = await e.sync()
        assert (summary.alerts, summary.warnings, summary.errors) == (0, 0, 1)
        async with e.store() as store:
            assert await store.alerts.open_alerts() == []
        e.clock.advance(timedelta(days=1, seconds=1))  # past unreachable_after
        summary = await e.sync()
        assert (summary.alerts, summary.warnings) == (0, 1)
        async with e.store() as store:
            (alert,) = await store.alerts.open_alerts()
        assert alert.kind == "mirror_unreachable"
        assert alert.severity == "error"
        assert alert.evidence["records"] == 1


def test_hook_runs_without_a_shell_whatever_the_fields_hold(tmp_path, signer, capsys, mirror):
    """A mirror named like a shell command reaches the hook as text, never as a command."""
    from pithcrawl.cli import main

    b = BundleBuilder(signer)
    doc = b.build()
    doc["built_at"] = "soon"
    mirror.put(json.dumps(doc).encode())
    (tmp_path / "k.json").write_text(json.dumps(signer.public_key()))
    out, pwned = tmp_path / "out.txt", tmp_path / "PWNED"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\nprintf "%s\\n" "$MIRRORS" "$SUMMARY" > "{out}"\n')
    hook.chmod(0o755)
    evil = f"m$(touch {pwned});touch {pwned}`touch {pwned}`"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'db = "a.db"\n[trust]\nkeys = ["k.json"]\n[alerts]\nhook = "{hook}"\n'
        f"[[mirrors]]\nname = '{evil}'\nbase_url = \"{mirror.base_url}\"\n"
    )
    assert main(["--config", str(cfg), "sync", b.pith_number]) == 1
    assert not pwned.exists()
    # MIRRORS is space-separated: a space inside a name is percent-encoded.
    assert out.read_text().splitlines()[0] == evil.replace(" ", "%20")


def test_the_webhook_secret_never_reaches_logs_events_or_status(tmp_path, signer, capsys, mirror):
    from pithcrawl.cli import main

    b = BundleBuilder(signer)
    doc = b.build()
    doc["built_at"] = "soon"
    mirror.put(json.dumps(doc).encode())
    (tmp_path / "k.json").write_text(json.dumps(signer.public_key()))
    (tmp_path / "secret").write_bytes(SECRET)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'db = "a.db"\n[trust]\nkeys = ["k.json"]\n[alerts]\n'
        f'webhook = "http://127.0.0.1:9/nowhere"\nwebhook_secret_file = "secret"\n'
        f'[[mirrors]]\nname = "m"\nbase_url = "{mirror.base_url}"\n'
    )
    assert main(["--config", str(cfg), "-v", "--log-format", "json", "sync", b.pith_number]) == 1
    for args in (["status", "--json"], ["events", "--json"]):
        assert main(["--config", str(cfg), "-v", *args]) == 0
    captured = capsys.readouterr()
    assert SECRET.decode() not in captured.out + captured.err
    assert "delivery_failed" in captured.err  # the failure is logged, without the secret
    assert SECRET not in (tmp_path / "a.db").read_bytes()
    (failed,) = (
        json.loads(line) for line in captured.err.splitlines() if '"delivery_failed"' in line
    )
    assert failed["retry_at"].endswith("Z")  # like every other time pithcrawl writes


async def test_a_hostile_number_claim_never_reaches_the_hook(archive_at, tmp_path, signer):
    """An invalid bundle claims a Pith Number holding a NUL: the alert names the tracked
    record instead, and the hook is told (a NUL in its environment used to end every
    later pass with an exception, the delivery never even marked as failed)."""
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = BundleBuilder(signer)
        doc = b.build()
        doc["pith_number"] = "evil\u0000x:" + b.suffix
        doc["events"] = "not a list"  # schema_invalid: the report keeps the claim
        e.mirrors[0].put(json.dumps(doc).encode())
        await track(e, b)
        e.configure(hook=str(hook_script(tmp_path)))
        summary = await e.sync()
        assert (summary.alerts, summary.delivered, summary.undelivered) == (1, 1, 0)
        (call,) = calls(tmp_path)
        assert call["env"]["PITH_NUMBER"] == b.suffix


def _sh(tmp_path: Path, body: str) -> Path:
    hook = tmp_path / "hook"
    hook.write_text("#!/bin/sh\n" + body)
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    return hook


def _an_alert() -> tuple[Any, Any]:
    from pithcrawl.store import Alert, Delivery

    now = datetime.now(UTC)
    alert = Alert(1, "k", "s", "document_invalid", "critical", None, None, (), "x", {}, now, None)
    return Delivery(1, "hook", "open", 0, now, None, None), alert


async def test_a_hook_is_judged_by_its_exit_not_by_a_child_left_behind(tmp_path):
    """A hook that exits 0 leaving a background process (holding stderr) has delivered
    (it used to be a timeout, and the hook ran again)."""
    pid = tmp_path / "pid"
    hook = _sh(tmp_path, f'sleep 30 &\necho $! > "{pid}"\nexit 0\n')
    config = parse_config(f'[alerts]\nhook = "{hook}"\nhook_timeout = "5s"\n', base_dir=tmp_path)
    started = time.monotonic()
    try:
        await Sinks(config.alerts, None).send(*_an_alert())
        assert time.monotonic() - started < 4
    finally:  # the child the hook left behind does not outlive the test
        with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
            os.kill(int(pid.read_text()), signal.SIGKILL)


async def test_a_hook_that_times_out_is_killed_with_its_children(tmp_path):
    from pithcrawl.alert import DeliveryFailed

    pids = tmp_path / "pids"
    hook = _sh(tmp_path, f'sleep 60 &\necho $! > "{pids}"\nsleep 60\n')
    config = parse_config(f'[alerts]\nhook = "{hook}"\nhook_timeout = "1s"\n', base_dir=tmp_path)
    with pytest.raises(DeliveryFailed, match="did not finish within 1s"):
        await Sinks(config.alerts, None).send(*_an_alert())
    child = int(pids.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        await anyio.sleep(0.05)
    else:
        pytest.fail("the hook's background child outlived the timeout")


async def test_a_failing_hooks_stderr_is_read_back_in_part(tmp_path):
    """50 MB of stderr without a newline: the error keeps a few hundred characters of
    its end (it used to keep all of it, in memory and in one log line)."""
    from pithcrawl.alert import DeliveryFailed

    hook = _sh(
        tmp_path, "head -c 50000000 /dev/zero | tr '\\0' A >&2\nprintf '\\ndone\\n' >&2\nexit 1\n"
    )
    config = parse_config(f'[alerts]\nhook = "{hook}"\nhook_timeout = "60s"\n', base_dir=tmp_path)
    with pytest.raises(DeliveryFailed) as failed:
        await Sinks(config.alerts, None).send(*_an_alert())
    message = str(failed.value)
    assert message.startswith(f"hook {hook} exited 1: ") and message.endswith("| done")
    assert len(message) < 1000


async def test_a_closing_notice_waits_for_its_opening_one(archive_at, tmp_path, signer):
    """The opening notice failed, then the condition cleared: the sink hears of the
    alert opening first and closing last (it used to hear the close first, the alert
    as open last)."""
    up, log = tmp_path / "sink-up", tmp_path / "log.jsonl"
    hook = tmp_path / "hook"
    hook.write_text(  # refuses opening notices until `up` exists
        f"#!{sys.executable}\nimport json, os, sys, pathlib\n"
        f"if os.environ['EVENT'] != 'alert_closed' and not pathlib.Path({str(up)!r}).exists():\n"
        "    sys.exit(1)\n"
        f"open({str(log)!r}, 'a').write(json.dumps(os.environ['EVENT']) + '\\n')\n"
    )
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = BundleBuilder(signer)
        good = b.bytes()
        doc = json.loads(good)
        doc["built_at"] = "not a time"
        e.mirrors[0].put(json.dumps(doc).encode())
        await track(e, b)
        e.configure(hook=str(hook))
        assert (await e.sync()).undelivered == 1
        e.mirrors[0].put(good)  # the condition clears
        await e.sync()
        assert not log.exists()  # the close waits for the open
        up.touch()
        async with await Store.open(e.db) as store, HttpFetcher(user_agent="t") as f:
            later = datetime.now(UTC) + timedelta(hours=2)
            for _ in range(2):
                await deliver_due(store, Sinks(e.config.alerts, f), later, random.Random(1))
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        "document_invalid",
        "alert_closed",
    ]


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)


async def test_a_hooks_directory_delivers_to_each_script_on_its_own(archive_at, tmp_path, signer):
    """`alerts.hook` naming a directory (a hooks.d): each executable in it, as run-parts
    would pick them, gets every alert as a sink of its own: one that fails is retried
    alone, and one added later is told of the alerts still open."""
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    log = tmp_path / "hooks.log"
    record = (
        f"import os\nline = os.path.basename(__file__) + ' ' + os.environ['EVENT']\n"
        f"open({str(log)!r}, 'a').write(line + '\\n')\n"
    )
    _script(hooks / "10-log", record)
    _script(
        hooks / "20-fail", "import sys\nprint('mail server down', file=sys.stderr)\nsys.exit(1)\n"
    )
    _script(hooks / "10-log~", record)  # an editor's backup: not run
    (hooks / "notes").write_text("not executable")
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        a = BundleBuilder(signer)
        a.add_event()
        doc = a.build()
        doc["bundle_signature"]["bundle_sha256"] = "0" * 64
        e.mirrors[0].put(json.dumps(doc).encode())
        await track(e, a)
        e.configure(hook=str(hooks))
        summary = await e.sync()
        assert summary.alerts == 1
        assert log.read_text().splitlines() == ["10-log document_invalid"]
        _script(hooks / "30-late", record)
        await e.sync()  # the same alert, still open: only the newcomer is told
        assert log.read_text().splitlines() == [
            "10-log document_invalid",
            "30-late document_invalid",
        ]
    with raw(e.db) as c:
        rows = c.execute(
            "SELECT sink, delivered_at IS NOT NULL, last_error FROM deliveries ORDER BY sink"
        ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [
        ("hook:10-log", 1),
        ("hook:20-fail", 0),
        ("hook:30-late", 1),
    ]
    assert "exited 1: mail server down" in rows[1][2]


@pytest.mark.parametrize("made", ["missing", "not executable", "a fifo"])
def test_a_hook_that_cannot_run_is_a_configuration_error_before_the_pass(
    tmp_path, signer, capsys, mirror, made
):
    """`alerts.hook` naming nothing runnable: exit 2 naming the key, before a single
    fetch (it used to pass, and the first alert then failed to deliver)."""
    from pithcrawl.cli import main

    b = BundleBuilder(signer)
    mirror.put(b.bytes())
    hook = tmp_path / "on-alert"
    if made == "not executable":
        hook.write_text("#!/bin/sh\nexit 0\n")
    elif made == "a fifo":
        os.mkfifo(hook)
    (tmp_path / "k.json").write_text(json.dumps(signer.public_key()))
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'db = "a.db"\n[trust]\nkeys = ["k.json"]\n[alerts]\nhook = "{hook}"\n'
        f'[[mirrors]]\nname = "m"\nbase_url = "{mirror.base_url}"\n'
    )
    assert main(["--config", str(cfg), "sync", b.pith_number]) == 2
    err = capsys.readouterr().err
    assert "alerts.hook" in err and str(hook) in err and "Traceback" not in err
    assert not mirror.hits  # refused before the pass


def down(at: datetime) -> NewEvent:
    """Mirror m unreachable, as the reachability rule reports it at `at`."""
    return NewEvent(
        kind="mirror_unreachable",
        severity="error",
        at=at,
        pith_number=None,
        mirrors=("m",),
        summary="m is down",
        evidence={"mirror": "m"},
        dedup_key="mirror_unreachable:m",
    )


@pytest.mark.parametrize("gap", [timedelta(hours=1), timedelta(0)])
def test_events_name_the_alert_of_each_time_a_condition_came_back(tmp_path, capsys, gap):
    """A condition that clears and comes back is two alerts under one dedup_key: each
    log entry names its own (the newest used to be named for both, so `evidence` with
    the first entry's id exported the second alert), also when it comes back at the
    very moment it cleared."""
    from pithcrawl.cli import main
    from pithcrawl.store import Store

    db = tmp_path / "a.db"
    t0 = datetime(2026, 11, 1, tzinfo=UTC)

    async def come_and_go() -> tuple[Any, Any, Any]:
        async with await Store.open(db) as store:
            (first,) = (await store.alerts.reconcile("reach:m", [down(t0)], now=t0)).opened
            hour = timedelta(hours=1)
            (closed,) = (await store.alerts.reconcile("reach:m", [], now=t0 + hour)).closed
            back = t0 + hour + gap
            (second,) = (await store.alerts.reconcile("reach:m", [down(back)], now=back)).opened
        return first, closed, second

    first, closed, second = anyio.run(come_and_go)
    assert first.id != second.id and closed.id == first.id
    assert main(["--db", str(db), "events", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["kind"], x["id"], x["alert"]["status"]) for x in lines] == [
        ("mirror_unreachable", first.id, "closed"),
        ("alert_closed", first.id, "closed"),
        ("mirror_unreachable", second.id, "open"),
    ]


async def test_one_open_alert_per_dedup_key_whatever_the_scope(tmp_path):
    """The archive itself holds the rule of one open alert per dedup_key (a unique index
    on the open ones): a second scope reporting the same condition opens nothing, and
    once the first closes, the condition may open again."""
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    async with await Store.open(tmp_path / "a.db") as store:
        first = await store.alerts.reconcile("reach:m", [down(t0)], now=t0)
        again = await store.alerts.reconcile("elsewhere", [down(t0)], now=t0)
        assert (len(first.opened), again.opened) == (1, [])
        assert len(await store.alerts.open_alerts()) == 1
        await store.alerts.reconcile("reach:m", [], now=t0)
        later = await store.alerts.reconcile("elsewhere", [down(t0)], now=t0)
        assert len(later.opened) == 1 and later.opened[0].id != first.opened[0].id
