"""Prometheus metrics of `pithcrawl run`, and the HTTP endpoint that serves them.

Owns the metric names and labels (the table below), one `CollectorRegistry` per
`Metrics` (never prometheus_client's global one, so two daemons or two tests never share
a value), and `serve_metrics`, an aiohttp `GET /metrics` on `[metrics] bind`.

    metric                                               type     labels
    pithcrawl_fetches_total                              counter  mirror, kind, outcome
    pithcrawl_findings_total                             counter  code
    pithcrawl_open_alerts                                gauge    kind
    pithcrawl_mirror_last_success_timestamp_seconds      gauge    mirror
    pithcrawl_records_tracked                            gauge    -
    pithcrawl_scheduler_lag_seconds                      gauge    -
    pithcrawl_snapshots_total                            counter  -
    pithcrawl_alerts_delivered_total                     counter  sink
    pithcrawl_alert_delivery_failures_total              counter  sink
    pithcrawl_info                                       gauge    version (always 1)

Every label takes its values from a set the code defines (outcomes, finding codes,
alert kinds, sinks) or the configured and discovered mirrors; never a record, a URL or
an error message. What it does not do: decide what an outcome is (`crawl`), read the
archive (the daemon hands over the counts), or run a server of prometheus_client's own
(a thread outside the task group).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Literal, get_args

import anyio
from anyio.abc import TaskStatus
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)

from pithcrawl import __version__
from pithcrawl.errors import ConfigError, OperationalError
from pithcrawl.findings import CODES

# No `*_created` series beside each counter: a timestamp per label set that doubles the
# exposition and that no alerting rule uses (Prometheus' own rate() needs none).
disable_created_metrics()  # type: ignore[no-untyped-call] # untyped in the library

if TYPE_CHECKING:
    from aiohttp import web

Outcome = Literal["changed", "unchanged", "not_modified", "failed", "deferred"]
"""What one fetch of one document came to: a new body, the same body again, a 304, an
error or an unusable status, or not attempted because the mirror's backoff is running."""
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
#: The documents fetched per record and mirror; their series exist (at 0) from a mirror's
#: first fetch, so `rate()` sees the first failure too.
FETCH_KINDS = ("bundle", "state")
#: The contract's kinds that open alerts, each always exported (0 when none is open). Its
#: info kinds (`key_rotation`, `correction`, `event_added`) are log entries that open no
#: alert: series of them would read 0 forever.
ALERT_KINDS = (
    "document_invalid",
    "rollback",
    "mirror_divergence",
    "state_url_mismatch",
    "equivocation",
    "untrusted_key",
    "mirror_stale",
    "mirror_unreachable",
    "vantage_split",
)
SINKS = ("hook", "webhook")


class Metrics:
    """Every metric of one daemon, in a registry of its own. Cheap to make: the daemon
    always has one, and serves it only when `[metrics] bind` is set."""

    def __init__(self, *, version: str = __version__) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._fetches = Counter(
            "pithcrawl_fetches",
            "Documents fetched, by mirror, document kind and outcome.",
            ["mirror", "kind", "outcome"],
            registry=r,
        )
        self._findings = Counter(
            "pithcrawl_findings",
            "Verification findings in fetched documents, by finding code.",
            ["code"],
            registry=r,
        )
        self._open_alerts = Gauge(
            "pithcrawl_open_alerts", "Alerts open now, by kind.", ["kind"], registry=r
        )
        self._last_success = Gauge(
            "pithcrawl_mirror_last_success_timestamp_seconds",
            "When a mirror last answered a bundle fetch (200 or 304), as Unix time.",
            ["mirror"],
            registry=r,
        )
        self._records = Gauge("pithcrawl_records_tracked", "Records tracked.", registry=r)
        self._lag = Gauge(
            "pithcrawl_scheduler_lag_seconds",
            "How long past its due time the oldest due (record, mirror) pair is.",
            registry=r,
        )
        self._snapshots = Counter(
            "pithcrawl_snapshots", "New snapshots archived (a changed body).", registry=r
        )
        self._delivered = Counter(
            "pithcrawl_alerts_delivered",
            "Alert deliveries (openings and closings) a sink took, by sink.",
            ["sink"],
            registry=r,
        )
        self._delivery_failures = Counter(
            "pithcrawl_alert_delivery_failures",
            "Failed alert delivery attempts (each retried later), by sink.",
            ["sink"],
            registry=r,
        )
        info = Gauge("pithcrawl_info", "The running pithcrawl; always 1.", ["version"], registry=r)
        info.labels(version).set(1)
        # Known label values start at 0: an absent series and a zero read differently.
        for code in CODES:
            self._findings.labels(code)
        for sink in SINKS:
            self._delivered.labels(sink)
            self._delivery_failures.labels(sink)
        self._alert_kinds: set[str] = set(ALERT_KINDS)
        self.set_open_alerts({})
        self._mirrors: set[str] = set()
        # Each fetch series's child, kept: labels() costs a lock and a validation per call.
        self._fetch_series: dict[tuple[str, str, str], Counter] = {}
        self._succeeded: set[str] = set()

    def fetch(self, mirror: str, kind: str, outcome: Outcome) -> None:
        """One document fetched (or deferred) from `mirror`."""
        series = (mirror, kind, outcome)
        child = self._fetch_series.get(series)
        if child is None:
            if outcome not in OUTCOMES:
                raise ValueError(
                    f"fetch outcome {outcome!r}: expected one of {', '.join(OUTCOMES)}"
                )
            self._seen_mirror(mirror)
            child = self._fetch_series.get(series) or self._fetches.labels(*series)
            self._fetch_series[series] = child
        child.inc()

    def findings(self, codes: Iterable[str]) -> None:
        """The findings of one verified document, one count per finding."""
        for code in codes:
            self._findings.labels(code).inc()

    def set_open_alerts(self, counts: Mapping[str, int]) -> None:
        """The open alerts now, by kind; every kind not in `counts` is set to 0."""
        self._alert_kinds.update(counts)
        for kind in self._alert_kinds:
            self._open_alerts.labels(kind).set(counts.get(kind, 0))

    def success(self, mirror: str, at: datetime) -> None:
        """`mirror` answered a bundle fetch at `at` (an aware datetime)."""
        if at.tzinfo is None:
            raise ValueError(f"success time {at.isoformat()} has no time zone")
        self._succeeded.add(mirror)
        self._last_success.labels(mirror).set(at.timestamp())

    def set_records(self, n: int) -> None:
        self._records.set(n)

    def set_lag(self, seconds: float) -> None:
        """How late the oldest due pair is; a pair not yet due is no lag (0)."""
        self._lag.set(max(seconds, 0.0))

    def snapshots(self, n: int = 1) -> None:
        """`n` new snapshots archived."""
        if n:
            self._snapshots.inc(n)

    def delivered(self, sink: str) -> None:
        self._delivered.labels(sink).inc()

    def delivery_failed(self, sink: str) -> None:
        self._delivery_failures.labels(sink).inc()

    def retain_mirrors(self, names: Iterable[str]) -> None:
        """Drop the series of every mirror not in `names` (no longer crawled), so a
        mirror set that changes over months does not grow the output forever."""
        keep = set(names)
        for series in [s for s in self._fetch_series if s[0] not in keep]:
            self._fetches.remove(*series)
            del self._fetch_series[series]
        for mirror in self._succeeded - keep:
            self._last_success.remove(mirror)
        self._mirrors &= keep
        self._succeeded &= keep

    def exposition(self) -> bytes:
        """The text format of every metric, as `GET /metrics` answers it."""
        return generate_latest(self.registry)

    def _seen_mirror(self, mirror: str) -> None:
        if mirror in self._mirrors:
            return
        self._mirrors.add(mirror)
        for kind in FETCH_KINDS:
            for outcome in OUTCOMES:
                self._fetch_series[mirror, kind, outcome] = self._fetches.labels(
                    mirror, kind, outcome
                )


def parse_bind(bind: str) -> tuple[str, int]:
    """`[metrics] bind` ("HOST:PORT", an IPv6 host in brackets) as (host, port)."""
    host, sep, port = bind.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (sep and host and port.isdigit() and int(port) <= 65535):
        raise ConfigError(f"metrics.bind: expected HOST:PORT, like 127.0.0.1:9464; got {bind!r}")
    return host, int(port)


async def serve_metrics(
    metrics: Metrics, bind: str, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve `GET /metrics` on `bind` until cancelled; for `tg.start`, which gets the
    port bound (the real one when 0 was asked for).

    `OperationalError` naming the address when it cannot be bound (in use, not local).
    """
    from aiohttp import web  # noqa: PLC0415 - only `run` serves; a `sync` never pays for it

    host, port = parse_bind(bind)

    async def scrape(request: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as e:
            # asyncio's own strerror repeats the address; the errno's text says it once.
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise OperationalError(f"metrics.bind: cannot listen on {bind}: {reason}") from e
        task_status.started(runner.addresses[0][1])
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
