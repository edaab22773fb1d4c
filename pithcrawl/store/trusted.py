"""What the archive's trusted snapshots say, read back for those who rely on them.

Owns the reads behind serving verified bodies (`serve`), the history each trusted
bundle states and the records whose mirrors disagree (the divergence rules in
`conditions`), and the pages of trusted snapshots `fsck` re-verifies. It marks nothing
trusted: a snapshot is trusted only by the transaction that archived it (`fetches`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pithcrawl.errors import StoreCorrupt
from pithcrawl.store.connection import Database
from pithcrawl.store.rows import (
    Snapshot,
    decoding,
    snapshot_from_row,
    snapshot_or_damage,
    to_json_text,
)

# What `serve` hands out: the newest verified history. `built_at` is compared as a time
# (julianday reads RFC 3339 with `Z` and any fraction; text order would misplace a
# fraction), then the newest fetch, then the newest row.
# A body judged again and found untrusted (its key no longer trusted) is not served,
# whatever it was judged before.
_NEWEST_TRUSTED_BUNDLE = """
SELECT * FROM snapshots AS s WHERE s.suffix = ?1 AND s.kind = 'bundle' AND s.trusted = 1
  AND NOT EXISTS (
    SELECT 1 FROM snapshots AS later WHERE later.suffix = ?1 AND later.kind = 'bundle'
      AND later.body_sha256 = s.body_sha256 AND later.id > s.id AND later.trusted = 0
  )
ORDER BY julianday(s.built_at) DESC NULLS LAST, s.fetched_at DESC, s.id DESC LIMIT ?2
"""

# Of one vantage's series (as `fetches._LATEST_BODY` says it), or of every vantage's
# (?3 NULL).
_HIGHEST_TRUSTED_BUNDLE = """
SELECT * FROM snapshots WHERE suffix = ?1 AND mirror = ?2 AND kind = 'bundle' AND trusted = 1
  AND (?3 IS NULL OR coalesce(vantage, '') IN (
       SELECT ?3 UNION ALL SELECT vantage FROM vantage_heirs WHERE heir = ?3))
ORDER BY julianday(built_at) DESC NULLS LAST, id DESC LIMIT 1
"""

# `latest`: per mirror and vantage (two vantages served two bundles by one mirror differ),
# of the vantages crawling now (?2, a JSON list): one that stopped would otherwise hold
# every record that moved on since in every recheck. The snapshots of no vantage are the
# heir's (`vantage_heirs`).
_TO_RECHECK = """
WITH latest AS (
    SELECT suffix, mirror, max(id) AS id FROM (
        SELECT suffix, mirror, id, coalesce(h.heir, s.vantage) AS v
        FROM snapshots AS s LEFT JOIN vantage_heirs AS h ON h.vantage = coalesce(s.vantage, '')
        WHERE kind = 'bundle'
    ) AS tagged
    WHERE v IS NULL OR v IN (SELECT value FROM json_each(?2))
    GROUP BY suffix, mirror, v
),
candidates (suffix) AS (
    SELECT l.suffix FROM latest AS l JOIN snapshots AS s ON s.id = l.id WHERE s.trusted = 1
    GROUP BY l.suffix HAVING count(DISTINCT s.body_sha256) > 1
    UNION
    -- A mirror whose latest trusted bundle is not the newest one archived lags, even when
    -- every mirror now serves the same bytes (the newest came from one that went back).
    SELECT l.suffix FROM latest AS l JOIN snapshots AS s ON s.id = l.id
    WHERE s.trusted = 1 AND s.body_sha256 != (
        SELECT n.body_sha256 FROM snapshots AS n
        WHERE n.suffix = l.suffix AND n.kind = 'bundle' AND n.trusted = 1
        ORDER BY julianday(n.built_at) DESC NULLS LAST, n.fetched_at DESC, n.id DESC LIMIT 1
    )
    UNION
    SELECT suffix FROM alerts WHERE closed_at IS NULL AND scope LIKE 'record:%'
    UNION
    -- A pass stopped (or a worker killed) before the rules ran after its new snapshots.
    SELECT suffix FROM rules_due
)
SELECT suffix FROM candidates WHERE ?1 = 0 OR suffix IN (SELECT suffix FROM records)
"""

_TRUSTED_STATES = """
SELECT * FROM snapshots WHERE suffix = ? AND kind = 'state' AND trusted = 1
ORDER BY fetched_at DESC, id DESC LIMIT ?
"""


#: What a trusted bundle says of its record: (Pith Number, event ids, claimed places).
History = tuple[str, tuple[str, ...], tuple[tuple[str, str, str], ...]]

_BUNDLES_OF = "SELECT * FROM snapshots WHERE suffix = ? AND kind = 'bundle' ORDER BY id"
_HISTORIES = "SELECT * FROM histories WHERE body_sha256 IN (SELECT value FROM json_each(?))"


_CONFIRMED = """
SELECT mirror, vantage, body_sha256, last_success_at FROM fetch_state
WHERE suffix = ? AND kind = 'bundle' AND vantage <> ''
"""

#: (body_sha256, last_success_at) of each (mirror, vantage)'s bundle bookkeeping.
Confirmed = dict[tuple[str, str], tuple[str | None, datetime | None]]


@dataclass(frozen=True, slots=True)
class BundleView:
    """What the divergence rules read of one record: its bundle snapshots from every
    mirror, oldest first, and the histories known of its trusted bodies; once several
    vantages fetched it, the body each (mirror, vantage) last saw and when."""

    snapshots: list[Snapshot]
    histories: dict[str, History]
    confirmed: Confirmed = field(default_factory=dict)
    heirs: dict[str, str] = field(default_factory=dict)
    """The vantage whose series each vantage's snapshots continue (`vantage_heirs`; ''
    for the snapshots of no vantage), when it is another."""

    def vantage_of(self, snap: Snapshot) -> str | None:
        """The vantage whose series `snap` is of."""
        return self.heirs.get(snap.vantage or "", snap.vantage)


def bundle_view(
    conn: sqlite3.Connection, suffix: str, known: Mapping[str, History] | None = None
) -> BundleView:
    """`suffix`'s `BundleView`, in the database thread (`Session.call`): one hand-off.
    `known`: histories the caller holds already (those it just wrote), not read again."""
    snapshots = [snapshot_from_row(r) for r in conn.execute(_BUNDLES_OF, (suffix,))]
    known = known or {}
    bodies = sorted({snap.body_sha256 for snap in snapshots if snap.trusted} - known.keys())
    histories = _histories_in(conn, bodies)
    histories.update((sha, h) for sha, h in known.items() if sha not in histories)
    confirmed: Confirmed = {}
    heirs: dict[str, str] = {}
    if len({snap.vantage for snap in snapshots}) > 1:
        heirs = {r[0]: r[1] for r in conn.execute("SELECT vantage, heir FROM vantage_heirs")}
    if len({heirs.get(s.vantage or "", s.vantage) for s in snapshots} - {None}) > 1:
        for r in conn.execute(_CONFIRMED, (suffix,)):
            with decoding(f"the fetch_state of {suffix}"):
                at = None if r[3] is None else datetime.fromisoformat(r[3])
            confirmed[(r[0], r[1])] = (r[2], at)
    return BundleView(snapshots, histories, confirmed, heirs)


def _histories_in(conn: sqlite3.Connection, bodies: Sequence[str]) -> dict[str, History]:
    rows = conn.execute(_HISTORIES, (to_json_text(list(bodies)),)).fetchall() if bodies else []
    return {
        r["body_sha256"]: (
            r["pith_number"],
            tuple(json.loads(r["events"])),
            tuple((c[0], c[1], c[2]) for c in json.loads(r["claims"])),
        )
        for r in rows
    }


class Trusted:
    """The trusted snapshots of one archive (`Store.trusted`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- what readers are served ------------------------------------------------------------

    async def newest_bundle(self, suffix: str) -> Snapshot | None:
        """The trusted bundle snapshot of a record with the newest `built_at` (then the
        newest fetch) across every mirror, tracked or not; None if none is trusted."""
        found = await self.newest_bundles(suffix, limit=1)
        return found[0] if found else None

    async def newest_bundles(self, suffix: str, *, limit: int) -> list[Snapshot]:
        """`newest_bundle` and the ones after it in that order, `limit` at most."""
        async with self._db.read("find the newest trusted bundles") as s:
            rows = await s.all(_NEWEST_TRUSTED_BUNDLE, (suffix, limit))
        return [snapshot_from_row(r) for r in rows]

    async def highest_bundles(
        self, suffix: str, mirror: str, vantage: str
    ) -> tuple[Snapshot | None, Snapshot | None]:
        """The trusted bundles with the newest `built_at` a mirror ever served for a
        record, to `vantage` (what it must not go back from there) and to any vantage
        (what its news is told against)."""
        async with self._db.read("find the highest trusted bundles") as s:
            own = await s.one(_HIGHEST_TRUSTED_BUNDLE, (suffix, mirror, vantage))
            anyone = await s.one(_HIGHEST_TRUSTED_BUNDLE, (suffix, mirror, None))
        return (
            None if own is None else snapshot_from_row(own),
            None if anyone is None else snapshot_from_row(anyone),
        )

    async def states(self, suffix: str, *, limit: int = 32) -> list[Snapshot]:
        """A record's trusted state.json snapshots across every mirror, newest fetch first."""
        async with self._db.read("list trusted states") as s:
            rows = await s.all(_TRUSTED_STATES, (suffix, limit))
        return [snapshot_from_row(r) for r in rows]

    async def record_count(self) -> int:
        """How many records have at least one trusted bundle snapshot."""
        async with self._db.read("count trusted records") as s:
            row = await s.one(
                "SELECT count(DISTINCT suffix) FROM snapshots WHERE kind = 'bundle' AND trusted = 1"
            )
        return 0 if row is None else int(row[0])

    # -- histories (for the divergence rules) ---------------------------------------------

    async def put_history(
        self,
        body_sha256: str,
        pith_number: str,
        events: Sequence[str],
        claims: Sequence[Sequence[str]],
    ) -> None:
        """Remember what a trusted bundle body says of its record's history."""
        async with self._db.write("save a history") as s:
            await s.run(
                "INSERT INTO histories (body_sha256, pith_number, events, claims)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    body_sha256,
                    pith_number,
                    to_json_text(list(events)),
                    to_json_text([list(c) for c in claims]),
                ),
            )

    async def histories(self, bodies: Sequence[str]) -> dict[str, History]:
        """(pith_number, event ids, claims) of the given trusted bodies that are known."""
        async with self._db.read("read histories") as s:
            return await s.call(_histories_in, bodies)

    async def bundle_view(self, suffix: str) -> BundleView:
        """What the divergence rules read of a record (`BundleView`), in one read."""
        async with self._db.read("read a record's bundles") as s:
            return await s.call(bundle_view, suffix)

    async def records_to_recheck(
        self, *, tracked: bool = False, vantages: Sequence[str] = ()
    ) -> list[str]:
        """Records whose mirrors now serve different trusted bodies (to any two of
        `vantages`, the vantages crawling now), that have open record alerts, or whose
        rules are still due after new snapshots (`Store.record_fetches`'s `due`): where
        the divergence rules may change their mind.
        Only tracked ones when `tracked` (a record named to `sync` need not be)."""
        async with self._db.read("list records to recheck") as s:
            rows = await s.all(_TO_RECHECK, (tracked, to_json_text(list(vantages))))
        return [r[0] for r in rows]

    async def snapshots(
        self, *, after_id: int = 0, limit: int = 500
    ) -> list[tuple[int, Snapshot | StoreCorrupt]]:
        """Trusted snapshots in id order, a page at a time, for `fsck` (a damaged row is
        its error, in its place, for fsck to report and go on)."""
        async with self._db.read("list trusted snapshots") as s:
            rows = await s.all(
                "SELECT * FROM snapshots WHERE trusted = 1 AND id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
        return [snapshot_or_damage(r) for r in rows]
