"""`status`, `history`, `diff`, `events` on a real archive built by `pithcrawl sync`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import jsonpatch
import pytest
from builder import BundleBuilder, TestSigner, canonical_record
from conftest import write_config
from mirror import TestMirror
from postgres import raw, writer_lock_held

from pithcrawl.cli import main
from pithcrawl.location import PgUrl

OTHER_SUFFIX = "A" * 26  # well formed, never archived


@dataclass
class Archive:
    """An archive with two bundle snapshots of one record from mirror m0."""

    cfg: Path
    db: Path | PgUrl
    builder: BundleBuilder
    first: bytes
    second: bytes


def cli(capsys: pytest.CaptureFixture[str], cfg: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--config", str(cfg), "--log-format", "json", "-q", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def archive(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signer: TestSigner,
    mirror: TestMirror,
    archive_at: Path | PgUrl,
) -> Archive:
    """One record synced twice (two bundles) into `archive_at`, on either backend."""
    b = BundleBuilder(signer, record=canonical_record("2611.00001", title="P"))
    b.add_event()
    first = b.bytes()
    mirror.put(first)
    cfg = write_config(tmp_path, signer, mirror.base_url, db=archive_at)
    assert cli(capsys, cfg, "track", b.pith_number)[0] == 0
    assert cli(capsys, cfg, "sync")[0] == 0
    b.add_event()
    second = b.bytes()
    mirror.put(second)
    assert cli(capsys, cfg, "sync")[0] == 0
    return Archive(cfg, archive_at, b, first, second)


def test_history_lists_bundle_snapshots_oldest_first(capsys, archive: Archive):
    """history --json: both bundle snapshots, oldest first, with built_at and event_count."""
    code, out, _ = cli(capsys, archive.cfg, "history", archive.builder.pith_number, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["suffix"] == archive.builder.suffix
    assert doc["pith_number"] == archive.builder.pith_number
    snaps = doc["snapshots"]
    assert [s["built_at"] for s in snaps] == ["2026-11-02T01:00:00Z", "2026-11-02T02:00:00Z"]
    assert [s["event_count"] for s in snaps] == [2, 3]
    assert snaps[0]["id"] < snaps[1]["id"]
    assert all(s["trusted"] and s["findings"] == [] and s["mirror"] == "m0" for s in snaps)
    assert all(s["kind"] == "bundle" and s["status"] == 200 for s in snaps)
    signature = json.loads(archive.second)["bundle_signature"]
    assert snaps[1]["bundle_sha256"] == signature["bundle_sha256"]
    assert snaps[0]["changes"] is None
    assert snaps[1]["changes"] > 0
    assert "event_added" in snaps[1]["events"]


def test_history_human_output_is_a_table(capsys, archive: Archive):
    """history without --json: a title line, a header and one row per snapshot."""
    code, out, _ = cli(capsys, archive.cfg, "history", archive.builder.suffix, "--mirror", "m0")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{archive.builder.pith_number}: 2 bundle snapshot(s) from m0"
    assert lines[1].split()[:3] == ["id", "fetched", "mirror"]
    assert len(lines) == 4
    assert "2026-11-02T02:00:00Z" in lines[3] and "event_added" in lines[3]


def test_history_of_state_kind(capsys, archive: Archive):
    """history --kind state lists the state.json snapshots."""
    code, out, _ = cli(
        capsys, archive.cfg, "history", archive.builder.suffix, "--kind", "state", "--json"
    )
    assert code == 0
    snaps = json.loads(out)["snapshots"]
    assert len(snaps) == 2 and all(s["kind"] == "state" for s in snaps)


def test_diff_of_last_two_turns_the_first_document_into_the_second(capsys, archive: Archive):
    """diff (default: the last two) is a JSON Patch from the older bundle to the newer;
    for people, under a line naming the two snapshots compared; with --json, one
    document naming them beside the patch."""
    code, out, _ = cli(capsys, archive.cfg, "diff", archive.builder.pith_number, "--json")
    assert code == 0
    doc = json.loads(out)
    patch = doc["patch"]
    assert isinstance(patch, list) and patch
    before, after = json.loads(archive.first), json.loads(archive.second)
    assert jsonpatch.apply_patch(before, patch) == after
    old, new = doc["from"], doc["to"]
    assert old["id"] < new["id"] and old["mirror"] == new["mirror"] == "m0"
    assert old["body_sha256"] == hashlib.sha256(archive.first).hexdigest()
    assert new["body_sha256"] == hashlib.sha256(archive.second).hexdigest()
    code, out, _ = cli(capsys, archive.cfg, "diff", archive.builder.pith_number)
    assert code == 0
    head, _, rest = out.partition("\n")
    assert head.startswith(f"snapshot {old['id']} (m0, {old['fetched_at']}) -> ")
    assert head.endswith(f"snapshot {new['id']} (m0, {new['fetched_at']}): {len(patch)} changes")
    assert rest.startswith("[\n  {") and json.loads(rest) == patch  # indented for people


def test_diff_with_explicit_ids(capsys, archive: Archive):
    """--from/--to pick the snapshots; diffing one with itself is the empty patch."""
    _, out, _ = cli(capsys, archive.cfg, "history", archive.builder.suffix, "--json")
    snaps = json.loads(out)["snapshots"]
    (first, second), at = (str(s["id"]) for s in snaps), snaps[1]["fetched_at"]
    suffix = archive.builder.suffix
    code, out, _ = cli(
        capsys, archive.cfg, "diff", suffix, "--from", first, "--to", second, "--json"
    )
    assert code == 0
    patch = json.loads(out)["patch"]
    assert jsonpatch.apply_patch(json.loads(archive.first), patch) == json.loads(archive.second)
    code, out, _ = cli(capsys, archive.cfg, "diff", suffix, "--to", first)
    assert code == 2  # nothing before the first snapshot
    code, out, _ = cli(capsys, archive.cfg, "diff", suffix, "--from", second, "--to", second)
    assert (
        code == 0
        and out == f"snapshot {second} (m0, {at}) -> snapshot {second} (m0, {at}): no change\n"
    )


def test_diff_unknown_id_or_other_record_exits_2(capsys, archive: Archive):
    """An unknown snapshot id, or one of another record, is a one-line usage error."""
    code, out, err = cli(capsys, archive.cfg, "diff", archive.builder.suffix, "--from", "999")
    assert code == 2 and out == ""
    assert err.strip() == "pithcrawl: --from 999: no such snapshot in the archive"
    code, out, err = cli(capsys, archive.cfg, "diff", OTHER_SUFFIX, "--to", "1")
    assert code == 2 and out == ""
    assert "--to 1" in err and OTHER_SUFFIX in err and len(err.strip().splitlines()) == 1
    code, out, err = cli(capsys, archive.cfg, "diff", OTHER_SUFFIX)
    assert code == 2 and OTHER_SUFFIX in err and len(err.strip().splitlines()) == 1
    assert "no such record" in err
    assert cli(capsys, archive.cfg, "track", OTHER_SUFFIX)[0] == 0  # tracked, not synced
    code, out, err = cli(capsys, archive.cfg, "diff", OTHER_SUFFIX)
    assert code == 2 and "nothing of it is archived yet; run `pithcrawl sync` first" in err


def test_diff_refuses_what_is_not_two_bundles_in_order(capsys, archive: Archive):
    """A state snapshot, another mirror's, or the newer one first: a one-line usage error
    (a patch between a bundle and a state, or a reversed one, used to be printed)."""
    suffix = archive.builder.suffix
    _, out, _ = cli(capsys, archive.cfg, "history", suffix, "--json")
    first, second = (str(s["id"]) for s in json.loads(out)["snapshots"])
    _, out, _ = cli(capsys, archive.cfg, "history", suffix, "--kind", "state", "--json")
    state = str(json.loads(out)["snapshots"][0]["id"])
    for args, said in (
        (["--to", state], "diff compares bundles"),
        (["--from", second, "--to", first], "give the older snapshot first"),
        (["--mirror", "elsewhere", "--to", second], "not from elsewhere"),
    ):
        code, out, err = cli(capsys, archive.cfg, "diff", suffix, *args)
        assert code == 2 and out == "" and said in err, (args, err)


def test_events_lists_event_added_after_the_second_sync(capsys, archive: Archive):
    """events --json: one parseable object per line, event_added among them."""
    code, out, _ = cli(capsys, archive.cfg, "events", "--json")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    added = [e for e in events if e["kind"] == "event_added"]
    assert added
    assert added[0]["pith_number"] == archive.builder.pith_number
    assert added[0]["mirrors"] == ["m0"]
    assert set(added[0]) >= {"id", "kind", "severity", "at", "summary", "evidence", "dedup_key"}
    # No alert behind it: no alert id to pass to `evidence`, and the log entry's own id.
    assert added[0]["id"] is None and isinstance(added[0]["log_id"], int)


def test_events_filters_by_kind_and_since(capsys, archive: Archive):
    """--kind and --since filter; an unknown kind matches nothing and still exits 0."""
    code, out, _ = cli(capsys, archive.cfg, "events", "--kind", "event_added")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["at", "severity", "kind", "record", "mirrors", "summary"]
    assert lines[1:] and all(" event_added " in line for line in lines[1:])
    assert archive.builder.pith_number in lines[1] and " m0 " in lines[1]
    # Aligned: each column starts where the header's does.
    column = lines[0].index("kind")
    assert all(line[column:].startswith("event_added ") for line in lines[1:])
    code, out, _ = cli(capsys, archive.cfg, "events", "--kind", "brand_new_kind")
    assert (code, out.split(" in ")[0]) == (0, "no events of kind brand_new_kind")
    code, out, _ = cli(capsys, archive.cfg, "events", "--since", "2999-01-01T00:00:00Z")
    assert code == 0 and out.startswith("no events since 2999-01-01")
    assert cli(capsys, archive.cfg, "events", "--kind", "brand_new_kind", "--json")[:2] == (0, "")
    code, out, _ = cli(capsys, archive.cfg, "events", "--since", "1h", "--kind", "event_added")
    assert code == 0 and out.splitlines() == lines


def test_events_bad_since_exits_2_naming_the_flag(capsys, archive: Archive):
    """A --since that is neither a time nor a duration is a usage error naming --since."""
    code, out, err = cli(capsys, archive.cfg, "events", "--since", "yesterday")
    assert code == 2 and out == ""
    assert err.startswith("pithcrawl: --since 'yesterday'")


def test_status_shows_the_mirror_with_a_last_success(capsys, archive: Archive):
    """status --json: records, the mirror's last success, no failures, the database."""
    code, out, _ = cli(capsys, archive.cfg, "status", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["records"] == 1
    assert doc["db"]["path"] == str(archive.db) and doc["db"]["bytes"] > 0
    [m0] = doc["mirrors"]
    assert m0["name"] == "m0" and m0["records"] == 1
    assert m0["last_success_at"] is not None and m0["next_due"] is not None
    assert m0["failures"] == 0 and m0["last_failure_at"] is None and m0["last_error"] is None
    assert doc["open_alerts"] == []


def test_status_human_output_while_a_writer_holds_the_lock(capsys, archive: Archive):
    """status reads while another process (a `run` daemon) holds the writers' lock."""
    with writer_lock_held(archive.db):
        code, out, _ = cli(capsys, archive.cfg, "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"archive   {archive.db} (")
    assert lines[1] == "records   1 tracked"
    row = next(line for line in lines if line.startswith("m0 "))
    assert row.split()[1] == "1" and row.split()[4] == "0"
    assert "open alerts: 0" in lines


def test_status_lists_a_failing_mirror_and_a_critical_alert(
    capsys, tmp_path: Path, signer: TestSigner, mirror: TestMirror
):
    """A tampered bundle is an open alert; a dead mirror shows its failures and error."""
    b = BundleBuilder(signer, record=canonical_record("2611.00002", title="Q"))
    doc = b.build()
    doc["bundle_signature"]["bundle_sha256"] = "0" * 64
    mirror.put(json.dumps(doc).encode())
    dead = BundleBuilder(signer, record=canonical_record("2611.00003", title="R"))
    mirror.put(dead.bytes())
    mirror.fail(dead.suffix, 503)
    cfg = write_config(tmp_path, signer, mirror.base_url)
    assert cli(capsys, cfg, "sync", b.pith_number)[0] == 1
    assert cli(capsys, cfg, "sync", dead.pith_number)[0] == 3
    code, out, _ = cli(capsys, cfg, "status", "--json")
    assert code == 0  # a report, not a verdict
    status = json.loads(out)
    [alert] = status["open_alerts"]
    assert alert["kind"] == "document_invalid" and alert["severity"] == "critical"
    assert alert["status"] == "open" and alert["deliveries"] == []  # no sink configured
    code, out, _ = cli(capsys, cfg, "status")
    assert "[logged only: no alerts.hook or alerts.webhook to deliver to]" in out
    assert status["undelivered"] == 0
    [m0] = status["mirrors"]
    assert m0["failures"] == 1 and "503" in m0["last_error"]
    assert m0["last_failure_at"] is not None and m0["last_success_at"] is not None
    code, out, _ = cli(capsys, cfg, "history", b.suffix, "--json")
    [snap] = json.loads(out)["snapshots"]
    assert not snap["trusted"] and "bundle_hash_mismatch" in snap["findings"]
    assert snap["events"] == ["document_invalid"]


@pytest.mark.parametrize(
    "args",
    [("status",), ("history", OTHER_SUFFIX), ("diff", OTHER_SUFFIX), ("events", "--json")],
)
def test_missing_database_exits_2_and_creates_nothing(capsys, tmp_path: Path, args):
    """Without an archive: exit 2, a hint to run sync, and no file created."""
    db = tmp_path / "nothing.db"
    code = main(["--db", str(db), *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == f"pithcrawl: no archive at {db}; run `pithcrawl sync` first\n"
    assert list(tmp_path.iterdir()) == []


def test_history_of_an_unknown_record_exits_2(capsys, archive: Archive):
    """An unknown (or malformed) PITH is a one-line usage error naming it."""
    code, out, err = cli(capsys, archive.cfg, "history", OTHER_SUFFIX)
    assert code == 2 and out == ""
    assert err == f"pithcrawl: PITH {OTHER_SUFFIX}: no such record in the archive {archive.db}\n"
    code, out, err = cli(capsys, archive.cfg, "history", "not-a-pith")
    assert code == 2 and out == ""
    assert err.startswith("pithcrawl: PITH 'not-a-pith':") and err.count("\n") == 1


@pytest.mark.parametrize("args", [("status",), ("sync",), ("run",), ("fsck",), ("serve",)])
@pytest.mark.parametrize("via", ["--db", "config"])
def test_a_directory_as_the_archive_is_a_usage_error(capsys, tmp_path: Path, args, via):
    """`db` naming a directory: exit 2 naming the flag or key (sync said 3, "may pithcrawl
    write there?", and status "no archive")."""
    directory = tmp_path / "state"
    directory.mkdir()
    if via == "--db":
        code = main(["--db", str(directory), *args])
    else:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'db = "{directory}"\n')
        code = main(["--config", str(cfg), *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    named = "--db" if via == "--db" else "db"
    assert err == f"pithcrawl: {named}: {directory} is a directory; name the archive's file in it\n"
    assert list(directory.iterdir()) == []


def test_history_from_a_mirror_the_archive_does_not_know_exits_2(capsys, archive: Archive):
    """`--mirror` naming no mirror at all is a usage error, as for `diff` (it printed "0
    bundle snapshot(s)" and exit 0); a known mirror with nothing of this kind is 0."""
    code, out, err = cli(capsys, archive.cfg, "history", archive.builder.suffix, "--mirror", "m9")
    assert (code, out) == (2, "")
    assert "--mirror m9: no such mirror" in err
    code, out, _ = cli(capsys, archive.cfg, "history", archive.builder.suffix, "--mirror", "m0")
    assert code == 0 and "2 bundle snapshot(s) from m0" in out


def test_verbose_is_pithcrawls_detail_not_its_libraries(capsys, archive: Archive):
    """-v asks pithcrawl for more; aiosqlite's two debug lines per statement are not that
    (a 200-record sync at -v printed 2,376 of them)."""
    capsys.readouterr()
    assert main(["--config", str(archive.cfg), "--log-format", "json", "-v", "status"]) == 0
    assert "aiosqlite" not in capsys.readouterr().err


def test_history_marks_a_damaged_body_and_shows_every_other_row(capsys, archive: Archive):
    """One archived body damaged on disk: `history` still lists every snapshot, marks the
    one it cannot read back (and says to run fsck), and exits 0; it used to exit 3."""
    suffix = archive.builder.suffix
    _, out, _ = cli(capsys, archive.cfg, "history", suffix, "--json")
    first, second = json.loads(out)["snapshots"]
    with raw(archive.db) as c:
        c.execute("UPDATE blobs SET data = ? WHERE sha256 = ?", (b"\x00", second["body_sha256"]))
    code, out, _ = cli(capsys, archive.cfg, "history", suffix)
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[0].isdigit()}
    assert set(rows) == {str(first["id"]), str(second["id"])}
    assert "DAMAGED" in rows[str(second["id"])] and "DAMAGED" not in rows[str(first["id"])]
    assert f"  {second['id']}: DAMAGED " in out and "pithcrawl fsck" in out
    code, out, _ = cli(capsys, archive.cfg, "history", suffix, "--json")
    damaged = {s["id"]: s["damaged"] for s in json.loads(out)["snapshots"]}
    assert damaged[first["id"]] is None and damaged[second["id"]]
