"""`pithcrawl evidence`: the documents behind an alert, re-checked with `pithcrawl verify`.

Archives are built by real `sync` passes (`sync.sync_once`) against loopback mirrors;
`evidence` and `verify` then run through `pithcrawl.cli.main`, offline.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shlex
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from builder import BundleBuilder, TestSigner, canonical_record, serialize
from conftest import db_setting
from mirror import TestMirror

from pithcrawl.cli import main
from pithcrawl.commands.evidence import body_refs
from pithcrawl.config import load_config
from pithcrawl.errors import StoreCorrupt
from pithcrawl.keys import TrustSet, load_key
from pithcrawl.location import PgUrl
from pithcrawl.store import Alert, Store
from pithcrawl.sync import sync_once

Rounds = Sequence[Sequence[bytes | None]]
"""Sync passes; in each, what every mirror serves (None: leave it as it was)."""


@dataclass
class Archive:
    cfg: Path
    db: Path | PgUrl
    alerts: list[Alert]

    def alert(self, kind: str) -> Alert:
        """The oldest open alert of a kind (a rollback is one alert per cause)."""
        return min((a for a in self.alerts if a.kind == kind), key=lambda a: a.id)


def build(
    tmp_path: Path,
    signer: TestSigner,
    suffix: str,
    rounds: Rounds,
    db: Path | PgUrl | None = None,
) -> Archive:
    """An archive (at `db`, either backend, else in `tmp_path`) after one sync pass per
    round, with a config that names the test key."""

    async def go() -> list[Alert]:
        async with AsyncExitStack() as stack:
            mirrors = [await stack.enter_async_context(TestMirror()) for _ in range(len(rounds[0]))]
            key = tmp_path / "test.key.json"
            key.write_text(json.dumps(signer.public_key()))
            cfg.write_text(
                f"db = {json.dumps(db_setting(db))}\n"
                f'[trust]\nkeys = ["{key.name}"]\n[crawl]\ntimeout = "5s"\n'
                "discover = false\n"
                + "".join(
                    f'[[mirrors]]\nname = "m{i}"\nbase_url = "{m.base_url}"\n'
                    for i, m in enumerate(mirrors)
                )
            )
            config = load_config(cfg)
            trust = TrustSet([load_key(signer.public_key())])
            async with await Store.open(config.db_path({})) as store:
                await store.watchlist.track([suffix], datetime.now(UTC))
            for bodies in rounds:
                for m, body in zip(mirrors, bodies, strict=True):
                    if body is not None:
                        m.put(body)
                await sync_once(config, config.db_path({}), [], trust)
        async with await Store.open(config.db_path({}), readonly=True) as store:
            return await store.alerts.open_alerts()

    cfg = tmp_path / "pithcrawl.toml"
    alerts = anyio.run(go)
    return Archive(cfg, tmp_path / "archive.db" if db is None else db, alerts)


def record(signer: TestSigner) -> BundleBuilder:
    return BundleBuilder(signer, record=canonical_record("2611.00042", title="E"))


def evidence(capsys: pytest.CaptureFixture[str], a: Archive, *args: str) -> tuple[int, str, str]:
    code = main(["--config", str(a.cfg), "--log-format", "json", "-q", "evidence", *args])
    out, err = capsys.readouterr()
    return code, out, err


def verify(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    code = main(["--log-format", "json", "-q", *argv])
    out, _ = capsys.readouterr()
    return code, out


def load(path: Path) -> Any:
    return json.loads(path.read_bytes())


@pytest.fixture
def divergence(tmp_path: Path, signer: TestSigner, archive_at: Path | PgUrl) -> Archive:
    """m0 and m1 serve forks of one record, each validly signed by the test key."""
    a = record(signer)
    b = copy.deepcopy(a)  # the same record_created on both sides
    a.add_event(payload={"graph_snapshot": {"side": "a"}})
    b.add_event(payload={"graph_snapshot": {"side": "b"}})
    b.add_event(payload={"graph_snapshot": {"side": "b", "n": 2}})
    return build(tmp_path, signer, a.suffix, [[a.bytes(), b.bytes()]], archive_at)


@pytest.fixture
def tampered(tmp_path: Path, signer: TestSigner, archive_at: Path | PgUrl) -> tuple[Archive, bytes]:
    b = record(signer)
    b.add_event()
    doc = b.build()
    doc["events"][1]["payload"] = {"graph_snapshot": {"forged": True}}
    body = serialize(doc)
    return build(tmp_path, signer, b.suffix, [[body]], archive_at), body


def test_divergence_writes_both_documents_keys_and_summary(
    capsys, tmp_path, divergence: Archive, signer: TestSigner
):
    """mirror_divergence: both bodies byte for byte under their sha256, the key, a summary."""
    alert = divergence.alert("mirror_divergence")
    out = tmp_path / "out"
    code, stdout, _ = evidence(capsys, divergence, str(alert.id), "--out", str(out))
    assert code == 0
    assert str(out) in stdout and "2 document(s)" in stdout
    summary = load(out / "summary.json")
    assert summary["alert"] == alert.to_json()
    cited = alert.evidence["documents"]
    assert [d["sha256"] for d in summary["documents"]] == [c["body_sha256"] for c in cited]
    for i, (d, c) in enumerate(zip(summary["documents"], cited, strict=True)):
        body = (out / d["file"]).read_bytes()
        assert d["file"] == f"documents/{c['body_sha256']}.json"
        assert hashlib.sha256(body).hexdigest() == c["body_sha256"]
        assert d["role"] == f"documents[{i}]"
        assert (d["mirror"], d["url"], d["fetched_at"]) == (c["mirror"], c["url"], c["fetched_at"])
        assert d["trusted"] is True
    assert summary["keys"] == ["keys/test-key-1.key.json"]
    assert load(out / "keys/test-key-1.key.json") == load_key(signer.public_key()).to_json()
    assert len(summary["recheck"]) == 2
    assert summary["pithcrawl_version"] and summary["generated_at"]


def test_divergence_documents_both_verify(capsys, tmp_path, divergence: Archive):
    """The fork is proven by valid signatures: verify exits 0 on both documents."""
    out = tmp_path / "out"
    evidence(capsys, divergence, str(divergence.alert("mirror_divergence").id), "--out", str(out))
    docs = sorted(str(p) for p in (out / "documents").glob("*.json"))
    assert len(docs) == 2
    code, stdout = verify(capsys, ["verify", "--key", str(out / "keys/test-key-1.key.json"), *docs])
    assert code == 0, stdout


def test_recheck_commands_run_from_the_directory(capsys, tmp_path, divergence, monkeypatch):
    """Each command in summary.json's `recheck` works as written, from DIR."""
    out = tmp_path / "out"
    evidence(capsys, divergence, str(divergence.alert("mirror_divergence").id), "--out", str(out))
    monkeypatch.chdir(out)
    for command in load(out / "summary.json")["recheck"]:
        argv = shlex.split(command)
        assert argv[:2] == ["pithcrawl", "verify"] and "--now" in argv
        assert verify(capsys, argv[1:])[0] == 0


def test_readme_lists_the_event_ids_each_side_lacks(capsys, tmp_path, divergence: Archive):
    """README.txt tells the claim: the event ids only in each mirror's document."""
    alert = divergence.alert("mirror_divergence")
    out = tmp_path / "out"
    evidence(capsys, divergence, str(alert.id), "--out", str(out))
    text = (out / "README.txt").read_text()
    only = alert.evidence["only_in"]
    assert len(only["m0"]) == 1 and len(only["m1"]) == 2
    for ids in only.values():
        assert all(i in text for i in ids)
    for command in load(out / "summary.json")["recheck"]:
        assert command in text


def test_tampered_document_fails_verify(capsys, tmp_path, tampered, signer: TestSigner):
    """document_invalid: the exact tampered bytes, and verify exits 1 on them."""
    archive, body = tampered
    alert = archive.alert("document_invalid")
    out = tmp_path / "out"
    code, stdout, _ = evidence(capsys, archive, str(alert.id), "--out", str(out))
    assert code == 0 and "1 document(s)" in stdout
    sha = hashlib.sha256(body).hexdigest()
    assert (out / f"documents/{sha}.json").read_bytes() == body
    (doc,) = load(out / "summary.json")["documents"]
    assert (doc["role"], doc["trusted"], doc["mirror"]) == ("body_sha256", False, "m0")
    assert doc["fetched_at"] == alert.evidence["fetched_at"]
    code, stdout = verify(
        capsys,
        [
            "verify",
            "--key",
            str(out / "keys/test-key-1.key.json"),
            *map(str, (out / "documents").glob("*.json")),
        ],
    )
    assert code == 1
    assert "event_hash_mismatch" in stdout
    assert "event_hash_mismatch" in (out / "README.txt").read_text()


def test_rollback_writes_the_previous_and_the_served_document(capsys, tmp_path, signer):
    """rollback: the newer body served before and the older one served now; both verify."""
    b = record(signer)
    old = b.bytes()
    b.add_event()
    new = b.bytes()
    archive = build(tmp_path, signer, b.suffix, [[new], [old]])
    alert = archive.alert("rollback")
    out = tmp_path / "out"
    assert evidence(capsys, archive, str(alert.id), "--out", str(out))[0] == 0
    docs = {d["role"]: d for d in load(out / "summary.json")["documents"]}
    assert set(docs) == {"body_sha256", "previous_body_sha256"}
    assert (out / docs["body_sha256"]["file"]).read_bytes() == old
    assert (out / docs["previous_body_sha256"]["file"]).read_bytes() == new
    previous = docs["previous_body_sha256"]
    assert previous["mirror"] == "m0" and previous["fetched_at"] and previous["url"]
    files = [str(out / d["file"]) for d in docs.values()]
    key = str(out / "keys/test-key-1.key.json")
    assert verify(capsys, ["verify", "--key", key, *files])[0] == 0


def test_equivocation_documents_hold_the_conflicting_events(capsys, tmp_path, signer):
    """equivocation: one document per conflicting event, each verifies; README pairs them."""
    a = record(signer)
    b = copy.deepcopy(a)
    root = a.events[0]["event_id"]
    a.add_event(payload={"graph_snapshot": {"side": "a"}}, prev_event=root)
    b.add_event(payload={"graph_snapshot": {"side": "b"}}, prev_event=root)
    archive = build(tmp_path, signer, a.suffix, [[a.bytes(), b.bytes()]])
    alert = archive.alert("equivocation")
    out = tmp_path / "out"
    assert evidence(capsys, archive, str(alert.id), "--out", str(out))[0] == 0
    docs = load(out / "summary.json")["documents"]
    assert [d["role"] for d in docs] == ["documents[0]", "documents[1]"]
    files = [str(out / d["file"]) for d in docs]
    key = str(out / "keys/test-key-1.key.json")
    assert verify(capsys, ["verify", "--key", key, *files])[0] == 0
    text = (out / "README.txt").read_text()
    for event_id, d in zip(alert.evidence["event_ids"], docs, strict=True):
        assert f"{event_id} in {d['file']}" in text


def test_non_empty_directory_is_refused_unless_forced(capsys, tmp_path, tampered):
    """An existing non-empty DIR: exit 2 naming --out, nothing written; --force writes."""
    archive, _ = tampered
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    alert_id = str(archive.alert("document_invalid").id)
    code, _, err = evidence(capsys, archive, alert_id, "--out", str(out))
    assert code == 2 and "--out" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert evidence(capsys, archive, alert_id, "--out", str(out), "--force")[0] == 0
    assert (out / "summary.json").is_file() and (out / "notes.txt").read_text() == "mine"


def test_unknown_alert_is_a_usage_error(capsys, tmp_path, tampered):
    """An id with no alert: exit 2 naming it; the directory is not created."""
    archive, _ = tampered
    out = tmp_path / "out"
    code, _, err = evidence(capsys, archive, "9999", "--out", str(out))
    assert code == 2 and "9999" in err
    assert not out.exists()


def test_no_archive_is_a_usage_error(capsys, tmp_path):
    """No database yet: exit 2, and no database is created."""
    db = tmp_path / "none.db"
    code = main(["--db", str(db), "-q", "evidence", "1", "--out", str(tmp_path / "out")])
    _, err = capsys.readouterr()
    assert code == 2 and "sync" in err
    assert not db.exists()


def test_body_refs_finds_every_body_named_in_evidence():
    """Keys ending in body_sha256 anywhere, documents[i] by index; fetch details only
    for an object's own body_sha256."""
    sha = [c * 64 for c in "abcd"]
    refs = body_refs(
        {
            "mirror": "m0",
            "url": "u0",
            "fetched_at": "t0",
            "state_body_sha256": sha[0],
            "bundle_body_sha256": sha[1],
            "documents": [{"mirror": "m1", "url": "u1", "fetched_at": "t1", "body_sha256": sha[2]}],
            "nested": {"previous_body_sha256": sha[3], "body_sha256": None},
        }
    )
    assert [(r.role, r.sha256, r.mirror, r.url, r.fetched_at) for r in refs] == [
        ("state_body_sha256", sha[0], "m0", None, None),
        ("bundle_body_sha256", sha[1], "m0", None, None),
        ("documents[0]", sha[2], "m1", "u1", "t1"),
        ("nested.previous_body_sha256", sha[3], None, None, None),
    ]
    # A reference that is no sha256 is damage, not a document to leave out in silence.
    with pytest.raises(StoreCorrupt, match=r"nested\.body_sha256 'not a sha'"):
        body_refs({"nested": {"body_sha256": "not a sha"}})


def test_a_rollback_claim_names_the_events_each_cause_concerns():
    """A rollback that dropped one event and changed another's content: the evidence's
    README names both, each for its cause (the changed ones were left out once the
    causes became one alert)."""
    from datetime import UTC, datetime

    from pithcrawl.commands.evidence import claim
    from pithcrawl.store import Alert

    evidence = {
        "mirror": "m",
        "cause": "events_dropped+event_content_changed",
        "causes": ["events_dropped", "event_content_changed"],
        "built_at": {"before": "b", "after": "a"},
        "events": [{"event_id": "sha256:dropped", "event_type": "graph_snapshot"}],
        "changed_events": [{"event_id": "sha256:changed", "content_sha256": {}}],
    }
    now = datetime.now(UTC)
    alert = Alert(1, "k", "s", "rollback", "critical", None, None, ("m",), "x", evidence, now, None)
    text = "\n".join(claim(alert, {}))
    assert "Events dropped: sha256:dropped." in text
    assert "Events changed content: sha256:changed." in text
