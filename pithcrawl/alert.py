"""Alert delivery: the hook script and the webhook, retried until each has taken it.

Owns how an alert reaches the outside: the hook (an executable run without a shell,
certspotter-style environment plus a JSON file, under a timeout) and the webhook (a JSON
POST, signed with HMAC-SHA256 when a secret is configured). Every alert is also in the
structured log, always. What to deliver and when is kept in the archive
(`store.alerts`): a delivery that fails is retried with backoff and never lost, across
restarts. Secrets are read here and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import anyio
import structlog

from pithcrawl.config import AlertsConfig
from pithcrawl.errors import ConfigError, FetchError
from pithcrawl.fetch.client import HttpFetcher
from pithcrawl.metrics import Metrics
from pithcrawl.schedule import retry_due
from pithcrawl.store import Alert, Delivery, Store

log = structlog.get_logger("pithcrawl.alert")

#: Failed deliveries are retried after 30 s, doubling up to an hour, with full jitter.
RETRY_BASE = 30.0
RETRY_CAP = 3600.0
#: Variables of systemd's that a hook must not inherit (it is not the service).
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
SIGNATURE_HEADER = "X-Pithcrawl-Signature-256"


class DeliveryFailed(Exception):
    """A sink did not take a delivery; the message says why (it is retried)."""


def read_secret(path: Path | None, env: Mapping[str, str]) -> bytes | None:
    """The webhook secret: the file's bytes (trailing newline stripped).

    Under systemd, a credential passed with `LoadCredential=NAME:…` is found in
    $CREDENTIALS_DIRECTORY by the configured file's name when the path itself is not
    readable by the service.
    """
    if path is None:
        return None
    candidates = [path]
    if env.get("CREDENTIALS_DIRECTORY"):
        candidates.append(Path(env["CREDENTIALS_DIRECTORY"]) / path.name)
    for candidate in candidates:
        try:
            secret = candidate.read_bytes().rstrip(b"\r\n")
        except OSError:
            continue
        if not secret:
            raise ConfigError(f"alerts.webhook_secret_file: {candidate} is empty")
        return secret
    raise ConfigError(f"alerts.webhook_secret_file: cannot read {path}")


def signature(secret: bytes, body: bytes) -> str:
    """The value of the X-Pithcrawl-Signature-256 header: `sha256=` + hex HMAC of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def payload(alert: Alert, phase: str) -> bytes:
    """The alert object as a sink receives it: as it was opened, or as it was closed."""
    doc = alert.to_json()
    if phase == "open":
        doc.update(status="open", closed_at=None)
    return json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()


def sink_names(config: AlertsConfig) -> list[str]:
    """The sinks an alert is queued for: those configured."""
    return [name for name, on in (("hook", config.hook), ("webhook", config.webhook)) if on]


def hook_environment(
    alert: Alert, phase: str, json_file: Path, base: Mapping[str, str]
) -> dict[str, str]:
    """The hook's environment: ours (less systemd's private variables) plus the alert's.

    A closing notice has EVENT=alert_closed and the alert's kind in ALERT_KIND, so a
    script that knows only the kinds it handles never mistakes it for a new alert.
    """
    env = {k: v for k, v in base.items() if k not in _PRIVATE_ENV}
    env.update(
        EVENT=alert.kind if phase == "open" else "alert_closed",
        ALERT_KIND=alert.kind,
        ALERT_ID=str(alert.id),
        ALERT_STATUS="open" if phase == "open" else "closed",
        SEVERITY=alert.severity,
        SUMMARY=alert.summary,
        PITH_NUMBER=alert.pith_number or "",
        MIRRORS=" ".join(alert.mirrors),
        DEDUP_KEY=alert.dedup_key,
        JSON_FILENAME=str(json_file),
    )
    return env


@dataclass(slots=True)
class Sinks:
    """The configured sinks and how to reach them."""

    config: AlertsConfig
    fetcher: HttpFetcher | None
    secret: bytes | None = None
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)

    async def send(self, delivery: Delivery, alert: Alert) -> None:
        if delivery.sink == "hook":
            await self._hook(alert, delivery.phase)
        else:
            await self._webhook(alert, delivery.phase)

    async def _hook(self, alert: Alert, phase: str) -> None:
        hook = self.config.hook
        if hook is None:
            raise DeliveryFailed("no alerts.hook is configured any more")
        timeout = self.config.hook_timeout.total_seconds()
        with tempfile.TemporaryDirectory(prefix="pithcrawl-alert-") as tmp:
            json_file = Path(tmp) / f"alert-{alert.id}-{phase}.json"
            json_file.write_bytes(payload(alert, phase))
            env = hook_environment(alert, phase, json_file, self.env)
            try:
                # An argument vector, never a shell: no field of the alert is ever parsed
                # as a command.
                with anyio.fail_after(timeout):
                    done = await anyio.run_process(
                        [str(hook)],
                        env=env,
                        check=False,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
            except TimeoutError:
                raise DeliveryFailed(f"hook {hook} did not finish within {timeout:g}s") from None
            except OSError as e:
                raise DeliveryFailed(f"hook {hook} could not run: {e.strerror or e}") from None
        if done.returncode != 0:
            tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise DeliveryFailed(
                f"hook {hook} exited {done.returncode}" + (f": {' | '.join(tail)}" if tail else "")
            )

    async def _webhook(self, alert: Alert, phase: str) -> None:
        url = self.config.webhook
        if url is None or self.fetcher is None:
            raise DeliveryFailed("no alerts.webhook is configured any more")
        body = payload(alert, phase)
        headers = {
            "Content-Type": "application/json",
            "X-Pithcrawl-Event": alert.kind if phase == "open" else "alert_closed",
            "X-Pithcrawl-Delivery": f"{alert.id}:{phase}",
        }
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        try:
            status = await self.fetcher.post(url, body, headers)
        except FetchError as e:
            raise DeliveryFailed(str(e)) from None
        if not 200 <= status < 300:
            raise DeliveryFailed(f"webhook {url} answered HTTP {status}")


async def deliver_due(
    store: Store,
    sinks: Sinks,
    now: datetime,
    rand: random.Random,
    *,
    limit: int = 100,
    metrics: Metrics | None = None,
) -> tuple[int, int]:
    """Attempt every delivery that is due once; (delivered, failed)."""
    ok = failed = 0
    for delivery, alert in await store.alerts.due_deliveries(now, limit):
        with structlog.contextvars.bound_contextvars(
            alert_id=alert.id, sink=delivery.sink, phase=delivery.phase
        ):
            try:
                await sinks.send(delivery, alert)
            except DeliveryFailed as e:
                retry_at = retry_due(
                    now,
                    delivery.attempts + 1,
                    None,
                    base=RETRY_BASE,
                    cap=RETRY_CAP,
                    rand=rand.random(),
                )
                await store.alerts.failed(delivery, str(e), retry_at)
                if metrics is not None:
                    metrics.delivery_failed(delivery.sink)
                log.warning(
                    "delivery_failed",
                    error=str(e),
                    attempts=delivery.attempts + 1,
                    retry_at=retry_at.isoformat(),
                )
                failed += 1
                continue
            await store.alerts.delivered(delivery, now)
            if metrics is not None:
                metrics.delivered(delivery.sink)
            log.info("delivered", kind=alert.kind)
            ok += 1
    return ok, failed


def log_alerts(opened: Sequence[Alert], closed: Sequence[Alert]) -> None:
    """Every alert is in the structured log, whatever the sinks."""
    for a in opened:
        emit = log.error if a.severity == "critical" else log.warning
        emit(
            "alert_opened",
            alert_id=a.id,
            kind=a.kind,
            severity=a.severity,
            pith_number=a.pith_number,
            mirrors=list(a.mirrors),
            summary=a.summary,
            dedup_key=a.dedup_key,
        )
    for a in closed:
        log.info(
            "alert_closed", alert_id=a.id, kind=a.kind, dedup_key=a.dedup_key, summary=a.summary
        )
