"""What each status page shows, read from the archive and shaped for its template.

Owns the figures of the pages (the overview's are `status --json`'s, from the same
`gather_from`, plus each mirror's lag and last day), a record's title and events as its
newest trusted bundle states them, the geometry of the record's timeline (an SVG drawn
on the server), the readable form of a diff, and an alert's evidence documents with the
commands that re-check them (`evidence`'s own). Everything here that came from a mirror
stays plain data: the templates escape it (Jinja2's autoescape), and `href` lets only
http(s) URLs become links.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import anyio
import jsonpatch

from pithcrawl.canon import MalformedJSON, parse
from pithcrawl.commands.evidence import package_of, recheck
from pithcrawl.commands.patch import make_patch
from pithcrawl.commands.status import MirrorStatus, Status, gather_from
from pithcrawl.config import Config
from pithcrawl.store import Alert, Delivery, Snapshot, Store
from pithcrawl.store.browse import Counts, Lag
from pithcrawl.text import bounded, escaped, json_text

PAGE = 50
"""Rows on a page of records, alerts or failing pairs."""

TIMELINE = 200

LOG = 500
"""Log entries of a record shown (its newest)."""
"""Snapshots drawn on one record's timeline (older ones a page further)."""

SEVERITIES = ("critical", "error", "warning", "info")

#: The most characters of one value shown in a diff or an evidence document.
SHOWN = 4_000


def href(url: Any) -> str | None:
    """`url` if it may be a link (an absolute http or https URL), else None: a mirror's
    `javascript:` or `data:` URL is shown as text, never followed."""
    if not isinstance(url, str) or any(c.isspace() or not c.isprintable() for c in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def shown(value: Any, limit: int = 500, lines: bool = False) -> str:
    """Untrusted text as a page shows it: non-printing characters (controls, bidi and
    zero-width marks) as escapes, cut to `limit` (the template escapes HTML). With
    `lines`, line breaks stay (for a `<pre>`)."""
    text = bounded(str(value), limit)
    if lines:
        return "\n".join(escaped(line) for line in text.split("\n"))
    return escaped(text)


def age(at: datetime | None, now: datetime) -> str:
    """How long ago, in the two largest units: `3d 4h`, `5m 10s`."""
    if at is None:
        return "-"
    seconds = max(0, int((now - at).total_seconds()))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


# -- overview -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MirrorRow:
    status: MirrorStatus
    lag: Lag | None
    day: Counts | None
    """The last 24 hours."""
    open_alerts: int

    @property
    def healthy(self) -> bool:
        s = self.status
        failing = s.last_failure_at is not None and (
            s.last_success_at is None or s.last_failure_at > s.last_success_at
        )
        invalid = self.day is not None and self.day.untrusted > 0
        behind = self.lag is not None and self.lag.behind > 0
        return not (failing or invalid or behind or self.open_alerts)


@dataclass(frozen=True, slots=True)
class Overview:
    status: Status
    """`status --json`'s figures, without its open alerts (counted and paged here)."""
    mirrors: list[MirrorRow]
    open_alerts: int
    severities: list[tuple[str, int]]
    alerts: list[Alert]
    """The open alerts to look at first: the most severe, then the newest."""
    now: datetime
    """When these figures were read."""

    @property
    def more_alerts(self) -> bool:
        return self.open_alerts > len(self.alerts)

    @property
    def last_pass(self) -> datetime | None:
        return self.status.nodes[0].last_seen if self.status.nodes else None


async def overview(store: Store, config: Config, now: datetime) -> Overview:
    """The overview's figures: whole-archive reads, none of which holds more than a page
    of alerts however many are open."""
    status = await gather_from(store, config, alerts=False)
    lag = await store.browse.lag()
    day = await store.browse.recent(now - timedelta(hours=23), now)
    severities, per_mirror = await store.browse.open_counts()
    rows = [
        MirrorRow(m, lag.get(m.name), day.get(m.name), per_mirror.get(m.name, 0))
        for m in status.mirrors
    ]
    return Overview(
        status,
        rows,
        sum(severities.values()),
        [(s, severities[s]) for s in SEVERITIES if severities.get(s)],
        await store.browse.top_open(PAGE),
        now,
    )


@dataclass(frozen=True, slots=True)
class Bar:
    day: str
    counts: Counts
    x: float
    width: float
    fetched: float
    """The height of the day's fetches; `failed` and `changed` are parts of it."""
    failed: float
    changed: float


@dataclass(frozen=True, slots=True)
class History:
    days: int
    bars: list[Bar]
    width: int
    height: int


HISTORY_DAYS = 30


def history(
    days: list[tuple[str, Counts]], today: datetime, span: int = HISTORY_DAYS, width: int = 900
) -> History:
    """A bar a day over the last `span` days (oldest left): fetches, with the failed and
    the changed ones as parts of each bar."""
    height = 120
    counts = dict(days)
    first = today.astimezone(UTC).date() - timedelta(days=span - 1)
    drawn = [(first + timedelta(days=i)).isoformat() for i in range(span)]
    peak = max((counts[d].fetches for d in drawn if d in counts), default=0) or 1
    step = width / span
    bars = []
    for i in range(span):
        day = (first + timedelta(days=i)).isoformat()
        c = counts.get(day, Counts(0, 0, 0, 0))

        def h(n: int) -> float:
            return round(n / peak * (height - 10), 1)

        bars.append(
            Bar(
                day,
                c,
                round(i * step + 1, 1),
                round(step - 2, 1),
                h(c.fetches),
                h(c.failures),
                h(c.changed),
            )
        )
    return History(span, bars, width, height)


# -- a record -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dot:
    snapshot: Snapshot
    x: float
    y: float
    previous: int | None
    """The snapshot before it in its lane (its diff's other side)."""
    logged: tuple[str, ...] = ()
    """What pithcrawl logged of it (`rollback`, `event_added`, …)."""

    @property
    def alarming(self) -> bool:
        return not self.snapshot.trusted or any(k in ALARMING for k in self.logged)


#: Kinds a snapshot is marked for on the timeline: each opened a critical alert.
ALARMING = frozenset(
    {"rollback", "equivocation", "untrusted_key", "document_invalid", "state_url_mismatch"}
)


@dataclass(frozen=True, slots=True)
class Lane:
    label: str
    y: float


@dataclass(frozen=True, slots=True)
class Timeline:
    width: int
    height: int
    lanes: list[Lane]
    dots: list[Dot]
    start: datetime | None
    end: datetime | None


_LEFT, _RIGHT, _TOP, _ROW = 190, 20, 24, 34
_GAP = 16.0
"""The least distance between two fetch times' dots: fetches a second apart stay apart."""


def _columns(times: list[datetime], left: float, right: float) -> dict[datetime, float]:
    """An x for each distinct time: in proportion to time, then moved apart to at least
    `_GAP` (pushed right from the oldest, then back left from the end of the drawing);
    evenly spread when there are too many to keep that far apart."""
    distinct = sorted(set(times))
    if len(distinct) == 1:
        return {distinct[0]: (left + right) / 2}
    n = len(distinct)
    start, span = distinct[0], (distinct[-1] - distinct[0]).total_seconds()
    xs = [left + (t - start).total_seconds() / span * (right - left) for t in distinct]
    for i in range(1, n):
        xs[i] = max(xs[i], xs[i - 1] + _GAP)
    xs[-1] = min(xs[-1], right)
    for i in range(n - 2, -1, -1):
        xs[i] = min(xs[i], xs[i + 1] - _GAP)
    if xs[0] < left:  # too many to keep apart: one column each, evenly
        xs = [left + i * (right - left) / (n - 1) for i in range(n)]
    return {t: round(x, 1) for t, x in zip(distinct, xs, strict=True)}


def timeline(
    snapshots: list[Snapshot], logged: Mapping[int, list[str]] | None = None, width: int = 900
) -> Timeline:
    """A lane per mirror (per mirror and vantage once there are several vantages), a dot
    per bundle snapshot at its fetch time (in time order, never on top of another)."""
    logged = logged or {}
    vantages = {s.vantage for s in snapshots if s.vantage}
    several = len(vantages) > 1

    def lane_of(s: Snapshot) -> str:
        return f"{s.mirror} @ {s.vantage or '?'}" if several else s.mirror

    names = sorted({lane_of(s) for s in snapshots})
    ys = {name: _TOP + i * _ROW for i, name in enumerate(names)}
    times = [s.fetched_at.replace(microsecond=0) for s in snapshots]
    # Wide enough that every fetch time has a column `_GAP` from the next (the page
    # scrolls it sideways past the screen's width).
    width = max(width, int(_LEFT + _RIGHT + _GAP * (len(set(times)) - 1)) + 1)
    xs = _columns(times, _LEFT, width - _RIGHT) if times else {}
    dots: list[Dot] = []
    last: dict[str, int] = {}
    for s, t in zip(snapshots, times, strict=True):
        lane = lane_of(s)
        dots.append(Dot(s, xs[t], ys[lane], last.get(lane), tuple(logged.get(s.id, ()))))
        last[lane] = s.id
    height = _TOP + max(1, len(names)) * _ROW
    return Timeline(
        width,
        height,
        [Lane(n, ys[n]) for n in names],
        dots,
        min(times) if times else None,
        max(times) if times else None,
    )


@dataclass(frozen=True, slots=True)
class Change:
    op: str
    path: str
    before: str | None
    after: str | None


@dataclass(frozen=True, slots=True)
class Diff:
    old: Snapshot
    new: Snapshot
    changes: list[Change]
    more: int
    problem: str | None = None


@dataclass
class RecordPage:
    suffix: str
    pith_number: str | None
    tracked: bool
    title: str | None
    newest: Snapshot | None
    bundle_events: list[dict[str, str]]
    timeline: Timeline
    snapshots: list[Snapshot]
    older: int | None
    log: list[Any]
    """The record's newest `LOG` log entries, in time order."""
    logged: int
    """How many log entries it has in all."""
    alerts: list[Alert]
    served_by: list[str] = field(default_factory=list)
    """The mirrors whose newest bundle shown is the newest trusted one."""
    diff: Diff | None = None
    problems: list[str] = field(default_factory=list)


def _text_at(doc: Any, *path: Any) -> Any:
    for step in path:
        if isinstance(step, int):
            if not isinstance(doc, list) or not -len(doc) <= step < len(doc):
                return None
        elif not isinstance(doc, dict):
            return None
        doc = doc[step] if isinstance(step, int) else doc.get(step)
    return doc


def title_of(bundle: Any) -> str | None:
    """The paper's title as the newest graph snapshot in the bundle's state gives it."""
    title = _text_at(
        bundle,
        "state",
        "current",
        "graph_snapshots",
        -1,
        "payload",
        "graph_snapshot",
        "paper",
        "title",
    )
    return title if isinstance(title, str) and title.strip() else None


def bundle_events(bundle: Any) -> list[dict[str, str]]:
    """The bundle's own events, as the record's history states them, in order."""
    events = _text_at(bundle, "events")
    out = []
    for e in events if isinstance(events, list) else []:
        if not isinstance(e, dict):
            continue
        signer = _text_at(e, "signer", "signer_id")
        out.append(
            {
                "type": shown(e.get("event_type", "?"), 80),
                "target": shown(e.get("target", ""), 80),
                "created_at": shown(e.get("created_at", "") or "", 40),
                "signer": shown(signer or "", 80),
                "id": shown(e.get("event_id", "") or "", 80),
            }
        )
    return out


async def document(store: Store, s: Snapshot) -> Any:
    """A snapshot's body as JSON; `MalformedJSON` when it is not."""
    return parse(await store.get_blob(s.body_sha256))


async def record(
    store: Store, suffix: str, *, before: int | None, a: int | None, b: int | None
) -> RecordPage | None:
    tracked = await store.watchlist.record(suffix)
    kwargs = {} if before is None else {"before": before}
    snaps = await store.browse.record_snapshots(suffix, limit=TIMELINE + 1, **kwargs)
    if tracked is None and not snaps:
        return None
    older = snaps[0].id if len(snaps) > TIMELINE else None
    snaps = snaps[-TIMELINE:]
    newest = await store.trusted.newest_bundle(suffix)
    logged = await store.event_kinds([s.id for s in snaps])
    page = RecordPage(
        suffix,
        tracked.pith_number if tracked else None,
        tracked is not None,
        None,
        newest,
        [],
        timeline(snaps, logged),
        snaps,
        older,
        *(await store.browse.record_events(suffix, limit=LOG)),
        await store.browse.record_alerts(suffix, limit=PAGE),
    )
    latest: dict[tuple[str, str | None], Snapshot] = {}
    for snap in snaps:
        latest[(snap.mirror, snap.vantage)] = snap  # what it serves each vantage now
    if newest is not None:
        page.served_by = sorted(
            {m for (m, _), snap in latest.items() if snap.body_sha256 == newest.body_sha256}
        )
        try:
            doc = await document(store, newest)
        except MalformedJSON as e:
            page.problems.append(f"the newest trusted bundle does not parse: {e}")
        else:
            page.title = title_of(doc)
            page.bundle_events = bundle_events(doc)
            if isinstance(doc, dict) and isinstance(doc.get("pith_number"), str):
                page.pith_number = page.pith_number or doc["pith_number"]
    if a is not None and b is not None:
        page.diff = await diff(store, suffix, a, b)
    return page


def _pointer_get(doc: Any, path: str) -> tuple[bool, Any]:
    if path == "":
        return True, doc
    for raw in path.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return False, None
    return True, doc


#: At most this many values of one value are shown (the rest is counted, not written).
CLIP = 300


def _clip(value: Any, budget: list[int]) -> Any:
    """`value` cut to about `budget[0]` values and strings of at most 1,000 characters,
    before anything is written out: a hostile body's 16 MB member costs what is shown."""
    budget[0] -= 1
    if isinstance(value, str):
        return value if len(value) <= 1000 else value[:999] + "…"
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if budget[0] <= 0:
                out["…"] = f"{len(value) - i} more members"
                break
            out[k] = _clip(v, budget)
        return out
    if isinstance(value, list):
        items: list[Any] = []
        for i, v in enumerate(value):
            if budget[0] <= 0:
                items.append(f"… {len(value) - i} more items")
                break
            items.append(_clip(v, budget))
        return items
    return value


def _value(v: Any) -> str:
    return bounded(json_text(_clip(v, [CLIP]), indent=2), SHOWN)


def changes(before: Any, after: Any, working: Any, limit: int) -> tuple[list[Change], int]:
    """The patch from `before` to `after` as rows: each operation with the value it
    replaced or removed, read from `working` (a copy of `before` the operations are
    applied to one by one: a patch's paths name the document as already changed by the
    operations before them), and the value it put. Also how many more there are."""
    ops = make_patch(before, after)
    rows = []
    intact = True
    for op in ops[:limit]:
        kind, path = str(op.get("op")), str(op.get("path", ""))
        was = None
        if intact and kind in ("remove", "replace", "move"):
            found, value = _pointer_get(working, str(op.get("from", path)))
            was = _value(value) if found else None
        rows.append(Change(kind, path, was, _value(op["value"]) if "value" in op else None))
        if intact:
            try:
                working = jsonpatch.apply_patch(working, [op], in_place=True)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
                intact = False  # (never for a patch make_patch wrote)
    return rows, max(0, len(ops) - limit)


#: Diffs computed at once, each in a thread of its own (the server answers meanwhile).
_DIFFS = anyio.Semaphore(2)

#: The largest body a page compares (the command line compares any).
DIFF_MAX_BYTES = 4 * 2**20


async def diff(store: Store, suffix: str, a: int, b: int, limit: int = 500) -> Diff | None:
    """The JSON Patch from snapshot `a` to `b` (both bundles of `suffix`), each operation
    with the value before and after; None when either is not such a snapshot."""
    old, new = await store.snapshot(a), await store.snapshot(b)
    if old is None or new is None or {old.suffix, new.suffix} != {suffix}:
        return None
    if old.kind != "bundle" or new.kind != "bundle":
        return None
    sizes = await store.browse.body_sizes([old.body_sha256, new.body_sha256])
    if max(sizes.values(), default=0) > DIFF_MAX_BYTES:
        return Diff(
            old,
            new,
            [],
            0,
            f"a compared body is over {DIFF_MAX_BYTES // 2**20} MiB: too large to compare on"
            " a page; `pithcrawl diff` compares it",
        )
    async with _DIFFS:  # the bodies too are read two diffs at a time
        first = await store.get_blob(old.body_sha256)
        second = await store.get_blob(new.body_sha256)

        def compute() -> Diff:
            try:
                before, after, working = parse(first), parse(second), parse(first)
            except MalformedJSON as e:
                return Diff(old, new, [], 0, f"a compared body is not JSON ({e})")
            rows, more = changes(before, after, working, limit)
            return Diff(old, new, rows, more)

        return await anyio.to_thread.run_sync(compute)


# -- an alert -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertPage:
    alert: Alert
    deliveries: list[Any]
    documents: list[tuple[Any, str, str]]
    """(evidence document, the `pithcrawl verify` command that re-checks it, from the
    exported directory, and what it should say)."""
    evidence_command: str
    evidence_json: str


_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


def redacted(d: Delivery) -> Delivery:
    """A delivery as a page may show it, without URLs: a webhook's URL often carries its
    secret (a token in the path), its errors name it, and a hook's error output may name
    the chat webhook it posts to. The log keeps the whole text for the operator."""
    if d.last_error is None:
        return d
    mark = "<alerts.webhook>" if d.sink == "webhook" else "<a URL: see the log>"
    return dataclasses.replace(d, last_error=_URL.sub(mark, d.last_error))


async def alert(store: Store, config: Config, alert_id: int, command: Command) -> AlertPage | None:
    found = await store.alerts.get(alert_id)
    if found is None:
        return None
    package = await package_of(store, config, found, bodies=False)
    expect = {True: "exit 0 (ok)", False: "exit 1 (FAIL)", None: "see the claim"}
    checks = [
        (d, command.prefix() + line.removeprefix("pithcrawl"), expect[d.trusted])
        for d, line in recheck(package, config)
    ]
    return AlertPage(
        found,
        [redacted(d) for d in await store.deliveries.rows(alert_id)],
        checks,
        command.line("evidence", str(alert_id), "--out", f"alert-{alert_id}"),
        bounded(json_text(found.evidence, indent=2), 20 * SHOWN),
    )


@dataclass(frozen=True, slots=True)
class Command:
    """How a reader of the pages runs pithcrawl on this archive: the program as `serve`
    was started (a path, unless it is `pithcrawl` on the PATH) and the `--config` and
    `--db` it was given, made absolute, so every command a page prints can be pasted."""

    program: tuple[str, ...] = ("pithcrawl",)
    options: tuple[str, ...] = ()

    def prefix(self) -> str:
        """The program alone, quoted for a shell."""
        return shlex.join(self.program)

    def line(self, *args: str) -> str:
        return shlex.join([*self.program, *self.options, *args])
