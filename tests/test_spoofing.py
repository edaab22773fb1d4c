"""Spoofing: untrusted text never reaches a terminal, a log, a hook or a file system raw.

A manifest names mirrors with escape codes and forged lines, the archive holds text a
mirror sent, an evidence directory holds planted links, worker processes share one
stderr: each case is run for real (loopback servers, the real CLI, real processes).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from arena import GOOD, arena
from builder import BundleBuilder, TestSigner
from conftest import VANTAGE
from test_alerts import calls, hook_script

from pithcrawl.cli import main
from pithcrawl.config import parse_config
from pithcrawl.log import configure
from pithcrawl.mirrors import from_manifest
from pithcrawl.store import Store
from pithcrawl.sync import sync_once

pytestmark = pytest.mark.anyio

#: What a hostile name or text tries: clear the screen, then forge a line of `status`.
FORGED = "\x1b[2J\x1b[H\n  #0 2026-01-01T00:00:00Z  info nothing to see \u202e"


def _manifest(entries: list[dict[str, Any]]) -> bytes:
    doc = {"manifest_type": "pith_mirror_manifest", "manifest_version": "1.0", "mirrors": entries}
    return json.dumps(doc).encode()


def _entry(name: str, base: str) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": base,
        "bundle_pattern": f"{base}/pith/{{suffix}}/bundle.json",
        "state_pattern": f"{base}/pith/{{suffix}}/state.json",
    }


async def test_a_manifest_name_with_escape_codes_is_never_shown(tmp_path, signer, capsys):
    """A manifest lists a mirror under a name of escape codes and a forged line, next to
    an honest entry: the hostile name is never used (the entry takes its host's name,
    with one warning, the name escaped), and nothing of it reaches `status`, `events`, a
    hook's environment or the archive."""
    async with arena(tmp_path, signer, records=1) as a:
        a.good.extra["/pith-mirrors.json"] = _manifest(
            [
                _entry(FORGED, a.hostile.base_url + "/elsewhere"),
                # The hostile server again, by another name: a mirror of its own.
                _entry("listed", a.hostile.base_url.replace("127.0.0.1", "localhost")),
            ]
        )
        hook = hook_script(tmp_path)
        text = a.config_text().replace(
            "discover = false\n", "discover = false\nallow_private_hosts = true\n"
        )
        text += (
            f'[[mirrors]]\nname = "registry"\nmanifest = "{a.good.base_url}/pith-mirrors.json"\n'
            f'[alerts]\nhook = "{hook}"\n'
        )
        cfg = tmp_path / "pithcrawl.toml"
        cfg.write_text(text)
        # The listed mirror serves the record signed by a stranger: an alert naming it.
        forged = BundleBuilder(TestSigner("rogue-key"), record=a.records[0].record)
        forged.add_event()
        a.hostile.route(a.hostile.bundle_path(a.records[0].suffix), _body(forged.bytes()))
        with structlog.testing.capture_logs() as logs:
            summary = await sync_once(parse_config(text, base_dir=tmp_path), a.db, [], a.trust)
            await a.assert_good_archived()
        assert summary.mirrors == 4  # good, hostile, registry/127.0.0.1, registry/listed
        (renamed,) = [e for e in logs if e["event"] == "manifest_entry_renamed"]
        assert "\x1b" not in renamed["name"] and "\\x1b" in renamed["name"]
        for command in ("status", "events"):  # the CLI runs its own event loop
            assert await anyio.to_thread.run_sync(main, ["--config", str(cfg), command]) == 0
        out = capsys.readouterr().out
        assert "registry/listed" in out
        for raw in ("\x1b", "\u202e", "nothing to see"):
            assert raw not in out
        envs = [c["env"] for c in calls(tmp_path)]
        assert {e["MIRRORS"] for e in envs} >= {"hostile", "registry/listed"}
        with sqlite3.connect(a.db) as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM mirrors")]
        assert sorted(n for n in names if n.startswith("registry/")) == [
            "registry/127.0.0.1",
            "registry/listed",
        ]


def _body(data: bytes) -> Any:
    from hostile import respond

    return respond(200, data)


def _hostile_rows(db: Path) -> None:
    """Text as a mirror might have got it into an older archive: an alert and an event
    whose summary, mirrors and errors hold escape codes and a forged line."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO alerts (dedup_key, scope, kind, severity, mirrors, summary, evidence,"
            " opened_at) VALUES (?, 'x', 'document_invalid', 'critical', ?, ?, '{}',"
            " '2026-11-01T00:00:00.000000Z')",
            ("k" + FORGED, json.dumps([FORGED]), "served " + FORGED),
        )
        conn.execute(
            "INSERT INTO events (at, kind, severity, mirrors, summary, evidence, dedup_key)"
            " VALUES ('2026-11-01T00:00:00.000000Z', 'document_invalid', 'critical', ?, ?,"
            " '{}', ?)",
            (json.dumps([FORGED]), "served " + FORGED, "k" + FORGED),
        )
        conn.execute(
            "INSERT INTO fetch_state (suffix, mirror, kind, url, failures, last_error,"
            " last_fetch_at) VALUES (?, ?, 'bundle', 'http://x', 1, ?,"
            " '2026-11-01T00:00:00.000000Z')",
            ("A" * 26, "m" + FORGED, "HTTP 500 " + FORGED),
        )


@pytest.mark.parametrize(
    "command",
    [["status"], ["events"], ["status", "--json"], ["events", "--json"]],
    ids=["status", "events", "status-json", "events-json"],
)
def test_text_in_the_archive_is_printed_escaped(tmp_path, capsys, command):
    """Whatever text the archive holds, `status` and `events` print it one line per
    entry with every control code escaped (they printed it raw: the screen cleared and
    a forged alert line appeared); their JSON is still JSON of the same text."""
    db = tmp_path / "a.db"
    assert main(["--db", str(db), "track", "A" * 26]) == 0
    _hostile_rows(db)
    capsys.readouterr()
    assert main(["--db", str(db), *command]) == 0
    out = capsys.readouterr().out
    assert not any(ch in out for ch in "\x1b\u202e"), out
    assert not any(line.startswith("  #0 2026") for line in out.splitlines())  # no forged line
    if "--json" in command:
        docs = [json.loads(line) for line in out.splitlines()]
        assert any(FORGED in text for text in _strings(docs))  # the same text, as JSON
    else:
        assert "\\x1b[2J" in out


def _strings(doc: Any) -> list[str]:
    if isinstance(doc, str):
        return [doc]
    if isinstance(doc, dict):
        doc = list(doc.values())
    return [t for item in doc for t in _strings(item)] if isinstance(doc, list) else []


def test_evidence_force_never_writes_through_a_planted_link(tmp_path, capsys):
    """`evidence --force` into a directory where someone planted links named like its
    files: the links are replaced by the files, their targets are untouched; a link in
    place of its `documents` directory is refused (exit 3) and nothing is written there.
    (It followed them and overwrote their targets.)"""
    db = tmp_path / "a.db"
    assert main(["--db", str(db), "track", "A" * 26]) == 0
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO alerts (dedup_key, scope, kind, severity, mirrors, summary, evidence,"
            " opened_at) VALUES ('k', 'x', 'mirror_unreachable', 'error', '[\"m\"]', 's',"
            " '{\"mirror\": \"m\"}', '2026-11-01T00:00:00.000000Z')"
        )
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").symlink_to(victim)
    (out / "README.txt").symlink_to(victim)
    assert main(["--db", str(db), "evidence", "1", "--out", str(out), "--force"]) == 0
    assert victim.read_text() == "precious\n"
    assert not (out / "summary.json").is_symlink()
    assert json.loads((out / "summary.json").read_text())["alert"]["id"] == 1

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = tmp_path / "again"
    again.mkdir()
    (again / "documents").symlink_to(elsewhere, target_is_directory=True)
    capsys.readouterr()
    assert main(["--db", str(db), "evidence", "1", "--out", str(again), "--force"]) == 3
    err = capsys.readouterr().err
    assert "refusing to write through it" in err and "Traceback" not in err
    assert list(elsewhere.iterdir()) == []


_LOGGER = """
import sys
from pithcrawl.log import configure, get_logger
configure("json")
log = get_logger()
for i in range(int(sys.argv[1])):
    log.info("line", i=i, who=sys.argv[2], pad="y" * 300)
"""


def test_log_lines_of_processes_sharing_stderr_never_run_together(tmp_path):
    """Four processes log 3,000 JSON lines each into one pipe, as a pass's worker
    processes do: every line is one whole JSON object (the message and its newline were
    two writes: about 0.4% of lines ran into each other)."""
    n, procs = 3000, 4
    read, write = os.pipe()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _LOGGER, str(n), f"p{k}"],
            stderr=write,
            stdout=subprocess.DEVNULL,
        )
        for k in range(procs)
    ]
    os.close(write)
    with os.fdopen(read, "rb") as r:
        data = r.read()
    assert all(c.wait(timeout=60) == 0 for c in children)
    lines = data.decode().splitlines()
    docs = [json.loads(line) for line in lines]  # each line is one object, or this fails
    assert len(docs) == n * procs
    assert {d["who"] for d in docs} == {f"p{k}" for k in range(procs)}


def test_the_console_log_shows_untrusted_text_escaped():
    """On a terminal, a log line whose message holds escape codes and a line break (a
    library's message quoting a request, as aiohttp's server logs one) is shown escaped,
    on one line; so are values."""
    out = StringIO()
    configure("console", stream=out)
    try:
        logging.getLogger("aiohttp.server").error("Error handling request %s", FORGED)
        structlog.get_logger("t").warning("fetch_failed", error="HTTP 500 " + FORGED)
    finally:
        configure("json")
    text = out.getvalue()
    assert text.count("\n") == 2
    assert "\x1b" not in text and "\u202e" not in text
    assert text.count("\\x1b[2J") == 2


def test_the_console_log_shows_a_traceback_as_text():
    """`log.exception` on a terminal: the traceback as lines of text after the event
    (tracebacks as data are for JSON; before, the console renderer choked on them and
    the log call itself raised)."""
    out = StringIO()
    configure("console", stream=out)
    try:
        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            structlog.get_logger("t").exception("pair_failed", detail="internal error")
    finally:
        configure("json")
    text = out.getvalue()
    assert "pair_failed" in text
    assert "Traceback (most recent call last)" in text
    assert "ZeroDivisionError: boom" in text


_JOURNAL = """
from pithcrawl.log import configure, get_logger
configure("json")
log = get_logger()
log.critical("rollback", summary="s")
log.error("mirror_stale")
log.warning("fetch_failed")
log.info("crawl_summary")
"""


def test_under_systemd_each_line_carries_its_syslog_priority(tmp_path):
    """With JOURNAL_STREAM naming stderr (systemd's way of saying the journal reads it),
    each line starts with its priority, which journald strips and files the line under:
    `journalctl -p err` finds the critical and error ones."""
    left, right = socket.socketpair()
    st = os.fstat(right.fileno())
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    proc = subprocess.run(
        [sys.executable, "-c", _JOURNAL], stderr=right.fileno(), env=env, check=True, timeout=30
    )
    assert proc.returncode == 0
    right.close()
    data = b""
    while chunk := left.recv(65536):
        data += chunk
    left.close()
    lines = data.decode().splitlines()
    assert [line[:3] for line in lines] == ["<2>", "<3>", "<4>", "<6>"]
    assert json.loads(lines[0][3:])["event"] == "rollback"


async def test_a_manifest_may_not_point_at_private_addresses(tmp_path, signer):
    """A manifest (unsigned, from the network) listing a mirror on loopback: skipped,
    unless `crawl.allow_private_hosts` (an operator's own internal mirror network). It
    was crawled: an open door to internal addresses."""
    async with arena(tmp_path, signer, records=1) as a:
        inside = a.hostile.base_url.replace("127.0.0.1", "localhost")
        a.good.extra["/pith-mirrors.json"] = _manifest([_entry("inside", inside)])
        text = a.config_text() + (
            f'[[mirrors]]\nname = "registry"\nmanifest = "{a.good.base_url}/pith-mirrors.json"\n'
        )
        path = a.hostile.bundle_path(a.records[0].suffix)
        with structlog.testing.capture_logs() as logs:
            summary = await sync_once(parse_config(text, base_dir=tmp_path), a.db, [], a.trust)
            await a.assert_good_archived()
        assert summary.mirrors == 2 and a.hostile.hits[path] == 1  # as "hostile" only
        (skipped,) = [e for e in logs if e["event"] == "mirror_skipped"]
        assert (skipped["mirror"], skipped["origin"]) == ("registry/inside", "manifest")
        allowed = text.replace(
            "discover = false\n", "discover = false\nallow_private_hosts = true\n"
        )
        summary = await sync_once(parse_config(allowed, base_dir=tmp_path), a.db, [], a.trust)
        await a.assert_good_archived()
        assert summary.mirrors == 3 and a.hostile.hits[path] == 3
        async with await Store.open(a.db, readonly=True) as store:
            assert await store.latest_snapshot(a.records[0].suffix, GOOD, "bundle") is not None


# -- the small ones ------------------------------------------------------------------------


def test_verify_now_at_the_end_of_time_is_a_usage_error(capsys):
    """`verify --now 9999-12-31T23:59:59Z`: the clock skew would take it past the last
    time there is: exit 2 and one line (an OverflowError: internal error, exit 3)."""
    fixture = Path(__file__).parent / "fixtures" / "real" / "2SZ3GMWFCMMCUPZJQTONOWSJZ2.bundle.json"
    assert main(["verify", "--now", "9999-12-31T23:59:59Z", str(fixture)]) == 2
    err = capsys.readouterr().err
    assert "--now" in err and "Traceback" not in err


@pytest.mark.parametrize("option", ["--config", "--key", "webhook_secret_file"])
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "huge"])
def test_a_file_without_end_is_not_read_without_bound(tmp_path, capsys, option, kind):
    """`--config`, `--key` or `alerts.webhook_secret_file` naming /dev/zero, a FIFO or a
    regular file of many megabytes: exit 2 at once, saying why (/dev/zero was read until
    memory ran out; a FIFO held the command, or the daemon's reload, until written to)."""
    if kind == "dev-zero":
        path, why = Path("/dev/zero"), "not a regular file"
    elif kind == "fifo":
        path, why = tmp_path / "fifo", "not a regular file"
        os.mkfifo(path)
    else:
        path, why = tmp_path / "huge", "larger than"
        path.write_bytes(b"#" * (2 << 20))
    if option == "webhook_secret_file":
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'[alerts]\nwebhook = "http://127.0.0.1:9/x"\nwebhook_secret_file = "{path}"\n'
            '[[mirrors]]\nname = "m"\nbase_url = "http://127.0.0.1:9"\n'
        )
        argv = ["--config", str(cfg), "--db", str(tmp_path / "a.db"), "sync"]
    elif option == "--key":
        argv = ["verify", "--key", str(path), "-"]
    else:
        argv = ["--config", str(path), "status"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(path) in err and why in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["status"], ["sync", "--json"]], ids=["status", "sync"])
def test_a_closed_stdout_is_no_traceback(tmp_path, command):
    """`status` or `sync --json` with stdout closed (`>&-`): the command runs to its own
    exit code, quietly (it exited 120 with a traceback)."""
    db = tmp_path / "a.db"
    base = [sys.executable, "-m", "pithcrawl", "--db", str(db)]
    assert main(["--db", str(db), "track", "A" * 26]) == 0
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[mirrors]]\nname = "m"\nbase_url = "http://127.0.0.1:9"\n')
    proc = subprocess.run(
        [*base, "--config", str(cfg), *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
        pass_fds=(),
        preexec_fn=lambda: os.close(1),
    )
    assert proc.returncode == (0 if command == ["status"] else 3), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [["status"], ["events"], ["history", "A" * 26]])
def test_a_full_disk_under_stdout_is_one_line_and_exit_3(tmp_path, command):
    """`status`, `events`, `history` onto a full disk (/dev/full): exit 3 and one line
    saying so (a traceback before)."""
    db = tmp_path / "a.db"
    base = [sys.executable, "-m", "pithcrawl", "--db", str(db)]
    assert main(["--db", str(db), "track", "A" * 26]) == 0
    _hostile_rows(db)  # something for `events` to print
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [*base, *command], stdout=full, stderr=subprocess.PIPE, text=True, check=False
        )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "pithcrawl: cannot write the output: No space left on device"
    ]


def test_an_error_quoting_what_was_typed_is_shown_escaped(tmp_path, capsys):
    """A usage error naming an argument with escape codes (`history --mirror`, a --db
    path) prints it escaped on stderr (it went raw: a forged line, a cleared screen)."""
    db = tmp_path / "a.db"
    assert main(["--db", str(db), "track", "A" * 26]) == 0
    capsys.readouterr()
    assert main(["--db", str(db), "history", "A" * 26, "--mirror", FORGED]) == 2
    assert main(["--db", str(tmp_path / ("nothing" + FORGED)), "status"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\u202e" not in err
    assert len(err.splitlines()) == 2 and err.count("\\x1b[2J") == 2


def test_evidence_names_a_long_key_id_file_within_the_file_systems_limit(tmp_path, capsys):
    """A learned key whose key_id is 300 characters long: its key file name is cut (with
    a hash of the whole id), and `evidence` writes every file (it failed with "File name
    too long", leaving half a package)."""
    db = tmp_path / "a.db"
    assert main(["--db", str(db), "track", "A" * 26]) == 0
    long = TestSigner("k" * 300)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO alerts (dedup_key, scope, kind, severity, mirrors, summary, evidence,"
            " opened_at) VALUES ('k', 'x', 'mirror_unreachable', 'error', '[\"m\"]', 's',"
            " '{\"mirror\": \"m\"}', '2026-11-01T00:00:00.000000Z')"
        )
        conn.execute(
            "INSERT INTO blobs (sha256, size, codec, data) VALUES (?, 0, 'zstd', x'')", ("b" * 64,)
        )
        conn.execute(
            "INSERT INTO learned_keys (key_id, key_json, learned_at, mirror, body_sha256)"
            " VALUES (?, ?, '2026-11-01T00:00:00.000000Z', 'm', ?)",
            (long.key_id, json.dumps(long.public_key()), "b" * 64),
        )
    cfg = tmp_path / "c.toml"
    key = tmp_path / "long.key.json"
    key.write_text(json.dumps(long.public_key()))
    cfg.write_text(f'db = "{db}"\n[trust]\nkeys = ["{key}"]\n')
    out = tmp_path / "ev"
    assert main(["--config", str(cfg), "evidence", "1", "--out", str(out)]) == 0
    (written,) = (out / "keys").iterdir()
    assert len(written.name) < 120 and written.name.endswith(".key.json")
    assert json.loads(written.read_text())["key_id"] == long.key_id


def _manifest_doc(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"manifest_type": "pith_mirror_manifest", "manifest_version": "1.0", "mirrors": entries}


def test_a_name_listed_twice_is_read_once_the_first_time():
    """A manifest naming `x` twice, first at a hostile place then at an honest one: the
    first is read, the second refused (every pass crawled the first while the archive
    kept the second's URL, so `status` blamed the honest host for the hostile's bundles)."""
    sites = from_manifest(
        _manifest_doc([_entry("x", "https://evil.example/p"), _entry("x", "https://good.example")]),
        prefix="reg/",
    )
    assert [(s.name, s.base_url) for s in sites] == [("reg/x", "https://evil.example/p")]


def test_one_host_gets_two_entries_of_a_manifest_at_most():
    """255 entries naming one host (each a mirror of its own, each alert about it 255
    alerts): two are read; other hosts are not affected."""
    entries = [_entry(f"m{i}", f"https://one.example/{i}") for i in range(255)]
    sites = from_manifest(_manifest_doc([*entries, _entry("other", "https://two.example")]))
    assert [s.name for s in sites] == ["m0", "m1", "other"]


def test_a_name_unfit_to_show_gives_way_to_the_hosts():
    """Names no table should print (a forged line, a right-to-left override) or no
    ASCII can write: the entry is kept under its host's name, not dropped."""
    sites = from_manifest(
        _manifest_doc(
            [_entry(FORGED, "https://a.example"), _entry("Université de Lyon", "https://b.example")]
        )
    )
    assert [s.name for s in sites] == ["a.example", "b.example"]


def test_a_mirror_name_with_a_space_cannot_name_another_in_the_hooks_list():
    """A manifest mirror named `x m0` (m0 an honest mirror): the hook's MIRRORS holds it
    as one word, `x%20m0`, not as `x` and `m0`."""
    from pithcrawl.alert import hook_environment
    from pithcrawl.store import Alert

    now = datetime.now(UTC)
    alert = Alert(
        1,
        "k",
        "s",
        "untrusted_key",
        "critical",
        None,
        None,
        ("reg/x m0", "b%c"),
        "s",
        {},
        now,
        None,
    )
    env = hook_environment(alert, "open", Path("/tmp/alert.json"), {})
    assert env["MIRRORS"].split(" ") == ["reg/x%20m0", "b%25c"]


async def test_a_manifest_mirror_that_no_name_server_knows_fails_and_stays(tmp_path, signer):
    """A manifest's mirror whose host no longer resolves stays a mirror of the record
    (failing, so in time `mirror_unreachable`), its history kept; it was refused by the
    guard, deleted with its history, and its alert closed at once."""
    async with arena(tmp_path, signer, records=1) as a:
        a.good.extra["/pith-mirrors.json"] = _manifest([_entry("gone", "https://gone.invalid")])
        text = a.config_text() + (
            f'[[mirrors]]\nname = "registry"\nmanifest = "{a.good.base_url}/pith-mirrors.json"\n'
            '[alerts]\nunreachable_after = "1h"\n'
        )
        config = parse_config(text, base_dir=tmp_path)
        first = await sync_once(config, a.db, [], a.trust, clock=a.clock.clock)
        assert (first.mirrors, first.errors) == (3, 1)
        a.clock.advance(timedelta(hours=2))
        later = await sync_once(config, a.db, [], a.trust, clock=a.clock.clock)
        assert later.warnings == 1
        async with await Store.open(a.db, readonly=True) as store:
            (alert,) = await store.alerts.open_alerts()
            state = await store.fetch_state(
                a.records[0].suffix, "registry/gone", "bundle", vantage=VANTAGE
            )
        assert (alert.kind, alert.mirrors) == ("mirror_unreachable", ("registry/gone",))
        assert state is not None and state.failures >= 1


def test_a_hints_name_unfit_to_show_gives_way_to_its_host():
    """A bundle's mirror hint named with escape codes: the discovered mirror is named by
    its host alone; a hint whose URLs are not printable ASCII is not a mirror."""
    from pithcrawl.mirrors import from_hints

    suffix = "A" * 26
    hint = {
        "name": FORGED,
        "base_url": "https://m.example",
        "bundle_url": f"https://m.example/pith/{suffix}/bundle.json",
        "state_url": f"https://m.example/pith/{suffix}/state.json",
    }
    odd = {**hint, "base_url": "https://m.example/\x1b[2J"}
    sites = from_hints({"mirror_hints": [hint, odd]}, suffix)
    assert [s.name for s in sites] == ["m.example (m.example)"]
