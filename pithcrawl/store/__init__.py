"""pithcrawl's archive: every fetched body and what it meant, in one SQLite file or one
PostgreSQL database (schema).

The package is the only place that speaks SQL or sees a database's error (it raises
`StoreError` and its subclasses). Its queries are written once; what differs between the
two databases is said in `dialect`. Modules, by responsibility:

- `archive`: `Store`, the typed async API, and its queries;
- `fetches`: what recording one fetch writes, inside `record_fetch`'s transaction;
- `trusted`: what trusted snapshots say, read back for serving, divergence and `fsck`;
- `watchlist`: the tracked records and the mirrors they are polled from;
- `connection`: the one connection of a process: turns, transactions with group commit,
  deferred bookkeeping;
- `sqlite`: opening, pragmas, migrations, and the wording of sqlite3 errors;
- `postgres`: opening a PostgreSQL archive (psycopg in the database thread), its locks,
  creating its schema, and the wording of its errors;
- `dialect`: the SQL of the store's queries as PostgreSQL reads it, and SQLite's
  functions for it;
- `lock`: the writers' lock file (SQLite);
- `schema`: the numbered migrations; `postgres_schema`: the same schema for PostgreSQL;
- `copy`: copying a whole archive into another (`migrate`);
- `rows`: the values going in and out;
- `blobs`: the zstd codec (whole or delta frames) and the sha256 check of bodies;
- `bodies`: the `blobs` table: choosing a delta's base, following bases on reads;
- `alerts`: open and closed alerts, held open while they clear;
- `deliveries`: what each sink has taken of them, and what is due;
- `maintenance`: integrity, damaged rows, counts, moving times when the clock steps.

It decides nothing about trust, changes or scheduling: those are stored as given.
"""

from __future__ import annotations

from pithcrawl.entries import NewEvent
from pithcrawl.store.alerts import SINKS, Alert, AlertBook, Reconciled
from pithcrawl.store.archive import Store
from pithcrawl.store.deliveries import Delivery, DeliveryBook
from pithcrawl.store.rows import (
    KINDS,
    ORIGINS,
    EventRow,
    FetchOutcome,
    FetchState,
    Mirror,
    Record,
    Recorded,
    Snapshot,
)
from pithcrawl.store.schema import SCHEMA_VERSION

__all__ = [
    "KINDS",
    "ORIGINS",
    "SCHEMA_VERSION",
    "SINKS",
    "Alert",
    "AlertBook",
    "Delivery",
    "DeliveryBook",
    "EventRow",
    "FetchOutcome",
    "FetchState",
    "Mirror",
    "NewEvent",
    "Reconciled",
    "Record",
    "Recorded",
    "Snapshot",
    "Store",
]
