"""`pithcrawl sync` end to end against real loopback mirrors and a real SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builder import BundleBuilder, TestSigner, canonical_record
from conftest import write_config
from mirror import TestMirror

from pithcrawl.cli import main


def sync(capsys, cfg: Path, *extra: str) -> tuple[int, dict]:
    code = main(["--config", str(cfg), "--log-format", "json", "-q", "sync", "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out.strip().splitlines()[-1])


def records(signer: TestSigner, n: int) -> list[BundleBuilder]:
    out = []
    for i in range(n):
        b = BundleBuilder(signer, record=canonical_record(f"2611.{i:05d}", title=f"P{i}"))
        b.add_event()
        out.append(b)
    return out


def test_first_sync_archives_every_record_then_resync_is_conditional(
    capsys, tmp_path: Path, signer: TestSigner, mirror: TestMirror
):
    """First sync: every record archived. Second: 304s, no new snapshot."""
    builders = records(signer, 5)
    for b in builders:
        mirror.put(b.bytes())
    cfg = write_config(tmp_path, signer, mirror.base_url)
    assert main(["--config", str(cfg), "track", *(b.pith_number for b in builders)]) == 0
    capsys.readouterr()
    code, summary = sync(capsys, cfg)
    assert code == 0, summary
    assert summary["records"] == 5
    assert summary["new_snapshots"] == 10  # bundle and state.json of each
    assert summary["errors"] == 0
    code, summary = sync(capsys, cfg)
    assert code == 0
    assert summary["new_snapshots"] == 0
    assert sum(mirror.conditional_hits.values()) == 10


def test_tampered_bundle_is_an_alert_and_exit_1(
    capsys, tmp_path: Path, signer: TestSigner, mirror: TestMirror
):
    b = records(signer, 1)[0]
    doc = b.build()
    doc["bundle_signature"]["bundle_sha256"] = "0" * 64
    mirror.put(json.dumps(doc).encode())
    cfg = write_config(tmp_path, signer, mirror.base_url)
    code, summary = sync(capsys, cfg, b.pith_number)
    assert code == 1
    assert summary["alerts"] == 1
    # Served again unchanged: the same alert is still open (no second one), still exit 1.
    code, summary = sync(capsys, cfg, b.pith_number)
    assert code == 1
    assert summary["alerts"] == 1
    assert summary["events"] == 0
    assert summary["untrusted"] == 1


def test_dead_mirror_exits_3(capsys, tmp_path: Path, signer: TestSigner, mirror: TestMirror):
    b = records(signer, 1)[0]
    mirror.put(b.bytes())
    mirror.fail(b.suffix, 503, retry_after="120")
    cfg = write_config(tmp_path, signer, mirror.base_url)
    code, summary = sync(capsys, cfg, b.pith_number)
    assert code == 3
    assert summary["errors"] == 1


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[crawl]\ntimeout = "soon"\n', "crawl.timeout"),
        ("[crawl]\nconcurrency = 0\n", "crawl.concurrency"),
        ('[[mirrors]]\nname = "x"\nbase_url = "ftp://a"\n', "mirrors[0].base_url"),
        ('[trust]\nkeys = ["missing.key.json"]\n', "missing.key.json"),
        ("[crawl\n", "TOML"),
    ],
)
def test_bad_config_exits_2_naming_the_key(capsys, tmp_path: Path, toml: str, key: str):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    code = main(["--config", str(cfg), "sync"])
    err = capsys.readouterr().err
    assert code == 2
    assert key in err
    assert "Traceback" not in err
    assert not (tmp_path / "pithcrawl.db").exists()
