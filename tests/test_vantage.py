"""Which node fetched a snapshot, and from which vantage: configured in `[node]`, bound
to `crawl.source_address`, recorded with every snapshot, shown and filtered by `history`.

A real loopback mirror that notes the address each request came from, a real archive,
bundles signed by the tests' key.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from builder import BundleBuilder, TestSigner, canonical_record
from conftest import write_config
from mirror import TestMirror

from pithcrawl.cli import main
from pithcrawl.config import host_name, parse_config
from pithcrawl.errors import ConfigError


def _config(tmp_path: Path, signer: TestSigner, base: str, crawl: str = "", node: str = "") -> Path:
    cfg = write_config(tmp_path, signer, base)
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
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> tuple[Path, list[str]]:
    """One record served and synced with the default `[node]`: its config and suffixes."""
    suffixes = _serve(mirror, signer, 1)
    cfg = _config(tmp_path, signer, mirror.base_url)
    assert main(["--config", str(cfg), "-q", "sync", *suffixes]) == 0
    capsys.readouterr()
    return cfg, suffixes


def _history(capsys: pytest.CaptureFixture[str], cfg: Path, suffix: str, *extra: str) -> dict:
    code = main(["--config", str(cfg), "-q", "history", suffix, "--json", *extra])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_every_snapshot_records_its_node_and_vantage_and_connections_leave_from_the_source(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    suffixes = _serve(mirror, signer, 3)
    cfg = _config(
        tmp_path,
        signer,
        mirror.base_url,
        crawl='source_address = "127.0.0.2"\n',
        node='name = "crawler-1"\nvantage = "eu-west"\n',
    )
    code = main(["--config", str(cfg), "-q", "sync", *suffixes])
    capsys.readouterr()
    assert code == 0
    # Every request left from the configured address, none from the default one.
    assert set(mirror.peers) == {"127.0.0.2"}
    assert sum(mirror.peers.values()) == 2 * len(suffixes)
    with sqlite3.connect(tmp_path / "archive.db") as db:
        rows = db.execute("SELECT kind, node, vantage FROM snapshots").fetchall()
    assert len(rows) == 2 * len(suffixes)
    assert {(node, vantage) for _, node, vantage in rows} == {("crawler-1", "eu-west")}

    shown = _history(capsys, cfg, suffixes[0])["snapshots"]
    assert [(s["node"], s["vantage"]) for s in shown] == [("crawler-1", "eu-west")]
    assert _history(capsys, cfg, suffixes[0], "--vantage", "eu-west")["snapshots"] == shown
    assert _history(capsys, cfg, suffixes[0], "--vantage", "us-east")["snapshots"] == []


def test_a_node_is_named_after_its_host_by_default_and_its_vantage_after_itself(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    cfg, suffixes = _synced(capsys, tmp_path, signer, mirror)
    assert set(mirror.peers) == {"127.0.0.1"}
    shown = _history(capsys, cfg, suffixes[0])["snapshots"]
    assert [(s["node"], s["vantage"]) for s in shown] == [(host_name(), host_name())]
    named = parse_config('[node]\nname = "n2"\n').node
    assert (named.node_name, named.vantage_name) == ("n2", "n2")


def test_snapshots_archived_before_nodes_were_recorded_show_none(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    cfg, suffixes = _synced(capsys, tmp_path, signer, mirror)
    with sqlite3.connect(tmp_path / "archive.db") as db:
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
    ],
)
def test_bad_node_settings_are_refused_naming_the_key(toml: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}\b"):
        parse_config(toml)


def test_source_addresses_of_both_families_are_kept_in_their_canonical_form() -> None:
    assert (
        parse_config('[crawl]\nsource_address = "127.0.0.2"\n').crawl.source_address == "127.0.0.2"
    )
    assert parse_config('[crawl]\nsource_address = "0:0::1"\n').crawl.source_address == "::1"
    assert parse_config("").crawl.source_address is None


def test_a_source_address_not_of_this_machine_stops_the_pass_before_any_fetch(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    suffixes = _serve(mirror, signer, 2)
    cfg = _config(tmp_path, signer, mirror.base_url, crawl='source_address = "192.0.2.1"\n')
    assert main(["--config", str(cfg), "-q", "sync", *suffixes]) == 2
    err = capsys.readouterr().err
    assert "crawl.source_address: cannot send from 192.0.2.1" in err
    assert "Traceback" not in err
    assert not mirror.peers  # nothing was fetched


def test_verify_fetches_from_the_source_address_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    [suffix] = _serve(mirror, signer, 1)
    cfg = _config(tmp_path, signer, mirror.base_url, crawl='source_address = "127.0.0.3"\n')
    url = f"{mirror.base_url}/pith/{suffix}/bundle.json"
    assert (
        main(["--config", str(cfg), "verify", url, "--key", str(tmp_path / "test.key.json")]) == 0
    )
    assert set(mirror.peers) == {"127.0.0.3"}


def test_a_mirror_of_the_other_family_fails_saying_why(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    """An IPv4 mirror, sent to from an IPv6 address: an error that names the cause and
    the setting, not aiohttp's "[None]"."""
    suffixes = _serve(mirror, signer, 1)
    cfg = _config(tmp_path, signer, mirror.base_url, crawl='source_address = "::1"\n')
    assert main(["--config", str(cfg), "--log-format", "json", "-q", "sync", *suffixes]) == 3
    err = capsys.readouterr().err
    assert "[None]" not in err
    assert "sending from crawl.source_address ::1" in err


def test_status_lists_the_nodes_that_crawled_the_archive(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    """Two nodes take turns on one archive (on SQLite one at a time): `status` lists
    both, the one seen last first, each with the vantage it crawled from last."""
    suffixes = _serve(mirror, signer, 1)
    first = _config(tmp_path, signer, mirror.base_url, node='name = "n1"\nvantage = "eu"\n')
    assert main(["--config", str(first), "-q", "sync", *suffixes]) == 0
    second = tmp_path / "second.toml"
    second.write_text(first.read_text().replace('name = "n1"', 'name = "n2"'))
    assert main(["--config", str(second), "-q", "sync", *suffixes]) == 0
    third = tmp_path / "third.toml"
    third.write_text(first.read_text().replace('vantage = "eu"', 'vantage = "us"'))
    assert main(["--config", str(third), "-q", "sync", *suffixes]) == 0
    capsys.readouterr()

    assert main(["--config", str(first), "status", "--json"]) == 0
    nodes = json.loads(capsys.readouterr().out)["nodes"]
    assert [(n["name"], n["vantage"]) for n in nodes] == [("n1", "us"), ("n2", "eu")]
    assert all(n["first_seen"] <= n["last_seen"] for n in nodes)
    assert nodes[0]["last_seen"] >= nodes[1]["last_seen"]

    assert main(["--config", str(first), "status"]) == 0
    text = capsys.readouterr().out
    assert "node" in text and "vantage" in text
    assert "n1" in text and "n2" in text and "us" in text


def test_status_shows_a_lone_node_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    cfg, _ = _synced(capsys, tmp_path, signer, mirror)
    assert main(["--config", str(cfg), "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("node ")] == [
        next(line for line in lines if line.startswith(f"node      {host_name()}, last seen "))
    ]


def test_history_shows_the_vantage_column_once_there_are_two(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    """Two vantages take turns on one archive (two `sync`s from two addresses); the
    mirror changes in between, so each vantage archives a snapshot of its own."""
    b = BundleBuilder(signer, record=canonical_record("2611.00001", title="P"))
    b.add_event()
    suffix = mirror.put(b.bytes())
    eu = _config(
        tmp_path, signer, mirror.base_url, 'source_address = "127.0.0.2"\n', 'vantage = "eu"\n'
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


def test_a_mirror_telling_one_vantage_an_older_bundle_is_alerted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: TestSigner, mirror: TestMirror
) -> None:
    """Two vantages take turns on one archive; the mirror tells 127.0.0.3 an older
    bundle than it tells 127.0.0.2. That vantage's pass fails with the lie as a
    `rollback` (the mirror went back from what the archive holds of it), until a
    `vantage_split` names it better: series of their own per vantage, without that
    alert, would let the lie pass unalerted."""
    b = BundleBuilder(signer, record=canonical_record("2611.00001", title="P"))
    b.add_event()
    older = TestMirror()
    suffix = older.put(b.bytes())
    b.add_event()
    mirror.put(b.bytes())
    mirror.to_peer["127.0.0.3"] = older
    eu = _config(
        tmp_path, signer, mirror.base_url, 'source_address = "127.0.0.2"\n', 'vantage = "eu"\n'
    )
    us = tmp_path / "us.toml"
    us.write_text(eu.read_text().replace("127.0.0.2", "127.0.0.3").replace('"eu"', '"us"'))
    assert main(["--config", str(eu), "-q", "sync", suffix]) == 0
    assert main(["--config", str(us), "-q", "sync", suffix]) == 1
    assert mirror.peers.keys() == {"127.0.0.2", "127.0.0.3"}
    with sqlite3.connect(tmp_path / "archive.db") as db:
        kinds = {r[0] for r in db.execute("SELECT kind FROM events")}
    assert "rollback" in kinds
