"""`pithcrawl fsck`: the database's integrity and every trusted body re-verified."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from builder import BundleBuilder, TestSigner
from conftest import db_setting
from mirror import TestMirror
from postgres import raw

from pithcrawl.cli import main
from pithcrawl.location import PgUrl


def configured(
    tmp_path: Path, signer: TestSigner, mirror: TestMirror, db: Path | PgUrl | None = None
) -> Path:
    """A configuration trusting `signer`'s key and crawling `mirror` into `db` (either
    backend), else a.db."""
    (tmp_path / "k.json").write_text(json.dumps(signer.public_key()))
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f"db = {json.dumps(db_setting(Path('a.db') if db is None else db))}\n"
        '[trust]\nkeys = ["k.json"]\n'
        f'[[mirrors]]\nname = "m"\nbase_url = "{mirror.base_url}"\n'
    )
    return cfg


def archive(
    tmp_path: Path, signer: TestSigner, mirror: TestMirror, db: Path | PgUrl | None = None
) -> Path:
    b = BundleBuilder(signer)
    b.add_event()
    mirror.put(b.bytes())
    cfg = configured(tmp_path, signer, mirror, db)
    assert main(["--config", str(cfg), "sync", b.pith_number]) == 0
    return cfg


def fsck(capsys, cfg: Path) -> tuple[int, dict]:
    code = main(["--config", str(cfg), "fsck", "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_a_sound_archive(capsys, tmp_path, signer, mirror, archive_at):
    cfg = archive(tmp_path, signer, mirror, archive_at)
    capsys.readouterr()
    code, result = fsck(capsys, cfg)
    assert code == 0
    assert result["integrity"] == ["ok"]
    assert result["trusted_snapshots_checked"] == 2  # the bundle and its state.json
    assert result["problems"] == []


def test_a_body_altered_on_disk_is_reported_with_what_depends_on_it(
    capsys, tmp_path, signer, mirror, archive_at
):
    cfg = archive(tmp_path, signer, mirror, archive_at)
    capsys.readouterr()
    with raw(archive_at) as conn:
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


def _with_an_invalid_document(tmp_path: Path, signer: TestSigner, mirror: TestMirror) -> Path:
    """An archive holding an alert and, as its evidence, the body that failed."""
    b = BundleBuilder(signer)
    doc = b.build()
    doc["built_at"] = "soon"
    mirror.put(json.dumps(doc).encode())
    cfg = configured(tmp_path, signer, mirror)
    assert main(["--config", str(cfg), "sync", b.pith_number]) == 1
    return cfg


def test_damaged_evidence_is_reported(capsys, tmp_path, signer, mirror):
    """The body behind an alert is untrusted, but it is the alert's proof: one altered on
    disk is fsck's news too (it used to say all was well, while `evidence` failed)."""
    from pithcrawl.store.blobs import packed

    cfg = _with_an_invalid_document(tmp_path, signer, mirror)
    capsys.readouterr()
    code, result = fsck(capsys, cfg)
    assert (code, result["untrusted_snapshots_read"], result["problems"]) == (0, 1, [])
    with sqlite3.connect(tmp_path / "a.db") as conn:
        (sha,) = conn.execute("SELECT body_sha256 FROM snapshots WHERE trusted = 0").fetchone()
        forged = packed(b'{"not": "what was served"}')
        conn.execute("UPDATE blobs SET data = ? WHERE sha256 = ?", (forged.data, sha))
    code, result = fsck(capsys, cfg)
    assert code == 1
    (problem,) = result["problems"]
    assert problem["body_sha256"] == sha and problem["problem"].startswith("evidence unreadable")


def test_damaged_json_in_alerts_and_the_log_is_reported_not_a_traceback(
    capsys, tmp_path, signer, mirror
):
    """An alert's evidence or a log entry edited into bad JSON: fsck names each row (exit
    1); status, events and evidence fail with one line (exit 3), never a traceback."""
    cfg = _with_an_invalid_document(tmp_path, signer, mirror)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        (alert_id,) = conn.execute("SELECT id FROM alerts").fetchone()
        conn.execute("UPDATE alerts SET evidence = '[1, 2, \"x\"]' WHERE id = ?", (alert_id,))
        conn.execute("PRAGMA ignore_check_constraints = ON")  # as an editor may
        conn.execute("UPDATE events SET mirrors = '{not json' WHERE id = 1")
    capsys.readouterr()
    code, result = fsck(capsys, cfg)
    assert code == 1
    assert result["damaged_rows"] == [
        f"alert {alert_id}: its evidence is not a JSON object",
        "event 1: its mirrors is not a JSON list",
    ]
    for args in (["status"], ["events", "--json"], ["evidence", str(alert_id), "--out", "x"]):
        code = main(["--config", str(cfg), *args])
        err = capsys.readouterr().err
        assert code == 3, args
        assert "Traceback" not in err and "run fsck" in err, (args, err)


def test_a_row_pointed_at_another_valid_body_is_reported(capsys, tmp_path, signer, mirror):
    """The newest snapshot's row pointed at an older, valid body of the record: every
    body still verifies, but the row no longer describes its body (a silent rollback for
    `serve` and the history rules). fsck said all was well."""
    b = BundleBuilder(signer)
    b.add_event()
    mirror.put(b.bytes())
    cfg = configured(tmp_path, signer, mirror)
    assert main(["--config", str(cfg), "sync", b.pith_number]) == 0
    b.add_event()
    mirror.put(b.bytes())
    assert main(["--config", str(cfg), "sync", b.pith_number]) == 0
    with sqlite3.connect(tmp_path / "a.db") as conn:
        old, new = conn.execute(
            "SELECT body_sha256 FROM snapshots WHERE kind = 'bundle' ORDER BY id"
        ).fetchall()
        conn.execute("UPDATE snapshots SET body_sha256 = ? WHERE body_sha256 = ?", (old[0], new[0]))
    capsys.readouterr()
    code, result = fsck(capsys, cfg)
    assert code == 1
    (problem,) = result["problems"]
    assert "its row describes another body" in problem["problem"]
    assert "event_count 3 recorded, 2 in it" in problem["problem"]


def test_a_file_damaged_past_reading_says_what_to_do(capsys, tmp_path, signer, mirror):
    """A truncated archive: exit 3 with one line that says to restore a backup (it used to
    send fsck's own user to run fsck)."""
    cfg = archive(tmp_path, signer, mirror)
    db = tmp_path / "a.db"
    for leftover in (tmp_path / "a.db-wal", tmp_path / "a.db-shm"):
        leftover.unlink(missing_ok=True)
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    capsys.readouterr()
    code = main(["--config", str(cfg), "fsck"])
    err = capsys.readouterr().err
    assert code == 3
    assert "restore it from a backup" in err and "run `pithcrawl fsck`" not in err
    assert "Traceback" not in err


def test_evidence_naming_no_body_is_damage_not_an_empty_package(capsys, tmp_path, signer, mirror):
    """An alert's evidence edited to name something that is not a sha256 (a path, say):
    `evidence` says the evidence is damaged (exit 3) rather than writing no document and
    exiting 0; nothing outside the output directory is ever read or written."""
    cfg = _with_an_invalid_document(tmp_path, signer, mirror)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        (alert_id,) = conn.execute("SELECT id FROM alerts").fetchone()
        conn.execute(
            "UPDATE alerts SET evidence = json_set(evidence, '$.body_sha256', '../../etc/passwd')"
            " WHERE id = ?",
            (alert_id,),
        )
    capsys.readouterr()
    out = tmp_path / "ev"
    code = main(["--config", str(cfg), "evidence", str(alert_id), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3
    assert "'../../etc/passwd'" in err and "Traceback" not in err
