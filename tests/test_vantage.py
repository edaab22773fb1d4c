"""Which node fetched a snapshot, and from which vantage: configured in `[node]`, bound
to `crawl.source_address`, recorded with every snapshot, shown and filtered by `history`.

A real loopback mirror that notes the address each request came from, a real archive,
bundles signed by the tests' key.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import anyio
import pytest
from builder import BundleBuilder, TestSigner, canonical_record
from conftest import NOW, write_config
from mirror import TestMirror
from postgres import raw

from pithcrawl.cli import main
from pithcrawl.config import host_name, parse_config
from pithcrawl.errors import ConfigError
from pithcrawl.keys import TrustSet
from pithcrawl.location import PgUrl
from pithcrawl.serve import Ui, serving
from pithcrawl.store import FetchOutcome, Mirror, Store
from pithcrawl.store.rows import db_time


def _config(  # noqa: PLR0917 (the tests name the options in order)
    tmp_path: Path,
    signer: TestSigner,
    base: str,
    crawl: str = "",
    node: str = "",
    db: Path | PgUrl | None = None,
) -> Path:
    cfg = write_config(tmp_path, signer, base, db=db)
    text = cfg.read_text().replace('timeout = "5s"\n', f'timeout = "5s"\n{crawl}', 1)
    cfg.write_text(text + (f"[node]\n{node}" if node else ""))
    return cfg


def _serve(mirror: TestMirror, signer: TestSigner, n: int) -> list[str]:
    suffixes = []
    for i in range(n):
        b = BundleBuilder(signer, record=canonical_record(f"2611.{i:05d}", title=f"P{i}"))
        b.add_event()
        suffixes.append(mirror.put(b.bytes()))
    return suffixes


def _synced(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
    db: Path | PgUrl | None = None,
) -> tuple[Path, list[str]]:
    """One record served and synced with the default `[node]`: its config and suffixes."""
    suffixes = _serve(mirror, signer, 1)
    cfg = _config(tmp_path, signer, mirror.base_url, db=db)
    assert main(["--config", str(cfg), "-q", "sync", *suffixes]) == 0
    capsys.readouterr()
    return cfg, suffixes


def _record(signer: TestSigner) -> BundleBuilder:
    """The record these tests watch, with one event."""
    b = BundleBuilder(signer, record=canonical_record("2611.00001", title="P"))
    b.add_event()
    return b


def _history(capsys: pytest.CaptureFixture[str], cfg: Path, suffix: str, *extra: str) -> dict:
    code = main(["--config", str(cfg), "-q", "history", suffix, "--json", *extra])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_every_snapshot_records_its_node_and_vantage_and_connections_leave_from_the_source(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    suffixes = _serve(mirror, signer, 3)
    cfg = _config(
        tmp_path,
        signer,
        mirror.base_url,
        crawl='source_address = "127.0.0.2"\n',
        node='name = "crawler-1"\nvantage = "eu-west"\n',
        db=archive_at,
    )
    code = main(["--config", str(cfg), "-q", "sync", *suffixes])
    capsys.readouterr()
    assert code == 0
    # Every request left from the configured address, none from the default one.
    assert set(mirror.peers) == {"127.0.0.2"}
    assert sum(mirror.peers.values()) == 2 * len(suffixes)
    with raw(archive_at) as db:
        rows = db.execute("SELECT kind, node, vantage FROM snapshots").fetchall()
    assert len(rows) == 2 * len(suffixes)
    assert {(node, vantage) for _, node, vantage in rows} == {("crawler-1", "eu-west")}

    shown = _history(capsys, cfg, suffixes[0])["snapshots"]
    assert [(s["node"], s["vantage"]) for s in shown] == [("crawler-1", "eu-west")]
    assert _history(capsys, cfg, suffixes[0], "--vantage", "eu-west")["snapshots"] == shown
    # A vantage no node crawled from is a usage error naming the ones there are.
    assert main(["--config", str(cfg), "history", suffixes[0], "--vantage", "EU-west"]) == 2
    err = capsys.readouterr().err
    assert "--vantage EU-west: no node crawled from that vantage (the archive's: eu-west;" in err


def test_a_node_is_named_after_its_host_by_default_and_its_vantage_after_itself(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    cfg, suffixes = _synced(capsys, tmp_path, signer, mirror, db=archive_at)
    assert set(mirror.peers) == {"127.0.0.1"}
    shown = _history(capsys, cfg, suffixes[0])["snapshots"]
    assert [(s["node"], s["vantage"]) for s in shown] == [(host_name(), host_name())]
    named = parse_config('[node]\nname = "n2"\n').node
    assert (named.node_name, named.vantage_name) == ("n2", "n2")


def test_snapshots_archived_before_nodes_were_recorded_show_none(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    cfg, suffixes = _synced(capsys, tmp_path, signer, mirror, db=archive_at)
    with raw(archive_at) as db:
        db.execute("UPDATE snapshots SET node = NULL, vantage = NULL")
    capsys.readouterr()
    shown = _history(capsys, cfg, suffixes[0])["snapshots"]
    assert [(s["node"], s["vantage"]) for s in shown] == [(None, None)]
    assert _history(capsys, cfg, suffixes[0], "--vantage", host_name())["snapshots"] == []


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[node]\nname = ""\n', "node.name"),
        ('[node]\nname = "two words"\n', "node.name"),
        ('[node]\nvantage = "-dash-first"\n', "node.vantage"),
        ('[node]\nvantage = "\\u001b[2Jforged"\n', "node.vantage"),
        ('[node]\nname = "' + "x" * 64 + '"\n', "node.name"),
        ('[node]\nzone = "a"\n', "node.zone"),
        ('[crawl]\nsource_address = "eth0"\n', "crawl.source_address"),
        ('[crawl]\nsource_address = "127.0.0.1:80"\n', "crawl.source_address"),
        ("[crawl]\nsource_address = 3\n", "crawl.source_address"),
        ('[crawl]\nsource_address = "fe80::1%eth0"\n', "crawl.source_address"),
        ('[crawl]\nsource_address = "::1%\\u0000"\n', "crawl.source_address"),
        ('[crawl]\nsource_address = "224.0.0.1"\n', "crawl.source_address"),
        ('[crawl]\nsource_address = "255.255.255.255"\n', "crawl.source_address"),
        ('[crawl]\nsource_address = "0.0.0.0"\n', "crawl.source_address"),
        ('[crawl]\nsource_address = "::"\n', "crawl.source_address"),
        ('[node]\nlease = "0s"\n', "node.lease"),
        ('[node]\nlease = "-5s"\n', "node.lease"),
        ("[node]\nlease = 60\n", "node.lease"),
        # Two fetches and the cut-short margin: 65 s with the default 30 s timeout.
        ('[node]\nlease = "64s"\n', "node.lease"),
        ('[crawl]\ntimeout = "2s"\n[node]\nlease = "4.4s"\n', "node.lease"),
    ],
)
def test_bad_node_settings_are_refused_naming_the_key(archive_at, toml: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}\b"):
        parse_config(toml)


def test_a_lease_holds_two_fetches_and_the_margin_and_defaults_to_five_timeouts() -> None:
    assert parse_config("").lease == timedelta(seconds=150)
    assert parse_config('[crawl]\ntimeout = "10s"\n').lease == timedelta(seconds=50)
    assert parse_config('[node]\nlease = "65s"\n').lease == timedelta(seconds=65)
    assert parse_config('[node]\nlease = "65s"\n').lease_margin == timedelta(seconds=5)
    short = parse_config('[crawl]\ntimeout = "2s"\n[node]\nlease = "4.5s"\n')
    assert short.lease_margin == timedelta(seconds=0.45)
    with pytest.raises(ConfigError, match=r"expected at least 65s with crawl.timeout 30s"):
        parse_config('[node]\nlease = "64s"\n')


def test_source_addresses_of_both_families_are_kept_in_their_canonical_form(
    archive_at,
) -> None:
    assert (
        parse_config('[crawl]\nsource_address = "127.0.0.2"\n').crawl.source_address == "127.0.0.2"
    )
    assert parse_config('[crawl]\nsource_address = "0:0::1"\n').crawl.source_address == "::1"
    assert parse_config("").crawl.source_address is None


def test_a_source_address_not_of_this_machine_stops_the_pass_before_any_fetch(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    suffixes = _serve(mirror, signer, 2)
    cfg = _config(
        tmp_path, signer, mirror.base_url, crawl='source_address = "192.0.2.1"\n', db=archive_at
    )
    assert main(["--config", str(cfg), "-q", "sync", *suffixes]) == 2
    err = capsys.readouterr().err
    assert "crawl.source_address: cannot send from 192.0.2.1" in err
    assert "Traceback" not in err
    assert not mirror.peers  # nothing was fetched


def test_verify_fetches_from_the_source_address_too(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    [suffix] = _serve(mirror, signer, 1)
    cfg = _config(
        tmp_path, signer, mirror.base_url, crawl='source_address = "127.0.0.3"\n', db=archive_at
    )
    url = f"{mirror.base_url}/pith/{suffix}/bundle.json"
    assert (
        main(["--config", str(cfg), "verify", url, "--key", str(tmp_path / "test.key.json")]) == 0
    )
    assert set(mirror.peers) == {"127.0.0.3"}


def test_a_mirror_of_the_other_family_fails_saying_why(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    """An IPv4 mirror, sent to from an IPv6 address: an error that names the cause and
    the setting, not aiohttp's "[None]"."""
    suffixes = _serve(mirror, signer, 1)
    cfg = _config(
        tmp_path, signer, mirror.base_url, crawl='source_address = "::1"\n', db=archive_at
    )
    assert main(["--config", str(cfg), "--log-format", "json", "-q", "sync", *suffixes]) == 3
    err = capsys.readouterr().err
    assert "[None]" not in err
    assert "sending from crawl.source_address ::1" in err


def test_status_lists_the_nodes_that_crawled_the_archive(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    """Two nodes take turns on one archive (on SQLite one at a time): `status` lists
    both, the one seen last first, each with the vantage it crawled from last."""
    suffixes = _serve(mirror, signer, 1)
    first = _config(
        tmp_path, signer, mirror.base_url, node='name = "n1"\nvantage = "eu"\n', db=archive_at
    )
    assert main(["--config", str(first), "-q", "sync", *suffixes]) == 0
    second = tmp_path / "second.toml"
    second.write_text(first.read_text().replace('name = "n1"', 'name = "n2"'))
    assert main(["--config", str(second), "-q", "sync", *suffixes]) == 0
    third = tmp_path / "third.toml"
    third.write_text(first.read_text().replace('vantage = "eu"', 'vantage = "us"'))
    assert main(["--config", str(third), "-q", "sync", *suffixes]) == 0
    capsys.readouterr()
    # n2 is fetching a pair (its lease runs for a minute); n1 died holding one that ran out.
    soon, past = (datetime.now(UTC) + timedelta(minutes=m) for m in (1, -1))
    with raw(archive_at) as conn:
        conn.executemany(
            "INSERT INTO leases (suffix, mirror, vantage, node, expires) VALUES (?, ?, ?, ?, ?)",
            [
                (suffixes[0], "m0", "eu", "n2", db_time(soon)),
                ("X", "m0", "us", "n1", db_time(past)),
            ],
        )

    assert main(["--config", str(first), "status", "--json"]) == 0
    nodes = json.loads(capsys.readouterr().out)["nodes"]
    assert [(n["name"], n["vantage"]) for n in nodes] == [("n1", "us"), ("n2", "eu")]
    assert all(n["first_seen"] <= n["last_seen"] for n in nodes)
    assert nodes[0]["last_seen"] >= nodes[1]["last_seen"]
    assert [n["leases"] for n in nodes] == [0, 1]

    assert main(["--config", str(first), "status"]) == 0
    text = capsys.readouterr().out
    assert "node" in text and "vantage" in text
    assert "n1" in text and "n2" in text and "us" in text
    (n2,) = [line.split() for line in text.splitlines() if line.startswith("n2 ")]
    assert "leases" in text and n2[-1] == "1"


def test_status_shows_a_lone_node_in_one_line(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    cfg, _ = _synced(capsys, tmp_path, signer, mirror, db=archive_at)
    assert main(["--config", str(cfg), "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("node ")] == [
        next(line for line in lines if line.startswith(f"node      {host_name()}, last seen "))
    ]


def test_history_shows_the_vantage_column_once_there_are_two(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    """Two vantages take turns on one archive (two `sync`s from two addresses); the
    mirror changes in between, so each vantage archives a snapshot of its own."""
    b = _record(signer)
    suffix = mirror.put(b.bytes())
    eu = _config(
        tmp_path,
        signer,
        mirror.base_url,
        'source_address = "127.0.0.2"\n',
        'vantage = "eu"\n',
        db=archive_at,
    )
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0
    capsys.readouterr()
    assert main(["--config", str(eu), "history", suffix]) == 0
    assert " vantage " not in capsys.readouterr().out  # one vantage: nothing to tell apart

    b.add_event()
    mirror.put(b.bytes())
    us = tmp_path / "us.toml"
    us.write_text(eu.read_text().replace("127.0.0.2", "127.0.0.3").replace('"eu"', '"us"'))
    assert main(["--config", str(us), "-q", "sync", suffix]) == 0
    assert mirror.peers.keys() == {"127.0.0.2", "127.0.0.3"}
    capsys.readouterr()
    assert main(["--config", str(eu), "history", suffix]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("id "))
    assert header.split()[:4] == ["id", "fetched", "mirror", "vantage"]
    rows = [line.split() for line in lines if line[:1].isdigit()]
    assert [row[3] for row in rows] == ["eu", "us"]


def _two_vantages(
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
    alerts: str = "",
    db: Path | PgUrl | None = None,
) -> tuple[Path, Path]:
    """Two configurations of one archive: vantage `eu` sending from 127.0.0.2, `us` from
    127.0.0.3 (each its own node), with `[alerts]` as given."""
    eu = _config(
        tmp_path,
        signer,
        mirror.base_url,
        'source_address = "127.0.0.2"\n',
        'vantage = "eu"\nname = "n-eu"\n',
        db=db,
    )
    text = eu.read_text()
    if alerts:
        text = text.replace("[node]\n", f"[alerts]\n{alerts}[node]\n", 1)
    eu.write_text(text)
    us = tmp_path / "us.toml"
    us.write_text(
        text.replace("127.0.0.2", "127.0.0.3").replace('"eu"', '"us"').replace("n-eu", "n-us")
    )
    return eu, us


def _alerts(cfg: Path, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    capsys.readouterr()
    assert main(["--config", str(cfg), "events", "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def _kinds(where: Path | PgUrl) -> list[str]:
    with raw(where) as db:
        return [r[0] for r in db.execute("SELECT kind FROM events ORDER BY id")]


def _open_alerts(where: Path | PgUrl) -> list[tuple[str, str, str]]:
    with raw(where) as db:
        return db.execute(
            "SELECT kind, dedup_key, evidence FROM alerts WHERE closed_at IS NULL ORDER BY id"
        ).fetchall()


def test_a_mirror_telling_one_vantage_an_older_bundle_is_a_vantage_split(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    """The mirror serves 127.0.0.3 an older valid bundle than it serves 127.0.0.2. The
    vantage behind was never served the newer one, so it is not a rollback of what it
    saw: it is a `vantage_split`, once, its evidence both documents with their vantage
    and node, each exported by `evidence` and verifiable with `verify`."""
    b = _record(signer)
    older = TestMirror()
    suffix = older.put(b.bytes())
    old_bytes = b.bytes()
    b.add_event()
    mirror.put(b.bytes())
    mirror.to_peer["127.0.0.3"] = older
    eu, us = _two_vantages(tmp_path, signer, mirror, 'split_grace = "0s"\n', db=archive_at)
    assert main(["--config", str(eu), "-q", "track", suffix]) == 0
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0
    # Until eu is served the newer bundle again, this is also what a mirror that went
    # back for everyone looks like: no alert yet.
    assert main(["--config", str(us), "-q", "sync", suffix]) == 0
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0  # both at once, since now
    assert main(["--config", str(us), "-q", "sync", suffix]) == 1  # behind past the grace
    assert main(["--config", str(us), "-q", "sync", suffix]) == 1  # still split: still one alert
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 1
    assert mirror.peers.keys() == {"127.0.0.2", "127.0.0.3"}

    assert "rollback" not in _kinds(archive_at)
    assert _kinds(archive_at).count("vantage_split") == 1
    [(kind, key, evidence_text)] = _open_alerts(archive_at)
    assert (kind, key) == ("vantage_split", f"vantage_split:{b.pith_number}:m0")
    evidence = json.loads(evidence_text)
    ahead, behind = evidence["documents"]
    assert (ahead["vantage"], ahead["node"]) == ("eu", "n-eu")
    assert (behind["vantage"], behind["node"]) == ("us", "n-us")
    assert ahead["event_count"] == behind["event_count"] + 1
    assert behind["body_sha256"] == hashlib.sha256(old_bytes).hexdigest()
    assert ahead["body_sha256"] == hashlib.sha256(b.bytes()).hexdigest()
    assert len(evidence["missing_event_ids"]) == 1
    assert evidence["behind_confirmed_at"] > evidence["ahead_since"]

    # The evidence command exports both documents; each verifies on its own.
    capsys.readouterr()
    with raw(archive_at) as db:
        (alert_id,) = db.execute("SELECT id FROM alerts WHERE kind = 'vantage_split'").fetchone()
    out = tmp_path / "evidence"
    assert main(["--config", str(eu), "evidence", str(alert_id), "--out", str(out)]) == 0
    readme = (out / "README.txt").read_text()
    assert "m0 served vantage eu (node n-eu)" in readme
    assert "while it served vantage us (node n-us)" in readme
    assert evidence["ahead_confirmed_at"] >= evidence["behind_since"]  # both at once
    written = sorted((out / "documents").iterdir())
    assert {p.read_bytes() for p in written} == {old_bytes, b.bytes()}
    key = str(tmp_path / "test.key.json")
    for doc in written:
        assert main(["--config", str(eu), "verify", str(doc), "--key", key]) == 0

    # The alert's page names the vantage of each document.
    async def page(path: str) -> str:
        config = parse_config(eu.read_text(), base_dir=tmp_path)
        async with (
            await Store.open(archive_at, readonly=True) as store,
            serving(store, "127.0.0.1", 0, trust=TrustSet([]), ui=Ui(config)) as server,
            aiohttp.ClientSession() as client,
            client.get(f"{server.url}{path}") as r,
        ):
            assert r.status == 200
            return await r.text()

    # The record's newest bundle is served now (to eu), though us was served another.
    assert "served now by no mirror" not in anyio.run(page, f"/ui/record/{suffix}")
    assert "on 0 of 1 records" in anyio.run(page, "/ui/mirror/m0")  # its best is the newest
    html = anyio.run(page, f"/ui/alert/{alert_id}")
    table = html[html.index('<table id="documents">') :]
    table = table[: table.index("</table>")]
    assert "<th>vantage</th>" in table
    assert "<td>eu</td>" in table and "<td>us</td>" in table


def test_a_vantage_kept_on_its_old_bundle_is_a_split_though_nothing_new_was_archived(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    """Both vantages archived the same bundle; the mirror then updates for 127.0.0.2
    only. The vantage behind archives nothing new (its body is unchanged, answered "not
    modified"): the pass's check still finds it confirmed its old bundle after the other
    one was served the new one."""
    b = _record(signer)
    suffix = mirror.put(b.bytes())
    eu, us = _two_vantages(tmp_path, signer, mirror, 'split_grace = "0s"\n', db=archive_at)
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0
    assert main(["--config", str(us), "-q", "sync", suffix]) == 0
    frozen = TestMirror()
    frozen.put(b.bytes())
    mirror.to_peer["127.0.0.3"] = frozen
    b.add_event()
    mirror.put(b.bytes())
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0
    with raw(archive_at) as db:
        before = db.execute("SELECT count(*) FROM snapshots").fetchone()[0]
    assert main(["--config", str(us), "-q", "sync", suffix]) == 1
    with raw(archive_at) as db:
        assert db.execute("SELECT count(*) FROM snapshots").fetchone()[0] == before
    [(kind, _, evidence)] = _open_alerts(archive_at)
    assert kind == "vantage_split"
    behind = json.loads(evidence)["documents"][1]
    assert behind["vantage"] == "us"
    # Confirmed by the last fetch, later than the snapshot it confirms.
    assert json.loads(evidence)["behind_confirmed_at"] > behind["fetched_at"]


def test_a_mirror_changing_for_every_vantage_is_no_alert(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    """The mirror's content changes for everyone; the vantages see it a little apart,
    the one behind still served the old bundle by a lagging cache at first: within
    `split_grace` that is no alert, and the vantage that catches up tells no news twice."""
    b = _record(signer)
    suffix = mirror.put(b.bytes())
    eu, us = _two_vantages(tmp_path, signer, mirror, db=archive_at)
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0
    assert main(["--config", str(us), "-q", "sync", suffix]) == 0

    lagging = TestMirror()
    lagging.put(b.bytes())  # the cache in front of 127.0.0.3 still has the old one
    mirror.to_peer["127.0.0.3"] = lagging
    b.add_event()
    mirror.put(b.bytes())
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0
    assert main(["--config", str(us), "-q", "sync", suffix]) == 0  # behind, within the grace
    del mirror.to_peer["127.0.0.3"]
    assert main(["--config", str(us), "-q", "sync", suffix]) == 0  # caught up
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0

    kinds = _kinds(archive_at)
    assert not {"vantage_split", "rollback", "mirror_stale"} & set(kinds)
    assert _open_alerts(archive_at) == []
    assert kinds.count("event_added") == 1  # told by eu when it came, not again by us
    capsys.readouterr()
    shown = _history(capsys, eu, suffix)["snapshots"]
    assert [s["vantage"] for s in shown] == ["eu", "us", "eu", "us"]


def test_a_vantage_that_stopped_crawling_is_no_split(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    """A vantage that last saw an older bundle and then stopped confirms nothing after
    the newer one came: it is not behind, it is gone."""
    b = _record(signer)
    suffix = mirror.put(b.bytes())
    eu, us = _two_vantages(tmp_path, signer, mirror, 'split_grace = "0s"\n', db=archive_at)
    assert main(["--config", str(us), "-q", "sync", suffix]) == 0
    b.add_event()
    mirror.put(b.bytes())
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0
    assert "vantage_split" not in _kinds(archive_at)


def test_a_mirror_going_back_for_one_vantage_is_its_rollback(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    """Series are per vantage, but a vantage's own history still holds the mirror to
    it: served the newer bundle, then the older one again, is a rollback there."""
    b = _record(signer)
    older = TestMirror()
    suffix = older.put(b.bytes())
    b.add_event()
    mirror.put(b.bytes())
    eu, us = _two_vantages(tmp_path, signer, mirror, db=archive_at)
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0
    assert main(["--config", str(us), "-q", "sync", suffix]) == 0
    mirror.to_peer["127.0.0.3"] = older
    assert main(["--config", str(us), "-q", "sync", suffix]) == 1
    assert "rollback" in _kinds(archive_at)


def test_bookkeeping_from_before_vantages_is_adopted_by_the_first_node_to_crawl(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    """Migration 13 keeps every fetch_state row, of no vantage (''). The first node to
    crawl takes them as its own (its schedule, validators and failures go on), and the
    open alerts about one mirror's documents with them: a mirror that serves a valid
    bundle again clears the alert raised before the upgrade."""
    from pithcrawl.store.schema import MIGRATIONS, statements

    db = tmp_path / "v12.db"
    with sqlite3.connect(db) as conn:
        for script in MIGRATIONS[:12]:
            for statement in statements(script):
                conn.execute(statement)
        conn.execute(
            "INSERT INTO fetch_state (suffix, mirror, kind, url, etag, failures)"
            " VALUES ('A', 'm', 'bundle', 'http://m/a', '\"x\"', 2)"
        )
        conn.execute("PRAGMA user_version = 12")

    async def upgrade() -> None:
        async with await Store.open(db, exclusive=True):
            pass

    anyio.run(upgrade)
    with sqlite3.connect(db) as conn:
        assert conn.execute(
            "SELECT suffix, vantage, etag, failures FROM fetch_state"
        ).fetchall() == [("A", "", '"x"', 2)]

    # An archive crawled before vantages were kept: its rows and alert scopes as then.
    b = _record(signer)
    suffix = mirror.put(b.bytes())
    tampered = b.bytes().replace(b'"primary_cat":"cs.CR"', b'"primary_cat":"cs.AI"')
    assert tampered != b.bytes()
    mirror.bundles[suffix] = tampered
    cfg = _config(tmp_path, signer, mirror.base_url)
    cfg.write_text(cfg.read_text() + '[alerts]\nresolve_after = "0s"\n')
    assert main(["--config", str(cfg), "-q", "sync", suffix]) == 1
    with sqlite3.connect(tmp_path / "archive.db") as conn:
        conn.execute("UPDATE fetch_state SET vantage = ''")
        conn.execute("UPDATE snapshots SET vantage = NULL, node = NULL")
        conn.execute(f"UPDATE alerts SET scope = 'document:{suffix}:m0'")
        conn.execute(
            "UPDATE alerts SET dedup_key = substr(dedup_key, 1, instr(dedup_key, '@') - 1)"
        )
        conn.execute(
            "UPDATE events SET dedup_key = substr(dedup_key, 1, instr(dedup_key, '@') - 1)"
        )
    mirror.put(b.bytes())
    assert main(["--config", str(cfg), "-q", "sync", suffix]) == 0
    with sqlite3.connect(tmp_path / "archive.db") as conn:
        assert {r[0] for r in conn.execute("SELECT vantage FROM fetch_state")} == {host_name()}
        assert conn.execute(
            "SELECT scope, dedup_key, closed_at IS NOT NULL FROM alerts"
        ).fetchall() == [
            (
                f"document@{host_name()}:{suffix}:m0",
                f"document_invalid:{suffix}:m0@{host_name()}",
                1,
            )
        ]
        # The log entries of the alert follow its key.
        keys = {
            r[0]
            for r in conn.execute(
                "SELECT dedup_key FROM events WHERE dedup_key LIKE 'document_invalid:%'"
            )
        }
        assert keys == {f"document_invalid:{suffix}:m0@{host_name()}"}


# -- the store: one pair, a row of bookkeeping per vantage ---------------------------------


def _outcome(vantage: str, due_in: timedelta, *, error: str | None = None) -> FetchOutcome:
    return FetchOutcome(
        suffix="A" * 26,
        mirror="m",
        kind="bundle",
        url="http://m/a",
        fetched_at=NOW,
        status=None if error else 304,
        error=error,
        etag=None if error else f'"{vantage}"',
        next_due=NOW + due_in,
        vantage=vantage,
    )


def test_each_vantage_has_its_own_schedule_validators_and_failures(tmp_path: Path) -> None:
    """One pair fetched from two vantages: each vantage's due list, validators and
    failures are its own, and a step of the wall clock moves each row by itself."""

    async def go() -> None:
        async with await Store.open(tmp_path / "a.db", exclusive=True) as store:
            await store.watchlist.track(["A" * 26], NOW)
            await store.watchlist.upsert_mirror(
                Mirror(
                    "m", "http://m", "{base_url}/{suffix}", "{base_url}/{suffix}/s", "config", NOW
                )
            )
            await store.record_fetch(_outcome("eu", timedelta(hours=6)))
            await store.record_fetch(_outcome("us", timedelta(minutes=5), error="timeout"))
            await store.flush()
            later = NOW + timedelta(hours=1)
            assert [d.mirror for d in await store.due(later, vantage="us")] == ["m"]
            assert await store.due(later, vantage="eu") == []
            assert [d.mirror for d in await store.due(later, vantage="ap")] == ["m"]  # never
            assert await store.next_due(["m"], vantage="eu") == NOW + timedelta(hours=6)
            eu = await store.fetch_state("A" * 26, "m", "bundle", vantage="eu")
            us = await store.fetch_state("A" * 26, "m", "bundle", vantage="us")
            assert eu is not None and us is not None
            assert (eu.etag, eu.failures, us.etag, us.failures) == ('"eu"', 0, None, 1)
            known = await store.fetch_states_of(["A" * 26], vantage="us")
            assert known[("A" * 26, "m", "bundle")].failures == 1

            await store.maintenance.shift_clock(timedelta(hours=-1), "wall_seen", "x")
            eu = await store.fetch_state("A" * 26, "m", "bundle", vantage="eu")
            us = await store.fetch_state("A" * 26, "m", "bundle", vantage="us")
            assert eu is not None and us is not None
            assert eu.next_due == NOW + timedelta(hours=5)
            assert us.next_due == NOW + timedelta(minutes=5, hours=-1)

    anyio.run(go)


# -- found by attacking the first version: each once failed ------------------------------


def _as_before_vantages(tmp_path: Path) -> None:
    """The archive as pithcrawl left it before vantages were kept (schema < 13, its
    snapshots from before schema 9)."""
    with sqlite3.connect(tmp_path / "archive.db") as db:
        db.execute("UPDATE snapshots SET vantage = NULL, node = NULL")
        db.execute("UPDATE fetch_state SET vantage = ''")
        db.execute("DELETE FROM nodes")


def test_a_mirror_going_back_for_every_vantage_is_their_rollback_not_a_split(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    b = _record(signer)
    v1 = b.bytes()
    suffix = mirror.put(v1)
    b.add_event()
    mirror.put(b.bytes())
    eu, us = _two_vantages(tmp_path, signer, mirror, 'split_grace = "0s"\n', db=archive_at)
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0
    assert main(["--config", str(us), "-q", "sync", suffix]) == 0
    mirror.put(v1)  # back, for everyone (restored from a backup, say)
    for cfg in (eu, us, eu):
        assert main(["--config", str(cfg), "-q", "sync", suffix]) == 1
    keys = sorted(key for _, key, _ in _open_alerts(archive_at))
    assert keys == [f"rollback:{b.pith_number}:m0@eu", f"rollback:{b.pith_number}:m0@us"]


def test_a_vantage_served_a_valid_bundle_does_not_clear_what_another_is_served(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    """Both vantages are served a forged bundle; then eu is served a valid one. us is
    still served the forgery: its alert stays open, and its pass still fails."""
    b = _record(signer)
    suffix = mirror.put(b.bytes())
    forged = b.bytes().replace(b'"primary_cat":"cs.CR"', b'"primary_cat":"cs.AI"')
    mirror.bundles[suffix] = forged
    eu, us = _two_vantages(tmp_path, signer, mirror, 'resolve_after = "0s"\n', db=archive_at)
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 1
    assert main(["--config", str(us), "-q", "sync", suffix]) == 1
    bad = TestMirror()
    bad.put(b.bytes())
    bad.bundles[suffix] = forged
    mirror.to_peer["127.0.0.3"] = bad
    mirror.put(b.bytes())
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 1  # an alert is open
    assert main(["--config", str(us), "-q", "sync", suffix]) == 1
    keys = [key for _, key, _ in _open_alerts(archive_at)]
    assert keys == [f"document_invalid:{suffix}:m0@us"]


def test_what_a_renamed_vantage_saw_closes(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    """A vantage served a forged bundle, then a split, is renamed: nobody looks from its
    old name any more, so what was seen from there closes instead of holding every
    later pass at exit 1."""
    b = _record(signer)
    older = TestMirror()
    suffix = older.put(b.bytes())
    b.add_event()
    mirror.put(b.bytes())
    mirror.to_peer["127.0.0.3"] = older
    eu, us = _two_vantages(
        tmp_path, signer, mirror, 'split_grace = "0s"\nresolve_after = "0s"\n', db=archive_at
    )
    for cfg, code in ((eu, 0), (us, 0), (eu, 0), (us, 1)):
        assert main(["--config", str(cfg), "-q", "sync", suffix]) == code
    assert {k for k, _, _ in _open_alerts(archive_at)} == {"vantage_split"}
    renamed = tmp_path / "renamed.toml"
    renamed.write_text(us.read_text().replace('vantage = "us"', 'vantage = "us-east"'))
    del mirror.to_peer["127.0.0.3"]  # the mirror stops lying; `us` is renamed `us-east`
    codes = [main(["--config", str(c), "-q", "sync", suffix]) for c in (renamed, eu)]
    assert codes == [0, 0]
    assert _open_alerts(archive_at) == []

    # And an alert about a document seen from the old name only.
    mirror.to_peer["127.0.0.3"] = older
    older.bundles[suffix] = older.bundles[suffix].replace(
        b'"primary_cat":"cs.CR"', b'"primary_cat":"cs.AI"'
    )
    assert main(["--config", str(us), "-q", "sync", suffix]) == 1
    assert [k for k, _, _ in _open_alerts(archive_at)] == ["document_invalid"]
    del mirror.to_peer["127.0.0.3"]
    codes = [main(["--config", str(c), "-q", "sync", suffix]) for c in (renamed, eu)]
    assert codes == [0, 0]
    assert _open_alerts(archive_at) == []


def test_after_the_upgrade_a_second_vantage_kept_behind_is_a_split(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    """The snapshots from before vantages are of the vantage that adopted them, not of
    every vantage: a second vantage kept on the bundle they hold is still seen."""
    b = _record(signer)
    suffix = mirror.put(b.bytes())
    eu, us = _two_vantages(
        tmp_path, signer, mirror, 'split_grace = "0s"\n', db=tmp_path / "archive.db"
    )
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0
    _as_before_vantages(tmp_path)
    frozen = TestMirror()
    frozen.put(b.bytes())
    mirror.to_peer["127.0.0.3"] = frozen
    b.add_event()
    mirror.put(b.bytes())
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0  # adopts, then sees v2
    for cfg, code in ((us, 0), (eu, 0), (us, 1)):
        assert main(["--config", str(cfg), "-q", "sync", suffix]) == code
    assert "vantage_split" in _kinds(tmp_path / "archive.db")


def test_after_the_upgrade_a_new_vantage_behind_a_lagging_cache_is_no_rollback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    b = _record(signer)
    v1 = b.bytes()
    suffix = mirror.put(v1)
    eu, us = _two_vantages(tmp_path, signer, mirror, db=tmp_path / "archive.db")
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0
    b.add_event()
    mirror.put(b.bytes())
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0
    _as_before_vantages(tmp_path)
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0  # the first node adopts
    lagging = TestMirror()
    lagging.put(v1)
    mirror.to_peer["127.0.0.3"] = lagging
    assert main(["--config", str(us), "-q", "sync", suffix]) == 0  # within the grace
    assert "rollback" not in _kinds(tmp_path / "archive.db")


def test_a_vantage_that_stopped_holds_no_record_in_the_rechecks(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    builders = []
    for i in range(5):
        b = BundleBuilder(signer, record=canonical_record(f"2611.{i:05d}", title=f"P{i}"))
        b.add_event()
        mirror.put(b.bytes())
        builders.append(b)
    suffixes = [b.pith_number.rpartition(":")[2] for b in builders]
    eu, us = _two_vantages(tmp_path, signer, mirror, db=archive_at)
    assert main(["--config", str(us), "-q", "track", *suffixes]) == 0
    assert main(["--config", str(us), "-q", "sync"]) == 0
    for b in builders:
        b.add_event()
        mirror.put(b.bytes())
    assert main(["--config", str(eu), "-q", "sync"]) == 0

    async def todo(vantages: list[str]) -> list[str]:
        async with await Store.open(archive_at) as store:
            return await store.trusted.records_to_recheck(tracked=True, vantages=vantages)

    assert anyio.run(todo, ["eu"]) == []
    assert sorted(anyio.run(todo, ["eu", "us"])) == sorted(suffixes)


def test_a_renamed_vantage_sees_the_mirror_go_back_from_the_one_that_stopped(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    """A vantage renamed (by its operator, or with its host when it is the host name) is
    a new vantage: it has no history of its own to call a replay a rollback. Once the old
    one has stopped, what the mirror served it last is still a side of a `vantage_split`.
    (Merging an unnamed vantage into the next one was tried and taken back: two unnamed
    nodes taking turns, or a name coming back, then each closed or hid what the other
    saw.)"""
    b = _record(signer)
    v1 = b.bytes()
    suffix = mirror.put(v1)
    b.add_event()
    mirror.put(b.bytes())
    old = _config(
        tmp_path, signer, mirror.base_url, node='name = "n"\nvantage = "a"\n', db=archive_at
    )
    old.write_text(old.read_text().replace("[node]", '[alerts]\nsplit_grace = "0s"\n[node]'))
    assert main(["--config", str(old), "-q", "sync", suffix]) == 0
    new = tmp_path / "new.toml"
    new.write_text(old.read_text().replace('vantage = "a"', 'vantage = "b"'))
    mirror.put(v1)  # replayed
    assert main(["--config", str(new), "-q", "sync", suffix]) == 0  # nothing of its own
    assert main(["--config", str(new), "-q", "sync", suffix]) == 1  # past the grace
    [(kind, key, evidence)] = _open_alerts(archive_at)
    assert (kind, key) == ("vantage_split", f"vantage_split:{b.pith_number}:m0")
    ahead, behind = json.loads(evidence)["documents"]
    assert (ahead["vantage"], behind["vantage"]) == ("a", "b")


def test_a_mirror_lagging_for_one_vantage_is_stale_whichever_vantage_crawled_last(
    archive_at, tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    """m0 keeps 127.0.0.3 on an older bundle than m1 serves everyone; later it serves
    127.0.0.2 a newer one still. Judged by its latest snapshot alone, m0 would be stale
    after us's pass and not after eu's (an alert closed and opened again each turn):
    a mirror is judged by what it serves every vantage."""
    from datetime import UTC, datetime

    from pithcrawl.clock import Clock
    from pithcrawl.keys import TrustSet, load_key
    from pithcrawl.sync import sync_once

    async def go() -> None:
        async with TestMirror() as honest, TestMirror() as older:
            b = BundleBuilder(signer, record=canonical_record("2611.00001", title="P"))
            b.add_event()
            suffix = older.put(b.bytes())
            b.add_event()
            mirror.put(b.bytes())
            honest.put(b.bytes())
            mirror.to_peer["127.0.0.3"] = older
            cfg = write_config(tmp_path, signer, mirror.base_url, honest.base_url, db=archive_at)
            text = cfg.read_text() + '[alerts]\nresolve_after = "0s"\n'
            text = text.replace(
                'timeout = "5s"\n', 'timeout = "5s"\nsource_address = "127.0.0.2"\n'
            )
            eu = parse_config(text + '[node]\nname = "n-eu"\nvantage = "eu"\n', base_dir=tmp_path)
            us = parse_config(
                text.replace("127.0.0.2", "127.0.0.3") + '[node]\nname = "n-us"\nvantage = "us"\n',
                base_dir=tmp_path,
            )
            trust = TrustSet([load_key(signer.public_key())])
            db = archive_at
            async with await Store.open(db) as store:
                await store.watchlist.track([suffix], datetime.now(UTC))
            for config in (eu, us):
                await sync_once(config, db, [], trust, clock=Clock())
            later = Clock(wall=lambda: datetime.now(UTC) + timedelta(days=3))
            await sync_once(us, db, [], trust, clock=later)
            b.add_event()
            mirror.put(b.bytes())  # eu is served something newer still
            await sync_once(eu, db, [], trust, clock=later)
            await sync_once(eu, db, [], trust, clock=later)

    anyio.run(go)
    kinds = _kinds(archive_at)
    assert kinds.count("mirror_stale") == 1
    assert "alert_closed" not in kinds
    assert "mirror_stale" in {k for k, _, _ in _open_alerts(archive_at)}


def test_status_shows_a_mirror_as_the_vantages_crawling_lately_see_it(
    archive_at,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
) -> None:
    b = _record(signer)
    suffix = mirror.put(b.bytes())
    eu, us = _two_vantages(tmp_path, signer, mirror, db=archive_at)
    assert main(["--config", str(eu), "-q", "track", suffix]) == 0
    mirror.fail(suffix, 503)
    assert main(["--config", str(us), "-q", "sync"]) == 3  # its last pass failed
    mirror.heal(suffix)
    assert main(["--config", str(eu), "-q", "sync"]) == 0

    def m0() -> dict:
        capsys.readouterr()
        assert main(["--config", str(eu), "status", "--json"]) == 0
        [found] = json.loads(capsys.readouterr().out)["mirrors"]
        return found

    assert m0()["failures"] == 1  # us is crawling still: m0 fails there
    with raw(archive_at) as db:  # us stopped, long ago
        db.execute("UPDATE nodes SET last_seen = '2026-01-01T00:00:00.000000Z' WHERE name = 'n-us'")
    assert not m0()["failures"]


def test_a_vantage_crawling_every_other_day_is_not_taken_for_gone(
    archive_at, tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    """us crawls every 36 hours, eu every 6: us stays a vantage crawling now for two of
    its own intervals, so its split is not closed by eu a day after us was last seen
    (and opened again by us's next visit: a page per visit)."""
    from datetime import UTC, datetime

    from pithcrawl.clock import Clock
    from pithcrawl.keys import TrustSet, load_key
    from pithcrawl.sync import sync_once

    async def go() -> None:
        async with TestMirror() as older:
            b = _record(signer)
            suffix = older.put(b.bytes())
            b.add_event()
            mirror.put(b.bytes())
            mirror.to_peer["127.0.0.3"] = older
            eu_cfg, us_cfg = _two_vantages(
                tmp_path, signer, mirror, 'split_grace = "6h"\n', db=archive_at
            )
            eu = parse_config(eu_cfg.read_text(), base_dir=tmp_path)
            us = parse_config(
                us_cfg.read_text().replace(
                    'timeout = "5s"\n', 'timeout = "5s"\ninterval = "36h"\n'
                ),
                base_dir=tmp_path,
            )
            trust = TrustSet([load_key(signer.public_key())])
            db = archive_at
            async with await Store.open(db) as store:
                await store.watchlist.track([suffix], datetime.now(UTC))

            def at(hours: float) -> Clock:
                return Clock(wall=lambda: datetime.now(UTC) + timedelta(hours=hours))

            for config, hours in ((eu, 0), (us, 0), (eu, 1), (us, 36), (eu, 62), (us, 72)):
                await sync_once(config, db, [], trust, clock=at(hours))

    anyio.run(go)
    assert _kinds(archive_at).count("vantage_split") == 1
    assert "alert_closed" not in _kinds(archive_at)
