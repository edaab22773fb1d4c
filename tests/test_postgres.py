"""What only a PostgreSQL archive has to get right: a NUL that its text cannot hold, the
schema an archive lives in, roles without the rights, passwords in URLs, and a hostile
document through a real pass. (Everything else runs on both backends elsewhere.)

A real cluster (`tests/postgres.py`), real signed bundles on a loopback mirror.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import psycopg
import pytest
from builder import BundleBuilder, TestSigner, canonical_record
from conftest import REAL_SUFFIX, write_config
from mirror import TestMirror
from postgres import Cluster, raw, shown

from pithcrawl.cli import main
from pithcrawl.errors import StoreCorrupt, StoreError, StoreLocked
from pithcrawl.findings import finding
from pithcrawl.location import PgUrl, redacted
from pithcrawl.store import FetchOutcome, NewEvent, Store

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

pytestmark = pytest.mark.anyio


def _outcome(findings: list, **kw: object) -> FetchOutcome:
    fields: dict[str, object] = {
        "suffix": REAL_SUFFIX,
        "mirror": "m",
        "kind": "bundle",
        "url": f"http://127.0.0.1:9/pith/{REAL_SUFFIX}/bundle.json",
        "fetched_at": NOW,
        "status": 200,
        "body": b'{"not": "verified"}',
        "next_due": NOW + timedelta(hours=1),
        "trusted": False,
        "findings": tuple(findings),
    }
    fields.update(kw)
    return FetchOutcome(**fields)  # type: ignore[arg-type]


async def test_what_a_hostile_document_says_is_kept_however_it_spells_nul(
    archive_at: Path | PgUrl,
) -> None:
    """A finding quoting a key with a NUL in it (JSON `\\u0000`, which PostgreSQL's jsonb
    refuses), an event's evidence holding one, and raw NUL in a text column (which
    PostgreSQL's text cannot hold): all archived, on both backends; the checks and
    `fsck`'s shape queries read them back."""
    bad = finding("schema_invalid", "/state/x\x00y", "unknown field 'x\x00y'")
    event = NewEvent(
        kind="event_added",
        severity="info",
        at=NOW,
        pith_number=None,
        mirrors=("m",),
        summary="a summary with \x00 in it",
        evidence={"quoted": "x\x00y"},
    )
    async with await Store.open(archive_at, exclusive=True) as store:
        await store.watchlist.track([REAL_SUFFIX], NOW)
        snapshot = await store.record_fetch(_outcome([bad], events=[event]))
        assert snapshot is not None and not snapshot.trusted
        [kept] = await store.snapshots(REAL_SUFFIX)
        assert kept.findings[0].path == "/state/x\x00y"  # JSON keeps the character itself
        [logged] = await store.events()
        assert logged.evidence == {"quoted": "x\x00y"}
        if isinstance(archive_at, PgUrl):  # raw NUL in text: a visible escape there
            assert logged.summary == "a summary with \\x00 in it"
        else:
            assert logged.summary == "a summary with \x00 in it"
        assert await store.maintenance.malformed_rows() == []


@pytest.fixture
def cluster_url(pg_cluster: Cluster) -> str:
    return pg_cluster.url()


async def test_a_schema_that_does_not_exist_is_named_not_a_traceback(cluster_url: str) -> None:
    url = f"{cluster_url}&options=-csearch_path%3Dnot_made_yet"
    with pytest.raises(StoreError, match=r"create the schema first \(CREATE SCHEMA"):
        await Store.open(url)
    with pytest.raises(StoreError, match="create the schema first"):
        await Store.open(url, readonly=True)


async def test_an_archive_behind_an_empty_schema_is_refused_not_crawled_unlocked(
    pg_cluster: Cluster,
) -> None:
    """The lock is the archive's schema's: with an empty schema first on the search_path
    a second crawler would take another lock and write the same tables."""
    archive = pg_cluster.archive()
    schema = archive.url.rpartition("%3D")[2]
    async with await Store.open(archive, exclusive=True):
        with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA empty_first")
        around = PgUrl(f"{pg_cluster.url()}&options=-csearch_path%3Dempty_first,{schema}")
        with pytest.raises(StoreError, match=f"keeps its archive in schema '{schema}'"):
            await Store.open(around, exclusive=True)
        with pytest.raises(StoreLocked):
            await Store.open(archive, exclusive=True)


async def test_a_role_without_the_rights_is_told_what_it_needs(pg_cluster: Cluster) -> None:
    archive = pg_cluster.archive()
    schema = archive.url.rpartition("%3D")[2]
    async with await Store.open(archive) as store:
        await store.watchlist.track([REAL_SUFFIX], NOW)
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute("CREATE ROLE weak LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO weak")
    as_weak = PgUrl(archive.url.replace("user=postgres", "user=weak"))
    with pytest.raises(StoreError, match="needs USAGE on it and SELECT on its tables"):
        await Store.open(as_weak, readonly=True)
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA theirs")
        conn.execute("GRANT USAGE ON SCHEMA theirs TO weak")
    new = PgUrl(f"{pg_cluster.url().replace('user=postgres', 'user=weak')}")
    new = PgUrl(new.url + "&options=-csearch_path%3Dtheirs")
    with pytest.raises(StoreError, match="CREATE on it to make a new archive there"):
        await Store.open(new)


async def test_a_schema_of_the_search_path_the_role_may_not_use_is_told_not_skipped(
    pg_cluster: Cluster,
) -> None:
    """PostgreSQL leaves a schema the role may not use out of its search_path without a
    word: the archive in it would look missing, and a new one would be made behind it."""
    archive = pg_cluster.archive()
    schema = archive.url.rpartition("%3D")[2]
    async with await Store.open(archive) as store:
        await store.watchlist.track([REAL_SUFFIX], NOW)
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute("CREATE ROLE nousage LOGIN")
        conn.execute("CREATE SCHEMA nousage AUTHORIZATION nousage")
    base = pg_cluster.url().replace("user=postgres", "user=nousage")
    for path in (schema, f"{schema},nousage"):
        with pytest.raises(StoreError, match=f"a schema '{schema}' on its search_path"):
            await Store.open(PgUrl(f"{base}&options=-csearch_path%3D{path}"))
    with raw(PgUrl(pg_cluster.url(schema="nousage"))) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'nousage'")
        assert tables.fetchone()[0] == 0  # no second archive made behind the first


async def test_a_database_set_to_the_old_string_escapes_reads_the_archive_alike(
    pg_cluster: Cluster,
) -> None:
    archive = pg_cluster.archive()
    old = PgUrl(archive.url + "%20-cstandard_conforming_strings%3Doff")
    bad = finding("schema_invalid", "/x\x00", "quoting \x00")
    async with await Store.open(old, exclusive=True) as store:
        await store.watchlist.track([REAL_SUFFIX], NOW)
        assert await store.record_fetch(_outcome([bad])) is not None
        assert await store.maintenance.malformed_rows() == []


async def test_a_table_of_the_same_name_that_is_not_ours_is_refused(pg_cluster: Cluster) -> None:
    archive = pg_cluster.archive()
    with raw(archive) as conn:
        conn.execute("CREATE TABLE pithcrawl_schema (a integer)")
    with pytest.raises(StoreCorrupt, match="a table pithcrawl_schema that pithcrawl did not make"):
        await Store.open(archive, readonly=True)


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://u:hunter2@db.example/pith", "hunter2"),
        ("postgresql://u:hun?ter2@db.example/pith", "ter2"),
        ("postgresql://u:hun#ter2@db.example/pith", "hun"),
        ("postgresql://u@db.example/pith?password=hunter2&sslmode=require", "hunter2"),
        ("postgresql://u@db.example/pith?pass%77ord=hunter2", "hunter2"),
        ("postgresql://u@db.example/pith?%70assword=hunter2", "hunter2"),
        ("postgresql://u@db.example/pith?sslpassword=hunter2", "hunter2"),
        ("postgresql://u@db.example/pith?sslmode=require&password =hunter2", "hunter2"),
        ("postgresql://u@db.example/pith?sslmode=require& password=hunter2", "hunter2"),
        ("postgresql://u@db.example/pith?dbname=pith&password=hun%20ter2", "ter2"),
    ],
)
def test_a_password_is_never_printed_however_the_url_holds_it(url: str, secret: str) -> None:
    shown = redacted(url)
    assert secret not in shown and "***" in shown
    assert shown.startswith("postgresql://u") and "db.example" in shown


def test_a_password_in_a_url_no_server_answers_is_not_in_the_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = "postgresql://postgres:hun#ter2@127.0.0.1:9/pith?connect_timeout=2"
    assert main(["--db", url, "status"]) == 3
    err = capsys.readouterr().err
    assert "cannot connect to database postgresql://postgres:***@127.0.0.1:9/pith" in err
    assert "hun" not in err.replace("***", "") and "Traceback" not in err


def test_migrating_an_archive_into_itself_under_another_spelling_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], pg_cluster: Cluster
) -> None:
    archive = pg_cluster.archive()
    schema = archive.url.rpartition("%3D")[2]
    anyio.run(_track, archive)
    respelled = f"postgresql:///pithcrawl?options=-csearch_path%3D{schema}&host={pg_cluster.dir}"
    respelled += "&user=postgres"
    assert main(["--db", archive.url, "migrate", "--to", respelled]) == 2
    assert "is the archive being copied" in capsys.readouterr().err


async def _track(where: Path | PgUrl) -> None:
    async with await Store.open(where) as store:
        await store.watchlist.track([REAL_SUFFIX], NOW)


def test_a_document_quoting_nul_costs_its_pair_alone_on_postgresql(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
    pg_cluster: Cluster,
) -> None:
    """One mirror serves a record whose embedded state has a key with a NUL in it: that
    document is refused with an alert; every other record is archived, pass after pass
    (it used to fail the whole write group, every pass, and end `run`)."""
    archive = pg_cluster.archive()
    builders = []
    for i in range(4):
        b = BundleBuilder(signer, record=canonical_record(f"2611.{i:05d}", title=f"P{i}"))
        b.add_event()
        builders.append(b)
        if i == 0:
            doc = b.build()
            doc["state"]["x\x00y"] = 1
            mirror.put(json.dumps(doc).encode())
        else:
            mirror.put(b.bytes())
    cfg = write_config(tmp_path, signer, mirror.base_url, db=archive)
    assert main(["--config", str(cfg), "-q", "track", *(b.pith_number for b in builders)]) == 0
    for _ in range(2):
        capsys.readouterr()
        code = main(["--config", str(cfg), "-q", "sync", "--json"])
        summary = json.loads(capsys.readouterr().out)
        assert (code, summary["alerts_open"]) == (1, 1), summary
    with raw(archive) as conn:
        trusted = conn.execute("SELECT count(*) FROM snapshots WHERE trusted = 1").fetchone()[0]
    assert trusted == 2 * 3
    assert main(["--config", str(cfg), "-q", "fsck", "--json"]) == 0
    assert shown(archive) == archive.url


def test_raw_nul_in_a_sqlite_archive_is_copied_as_an_escape_and_said(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pg_cluster: Cluster
) -> None:
    """SQLite's text may hold NUL (an archive written by hand, or before NUL was kept as
    an escape); PostgreSQL's cannot: the copy keeps the escape `\\x00` and says how
    many values it changed."""
    source = tmp_path / "source.db"
    anyio.run(_track, source)
    with raw(source) as conn:
        conn.execute("UPDATE records SET added_at = added_at, pith_number = ?", ("a\x00b",))
    target = pg_cluster.archive()
    capsys.readouterr()
    assert main(["--db", str(source), "-q", "migrate", "--to", target.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nul_escaped"] == 1
    with raw(target) as conn:
        assert conn.execute("SELECT pith_number FROM records").fetchone()[0] == "a\\x00b"


def test_every_schema_version_has_its_postgresql_migration() -> None:
    """A new SQLite migration without its PostgreSQL twin would leave every PostgreSQL
    archive refused by the pithcrawl that brings it."""
    from pithcrawl.store import SCHEMA_VERSION
    from pithcrawl.store.postgres_schema import BASE_VERSION, MIGRATIONS

    assert set(MIGRATIONS) == set(range(BASE_VERSION + 1, SCHEMA_VERSION + 1))


async def test_a_reader_connects_again_after_the_server_restarts(pg_cluster: Cluster) -> None:
    """`serve` and the reports hold a read-only connection for as long as they run: a
    server restarted under them (an upgrade, a failover) costs no more than the moment
    it was down. A writer's transaction cannot be run again: it stops (exit 3) and
    systemd starts it anew."""
    archive = pg_cluster.archive()
    async with await Store.open(archive) as store:
        await store.watchlist.track([REAL_SUFFIX], NOW)
    async with (
        await Store.open(archive, readonly=True) as reader,
        await Store.open(archive) as writer,
    ):
        assert await reader.watchlist.tracked_count() == 1
        await anyio.to_thread.run_sync(pg_cluster.restart)
        assert await reader.watchlist.tracked_count() == 1
        with pytest.raises(StoreError, match="cannot"):
            await writer.watchlist.track(["A" * 26], NOW)


async def test_a_writer_stuck_holding_the_turn_fails_the_next_one_in_time_saying_so(
    pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As SQLite's busy timeout: a writer waits a while for another's write turn, then
    fails with what happened, never hangs behind a stuck one."""
    from pithcrawl.store import postgres
    from pithcrawl.store.dialect import WRITE_LOCK

    monkeypatch.setattr(postgres, "BUSY_TIMEOUT_MS", 300)
    archive = pg_cluster.archive()
    async with await Store.open(archive) as store:
        with psycopg.connect(archive.url, autocommit=True) as stuck:
            stuck.execute("BEGIN")
            stuck.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK}, hashtext(current_schema()))")
            with pytest.raises(StoreError, match="stayed locked by another pithcrawl"):
                await store.watchlist.track([REAL_SUFFIX], NOW)
            stuck.execute("ROLLBACK")
        await store.watchlist.track([REAL_SUFFIX], NOW)
        assert await store.watchlist.tracked_count() == 1


async def test_a_read_at_a_groups_end_that_fails_fails_alone_and_the_writes_commit(
    pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a failing statement aborts its transaction, and COMMIT then answers
    ROLLBACK without an error: a read queued for the end of a write group that waited
    too long for a lock used to lose the whole group while it was reported written."""
    from pithcrawl.store import postgres

    monkeypatch.setattr(postgres, "BUSY_TIMEOUT_MS", 300)
    archive = pg_cluster.archive()
    async with await Store.open(archive) as store:
        with psycopg.connect(archive.url, autocommit=True) as other:
            other.execute("BEGIN")
            other.execute("LOCK TABLE histories IN ACCESS EXCLUSIVE MODE")
            async with store._db.write("track, then read the histories") as s:
                await s.run(
                    "INSERT INTO records (suffix, added_at) VALUES (?, ?)",
                    (REAL_SUFFIX, "2026-11-27T12:00:00.000000Z"),
                )
                later = s.at_commit(
                    lambda conn: conn.execute("SELECT count(*) FROM histories").fetchone()
                )
            other.execute("ROLLBACK")
        with pytest.raises(StoreError, match="stayed locked"):
            _ = later.value
        assert await store.watchlist.tracked_count() == 1  # the write is there


async def test_a_transaction_a_statement_of_which_failed_is_never_reported_written(
    pg_cluster: Cluster,
) -> None:
    archive = pg_cluster.archive()
    async with await Store.open(archive) as store:

        async def swallowing() -> None:
            async with store._db.write("a write that swallowed an error") as s:
                await s.run(
                    "INSERT INTO records (suffix, added_at) VALUES (?, ?)",
                    (REAL_SUFFIX, "2026-11-27T12:00:00.000000Z"),
                )
                with contextlib.suppress(Exception):
                    await s.run("SELECT no_such_column FROM records")

        with pytest.raises(StoreError, match="rolled back at its commit"):
            await swallowing()
        assert await store.watchlist.tracked_count() == 0
        await store.watchlist.track([REAL_SUFFIX], NOW)  # and the next write works
        assert await store.watchlist.tracked_count() == 1


async def test_a_readers_batch_connects_again_after_the_server_restarts(
    pg_cluster: Cluster, real_bundle_bytes: bytes
) -> None:
    archive = pg_cluster.archive()
    async with await Store.open(archive) as store:
        await store.watchlist.track([REAL_SUFFIX], NOW)
        snapshot = await store.record_fetch(_outcome([], body=real_bundle_bytes))
        assert snapshot is not None
    async with await Store.open(archive, readonly=True) as reader:
        assert await reader.get_blob(snapshot.body_sha256) == real_bundle_bytes
        await anyio.to_thread.run_sync(pg_cluster.restart)
        assert await reader.get_blob(snapshot.body_sha256) == real_bundle_bytes


async def test_nodes_of_other_names_share_the_archive_one_process_a_name(
    pg_cluster: Cluster,
) -> None:
    """Crawling nodes of other names open the archive together; a second process of one
    name is refused, naming the node and its holder; `migrate` (no node) has it alone,
    refused while any node crawls and refusing every node while it copies."""
    archive = pg_cluster.archive()
    async with (
        await Store.open(archive, exclusive=True, node="a") as a,
        await Store.open(archive, exclusive=True, node="b"),
    ):
        with pytest.raises(StoreLocked, match=r"crawling .* as node a \(pithcrawl pid"):
            await Store.open(archive, exclusive=True, node="a")
        with pytest.raises(StoreLocked):  # (by this very process, it says)
            await Store.open(archive, exclusive=True)
        await a.watchlist.track([REAL_SUFFIX], NOW)  # both write, taking turns
    async with await Store.open(archive, exclusive=True):
        with pytest.raises(StoreLocked, match=r"has .* to itself"):
            await Store.open(archive, exclusive=True, node="a")
    # Every lock was let go of with its connection.
    async with await Store.open(archive, exclusive=True, node="a"):
        pass


@pytest.mark.parametrize("db", ["postgresq://x/pith", "postgresql+psycopg:///pith", "http://x/"])
def test_a_url_of_another_scheme_is_refused_not_taken_for_a_file(
    db: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as argparse_exit:
        main(["--db", db, "track", f"pith:2026:{REAL_SUFFIX}"])
    assert argparse_exit.value.code == 2
    assert "an archive is a file path, or a postgresql://" in capsys.readouterr().err
    cfg = tmp_path / "pithcrawl.toml"
    cfg.write_text(f"db = {json.dumps(db)}\n")
    assert main(["--config", str(cfg), "status"]) == 2
    assert "db: " in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [cfg]  # nothing made of it


def test_naming_a_database_role_or_archive_that_is_not_there_is_the_operators_to_fix(
    capsys: pytest.CaptureFixture[str], pg_cluster: Cluster
) -> None:
    """Exit 2 (a configuration to fix, which systemd does not restart), not 3: an empty
    schema for a command that reads, a database or a role the server does not have."""
    empty = pg_cluster.archive()
    assert main(["--db", empty.url, "status"]) == 2
    assert "holds no pithcrawl archive; run `pithcrawl sync` first" in capsys.readouterr().err
    base = pg_cluster.url()
    for wrong in (
        base.replace("/pithcrawl?", "/nosuchdb?"),
        base.replace("user=postgres", "user=nosuchrole"),
    ):
        assert main(["--db", wrong, "status"]) == 2
        err = capsys.readouterr().err
        assert "does not exist" in err and "Traceback" not in err


async def test_a_node_stalled_in_a_write_costs_the_others_a_wait_not_their_crawl(
    pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process stopped while its write transaction holds the archive's write lock (a
    SIGSTOP, a paused machine, a network cut): the server ends its session before the
    other writers' lock timeout, and they write on."""
    from pithcrawl.store import postgres
    from pithcrawl.store.dialect import begin

    monkeypatch.setattr(postgres, "BUSY_TIMEOUT_MS", 4000)
    monkeypatch.setattr(postgres, "IDLE_IN_TRANSACTION_MS", 1000)
    archive = pg_cluster.archive()
    async with await Store.open(archive) as store:
        stalled = postgres._connect(archive.url, False, False)
        try:
            stalled._conn.execute(begin(stalled.schema_key))  # and then nothing
            await store.watchlist.track([REAL_SUFFIX], NOW)
            assert await store.watchlist.tracked_count() == 1
        finally:
            stalled.close()


def _contents(where: PgUrl) -> tuple[dict[str, list[tuple]], list[tuple]]:
    """Every table's rows and every sequence's state in `where`'s schema."""
    schema = where.url.rsplit("search_path%3D", 1)[1]
    with psycopg.connect(where.url, autocommit=True) as conn:
        tables = [
            t
            for (t,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", [schema]
            )
        ]
        rows = {t: sorted(map(tuple, conn.execute(f"SELECT * FROM {t}")), key=repr) for t in tables}
        sequences = conn.execute(
            "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = %s ORDER BY 1",
            [schema],
        ).fetchall()
    return rows, [tuple(s) for s in sequences]


async def test_a_schema_lent_again_holds_what_a_new_archive_holds(pg_cluster: Cluster) -> None:
    """The tests' archives are lent and taken back (`Cluster.lend`): one taken back after
    a test wrote to it is lent again holding exactly what a new archive holds, rows and
    sequences; one whose tables a test changed, or still in use, is not."""
    new = pg_cluster.archive()
    await (await Store.open(new)).close()
    lent = pg_cluster.lend()
    store = await Store.open(lent)
    try:
        await store.record_fetch(_outcome([finding("schema_invalid", "/x", "no")]))
        await store.watchlist.track([REAL_SUFFIX], now=NOW)
    finally:
        await store.close()
    written, _ = _contents(lent)
    assert written["snapshots"] and written["records"]
    pg_cluster.give_back(lent)
    again = pg_cluster.lend()
    assert again == lent
    assert _contents(again) == _contents(new)

    with raw(again) as conn:
        conn.execute("ALTER TABLE records ADD COLUMN extra TEXT")
    pg_cluster.give_back(again)
    assert pg_cluster.lend() != again  # changed: a new schema instead
    busy = pg_cluster.lend()
    await (await Store.open(busy)).close()
    with psycopg.connect(pg_cluster.url()):
        pg_cluster.give_back(busy)  # someone is still connected
    assert pg_cluster.lend() != busy
