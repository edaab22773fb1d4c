"""The archive's values: what goes into the store and what comes out, as typed rows.

Owns the frozen dataclasses of the store's API (`Record`, `Mirror`, `FetchState`,
`Snapshot`, `EventRow`, and the inputs `FetchOutcome` and `NewEvent`), their conversion
from database rows, and the text form of times in the database. It runs no SQL.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from pithcrawl.entries import NewEvent
from pithcrawl.errors import StoreCorrupt
from pithcrawl.findings import Finding
from pithcrawl.timestamps import format_timestamp, parse_timestamp

T = TypeVar("T")

KINDS = ("bundle", "state")
"""What a mirror serves per record: the signed bundle and the merged state."""

ORIGINS = ("config", "manifest", "discovered")
"""Where a mirror came from."""

SEVERITIES = ("info", "warning", "error", "critical")


def db_time(at: datetime) -> str:
    """A time as stored: RFC 3339 UTC with microseconds, which sorts as text.

    The text of `format_timestamp`, built by isoformat (a tenth of strftime's cost; a
    few are written per fetch)."""
    if at.tzinfo is not UTC:
        if at.tzinfo is None:
            raise ValueError(f"naive datetime {at!r}: the store needs an aware (UTC) time")
        at = at.astimezone(UTC)
    return at.isoformat(timespec="microseconds")[:-6] + "Z"


def db_time_or_none(at: datetime | None) -> str | None:
    return None if at is None else db_time(at)


def normalize_time(at: datetime | str) -> str:
    """A caller's time (datetime or RFC 3339 UTC text) in the stored text form."""
    if isinstance(at, datetime):
        return db_time(at)
    parsed = parse_timestamp(at)
    if parsed is None:
        raise ValueError(f"{at!r} is not an RFC 3339 UTC time like 2026-11-27T12:00:00Z")
    return db_time(parsed.at)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _time_or_none(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def to_json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass(frozen=True, slots=True)
class Record:
    """A tracked record."""

    suffix: str
    """The 26-character Pith suffix."""
    pith_number: str | None
    """The full Pith number, once a verified bundle has told us; None until then."""
    added_at: datetime


@dataclass(frozen=True, slots=True)
class Mirror:
    """A mirror and how to build its URLs (`{base_url}` and `{suffix}` placeholders)."""

    name: str
    base_url: str
    bundle_pattern: str
    state_pattern: str
    origin: str
    """'config', 'manifest' or 'discovered'."""
    added_at: datetime
    """When first seen; `upsert_mirror` keeps the first value."""
    well_known_pattern: str | None = None

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"mirror origin must be one of {ORIGINS}, got {self.origin!r}")


@dataclass(frozen=True, slots=True)
class FetchState:
    """Conditional-GET validators and retry bookkeeping of one (record, mirror, kind)."""

    suffix: str
    mirror: str
    kind: str
    url: str
    etag: str | None
    last_modified: str | None
    body_sha256: str | None
    """The body the validators belong to (the last 200's)."""
    status: int | None
    """The last HTTP status; None when the last attempt got no response."""
    last_fetch_at: datetime | None
    last_success_at: datetime | None
    first_failure_at: datetime | None
    """Start of the current run of failures; None after a success."""
    failures: int
    """Consecutive failures; 0 after a success."""
    next_due: datetime | None
    last_error: str | None
    body_trusted: bool | None = None
    """Whether `body_sha256`, as last archived from here, was trusted (None: unknown)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One archived body of a (record, mirror, kind), stored when it changed."""

    id: int
    suffix: str
    mirror: str
    kind: str
    fetched_at: datetime
    url: str
    status: int
    body_sha256: str
    """Key of the exact bytes in the blob store (`Store.get_blob`)."""
    bundle_sha256: str | None
    built_at: str | None
    """As the document says it (its own text, not re-formatted)."""
    event_count: int | None
    trusted: bool
    """True only when verified before the same transaction stored it."""
    findings: tuple[Finding, ...]
    prev_id: int | None
    """The previous snapshot of the same (suffix, mirror, kind) as its vantage saw them
    (with those from before vantages were recorded), whatever its trust."""
    node: str | None = None
    """The node that fetched it (`[node] name`); None in archives older than nodes."""
    vantage: str | None = None
    """The vantage it was fetched from (`[node] vantage`)."""


@dataclass(frozen=True, slots=True)
class EventRow:
    """A stored event."""

    id: int
    at: datetime
    kind: str
    severity: str
    pith_number: str | None
    suffix: str | None
    mirrors: tuple[str, ...]
    summary: str
    evidence: dict[str, Any]
    dedup_key: str | None
    snapshot_id: int | None

    def to_json(self) -> dict[str, Any]:
        """The contract's alert object, plus `suffix` and `snapshot_id`."""
        return {
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity,
            "at": format_timestamp(self.at),
            "pith_number": self.pith_number,
            "mirrors": list(self.mirrors),
            "summary": self.summary,
            "evidence": self.evidence,
            "dedup_key": self.dedup_key,
            "suffix": self.suffix,
            "snapshot_id": self.snapshot_id,
        }


@dataclass(frozen=True, slots=True)
class FetchOutcome:
    """Everything one fetch of one document taught us, to be stored in one transaction.

    Three shapes: a 200 (`body` set), a 304 (`body` None, `error` None) and a failure
    (`error` set, `body` None; `status` is the HTTP status if there was one).
    """

    suffix: str
    mirror: str
    kind: str
    url: str
    fetched_at: datetime
    status: int | None = None
    body: bytes | None = None
    body_sha256: str | None = None
    """Optional: the store hashes `body` itself and refuses a disagreeing value."""
    etag: str | None = None
    last_modified: str | None = None
    next_due: datetime | None = None
    bundle_sha256: str | None = None
    built_at: str | None = None
    event_count: int | None = None
    trusted: bool = False
    findings: Sequence[Finding] = ()
    events: Sequence[NewEvent] = ()
    error: str | None = None
    pith_number: str | None = None
    """For a trusted bundle: the record's verified number, written with the snapshot."""
    history: tuple[Sequence[str], Sequence[Sequence[str]]] | None = None
    """For a trusted bundle: its event ids and claimed places (the `histories` row)."""
    learned_keys: Sequence[dict[str, Any]] = ()
    """For a trusted bundle, with `trust.follow_rotations`: the new keys it announces."""
    related_sha256: str | None = None
    """An archived body this one likely shares most of its bytes with, besides the last
    one of its series (a state.json's bundle): a hint for storing it as a delta."""
    node: str | None = None
    """The node that fetched it, and its vantage (`[node]`), stored with its snapshot."""
    vantage: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.error is not None and self.body is not None:
            raise ValueError("a failed fetch carries no body")
        if self.body is not None and self.status is None:
            raise ValueError("a fetched body needs its HTTP status")


@dataclass(frozen=True, slots=True)
class Recorded:
    """One fetch for `Store.record_fetches`, and the alert scope whose open alerts it
    makes `current` in the same transaction (None: no alerts to reconcile)."""

    outcome: FetchOutcome
    scope: str | None = None
    current: Sequence[NewEvent] = ()


#: What decoding a damaged row raises (a time that does not parse, a JSON column of
#: the wrong shape, a finding without its code).
_DAMAGE = (ValueError, TypeError, KeyError, AttributeError, IndexError)


@contextmanager
def decoding(what: str) -> Iterator[None]:
    """Decode a row: damage (the archive edited behind pithcrawl's back) is
    `StoreCorrupt` naming the row, one line for the operator, never a traceback."""
    try:
        yield
    except StoreCorrupt:
        raise
    except _DAMAGE as e:
        raise StoreCorrupt(f"{what} is damaged ({type(e).__name__}: {e}): run fsck") from None


def decoder(
    table: str, key: str
) -> Callable[[Callable[[sqlite3.Row], T]], Callable[[sqlite3.Row], T]]:
    """`decoding` around a function that reads one row of `table`, named by `key`."""

    def wrap(read: Callable[[sqlite3.Row], T]) -> Callable[[sqlite3.Row], T]:
        @functools.wraps(read)
        def decode(row: sqlite3.Row) -> T:
            with decoding(f"{table} row {row[key]!r}"):
                return read(row)

        return decode

    return wrap


@decoder("records", "suffix")
def record_from_row(row: sqlite3.Row) -> Record:
    return Record(row["suffix"], row["pith_number"], _time(row["added_at"]))


@decoder("mirrors", "name")
def mirror_from_row(row: sqlite3.Row) -> Mirror:
    return Mirror(
        name=row["name"],
        base_url=row["base_url"],
        bundle_pattern=row["bundle_pattern"],
        state_pattern=row["state_pattern"],
        origin=row["origin"],
        added_at=_time(row["added_at"]),
        well_known_pattern=row["well_known_pattern"],
    )


@decoder("fetch_state", "suffix")
def fetch_state_from_row(row: sqlite3.Row) -> FetchState:
    try:
        trusted = row["body_trusted"]  # only the queries that join the verdict have it
    except IndexError:
        trusted = None
    return FetchState(
        suffix=row["suffix"],
        mirror=row["mirror"],
        kind=row["kind"],
        url=row["url"],
        etag=row["etag"],
        last_modified=row["last_modified"],
        body_sha256=row["body_sha256"],
        status=row["status"],
        last_fetch_at=_time_or_none(row["last_fetch_at"]),
        last_success_at=_time_or_none(row["last_success_at"]),
        first_failure_at=_time_or_none(row["first_failure_at"]),
        failures=row["failures"],
        next_due=_time_or_none(row["next_due"]),
        last_error=row["last_error"],
        body_trusted=None if trusted is None else bool(trusted),
    )


@decoder("snapshots", "id")
def snapshot_from_row(row: sqlite3.Row) -> Snapshot:
    return Snapshot(
        id=row["id"],
        suffix=row["suffix"],
        mirror=row["mirror"],
        kind=row["kind"],
        fetched_at=_time(row["fetched_at"]),
        url=row["url"],
        status=row["status"],
        body_sha256=row["body_sha256"],
        bundle_sha256=row["bundle_sha256"],
        built_at=row["built_at"],
        event_count=row["event_count"],
        trusted=bool(row["trusted"]),
        findings=tuple(Finding.from_json(f) for f in orjson.loads(row["findings"])),
        prev_id=row["prev_id"],
        node=row["node"],
        vantage=row["vantage"],
    )


def snapshot_of(
    fetch: FetchOutcome, snapshot_id: int, body_sha256: str, prev_id: int | None
) -> Snapshot:
    """The snapshot `fetch` was just archived as: what `snapshot_from_row` would read back."""
    assert fetch.status is not None  # a fetch with a body has its status
    return Snapshot(
        id=snapshot_id,
        suffix=fetch.suffix,
        mirror=fetch.mirror,
        kind=fetch.kind,
        fetched_at=_time(db_time(fetch.fetched_at)),
        url=fetch.url,
        status=fetch.status,
        body_sha256=body_sha256,
        bundle_sha256=fetch.bundle_sha256,
        built_at=fetch.built_at,
        event_count=fetch.event_count,
        trusted=fetch.trusted,
        findings=tuple(fetch.findings),
        prev_id=prev_id,
        node=fetch.node,
        vantage=fetch.vantage,
    )


@decoder("events", "id")
def event_from_row(row: sqlite3.Row) -> EventRow:
    return EventRow(
        id=row["id"],
        at=_time(row["at"]),
        kind=row["kind"],
        severity=row["severity"],
        pith_number=row["pith_number"],
        suffix=row["suffix"],
        mirrors=json_column(row, "mirrors", list, f"event {row['id']}"),
        summary=row["summary"],
        evidence=json_column(row, "evidence", dict, f"event {row['id']}"),
        dedup_key=row["dedup_key"],
        snapshot_id=row["snapshot_id"],
    )


def json_column(row: sqlite3.Row, column: str, shape: type, what: str) -> Any:
    """A JSON column of a row, of the shape pithcrawl writes (`list` as a tuple); damage
    (the archive edited behind pithcrawl's back) is `StoreCorrupt`, not a traceback."""
    value: Any
    try:
        value = orjson.loads(row[column])
    except (orjson.JSONDecodeError, TypeError):
        value = None
    if not isinstance(value, shape):
        raise StoreCorrupt(f"{what}: its {column} is not a JSON {shape.__name__}: run fsck")
    if isinstance(value, list):
        if column == "mirrors" and not all(isinstance(m, str) for m in value):
            raise StoreCorrupt(f"{what}: its mirrors are not all names: run fsck")
        return tuple(value)
    return value


def snapshot_or_damage(row: sqlite3.Row) -> tuple[int, Snapshot | StoreCorrupt]:
    """A snapshot's id, and the snapshot or the damage that keeps its row from reading
    as one (for `fsck`, which reports it and goes on)."""
    try:
        return row["id"], snapshot_from_row(row)
    except StoreCorrupt as e:
        return row["id"], e
