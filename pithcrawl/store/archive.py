"""`Store`: the archive's typed API, and the queries behind it.

Owns what is kept and how it is read back: per-fetch bookkeeping, snapshots with their
blobs, and the event log. `record_fetch` stores one fetch's blob, snapshot, bookkeeping
and events in one `BEGIN IMMEDIATE` transaction, so a crash or a cancel leaves all of it
or none. It does not decide anything: whether a body is trusted, what changed, which
events to raise and when to fetch next are the caller's (`crawl`'s) results, stored here
as given. The writes of one fetch live in `fetches`; the reads of what trusted snapshots
say, in `trusted`; the tracked records and the mirrors, in `watchlist`.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from pithcrawl.entries import NewEvent
from pithcrawl.errors import LeaseLost, StoreError
from pithcrawl.location import PgUrl, Where, locate
from pithcrawl.store.alerts import AlertBook, Reconciled
from pithcrawl.store.blobs import PackedBlob
from pithcrawl.store.bodies import Bodies
from pithcrawl.store.browse import Browse
from pithcrawl.store.connection import Database, Later, Session
from pithcrawl.store.deliveries import DeliveryBook
from pithcrawl.store.fetches import (
    INSERT_EVENT,
    bookkeeping_only,
    check_outcome,
    event_params,
    newest_of_series,
    write_fetch,
)
from pithcrawl.store.leases import HOLDS, LEASED, Leases
from pithcrawl.store.maintenance import Maintenance
from pithcrawl.store.nodes import Nodes
from pithcrawl.store.rows import (
    EventRow,
    FetchOutcome,
    FetchState,
    Recorded,
    Snapshot,
    db_time,
    decoding,
    event_from_row,
    fetch_state_from_row,
    normalize_time,
    snapshot_from_row,
    to_json_text,
)
from pithcrawl.store.trusted import BundleView, History, Trusted, bundle_view
from pithcrawl.store.watchlist import Watchlist

_LATEST = """
SELECT * FROM snapshots
WHERE suffix = ? AND mirror = ? AND kind = ? AND (?4 IS NULL OR trusted = ?4)
ORDER BY id DESC LIMIT 1
"""

# Every tracked record × known mirror whose bundle is due from a vantage, and that no
# node of it holds a running lease on (`leases`); never fetched (from it) first.
_DUE = """
SELECT r.suffix, m.name, coalesce(f.next_due, r.added_at)
FROM records AS r CROSS JOIN mirrors AS m
LEFT JOIN fetch_state AS f ON f.suffix = r.suffix AND f.mirror = m.name AND f.kind = 'bundle'
  AND f.vantage = ?5
WHERE (f.next_due IS NULL OR f.next_due <= ?1)
  AND (?2 IS NULL OR m.name IN (SELECT value FROM json_each(?2)))
  AND NOT EXISTS (SELECT 1 FROM leases AS l WHERE l.suffix = r.suffix AND l.mirror = m.name
                  AND l.vantage = ?5 AND l.expires > ?1)
ORDER BY f.suffix IS NOT NULL, f.next_due NULLS FIRST, r.added_at, r.suffix, m.name
LIMIT ?4
"""

# A pair leased to a node is due for the others when its lease expires (its node died),
# whether it was ever fetched or not.
_NEXT_DUE = """
SELECT min(t) FROM (
    SELECT CASE WHEN l.expires > f.next_due THEN l.expires ELSE f.next_due END AS t
    FROM fetch_state AS f JOIN records AS r ON r.suffix = f.suffix
    LEFT JOIN leases AS l ON l.suffix = f.suffix AND l.mirror = f.mirror
      AND l.vantage = f.vantage
    WHERE f.vantage = ?2 AND f.kind = 'bundle'
      AND f.mirror IN (SELECT value FROM json_each(?1))
    UNION ALL
    SELECT l.expires AS t FROM leases AS l JOIN records AS r ON r.suffix = l.suffix
    WHERE l.vantage = ?2 AND l.mirror IN (SELECT value FROM json_each(?1))
) AS times
"""

# Times are stored as text that sorts as time (`rows.db_time`): min and max compare them.
_COUNT_HOUR = """
INSERT INTO mirror_hours (mirror, hour, fetches, changed, failures, untrusted)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (mirror, hour) DO UPDATE SET fetches = mirror_hours.fetches + excluded.fetches,
    changed = mirror_hours.changed + excluded.changed,
    failures = mirror_hours.failures + excluded.failures,
    untrusted = mirror_hours.untrusted + excluded.untrusted
"""

# One pass over fetch_state for the sums, one over its failing rows for each mirror's
# latest error (a subquery per mirror read the table once per mirror: 258 s at 256 mirrors
# of 2,000 records).
# Of the vantages crawling now (?1, a JSON list; NULL: all): one that stopped would show
# its last failure forever.
_MIRROR_SUMMARIES = """
SELECT f.mirror, count(DISTINCT f.suffix), max(f.last_success_at),
       max(CASE WHEN f.failures > 0 THEN f.last_fetch_at END), max(f.failures),
       min(f.next_due)
FROM fetch_state AS f
WHERE ?1 IS NULL OR f.vantage = '' OR f.vantage IN (SELECT value FROM json_each(?1))
GROUP BY f.mirror ORDER BY f.mirror
"""
_LATEST_ERRORS = """
SELECT mirror, last_error FROM (
    SELECT mirror, last_error,
           row_number() OVER (PARTITION BY mirror ORDER BY last_fetch_at DESC NULLS LAST) AS n
    FROM fetch_state WHERE failures > 0
      AND (?1 IS NULL OR vantage = '' OR vantage IN (SELECT value FROM json_each(?1)))
) AS latest WHERE n = 1
"""

# With the verdict on the body it last saw, so a 304 needs no second read.
_FETCH_STATE = """
SELECT f.*, (
    SELECT s.trusted FROM snapshots AS s
    WHERE s.suffix = f.suffix AND s.mirror = f.mirror AND s.kind = f.kind
      AND s.body_sha256 = f.body_sha256
    ORDER BY s.id DESC LIMIT 1
) AS body_trusted
FROM fetch_state AS f WHERE f.suffix = ? AND f.mirror = ? AND f.kind = ? AND f.vantage = ?
"""

_FETCH_STATES_OF = """
SELECT f.*, (
    SELECT s.trusted FROM snapshots AS s
    WHERE s.suffix = f.suffix AND s.mirror = f.mirror AND s.kind = f.kind
      AND s.body_sha256 = f.body_sha256
    ORDER BY s.id DESC LIMIT 1
) AS body_trusted
FROM fetch_state AS f WHERE f.suffix IN (SELECT value FROM json_each(?)) AND f.vantage = ?
"""


_SERVED_TRUSTED = """
SELECT DISTINCT suffix, mirror FROM snapshots
WHERE suffix IN (SELECT value FROM json_each(?)) AND kind = 'bundle' AND trusted = 1
"""


class Written(NamedTuple):
    """What `Store.record_fetches` did."""

    fetches: list[tuple[Snapshot | None, Reconciled | None]]
    """For each fetch: its new snapshot, and what its alerts did (None: no scope)."""
    view: Later[BundleView] | None
    """The record's bundles as the write's group committed them, when asked for and a
    bundle was new (its `value` raises `StoreCorrupt` if the read met damage)."""


def _histories_written(
    fetches: Sequence[FetchOutcome], done: Sequence[tuple[Snapshot | None, PackedBlob | None]]
) -> dict[str, History]:
    """The histories of the trusted bundles just written, by body (as `histories` keeps
    them)."""
    out: dict[str, History] = {}
    for fetch, (_, blob) in zip(fetches, done, strict=True):
        if fetch.trusted and blob is not None and fetch.history and fetch.pith_number:
            events, claims = fetch.history
            out[blob.sha256] = (
                fetch.pith_number,
                tuple(events),
                tuple((c[0], c[1], c[2]) for c in claims),
            )
    return out


def _as_stored(conn: sqlite3.Connection, blob: PackedBlob) -> PackedBlob:
    """`blob` with the base and depth of its row as stored: when the body was archived
    already (another mirror, another process), the row kept is the first one, whose
    chain may be deeper than the one just packed; a delta stood on the packed one would
    be deeper than `MAX_DEPTH` allows."""
    row = conn.execute("SELECT base, depth FROM blobs WHERE sha256 = ?", (blob.sha256,)).fetchone()
    if row is None or (row[0], int(row[1])) == (blob.base, blob.depth):
        return blob
    return dataclasses.replace(blob, base=row[0], depth=int(row[1]))


async def _adopt_alerts(s: Session, vantage: str) -> None:
    """The open alerts about one mirror's documents from before vantages were kept (scope
    `document:S:M`) become `vantage`'s: their scopes and dedup keys (`judge.Fetched`),
    with the alerts of the same keys before them and the log entries naming them, so
    every entry still finds its alert (`AlertBook.of_entries`)."""
    for kind in ("document", "state"):
        scope = f"{kind}:"
        # Not where `vantage` has an open alert of that key already (one open per key).
        keys = (
            "(SELECT a.dedup_key FROM alerts AS a WHERE a.closed_at IS NULL"
            " AND substr(a.scope, 1, ?2) = ?3 AND NOT EXISTS (SELECT 1 FROM alerts AS b"
            " WHERE b.closed_at IS NULL AND b.dedup_key = a.dedup_key || '@' || ?1))"
        )
        for table in ("events", "alerts"):
            await s.run(
                f"UPDATE {table} SET dedup_key = dedup_key || '@' || ?1"  # noqa: S608
                f" WHERE dedup_key IN {keys}",
                (vantage, len(scope), scope),
            )
        # The scopes of the alerts whose keys moved (one whose key the vantage held
        # already keeps its scope).
        await s.run(
            "UPDATE alerts SET scope = ?1 || substr(scope, ?2)"
            " WHERE closed_at IS NULL AND substr(scope, 1, ?3) = ?4"
            " AND substr(dedup_key, length(dedup_key) - ?5 + 1) = ?6",
            (
                f"{kind}@{vantage}:",
                len(scope) + 1,
                len(scope),
                scope,
                len(vantage) + 1,
                f"@{vantage}",
            ),
        )


#: The setting an unfinished copy leaves in its target (`store.copy`): the source it is
#: of. `Store.open` refuses such a target (unless the copy itself opens it).
UNFINISHED = "migrate.copying_from"


class Store:
    """The archive (a SQLite file or a PostgreSQL database): one connection, the single
    writer of its process."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.alerts = AlertBook(db)
        """Open and closed alerts (`store.alerts`)."""
        self.deliveries = DeliveryBook(db)
        """What each sink has taken of them, and what is due (`store.deliveries`)."""
        self.bodies = Bodies(db)
        """The archived bodies (`blobs`), stored as deltas where that pays."""
        self.trusted = Trusted(db)
        """What the trusted snapshots say: served bodies, histories (`store.trusted`)."""
        self.watchlist = Watchlist(db)
        """The tracked records and the mirrors they are polled from (`store.watchlist`)."""
        self.maintenance = Maintenance(db)
        """Integrity, damaged rows, counts, clock steps (`store.maintenance`)."""
        self.nodes = Nodes(db)
        """The nodes crawling the archive, and when each was seen (`store.nodes`)."""
        self.leases = Leases(db)
        """Which node of a vantage is fetching which pair now (`store.leases`)."""
        self.browse = Browse(db)
        """Pages of records and alerts, mirrors' lag, for the status pages (`store.browse`)."""

    @classmethod
    async def open(
        cls,
        path: Path | str | PgUrl,
        *,
        exclusive: bool = False,
        readonly: bool = False,
        unfinished: bool = False,
        node: str | None = None,
    ) -> Store:
        """Open (creating and migrating as needed) the archive at `path`: a SQLite file,
        or a PostgreSQL database (a `PgUrl`, or a str that is a libpq URL).

        `exclusive` takes the writers' lock (`StoreLocked` if another process holds it):
        every command that crawls takes it, as `node` (on PostgreSQL, the nodes of other
        names share the archive; None: nobody else may write it). `readonly` opens with
        SQLite's `mode=ro`, never creates or migrates, and refuses every write.
        """
        where = locate(path) if isinstance(path, str) else path
        db = await Database.open(where, exclusive=exclusive, readonly=readonly, node=node)
        store = cls(db)
        if not unfinished:
            try:
                source = await store.setting(UNFINISHED)
            except BaseException:
                await store.close()
                raise
            if source is not None:
                await store.close()
                raise StoreError(
                    f"{where} holds an unfinished copy of {source} (pithcrawl migrate was"
                    " interrupted, or failed): run `pithcrawl migrate --to` it again from"
                    " that archive to complete it"
                )
        return store

    @property
    def path(self) -> Where:
        """Where the archive is: its file, or its database's URL (printed without a
        password)."""
        return self._db.path

    def check_file(self) -> None:
        """`StoreError` if the archive's file was deleted or replaced since it was opened."""
        self._db.check_file()

    async def adopt_unplaced(self, vantage: str) -> int:
        """The fetch bookkeeping kept before vantages were (vantage ''), and the scopes of
        the open alerts about its documents, become `vantage`'s: the first node to crawl
        the archive after the upgrade continues their series. How many rows it took
        (after the first time, none: one look into an empty partial index)."""
        async with self._db.write("adopt the bookkeeping of no vantage") as s:
            taken = await s.run(
                "UPDATE fetch_state SET vantage = ?1 WHERE vantage = '' AND NOT EXISTS ("
                "SELECT 1 FROM fetch_state AS o WHERE o.suffix = fetch_state.suffix"
                " AND o.mirror = fetch_state.mirror AND o.kind = fetch_state.kind"
                " AND o.vantage = ?1)",
                (vantage,),
            )
            if not taken:
                return 0
            # Rows of a pair the vantage already had a row of (written by a caller that
            # named no vantage): its own stay.
            await s.run("DELETE FROM fetch_state WHERE vantage = ''")
            # The snapshots of no vantage continue its series (the first adopter's).
            await s.run(
                "INSERT INTO vantage_heirs (vantage, heir) VALUES ('', ?) ON CONFLICT DO NOTHING",
                (vantage,),
            )
            await _adopt_alerts(s, vantage)
            return taken

    async def rules_due(self) -> list[str]:
        """The records whose rules a pass left due (see `record_fetches`' `due`)."""
        async with self._db.read("list the records whose rules are due") as s:
            rows = await s.all("SELECT suffix FROM rules_due ORDER BY since, suffix")
        return [r[0] for r in rows]

    async def rules_ran(self, suffix: str) -> None:
        """The rules across `suffix`'s mirrors ran: they are not due any more (written with
        the pass's other bookkeeping; lost in a crash, they only run once more)."""
        if self._db.defer("DELETE FROM rules_due WHERE suffix = ?", (suffix,)):
            await self._db.flush()

    async def flush(self) -> None:
        """Write the fetch bookkeeping still deferred (every read does this first)."""
        await self._db.flush()

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- keys learned from rotations -------------------------------------------------------

    async def learned_keys(self) -> list[dict[str, Any]]:
        async with self._db.read("list learned keys") as s:
            rows = await s.all("SELECT key_json FROM learned_keys ORDER BY learned_at, key_id")
        return [json.loads(r[0]) for r in rows]

    async def learned_keys_with_vouchers(self) -> list[tuple[dict[str, Any], str, datetime]]:
        """Each learned key, with the sha256 of the bundle that announced it and when
        that was fetched, in the order they were learned."""
        async with self._db.read("list learned keys") as s:
            rows = await s.all(
                "SELECT key_json, body_sha256, learned_at FROM learned_keys"
                " ORDER BY learned_at, key_id"
            )
        with decoding("a learned_keys row"):
            return [(json.loads(r[0]), str(r[1]), datetime.fromisoformat(r[2])) for r in rows]

    # -- fetch bookkeeping ----------------------------------------------------------------

    async def fetch_state(
        self, suffix: str, mirror: str, kind: str, *, vantage: str = ""
    ) -> FetchState | None:
        """The bookkeeping of one document as `vantage` polls it."""
        async with self._db.read("read fetch state") as s:
            row = await s.one(_FETCH_STATE, (suffix, mirror, kind, vantage))
        return None if row is None else fetch_state_from_row(row)

    async def fetch_states(self, *, suffix: str | None = None) -> list[FetchState]:
        """All bookkeeping rows (of one record if `suffix`)."""
        async with self._db.read("read fetch state") as s:
            rows = await s.all(
                "SELECT * FROM fetch_state WHERE ?1 IS NULL OR suffix = ?1"
                " ORDER BY suffix, mirror, kind",
                (suffix,),
            )
        return [fetch_state_from_row(r) for r in rows]

    async def mirror_summaries(
        self, *, vantages: Sequence[str] | None = None
    ) -> list[MirrorSummary]:
        """Each mirror's bookkeeping summed over its (record, kind) rows, for `status`:
        one row a mirror however many records are tracked. Only as `vantages` poll it,
        when given (the vantages crawling now)."""
        live = None if vantages is None else to_json_text(list(vantages))
        async with self._db.read("sum up fetch state") as s:
            rows = await s.all(_MIRROR_SUMMARIES, (live,))
            errors: dict[str, str | None] = {
                r[0]: r[1] for r in await s.all(_LATEST_ERRORS, (live,))
            }
        summaries = []
        for r in rows:
            with decoding(f"the fetch_state rows of mirror {r[0]!r}"):
                summaries.append(
                    MirrorSummary(
                        r[0], r[1], _at(r[2]), _at(r[3]), r[4], errors.get(r[0]), _at(r[5])
                    )
                )
        return summaries

    async def fetch_states_of(
        self, suffixes: Sequence[str], *, vantage: str = ""
    ) -> dict[tuple[str, str, str], FetchState]:
        """The bookkeeping of these records as `vantage` polls them, every mirror and
        kind, in one read (a pass reads a chunk of records at a time instead of one row
        per fetch)."""
        async with self._db.read("read fetch states") as s:
            rows = await s.all(_FETCH_STATES_OF, (to_json_text(list(suffixes)), vantage))
        return {(r["suffix"], r["mirror"], r["kind"]): fetch_state_from_row(r) for r in rows}

    async def served_trusted(self, suffixes: Sequence[str]) -> set[tuple[str, str]]:
        """The (suffix, mirror) pairs of these records that ever served a trusted
        bundle, in one read: the others have no history to compare a new bundle with."""
        async with self._db.read("find the mirrors that served trusted bundles") as s:
            rows = await s.all(_SERVED_TRUSTED, (to_json_text(list(suffixes)),))
        return {(r[0], r[1]) for r in rows}

    async def due(
        self,
        now: datetime,
        limit: int | None = None,
        *,
        mirrors: Sequence[str] | None = None,
        vantage: str = "",
    ) -> list[Due]:
        """(suffix, mirror, since) of the pairs whose bundle is due from `vantage` at
        `now`: never fetched first, then by `next_due`; only of `mirrors` when given (the
        mirrors crawled now)."""
        names = None if mirrors is None else to_json_text(list(mirrors))
        args = (db_time(now), names, None, 2**62 if limit is None else limit, vantage)
        async with self._db.read("list due fetches") as s:
            rows = await s.all(_DUE, args)
        with decoding("a fetch_state row's next_due"):
            return [Due(r[0], r[1], datetime.fromisoformat(r[2])) for r in rows]

    async def next_due(self, mirrors: Sequence[str], *, vantage: str = "") -> datetime | None:
        """The earliest time a tracked record's bundle is due from one of `mirrors`, to
        `vantage`."""
        async with self._db.read("find the next due fetch") as s:
            rows = await s.all(_NEXT_DUE, (to_json_text(list(mirrors)), vantage))
        text = rows[0][0] if rows else None
        with decoding("a fetch_state row's next_due"):
            return None if text is None else datetime.fromisoformat(text)

    async def record_fetch(self, fetch: FetchOutcome) -> Snapshot | None:
        """Store one fetch in one transaction (blob, snapshot if the body changed,
        bookkeeping, events): all of it or, after any error or cancel, none of it.

        Returns the new snapshot, or None when the body is unchanged, not modified (304)
        or the fetch failed.
        """
        [(snapshot, _)] = (await self.record_fetches([Recorded(fetch)])).fetches
        return snapshot

    async def record_fetches(
        self,
        fetches: Sequence[Recorded],
        *,
        sinks: Sequence[str] = (),
        hold: timedelta = timedelta(0),
        view: str | None = None,
        due: bool = False,
    ) -> Written:
        """`record_fetch` for several fetches (a pair's bundle and state.json), each with
        the alerts of its `scope` reconciled with its conditions (see
        `AlertBook.reconcile`) when it has one: all in one transaction, its fetches
        written in one hand-off to the database thread. A crash never leaves a body
        archived without the alert it raises.

        `view`: a record whose `BundleView` to read when the writes archived a new bundle
        snapshot (what the divergence rules read next): as the write's group commits it,
        after every block of the group (see `Database`: a later block may archive a newer
        snapshot of the same record from another mirror), with no hand-off of its own.
        `due`: the record's rules are not run right after this write (its other mirrors'
        pairs are still to end): a new snapshot marks them due in the same transaction
        (`rules_ran` clears it), so a pass stopped before they run leaves them for the
        next check across records, not undone."""
        for item in fetches:
            check_outcome(item.outcome)
        lease = LEASED.get()
        if lease is None and all(item.scope is None for item in fetches):
            singles = [bookkeeping_only(item.outcome) for item in fetches]
            if all(single is not None for single in singles):
                # Bookkeeping only (304s, unchanged bodies, failures): written with others.
                full = [self._db.defer(*single) for single in singles if single is not None]
                if self._count(fetches) or any(full):
                    await self._db.flush()
                return Written([(None, None)] * len(fetches), None)
        prepared = [await self.bodies.pack_large(item.outcome) for item in fetches]
        results: list[tuple[Snapshot | None, Reconciled | None]] = []
        first = fetches[0].outcome
        async with self._db.write("record fetches") as s:
            # Under a lease (`run`'s nodes): only while it is this node's.
            held = lease is None or await s.one(HOLDS, (first.suffix, first.mirror, *lease))
            if held:
                outcomes = [i.outcome for i in fetches]
                marks = fetches[0].outcome.suffix if due else None
                done_all = await s.call(self._write_fetches, outcomes, prepared, due=marks)
                bundles = None
                if view is not None and any(s and s.kind == "bundle" for s, _ in done_all):
                    bundles = s.at_commit(bundle_view, view, _histories_written(outcomes, done_all))
                for item, (snapshot, _) in zip(fetches, done_all, strict=True):
                    done = None
                    if item.scope is not None:
                        done = await self.alerts.reconcile_in(
                            s,
                            item.scope,
                            item.current,
                            now=item.outcome.fetched_at,
                            sinks=sinks,
                            hold=hold,
                            log=False,
                        )
                    results.append((snapshot, done))
        if not held:
            raise LeaseLost(
                f"{first.suffix} from {first.mirror}: its lease is another node's now;"
                " what this node fetched of it is not written"
            )
        for item, (_, blob) in zip(fetches, done_all, strict=True):
            # A body that failed verification is evidence, not a likely base: a hostile
            # mirror's junk takes no room at hand.
            if blob is not None and item.outcome.body is not None and item.outcome.trusted:
                self.bodies.remember(blob, item.outcome.body)
        if self._count(fetches, [snapshot is not None for snapshot, _ in done_all]):
            await self._db.flush()
        return Written(results, bundles)

    def _count(self, fetches: Sequence[Recorded], changed: Sequence[bool] = ()) -> bool:
        """Count these fetches (`changed`: which archived a new body) in their mirror's
        hour, one row per mirror and hour, with the deferred bookkeeping; True when that
        queue is full."""
        rows: dict[tuple[str, str], list[int]] = {}
        for i, item in enumerate(fetches):
            out = item.outcome
            hour = out.fetched_at.astimezone(UTC).strftime("%Y-%m-%dT%H")
            row = rows.setdefault((out.mirror, hour), [0, 0, 0, 0])
            row[0] += 1
            row[1] += i < len(changed) and changed[i]
            row[2] += out.error is not None
            row[3] += out.body is not None and not out.trusted
        full = False
        for (mirror, hour), (n, new, failed, untrusted) in rows.items():
            full = self._db.defer(_COUNT_HOUR, (mirror, hour, n, new, failed, untrusted)) or full
        return full

    def _write_fetches(
        self,
        conn: sqlite3.Connection,
        fetches: Sequence[FetchOutcome],
        prepared: Sequence[PackedBlob | None],
        *,
        due: str | None = None,
    ) -> list[tuple[Snapshot | None, PackedBlob | None]]:
        """`_write_fetch` of each, in order: one call in the database thread. Each body
        stored is at hand as a base for the next (a state.json is stored against its
        bundle), without reading it back. `due`: a record whose rules a new snapshot
        marks due (`record_fetches`)."""
        done: list[tuple[Snapshot | None, PackedBlob | None]] = []
        at_hand: dict[str, tuple[PackedBlob, bytes]] = {}
        for i, (fetch, ready) in enumerate(zip(fetches, prepared, strict=True)):
            snapshot, blob = self._write_fetch(conn, fetch, ready, at_hand)
            if blob is not None and fetch.body is not None and i < len(fetches) - 1:
                at_hand[blob.sha256] = (_as_stored(conn, blob), fetch.body)  # for the next
            done.append((snapshot, blob))
        if due is not None and any(snapshot is not None for snapshot, _ in done):
            conn.execute(
                "INSERT INTO rules_due (suffix, since) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (due, db_time(fetches[0].fetched_at)),
            )
        return done

    def _write_fetch(
        self,
        conn: sqlite3.Connection,
        fetch: FetchOutcome,
        prepared: PackedBlob | None,
        at_hand: Mapping[str, tuple[PackedBlob, bytes]] | None = None,
    ) -> tuple[Snapshot | None, PackedBlob | None]:
        """Pack the body (unless `prepared` already is; the blobs just written `at_hand`
        as bases, not read back) and write the fetch, in the database thread."""
        if (
            prepared is not None
            and prepared.base is not None
            and not _has_blob(conn, prepared.base)
        ):
            # Its base was chosen in a read turn that saw a group since rolled back.
            prepared = None
        latest = None if fetch.error is not None else newest_of_series(conn, fetch)
        if prepared is None and fetch.body is not None:
            newest = None if latest is None else latest["body_sha256"]
            prepared = self.bodies.pack_in(conn, fetch, at_hand, newest)
        return write_fetch(conn, fetch, prepared, latest), prepared

    # -- snapshots and blobs ----------------------------------------------------------------

    async def latest_snapshot(
        self, suffix: str, mirror: str, kind: str, *, trusted: bool | None = None
    ) -> Snapshot | None:
        """The newest snapshot of a (record, mirror, kind), optionally of one trust."""
        async with self._db.read("read a snapshot") as s:
            row = await s.one(_LATEST, (suffix, mirror, kind, trusted))
        return None if row is None else snapshot_from_row(row)

    async def snapshots(
        self,
        suffix: str,
        *,
        mirror: str | None = None,
        kind: str = "bundle",
        vantage: str | None = None,
    ) -> list[Snapshot]:
        """A record's snapshots of one kind (from one mirror or all, fetched from one
        vantage or any), oldest first."""
        async with self._db.read("list snapshots") as s:
            rows = await s.all(
                "SELECT * FROM snapshots WHERE suffix = ?1 AND kind = ?2"
                " AND (?3 IS NULL OR mirror = ?3) AND (?4 IS NULL OR vantage = ?4) ORDER BY id",
                (suffix, kind, mirror, vantage),
            )
        return [snapshot_from_row(r) for r in rows]

    async def snapshots_of_bodies(self, suffix: str, bodies: Sequence[str]) -> list[Snapshot]:
        """A record's snapshots (of any kind, from any mirror) of these bodies, oldest
        first: found by body, so a record with a million snapshots costs what these
        bodies do."""
        async with self._db.read("find the snapshots of bodies") as s:
            rows = await s.all(
                "SELECT * FROM snapshots WHERE body_sha256 IN (SELECT value FROM json_each(?2))"
                " AND +suffix = ?1 ORDER BY id",  # `+`: by the body's index, not the record's
                (suffix, to_json_text(sorted(set(bodies)))),
            )
        return [snapshot_from_row(r) for r in rows]

    async def untrusted_count(self, suffix: str, mirror: str, kind: str, since: datetime) -> int:
        """How many bodies that failed verification were archived from `mirror` for this
        record and kind since `since`."""
        async with self._db.read("count untrusted snapshots") as s:
            row = await s.one(
                "SELECT count(*) FROM snapshots WHERE suffix = ? AND mirror = ? AND kind = ?"
                " AND trusted = 0 AND fetched_at >= ?",
                (suffix, mirror, kind, db_time(since)),
            )
        return 0 if row is None else int(row[0])

    async def snapshot(self, snapshot_id: int) -> Snapshot | None:
        async with self._db.read("read a snapshot") as s:
            row = await s.one("SELECT * FROM snapshots WHERE id = ?", (snapshot_id,))
        return None if row is None else snapshot_from_row(row)

    async def get_blob(self, sha256: str) -> bytes:
        """The exact bytes once fetched with this sha256 (`StoreCorrupt` if damaged)."""
        return await self.bodies.get(sha256)

    # -- events ---------------------------------------------------------------------------

    async def add_events(self, events: Sequence[NewEvent]) -> list[int]:
        """Append events in one transaction; their ids, in order."""
        params = [event_params(e, None, None) for e in events]
        ids: list[int] = []
        async with self._db.write("add events") as s:
            for p in params:
                row = await s.one(INSERT_EVENT + " RETURNING id", p)
                assert row is not None
                ids.append(int(row[0]))
        return ids

    async def events(
        self, *, since: datetime | str | None = None, kinds: Sequence[str] = ()
    ) -> list[EventRow]:
        """The event log in time order, from `since` (inclusive), of `kinds` if given."""
        since_text = None if since is None else normalize_time(since)
        async with self._db.read("read events") as s:
            rows = await s.all(
                "SELECT * FROM events WHERE (?1 IS NULL OR at >= ?1)"
                " AND (?2 = '[]' OR kind IN (SELECT value FROM json_each(?2)))"
                " ORDER BY at, id",
                (since_text, to_json_text(list(kinds))),
            )
        return [event_from_row(r) for r in rows]

    async def setting(self, name: str) -> str | None:
        async with self._db.read("read a setting") as s:
            row = await s.one("SELECT value FROM settings WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    async def set_setting(self, name: str, value: str) -> None:
        async with self._db.write("write a setting") as s:
            await s.run(
                "INSERT INTO settings (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    async def event_kinds(self, snapshot_ids: Sequence[int]) -> dict[int, list[str]]:
        """The kinds of the events linked to each of these snapshots, in log order."""
        async with self._db.read("read the events of snapshots") as s:
            rows = await s.all(
                "SELECT snapshot_id, kind FROM events"
                " WHERE snapshot_id IN (SELECT CAST(value AS INTEGER) FROM json_each(?))"
                " ORDER BY at, id",
                (to_json_text(list(snapshot_ids)),),
            )
        linked: dict[int, list[str]] = {}
        for snapshot_id, kind in rows:
            linked.setdefault(snapshot_id, []).append(kind)
        return linked

    async def newest_snapshot_id(self, suffix: str) -> int | None:
        """The id of a record's newest snapshot of any kind, mirror or trust: it changes
        whenever anything about the record is archived (a cheap freshness check)."""
        async with self._db.read("read the newest snapshot id") as s:
            row = await s.one("SELECT max(id) FROM snapshots WHERE suffix = ?", (suffix,))
        return None if row is None or row[0] is None else int(row[0])


class MirrorSummary(NamedTuple):
    """One mirror's fetch bookkeeping, summed (`Store.mirror_summaries`)."""

    mirror: str
    records: int
    last_success_at: datetime | None
    last_failure_at: datetime | None
    failures: int
    """The most consecutive failures of any of its (record, kind) pairs."""
    last_error: str | None
    """The error of its latest failed fetch."""
    next_due: datetime | None


class Due(NamedTuple):
    """A (record, mirror) pair whose bundle is due."""

    suffix: str
    mirror: str
    since: datetime
    """When it fell due (when the record was tracked, for a pair never fetched)."""


def _at(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _has_blob(conn: sqlite3.Connection, sha256: str) -> bool:
    return conn.execute("SELECT 1 FROM blobs WHERE sha256 = ?", (sha256,)).fetchone() is not None
