"""The archive's schema, as numbered migrations applied under `PRAGMA user_version`.

Owns the DDL and nothing else. Migration N (1-based) is `MIGRATIONS[N - 1]`; a database
at user_version N has had exactly the first N applied, each in its own transaction
(`store.connection` applies them). Append new migrations; never edit a shipped one.
"""

from __future__ import annotations

import sqlite3

# Times are RFC 3339 UTC text with microseconds (`format_timestamp`), so they sort as text.
# CHECKs hold the enumerations of the contract, so a bug in a caller fails loudly and
# atomically instead of archiving a row that later readers would misread.
_V1 = """
CREATE TABLE blobs (
    sha256  TEXT PRIMARY KEY CHECK (length(sha256) = 64),
    size    INTEGER NOT NULL CHECK (size >= 0),
    codec   TEXT NOT NULL CHECK (codec = 'zstd'),
    data    BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE records (
    suffix       TEXT PRIMARY KEY CHECK (length(suffix) = 26),
    pith_number  TEXT,
    added_at     TEXT NOT NULL
);

CREATE TABLE mirrors (
    name                TEXT PRIMARY KEY,
    base_url            TEXT NOT NULL,
    bundle_pattern      TEXT NOT NULL,
    state_pattern       TEXT NOT NULL,
    well_known_pattern  TEXT,
    origin              TEXT NOT NULL CHECK (origin IN ('config', 'manifest', 'discovered')),
    added_at            TEXT NOT NULL
);

CREATE TABLE fetch_state (
    suffix            TEXT NOT NULL,
    mirror            TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('bundle', 'state')),
    url               TEXT NOT NULL,
    etag              TEXT,
    last_modified     TEXT,
    body_sha256       TEXT,
    status            INTEGER,
    last_fetch_at     TEXT,
    last_success_at   TEXT,
    first_failure_at  TEXT,
    failures          INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    next_due          TEXT,
    last_error        TEXT,
    PRIMARY KEY (suffix, mirror, kind)
) WITHOUT ROWID;

CREATE INDEX fetch_state_due ON fetch_state (kind, next_due);

CREATE TABLE snapshots (
    id             INTEGER PRIMARY KEY,
    suffix         TEXT NOT NULL,
    mirror         TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('bundle', 'state')),
    fetched_at     TEXT NOT NULL,
    url            TEXT NOT NULL,
    status         INTEGER NOT NULL,
    body_sha256    TEXT NOT NULL REFERENCES blobs (sha256),
    bundle_sha256  TEXT,
    built_at       TEXT,
    event_count    INTEGER,
    trusted        INTEGER NOT NULL CHECK (trusted IN (0, 1)),
    findings       TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(findings)),
    prev_id        INTEGER REFERENCES snapshots (id),
    patch          TEXT CHECK (patch IS NULL OR json_valid(patch))
);

CREATE INDEX snapshots_series ON snapshots (suffix, mirror, kind, id);
CREATE INDEX snapshots_body ON snapshots (body_sha256);

CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    at           TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind <> ''),
    severity     TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    pith_number  TEXT,
    suffix       TEXT,
    mirrors      TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(mirrors)),
    summary      TEXT NOT NULL,
    evidence     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(evidence)),
    dedup_key    TEXT,
    snapshot_id  INTEGER REFERENCES snapshots (id)
);

CREATE INDEX events_at ON events (at);
CREATE INDEX events_kind ON events (kind, at);
CREATE INDEX events_dedup ON events (dedup_key);
"""

# Keys accepted because a fully verified bundle (signed by a trusted key) announced them,
# with `trust.follow_rotations` on; the body that announced each is kept as evidence.
_V2 = """
CREATE TABLE learned_keys (
    key_id            TEXT PRIMARY KEY,
    key_json          TEXT NOT NULL CHECK (json_valid(key_json)),
    learned_at        TEXT NOT NULL,
    mirror            TEXT NOT NULL,
    body_sha256       TEXT NOT NULL REFERENCES blobs (sha256)
);
"""

# Alerts: one open row per condition (dedup_key), closed when the condition clears, and
# its deliveries to each sink, opening and closing notice, retried until delivered.
_V3 = """
CREATE TABLE alerts (
    id          INTEGER PRIMARY KEY,
    dedup_key   TEXT NOT NULL,
    scope       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    severity    TEXT NOT NULL CHECK (severity IN ('critical', 'error', 'warning', 'info')),
    pith_number TEXT,
    suffix      TEXT,
    mirrors     TEXT NOT NULL CHECK (json_valid(mirrors)),
    summary     TEXT NOT NULL,
    evidence    TEXT NOT NULL CHECK (json_valid(evidence)),
    opened_at   TEXT NOT NULL,
    closed_at   TEXT
);
CREATE UNIQUE INDEX alerts_open_dedup ON alerts (dedup_key) WHERE closed_at IS NULL;
CREATE INDEX alerts_open_scope ON alerts (scope) WHERE closed_at IS NULL;
CREATE INDEX alerts_suffix ON alerts (suffix, closed_at);

CREATE TABLE deliveries (
    alert_id     INTEGER NOT NULL REFERENCES alerts (id),
    sink         TEXT NOT NULL CHECK (sink IN ('hook', 'webhook')),
    phase        TEXT NOT NULL CHECK (phase IN ('open', 'close')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt TEXT NOT NULL,
    delivered_at TEXT,
    last_error   TEXT,
    PRIMARY KEY (alert_id, sink, phase)
) WITHOUT ROWID;
CREATE INDEX deliveries_pending ON deliveries (next_attempt) WHERE delivered_at IS NULL;
"""

# What a trusted bundle body says of its record's history (its event ids and the places
# they claim), derived once so the divergence rules need not parse archived bodies.
_V4 = """
CREATE TABLE histories (
    body_sha256  TEXT PRIMARY KEY REFERENCES blobs (sha256),
    pith_number  TEXT NOT NULL,
    events       TEXT NOT NULL CHECK (json_valid(events)),
    claims       TEXT NOT NULL CHECK (json_valid(claims))
) WITHOUT ROWID;
"""

# Blobs become a rowid table (a WITHOUT ROWID row longer than ~1 KB spills into an overflow
# page of its own: most of a 4 KB page wasted per body) and may be stored as a zstd delta:
# `base` names the blob whose exact bytes were the frame's raw-content dictionary, and
# `depth` counts the bases under it (0: the frame stands alone). Writers keep depth at
# most `blobs.MAX_DEPTH`, so reading any body decompresses at most that many more frames.
# The rebuild is SQLite's documented one (new table, copy, drop, rename), run with foreign
# keys off and checked with `foreign_key_check` before the commit (`sqlite._migrate`).
# From this version on `snapshots.patch` is no longer written: `diff` and `history`
# compute patches from the archived bodies, which cost less to keep than the patches.
_V5 = """
CREATE TABLE blobs_v5 (
    id      INTEGER PRIMARY KEY,
    sha256  TEXT NOT NULL UNIQUE CHECK (length(sha256) = 64),
    size    INTEGER NOT NULL CHECK (size >= 0),
    codec   TEXT NOT NULL CHECK (codec = 'zstd'),
    base    TEXT REFERENCES blobs (sha256) CHECK (base IS NULL OR base <> sha256),
    depth   INTEGER NOT NULL DEFAULT 0 CHECK ((base IS NULL) = (depth = 0) AND depth >= 0),
    data    BLOB NOT NULL
);
INSERT INTO blobs_v5 (sha256, size, codec, data) SELECT sha256, size, codec, data FROM blobs;
DROP TABLE blobs;
ALTER TABLE blobs_v5 RENAME TO blobs;
"""

# The events of given snapshots (`history`) without reading the whole event log.
_V6 = """
CREATE INDEX events_snapshot ON events (snapshot_id) WHERE snapshot_id IS NOT NULL;
"""

# Facts about the archive as a whole, by name: the trust set its verdicts were last
# reached under (`trust_digest`), so a pass after a change of keys judges again.
_V7 = """
CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
"""

# The hold-down of alerts: an open alert whose condition is no longer reported is not
# closed at once but marked `cleared_at`, and closed once it has stayed clear for
# `alerts.resolve_after`; a condition that comes back before then keeps its alert open
# (`cleared_at` back to NULL) and counts one more `recurrences`: a flapping mirror is one
# alert, not one per flip.
_V8 = """
ALTER TABLE alerts ADD COLUMN cleared_at TEXT;
ALTER TABLE alerts ADD COLUMN recurrences INTEGER NOT NULL DEFAULT 0 CHECK (recurrences >= 0);
CREATE INDEX alerts_clearing ON alerts (cleared_at) WHERE closed_at IS NULL
    AND cleared_at IS NOT NULL;
"""

# Which node fetched a snapshot, and from which vantage (docs/scale-out.md): NULL for the
# snapshots archived before nodes were recorded. And the nodes that crawl the archive:
# when each started a pass or round first and last (`status` lists them).
_V9 = """
ALTER TABLE snapshots ADD COLUMN node TEXT;
ALTER TABLE snapshots ADD COLUMN vantage TEXT;
CREATE TABLE nodes (
    name        TEXT PRIMARY KEY,
    vantage     TEXT NOT NULL,
    first_seen  TEXT NOT NULL,
    last_seen   TEXT NOT NULL
) WITHOUT ROWID;
"""

# Records a pair archived something new of while the rules across the record's mirrors
# were still to run (they run once its last pair of the pass ends): written with the
# pair's snapshot, cleared once the rules ran. A pass stopped, or a worker killed, before
# they ran leaves the record here, and the next check across records runs them.
_V10 = """
CREATE TABLE rules_due (
    suffix  TEXT PRIMARY KEY,
    since   TEXT NOT NULL
) WITHOUT ROWID;
"""

# A hooks.d: `alerts.hook` naming a directory delivers to each executable in it as a
# sink of its own, `hook:NAME` (SQLite changes a CHECK only by rebuilding the table);
# each sink reads its own queue, so the pending deliveries are indexed by sink first.
_V11 = """
CREATE TABLE deliveries_v11 (
    alert_id     INTEGER NOT NULL REFERENCES alerts (id),
    sink         TEXT NOT NULL CHECK (sink IN ('hook', 'webhook') OR sink GLOB 'hook:?*'),
    phase        TEXT NOT NULL CHECK (phase IN ('open', 'close')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt TEXT NOT NULL,
    delivered_at TEXT,
    last_error   TEXT,
    PRIMARY KEY (alert_id, sink, phase)
) WITHOUT ROWID;
INSERT INTO deliveries_v11 SELECT alert_id, sink, phase, attempts, next_attempt,
    delivered_at, last_error FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_v11 RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (sink, next_attempt) WHERE delivered_at IS NULL;
"""

# What each mirror did, hour by hour (UTC), for the status pages' history of a mirror:
# documents fetched (answered or not), new bodies archived, failures, bodies that failed
# verification. Counted as fetches are recorded, written with the deferred bookkeeping:
# a process killed loses at most its last unwritten batch of counts, never a snapshot.
_V12 = """
CREATE TABLE mirror_hours (
    mirror     TEXT NOT NULL,
    hour       TEXT NOT NULL CHECK (length(hour) = 13),
    fetches    INTEGER NOT NULL DEFAULT 0 CHECK (fetches >= 0),
    changed    INTEGER NOT NULL DEFAULT 0 CHECK (changed >= 0),
    failures   INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    untrusted  INTEGER NOT NULL DEFAULT 0 CHECK (untrusted >= 0),
    PRIMARY KEY (mirror, hour)
) WITHOUT ROWID;
"""

# The fetch bookkeeping per vantage (docs/scale-out.md): each vantage polls every pair on
# its own schedule with its own validators, and its last success tells when it last saw
# the body it holds (the `vantage_split` rule). The rows from before are the vantage ''
# until the first node to crawl adopts them as its own (`Store.adopt_unplaced`), with the
# snapshots of no vantage (`vantage_heirs`: whose series a vantage's snapshots continue,
# '' standing for no vantage). And how often each node crawls (its `crawl.interval`: one
# that crawls every other day is not gone after a day).
_V13 = """
CREATE TABLE fetch_state_v13 (
    suffix            TEXT NOT NULL,
    mirror            TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('bundle', 'state')),
    vantage           TEXT NOT NULL DEFAULT '',
    url               TEXT NOT NULL,
    etag              TEXT,
    last_modified     TEXT,
    body_sha256       TEXT,
    status            INTEGER,
    last_fetch_at     TEXT,
    last_success_at   TEXT,
    first_failure_at  TEXT,
    failures          INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    next_due          TEXT,
    last_error        TEXT,
    PRIMARY KEY (suffix, mirror, kind, vantage)
) WITHOUT ROWID;
INSERT INTO fetch_state_v13 SELECT suffix, mirror, kind, '', url, etag, last_modified,
    body_sha256, status, last_fetch_at, last_success_at, first_failure_at, failures,
    next_due, last_error FROM fetch_state;
DROP TABLE fetch_state;
ALTER TABLE fetch_state_v13 RENAME TO fetch_state;
CREATE INDEX fetch_state_due ON fetch_state (kind, vantage, next_due);
CREATE INDEX fetch_state_unplaced ON fetch_state (suffix) WHERE vantage = '';
ALTER TABLE nodes ADD COLUMN interval_s INTEGER CHECK (interval_s IS NULL OR interval_s > 0);
CREATE TABLE vantage_heirs (
    vantage  TEXT PRIMARY KEY,
    heir     TEXT NOT NULL
) WITHOUT ROWID;
"""

# Work leased to the nodes of a vantage (docs/scale-out.md): a node takes a due pair
# (record, mirror) for its vantage until `expires`, and lets it go when its fetches are
# written; another node of the vantage takes it only once the lease expired (its node
# died mid-pair). One row a pair in flight: the table stays as small as the work.
_V14 = """
CREATE TABLE leases (
    suffix   TEXT NOT NULL,
    mirror   TEXT NOT NULL,
    vantage  TEXT NOT NULL,
    node     TEXT NOT NULL,
    expires  TEXT NOT NULL,
    PRIMARY KEY (suffix, mirror, vantage)
) WITHOUT ROWID;
CREATE INDEX leases_node ON leases (node);
"""

MIGRATIONS: tuple[str, ...] = (
    _V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9, _V10, _V11, _V12, _V13, _V14,
)  # fmt: skip
"""Migration scripts in order; the schema version is their count."""

SCHEMA_VERSION = len(MIGRATIONS)

TABLES = (
    "blobs",
    "records",
    "mirrors",
    "fetch_state",
    "snapshots",
    "events",
    "learned_keys",
    "alerts",
    "deliveries",
    "histories",
    "settings",
    "nodes",
    "rules_due",
    "mirror_hours",
    "vantage_heirs",
    "leases",
)
"""Every table, for `Store.stats`."""


def statements(script: str) -> list[str]:
    """Split a migration script into complete statements (sqlite's own tokenizer decides).

    `executescript` would commit before running, breaking one-transaction-per-migration,
    so each statement is executed on its own inside the migration's transaction.
    """
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement at the end of a migration: {buf.strip()!r}")
    return out
