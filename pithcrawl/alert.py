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
import logging
import os
import random
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

import anyio
import structlog

from pithcrawl.config import AlertsConfig, read_bounded
from pithcrawl.errors import ConfigError, FetchError
from pithcrawl.fetch.client import HttpFetcher
from pithcrawl.metrics import Metrics
from pithcrawl.schedule import retry_due
from pithcrawl.store import Alert, Delivery, Reconciled, Store
from pithcrawl.text import bounded, escaped, json_text
from pithcrawl.timestamps import format_timestamp

log = structlog.get_logger("pithcrawl.alert")

#: Failed deliveries are retried after 30 s, doubling up to an hour, with full jitter.
RETRY_BASE = 30.0
RETRY_CAP = 3600.0
#: A delivery taken for an attempt is no other node's for this long (or two
#: `alerts.hook_timeout`s): the attempt records how it went well before; a node killed
#: mid-attempt leaves it to be tried again then.
DELIVERY_CLAIM = timedelta(minutes=10)
#: Variables of systemd's that a hook must not inherit (it is not the service).
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
SIGNATURE_HEADER = "X-Pithcrawl-Signature-256"
#: The longest value of the alert's a hook's environment variable holds (escaped).
ENV_VALUE_MAX = 4096
#: An HMAC secret is a few dozen bytes; a file past this is not one.
SECRET_MAX = 64 * 1024


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
            secret = read_bounded(candidate, "alerts.webhook_secret_file:", SECRET_MAX).rstrip(
                b"\r\n"
            )
        except OSError:
            continue
        if not secret:
            raise ConfigError(f"alerts.webhook_secret_file: {candidate} is empty")
        return secret
    raise ConfigError(f"alerts.webhook_secret_file: cannot read {path}")


def check_sinks(config: AlertsConfig, env: Mapping[str, str]) -> bytes | None:
    """The webhook secret, once the sinks are known to be usable: a hook that is not an
    executable file, or a secret that cannot be read, is a configuration error now (exit
    2, or a refused reload), not a delivery failing on the first alert."""
    hook = config.hook
    if hook is not None and hook.is_dir():
        if not os.access(hook, os.R_OK | os.X_OK):
            raise ConfigError(f"alerts.hook: {hook} is a directory pithcrawl cannot read")
    elif hook is not None and not _runnable(hook):
        why = "does not exist" if not hook.exists() else "is not an executable file"
        raise ConfigError(f"alerts.hook: {hook} {why} (nor a directory of them)")
    return read_secret(config.webhook_secret_file, env)


def signature(secret: bytes, body: bytes) -> str:
    """The value of the X-Pithcrawl-Signature-256 header: `sha256=` + hex HMAC of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def payload(alert: Alert, phase: str) -> bytes:
    """The alert object as a sink receives it: as it was opened, or as it was closed;
    every non-printable character a `\\u` escape (the same JSON, safe to show)."""
    doc = alert.to_json()
    if phase == "open":
        doc.update(status="open", closed_at=None, cleared_at=None)
    return json_text(doc, sort_keys=True).encode()


def sink_names(config: AlertsConfig) -> list[str]:
    """The sinks an alert is queued for: those configured. `alerts.hook` naming a
    directory (a hooks.d) is one sink per executable in it, `hook:NAME`, each with its
    own deliveries: a script added later is told of the alerts still open, and one that
    fails holds up no other."""
    names = [] if config.hook is None else hook_sinks(config.hook)
    return names + (["webhook"] if config.webhook else [])


#: The executables of a hooks.d that run, as run-parts picks them: no dot files, editor
#: backups or package managers' leftovers (`x~`, `x.dpkg-old`).
_HOOK_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")


def hook_sinks(hook: Path) -> list[str]:
    """`hook`'s sinks: `hook` for one executable, `hook:NAME` for each executable NAME of
    a directory, in name order."""
    if not hook.is_dir():
        return ["hook"]
    try:
        entries = sorted(hook.iterdir())
    except OSError:
        return []  # unreadable now: no sink this time (check_sinks said so at the start)
    return [f"hook:{p.name}" for p in entries if _HOOK_NAME.fullmatch(p.name) and _runnable(p)]


def _runnable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def sink_kind(sink: str) -> str:
    """`hook` or `webhook`: what a sink is (each script of a hooks.d is a `hook`)."""
    return "hook" if sink.startswith("hook:") else sink


def hook_environment(
    alert: Alert, phase: str, json_file: Path, base: Mapping[str, str]
) -> dict[str, str]:
    """The hook's environment: ours (less systemd's private variables) plus the alert's.

    A closing notice has EVENT=alert_closed and the alert's kind in ALERT_KIND, so a
    script that knows only the kinds it handles never mistakes it for a new alert.

    The alert's values are one line each, escaped (`text.escaped`): a script that
    echoes `$SUMMARY` to a terminal or a mail never prints a control code or a forged
    line. JSON_FILENAME holds the alert exactly.
    """
    env = {k: v for k, v in base.items() if k not in _PRIVATE_ENV and "\0" not in v}
    alert_env = {
        "EVENT": alert.kind if phase == "open" else "alert_closed",
        "ALERT_KIND": alert.kind,
        "ALERT_ID": str(alert.id),
        "ALERT_STATUS": "open" if phase == "open" else "closed",
        "SEVERITY": alert.severity,
        "SUMMARY": alert.summary,
        "PITH_NUMBER": alert.pith_number or "",
        # Space-separated: a space (or %) inside a name is percent-encoded, so a name
        # such as "x m0" cannot make a script read a second, honest mirror into it.
        "MIRRORS": " ".join(m.replace("%", "%25").replace(" ", "%20") for m in alert.mirrors),
        "DEDUP_KEY": alert.dedup_key,
    }
    # Bounded too: one value past 128 KiB, or all of them past the system's limit, and
    # the hook could not be run at all.
    env.update(
        {k: bounded(escaped(v), ENV_VALUE_MAX) for k, v in alert_env.items()},
        JSON_FILENAME=str(json_file),
    )
    return env


async def _run_hook(hook: Path, env: dict[str, str], err: IO[bytes], limit: float) -> int:
    """Run the hook to its exit status. An argument vector, never a shell: no field of the
    alert is ever parsed as a command. In a session of its own, so that on a timeout (or
    a cancel) every process it started is killed with it."""
    try:
        process = await anyio.open_process(
            [str(hook)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    except OSError as e:
        raise DeliveryFailed(f"hook {hook} could not run: {e.strerror or e}") from None
    try:
        with anyio.fail_after(limit):
            return await process.wait()
    except TimeoutError:
        raise DeliveryFailed(f"hook {hook} did not finish within {limit:g}s") from None
    finally:
        if process.returncode is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with anyio.CancelScope(shield=True):
                await process.wait()


#: How much of a failing hook's stderr is read back for its error (the end of it).
_STDERR_TAIL = 4096


def _tail(err: IO[bytes]) -> list[str]:
    """The last lines of what the hook wrote to stderr, each cut short."""
    err.seek(0, os.SEEK_END)
    err.seek(max(0, err.tell() - _STDERR_TAIL))
    lines = err.read().decode("utf-8", "replace").replace("\0", "").strip().splitlines()
    return [line if len(line) <= 300 else line[:299] + "…" for line in lines[-3:]]


@dataclass(slots=True)
class Sinks:
    """The configured sinks and how to reach them."""

    config: AlertsConfig
    fetcher: HttpFetcher | None
    secret: bytes | None = None
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    down_until: dict[str, float] = field(default_factory=dict)
    """Sinks that failed, and until when (monotonic time: a step of the wall clock does
    not stretch it) they are not tried again."""

    @property
    def names(self) -> list[str]:
        return sink_names(self.config)

    async def send(self, delivery: Delivery, alert: Alert) -> None:
        if sink_kind(delivery.sink) == "hook":
            await self._hook(alert, delivery.phase, delivery.sink)
        else:
            await self._webhook(alert, delivery.phase)

    def _hook_path(self, sink: str) -> Path:
        """The executable a hook sink runs, as the configuration says now."""
        hook = self.config.hook
        if hook is None:
            raise DeliveryFailed("no alerts.hook is configured any more")
        if sink == "hook":
            if hook.is_dir():
                raise DeliveryFailed(f"alerts.hook {hook} is a directory now")
            return hook
        name = sink.removeprefix("hook:")
        path = hook / name
        if not (hook.is_dir() and _HOOK_NAME.fullmatch(name) and _runnable(path)):
            raise DeliveryFailed(f"{name} is no longer an executable of alerts.hook {hook}")
        return path

    async def _hook(self, alert: Alert, phase: str, sink: str = "hook") -> None:
        hook = self._hook_path(sink)
        timeout = self.config.hook_timeout.total_seconds()
        with tempfile.TemporaryDirectory(prefix="pithcrawl-alert-") as tmp:
            json_file = Path(tmp) / f"alert-{alert.id}-{phase}.json"
            json_file.write_bytes(payload(alert, phase))
            env = hook_environment(alert, phase, json_file, self.env)
            # stderr to a file: judged by the hook's exit, not by when the last process
            # holding a pipe lets go of it, and read back only in part.
            with (Path(tmp) / "stderr").open("w+b") as err:
                code = await _run_hook(hook, env, err, timeout)
                if code != 0:
                    tail = _tail(err)
                    raise DeliveryFailed(
                        f"hook {hook} exited {code}" + (f": {' | '.join(tail)}" if tail else "")
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


#: Deliveries in flight to one sink at once: the hook runs one at a time (a script need
#: not be written for several copies of itself at once), the webhook takes a few POSTs.
SINK_CONCURRENCY = {"hook": 1, "webhook": 4}
"""By `sink_kind`: each script of a hooks.d also runs one at a time."""


async def deliver_due(
    store: Store,
    sinks: Sinks,
    now: datetime,
    rand: random.Random,
    *,
    limit: int = 100,
    metrics: Metrics | None = None,
) -> tuple[int, int]:
    """Attempt the deliveries due at `now`, every sink at once, each on its own (see
    `deliver_to`); (delivered, failed)."""
    counts = [0, 0]

    async def one_sink(sink: str) -> None:
        ok, failed = await deliver_to(store, sinks, sink, now, rand, limit=limit, metrics=metrics)
        counts[0] += ok
        counts[1] += failed

    async with anyio.create_task_group() as tg:
        for sink in sinks.names:
            tg.start_soon(one_sink, sink)
    return counts[0], counts[1]


async def deliver_to(
    store: Store,
    sinks: Sinks,
    sink: str,
    now: datetime,
    rand: random.Random,
    *,
    limit: int = 100,
    metrics: Metrics | None = None,
) -> tuple[int, int]:
    """Attempt `sink`'s deliveries due at `now`, oldest first, as many at once as
    `SINK_CONCURRENCY` says; (delivered, failed).

    The first failure (a hook exiting non-zero, a webhook answering 500 or never) puts
    the sink off until its retry time: the rest of its queue is left as it is, due, for
    then. So a dead sink costs one timeout per retry, not one per alert, and since each
    sink has its own queue and its own task, it holds up no other sink."""
    if sinks.down_until.get(sink, 0.0) > time.monotonic():
        return 0, 0
    queue = await store.deliveries.due_deliveries(now, limit, sinks=[sink])
    read_at = time.monotonic()
    counts = [0, 0]
    slots = anyio.Semaphore(SINK_CONCURRENCY[sink_kind(sink)])

    async def attempt(delivery: Delivery, alert: Alert) -> None:
        try:
            with structlog.contextvars.bound_contextvars(
                alert_id=alert.id, sink=sink, phase=delivery.phase
            ):
                counts[
                    await _attempt(
                        store,
                        sinks,
                        delivery,
                        alert,
                        # Its own time: a queue of slow deliveries takes long to work through.
                        now=now + timedelta(seconds=time.monotonic() - read_at),
                        rand=rand,
                        metrics=metrics,
                    )
                ] += 1
        finally:
            slots.release()

    counts.append(0)  # taken by another node meanwhile
    async with anyio.create_task_group() as tg:
        for delivery, alert in queue:
            await slots.acquire()
            if sinks.down_until.get(sink, 0.0) > time.monotonic():
                slots.release()
                break  # failed meanwhile: what is left waits for the retry
            tg.start_soon(attempt, delivery, alert)
    return counts[0], counts[1]


async def _attempt(
    store: Store,
    sinks: Sinks,
    delivery: Delivery,
    alert: Alert,
    *,
    now: datetime,
    rand: random.Random,
    metrics: Metrics | None,
) -> int:
    """One delivery: 0 when the sink took it, 1 when it failed (and when to retry is
    kept, and the sink put off until then), 2 when another node took it first."""
    claim = now + max(DELIVERY_CLAIM, 2 * sinks.config.hook_timeout)
    if not await store.deliveries.take(delivery, now, claim):
        return 2
    try:
        await sinks.send(delivery, alert)
    except DeliveryFailed as e:
        retry_at = retry_due(
            now, delivery.attempts + 1, None, base=RETRY_BASE, cap=RETRY_CAP, rand=rand.random()
        )
        await store.deliveries.failed(delivery, str(e), retry_at, claimed=claim)
        until = time.monotonic() + (retry_at - now).total_seconds()
        sinks.down_until[delivery.sink] = max(until, sinks.down_until.get(delivery.sink, until))
        if metrics is not None:
            metrics.delivery_failed(sink_kind(delivery.sink))
        log.warning(
            "delivery_failed",
            error=str(e),
            attempts=delivery.attempts + 1,
            retry_at=format_timestamp(retry_at),
        )
        return 1
    # Shielded: the sink took it; a cancel now (a stop, the end of a round) must not
    # leave it recorded as pending, to be delivered a second time.
    with anyio.CancelScope(shield=True):
        await store.deliveries.delivered(delivery, now)
    if metrics is not None:
        metrics.delivered(sink_kind(delivery.sink))
    log.info("delivered", kind=alert.kind)
    return 0


def log_entry(kind: str, severity: str, summary: str, dedup_key: str | None) -> None:
    """The log line of one event-log entry: named by its kind, at its severity's level."""
    log.log(level_of(severity), kind, severity=severity, summary=summary, dedup_key=dedup_key)


def level_of(severity: str) -> int:
    """The log level of an alert severity (`journalctl -p err` finds critical and error)."""
    return _LEVELS.get(severity, logging.INFO)


_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
}


def log_alerts(done: Reconciled) -> None:
    """Every alert is in the structured log, whatever the sinks."""
    for a in done.opened:
        log.log(
            level_of(a.severity),
            "alert_opened",
            alert_id=a.id,
            kind=a.kind,
            severity=a.severity,
            pith_number=a.pith_number,
            mirrors=list(a.mirrors),
            summary=a.summary,
            dedup_key=a.dedup_key,
        )
    for a in done.recurred:
        log.debug("alert_recurred", alert_id=a.id, kind=a.kind, recurrences=a.recurrences)
    for a in done.closed:
        log.info(
            "alert_closed", alert_id=a.id, kind=a.kind, dedup_key=a.dedup_key, summary=a.summary
        )
