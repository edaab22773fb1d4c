"""`pithcrawl fsck`: the database's integrity and every trusted body re-verified."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from builder import BundleBuilder, TestSigner
from mirror import TestMirror

from pithcrawl.cli import main


def archive(tmp_path: Path, signer: TestSigner, mirror: TestMirror) -> Path:
    b = BundleBuilder(signer)
    b.add_event()
    mirror.put(b.bytes())
    key = tmp_path / "k.json"
    key.write_text(json.dumps(signer.public_key()))
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'db = "a.db"\n[trust]\nkeys = ["k.json"]\n'
        f'[[mirrors]]\nname = "m"\nbase_url = "{mirror.base_url}"\n'
    )
    assert main(["--config", str(cfg), "sync", b.pith_number]) == 0
    return cfg


def fsck(capsys, cfg: Path) -> tuple[int, dict]:
    code = main(["--config", str(cfg), "fsck", "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_a_sound_archive(capsys, tmp_path, signer, mirror):
    cfg = archive(tmp_path, signer, mirror)
    capsys.readouterr()
    code, result = fsck(capsys, cfg)
    assert code == 0
    assert result["integrity"] == ["ok"]
    assert result["trusted_snapshots_checked"] == 2  # the bundle and its state.json
    assert result["problems"] == []


def test_a_body_altered_on_disk_is_reported_with_what_depends_on_it(
    capsys, tmp_path, signer, mirror
):
    cfg = archive(tmp_path, signer, mirror)
    capsys.readouterr()
    with sqlite3.connect(tmp_path / "a.db") as conn:
        (sha,) = conn.execute("SELECT body_sha256 FROM snapshots WHERE kind = 'bundle'").fetchone()
        from pithcrawl.store.blobs import packed

        forged = packed(b'{"not": "the bundle"}')
        conn.execute(
            "UPDATE blobs SET data = ?, size = ? WHERE sha256 = ?", (forged.data, forged.size, sha)
        )
    code, result = fsck(capsys, cfg)
    assert code == 1
    problems = {p["kind"]: p for p in result["problems"]}
    assert problems["bundle"]["body_sha256"] == sha
    assert f"blob {sha} is corrupt" in problems["bundle"]["problem"]
    # The state.json was stored as a delta against that bundle: unreadable now, and said so.
    assert problems["state"]["body_sha256"] != sha
    assert f"blob {sha} is corrupt" in problems["state"]["problem"]
    assert "delta base of blob" in problems["state"]["problem"]


def test_a_trust_set_that_no_longer_vouches_for_the_archive(capsys, tmp_path, signer, mirror):
    """Keys replaced since: everything trusted before is reported, not silently kept."""
    cfg = archive(tmp_path, signer, mirror)
    capsys.readouterr()
    (tmp_path / "k.json").write_text(json.dumps(TestSigner("another-key").public_key()))
    code, result = fsck(capsys, cfg)
    assert code == 1
    problems = {p["kind"]: p["problem"] for p in result["problems"]}
    assert "untrusted_key" in problems["bundle"]
    assert "state" not in problems  # a state.json carries no signature of its own
