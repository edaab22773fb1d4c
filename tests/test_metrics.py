"""Prometheus metrics of `run`: recorded values, as a scraper reads them over loopback."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone

import aiohttp
import anyio
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from pithcrawl import __version__
from pithcrawl.errors import ConfigError, OperationalError
from pithcrawl.metrics import ALERT_KINDS, Metrics, parse_bind, serve_metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@asynccontextmanager
async def served(metrics: Metrics) -> AsyncIterator[str]:
    """`metrics` served on 127.0.0.1 (any free port) until the block ends; its base URL."""
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_metrics, metrics, "127.0.0.1:0")
        yield f"http://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


async def scrape(base_url: str) -> Samples:
    """GET /metrics, parsed: (sample name, labels) -> value."""
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
        return parse(await resp.text())


def samples(metrics: Metrics) -> Samples:
    """What `metrics` would answer, parsed, without a server."""
    return parse(metrics.exposition().decode())


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


@pytest.mark.anyio
async def test_served_metrics_show_what_was_recorded():
    """A scrape of GET /metrics reads back every recorded value under its contract name."""
    m = Metrics()
    at = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    m.fetch("m0", "bundle", "changed")
    m.fetch("m0", "bundle", "changed")
    m.fetch("m0", "state", "not_modified")
    m.fetch("m1", "bundle", "failed")
    m.findings(["equivocation", "untrusted_key", "equivocation"])
    m.set_open_alerts({"rollback": 2, "mirror_stale": 1})
    m.success("m0", at)
    m.set_records(42)
    m.set_lag(7.5)
    m.snapshots(3)
    m.delivered("webhook")
    m.delivery_failed("hook")
    async with served(m) as url:
        got = await scrape(url)
    assert got[key("pithcrawl_fetches_total", mirror="m0", kind="bundle", outcome="changed")] == 2
    not_modified = key("pithcrawl_fetches_total", mirror="m0", kind="state", outcome="not_modified")
    assert got[not_modified] == 1
    assert got[key("pithcrawl_fetches_total", mirror="m1", kind="bundle", outcome="failed")] == 1
    assert got[key("pithcrawl_fetches_total", mirror="m1", kind="bundle", outcome="changed")] == 0
    assert got[key("pithcrawl_findings_total", code="equivocation")] == 2
    assert got[key("pithcrawl_findings_total", code="untrusted_key")] == 1
    assert got[key("pithcrawl_findings_total", code="malformed_json")] == 0
    assert got[key("pithcrawl_open_alerts", kind="rollback")] == 2
    assert got[key("pithcrawl_open_alerts", kind="mirror_stale")] == 1
    assert got[key("pithcrawl_mirror_last_success_timestamp_seconds", mirror="m0")] == (
        at.timestamp()
    )
    assert key("pithcrawl_mirror_last_success_timestamp_seconds", mirror="m1") not in got
    assert got[key("pithcrawl_records_tracked")] == 42
    assert got[key("pithcrawl_scheduler_lag_seconds")] == 7.5
    assert got[key("pithcrawl_snapshots_total")] == 3
    assert got[key("pithcrawl_alerts_delivered_total", sink="webhook")] == 1
    assert got[key("pithcrawl_alerts_delivered_total", sink="hook")] == 0
    assert got[key("pithcrawl_alert_delivery_failures_total", sink="hook")] == 1
    assert got[key("pithcrawl_info", version=__version__)] == 1


@pytest.mark.anyio
async def test_only_metrics_is_served():
    """Any other path is a 404."""
    async with (
        served(Metrics()) as url,
        aiohttp.ClientSession() as session,
        session.get(f"{url}/") as resp,
    ):
        assert resp.status == 404


@pytest.mark.anyio
async def test_serving_stops_when_cancelled():
    """Once its task group is cancelled, the port no longer accepts connections."""
    async with served(Metrics()) as url:
        port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        await anyio.connect_tcp("127.0.0.1", port)


@pytest.mark.anyio
async def test_a_taken_address_is_an_operational_error_naming_it():
    """Binding an address in use fails `tg.start` with the address in the message."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bind = f"127.0.0.1:{taken.getsockname()[1]}"
        async with anyio.create_task_group() as tg:
            with pytest.raises(
                OperationalError, match=re.escape(f"cannot listen on {bind}: ")
            ) as info:
                await tg.start(serve_metrics, Metrics(), bind)
    assert "in use" in str(info.value)


def test_two_instances_do_not_share_values():
    """Each Metrics has a registry of its own: what one records, the other does not see."""
    a, b = Metrics(), Metrics()
    a.fetch("m0", "bundle", "changed")
    a.set_records(5)
    assert samples(a)[key("pithcrawl_records_tracked")] == 5
    assert samples(b)[key("pithcrawl_records_tracked")] == 0
    assert key("pithcrawl_fetches_total", mirror="m0", kind="bundle", outcome="changed") not in (
        samples(b)
    )


def test_every_contract_alert_kind_is_exported_from_the_start():
    """A fresh Metrics shows each alert kind of the contract at 0 open."""
    got = samples(Metrics())
    assert {k: got[key("pithcrawl_open_alerts", kind=k)] for k in ALERT_KINDS} == dict.fromkeys(
        ALERT_KINDS, 0
    )


def test_set_open_alerts_zeroes_the_kinds_that_cleared():
    """A kind missing from the new counts reads 0, not its last value."""
    m = Metrics()
    m.set_open_alerts({"rollback": 2, "equivocation": 1})
    m.set_open_alerts({"equivocation": 1})
    got = samples(m)
    assert got[key("pithcrawl_open_alerts", kind="rollback")] == 0
    assert got[key("pithcrawl_open_alerts", kind="equivocation")] == 1


def test_a_kind_outside_the_contract_is_counted_and_zeroed_too():
    """A kind the contract does not list yet is exported, and zeroed when it clears."""
    m = Metrics()
    m.set_open_alerts({"future_kind": 3})
    assert samples(m)[key("pithcrawl_open_alerts", kind="future_kind")] == 3
    m.set_open_alerts({})
    assert samples(m)[key("pithcrawl_open_alerts", kind="future_kind")] == 0


def test_an_unknown_fetch_outcome_is_refused():
    """The outcome label takes only the five documented values."""
    with pytest.raises(ValueError, match="fetch outcome 'ok'"):
        Metrics().fetch("m0", "bundle", "ok")  # type: ignore[arg-type]


def test_success_time_is_unix_seconds_whatever_the_zone():
    """An aware time in any zone is the same Unix time; a naive one is refused."""
    m = Metrics()
    at = datetime(2026, 11, 27, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    m.success("m0", at)
    assert samples(m)[key("pithcrawl_mirror_last_success_timestamp_seconds", mirror="m0")] == (
        datetime(2026, 11, 27, 12, 0, tzinfo=UTC).timestamp()
    )
    with pytest.raises(ValueError, match="no time zone"):
        m.success("m0", datetime(2026, 11, 27, 12, 0))


def test_negative_lag_reads_zero():
    """A pair not yet due is no lag."""
    m = Metrics()
    m.set_lag(-3.0)
    assert samples(m)[key("pithcrawl_scheduler_lag_seconds")] == 0


def test_retain_mirrors_drops_the_series_of_mirrors_gone():
    """A mirror no longer crawled leaves the output; the ones kept stay as they were."""
    m = Metrics()
    at = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    for name in ("kept", "gone"):
        m.fetch(name, "bundle", "changed")
        m.success(name, at)
    m.retain_mirrors(["kept"])
    got = samples(m)
    assert {dict(labels).get("mirror") for _, labels in got} - {None} == {"kept"}
    assert got[key("pithcrawl_fetches_total", mirror="kept", kind="bundle", outcome="changed")] == 1
    assert got[key("pithcrawl_mirror_last_success_timestamp_seconds", mirror="kept")] > 0
    m.fetch("gone", "bundle", "failed")  # it may come back, counting from 0
    failed = key("pithcrawl_fetches_total", mirror="gone", kind="bundle", outcome="failed")
    assert samples(m)[failed] == 1


@pytest.mark.parametrize(
    ("bind", "expected"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:0", ("::1", 0)), ("host:80", ("host", 80))],
)
def test_parse_bind(bind, expected):
    """HOST:PORT, with an IPv6 host in brackets."""
    assert parse_bind(bind) == expected


@pytest.mark.parametrize("bind", ["", "9464", "host:", ":9464", "host:99999", "host:http"])
def test_a_bad_bind_is_a_config_error_naming_the_key(bind):
    with pytest.raises(ConfigError, match=r"metrics\.bind"):
        parse_bind(bind)


@pytest.mark.anyio
async def test_no_created_series_are_exposed():
    """Counters come without their `*_created` timestamps (noise no rule reads)."""
    metrics = Metrics()
    metrics.fetch("m0", "bundle", "changed")
    async with (
        served(metrics) as url,
        aiohttp.ClientSession() as session,
        session.get(f"{url}/metrics") as resp,
    ):
        text = await resp.text()
    assert "pithcrawl_fetches_total{" in text
    assert "_created" not in text


def test_the_shipped_alerting_rules_name_what_is_exported():
    """config/prometheus-rules.yml: every metric an expression reads is one a scrape
    shows (counters by their `_total` samples), and every `kind` it matches is a kind
    whose series exists; `up` and `pithcrawl_info` aside, nothing else is read."""
    from pathlib import Path

    rules = (Path(__file__).parent.parent / "config" / "prometheus-rules.yml").read_text()
    exprs = re.findall(r"(?m)^\s+expr: (.+)$", rules)
    assert len(exprs) == 6
    metrics = Metrics()
    metrics.fetch("m0", "bundle", "changed")
    metrics.success("m0", datetime.now(UTC))
    exported = {name for name, _ in samples(metrics)}
    read = {n for e in exprs for n in re.findall(r"\bpithcrawl_[a-z_]+", e)}
    assert read and read <= exported, read - exported
    kinds = {k for e in exprs for m in re.findall(r'kind=~"([^"]+)"', e) for k in m.split("|")}
    assert kinds == set(ALERT_KINDS)
