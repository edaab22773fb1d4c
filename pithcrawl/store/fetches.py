"""What one fetch writes: the body of `Store.record_fetch`'s transaction, and its SQL.

Owns the rules of recording a fetch: a blob is inserted once per sha256, a snapshot only
when the body differs from the latest of its (suffix, mirror, kind), the bookkeeping of
success (failures reset, validators replaced by a 200 and kept by a 304) and of failure
(failures counted, `first_failure_at` kept), and events linked to the snapshot. It runs
inside a transaction it is given, in the database thread; it neither begins nor commits
one.
"""

from __future__ import annotations

import sqlite3
from typing import Any, cast

from pithcrawl.entries import NewEvent
from pithcrawl.store.blobs import PackedBlob, sha256_hex
from pithcrawl.store.rows import (
    FetchOutcome,
    Snapshot,
    db_time,
    db_time_or_none,
    snapshot_of,
    to_json_text,
)
from pithcrawl.text import storable

# A success (200 or 304) clears the failure run. A 200's validators replace the old ones
# (they described another body); a 304 keeps the old ones unless it sends new ones.
_SUCCESS = """
INSERT INTO fetch_state (suffix, mirror, kind, vantage, url, etag, last_modified, body_sha256,
                         status, last_fetch_at, last_success_at, failures, next_due)
VALUES (?1, ?2, ?3, ?12, ?4, ?5, ?6, ?7, ?8, ?9, ?9, 0, ?10)
ON CONFLICT (suffix, mirror, kind, vantage) DO UPDATE SET
    url = excluded.url,
    etag = CASE WHEN ?11 = 1 THEN excluded.etag
                ELSE coalesce(excluded.etag, fetch_state.etag) END,
    last_modified = CASE WHEN ?11 = 1 THEN excluded.last_modified
                         ELSE coalesce(excluded.last_modified,
                                                fetch_state.last_modified) END,
    body_sha256 = coalesce(excluded.body_sha256, fetch_state.body_sha256),
    status = excluded.status, last_fetch_at = excluded.last_fetch_at,
    last_success_at = excluded.last_success_at, first_failure_at = NULL, failures = 0,
    next_due = excluded.next_due, last_error = NULL
"""

_FAILURE = """
INSERT INTO fetch_state (suffix, mirror, kind, url, status, last_fetch_at, first_failure_at,
                         failures, next_due, last_error, vantage)
VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)
ON CONFLICT (suffix, mirror, kind, vantage) DO UPDATE SET
    url = excluded.url, status = excluded.status, last_fetch_at = excluded.last_fetch_at,
    first_failure_at = coalesce(fetch_state.first_failure_at, excluded.first_failure_at),
    failures = fetch_state.failures + 1, next_due = excluded.next_due,
    last_error = excluded.last_error
"""

_INSERT_SNAPSHOT = """
INSERT INTO snapshots (suffix, mirror, kind, fetched_at, url, status, body_sha256,
                       bundle_sha256, built_at, event_count, trusted, findings, prev_id,
                       node, vantage)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id
"""

INSERT_EVENT = """
INSERT INTO events (at, kind, severity, pith_number, suffix, mirrors, summary, evidence,
                    dedup_key, snapshot_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_UNREAD = object()

# A vantage's series (?4; any, when NULL): its snapshots, and those of the vantages it
# is the heir of (`vantage_heirs`; '' stands for the snapshots of no vantage).
_LATEST_BODY = """
SELECT id, body_sha256, trusted FROM snapshots WHERE suffix = ? AND mirror = ? AND kind = ?
  AND (?4 IS NULL OR coalesce(vantage, '') IN (
       SELECT ?4 UNION ALL SELECT vantage FROM vantage_heirs WHERE heir = ?4))
ORDER BY id DESC LIMIT 1
"""


def check_outcome(fetch: FetchOutcome) -> None:
    """Refuse a malformed outcome before any transaction starts (a bug in the caller):
    inside one, it would fail the other writes grouped with it."""
    for at in (fetch.fetched_at, fetch.next_due, *(event.at for event in fetch.events)):
        if at is not None and at.tzinfo is None:
            raise ValueError(f"naive datetime {at!r}: the store needs an aware (UTC) time")
    if fetch.body is not None and fetch.body_sha256 is not None:
        actual = sha256_hex(fetch.body)
        if actual != fetch.body_sha256:
            raise ValueError(f"body_sha256 {fetch.body_sha256} does not match the body ({actual})")


def bookkeeping_only(fetch: FetchOutcome) -> tuple[str, tuple[Any, ...]] | None:
    """The one statement a fetch that stores no body and no event writes (a 304, an
    unchanged body, a failure), or None when it writes more. One statement is atomic on
    its own: it needs no explicit transaction."""
    if fetch.body is not None or fetch.events or fetch.learned_keys:
        return None
    key = (fetch.suffix, fetch.mirror, fetch.kind)
    fetched_at, next_due = db_time(fetch.fetched_at), db_time_or_none(fetch.next_due)
    if fetch.error is not None:
        return _FAILURE, (
            *key,
            fetch.url,
            fetch.status,
            fetched_at,
            fetched_at,
            next_due,
            storable(fetch.error),  # it may quote what a mirror sent
            fetch.vantage or "",
        )
    return _SUCCESS, (
        *key,
        fetch.url,
        fetch.etag,
        fetch.last_modified,
        fetch.body_sha256,
        fetch.status,
        fetched_at,
        next_due,
        False,
        fetch.vantage or "",
    )


def newest_of_series(conn: sqlite3.Connection, fetch: FetchOutcome) -> sqlite3.Row | None:
    """The newest snapshot of `fetch`'s series (suffix, mirror, kind, as its vantage
    sees it): id, body_sha256, trusted."""
    row: sqlite3.Row | None = conn.execute(
        _LATEST_BODY, (fetch.suffix, fetch.mirror, fetch.kind, fetch.vantage)
    ).fetchone()
    return row


def write_fetch(
    conn: sqlite3.Connection,
    fetch: FetchOutcome,
    blob: PackedBlob | None,
    latest: sqlite3.Row | object | None = _UNREAD,
) -> Snapshot | None:
    """Record `fetch` (whose body, if any, is `blob`) inside the caller's transaction.

    A plain function on the raw connection, run in the database thread as one call
    (`Session.call`): its half a dozen statements cost one thread hand-off, not one each.
    `latest`: `newest_of_series`, when the caller has read it.
    """
    key = (fetch.suffix, fetch.mirror, fetch.kind)
    fetched_at, next_due = db_time(fetch.fetched_at), db_time_or_none(fetch.next_due)
    snapshot: Snapshot | None = None
    link: int | None = None
    if fetch.error is not None:
        error = storable(fetch.error)
        conn.execute(
            _FAILURE,
            (
                *key,
                fetch.url,
                fetch.status,
                fetched_at,
                fetched_at,
                next_due,
                error,
                fetch.vantage or "",
            ),
        )
    else:
        if latest is _UNREAD:
            latest = newest_of_series(conn, fetch)
        assert latest is not _UNREAD
        latest = cast("sqlite3.Row | None", latest)
        # Events of an unchanged (or 304) fetch concern the body already archived.
        link = None if latest is None else latest["id"]
        if blob is not None:
            conn.execute(
                "INSERT INTO blobs (sha256, size, codec, base, depth, data)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (blob.sha256, blob.size, blob.codec, blob.base, blob.depth, blob.data),
            )
            if (
                latest is None
                or latest["body_sha256"] != blob.sha256
                # The same bytes judged anew, otherwise (the trust set changed).
                or bool(latest["trusted"]) != fetch.trusted
            ):
                snapshot = _insert_snapshot(conn, fetch, blob.sha256, link)
                link = snapshot.id
        conn.execute(
            _SUCCESS,
            (
                *key,
                fetch.url,
                fetch.etag,
                fetch.last_modified,
                blob.sha256 if blob is not None else fetch.body_sha256,
                fetch.status,
                fetched_at,
                next_due,
                blob is not None,
                fetch.vantage or "",
            ),
        )
    if fetch.events:
        conn.executemany(INSERT_EVENT, [event_params(e, fetch.suffix, link) for e in fetch.events])
    if fetch.trusted and blob is not None:
        # What the verified bundle says of its record, in the same transaction as the
        # snapshot: a crash can never leave a trusted body without them.
        if fetch.pith_number is not None:
            conn.execute(
                "UPDATE records SET pith_number = ? WHERE suffix = ?",
                (fetch.pith_number, fetch.suffix),
            )
        if fetch.learned_keys:
            conn.executemany(
                "INSERT INTO learned_keys (key_id, key_json, learned_at, mirror, body_sha256)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [
                    (k["key_id"], to_json_text(k), fetched_at, fetch.mirror, blob.sha256)
                    for k in fetch.learned_keys
                ],
            )
        if fetch.history is not None and fetch.pith_number is not None:
            events, claims = fetch.history
            conn.execute(
                "INSERT INTO histories (body_sha256, pith_number, events, claims)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    blob.sha256,
                    fetch.pith_number,
                    to_json_text(list(events)),
                    to_json_text([list(c) for c in claims]),
                ),
            )
    return snapshot


def event_params(event: NewEvent, suffix: str | None, snapshot_id: int | None) -> tuple[Any, ...]:
    return (
        db_time(event.at),
        event.kind,
        event.severity,
        event.pith_number,
        event.suffix if event.suffix is not None else suffix,
        to_json_text(list(event.mirrors)),
        event.summary,
        to_json_text(event.evidence),
        event.dedup_key,
        snapshot_id,
    )


def _insert_snapshot(
    conn: sqlite3.Connection, fetch: FetchOutcome, body_sha256: str, prev_id: int | None
) -> Snapshot:
    row = conn.execute(
        _INSERT_SNAPSHOT,
        (
            fetch.suffix,
            fetch.mirror,
            fetch.kind,
            db_time(fetch.fetched_at),
            fetch.url,
            fetch.status,
            body_sha256,
            fetch.bundle_sha256,
            fetch.built_at,
            fetch.event_count,
            int(fetch.trusted),
            to_json_text([f.to_json() for f in fetch.findings]),
            prev_id,
            fetch.node,
            fetch.vantage,
        ),
    ).fetchone()
    return snapshot_of(fetch, int(row[0]), body_sha256, prev_id)
