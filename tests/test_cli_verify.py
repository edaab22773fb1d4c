"""`pithcrawl verify`: output, JSON, exit codes, sources (file, stdin, URL)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from builder import BundleBuilder, TestSigner
from conftest import REAL, REAL_SUFFIX

from pithcrawl.cli import main

REAL_BUNDLE = str(REAL / f"{REAL_SUFFIX}.bundle.json")
NOW = "2026-11-27T00:00:00Z"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--log-format", "json", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_real_bundle_ok(capsys):
    """The shipped registry key verifies the real bundle: exit 0, one 'ok' line."""
    code, out, _ = run(capsys, "verify", REAL_BUNDLE, "--now", NOW)
    assert code == 0
    assert out.startswith(f"ok    pith:2026:{REAL_SUFFIX} ")


def test_json_output(capsys):
    code, out, _ = run(capsys, "verify", REAL_BUNDLE, "--now", NOW, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["results"] == [
        {
            "source": REAL_BUNDLE,
            "kind": "bundle",
            "pith_number": f"pith:2026:{REAL_SUFFIX}",
            "ok": True,
            "findings": [],
        }
    ]


def test_tampered_file_exits_1_with_the_finding(capsys, tmp_path: Path):
    doc = json.loads(Path(REAL_BUNDLE).read_bytes())
    doc["bundle_signature"]["bundle_sha256"] = "0" * 64
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    code, out, _ = run(capsys, "verify", REAL_BUNDLE, str(bad), "--now", NOW)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("ok")
    assert lines[1].startswith("FAIL") and "bundle_hash_mismatch" in lines[1]
    assert "/bundle_signature/bundle_sha256" in out


def test_key_replaces_the_registry_key(capsys, tmp_path: Path):
    """--key FILE: the trust set is the given keys only."""
    signer = TestSigner("cli-key")
    key = tmp_path / "k.json"
    key.write_text(json.dumps(signer.public_key()))
    b = BundleBuilder(signer)
    b.add_event()
    mine = tmp_path / "mine.json"
    mine.write_bytes(b.bytes())
    assert run(capsys, "verify", str(mine), "--key", str(key), "--now", NOW)[0] == 0
    code, out, _ = run(capsys, "verify", REAL_BUNDLE, "--key", str(key), "--now", NOW, "--json")
    assert code == 1
    assert "untrusted_key" in {f["code"] for f in json.loads(out)["results"][0]["findings"]}


def test_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(Path(REAL_BUNDLE).read_bytes())))
    code, out, _ = run(capsys, "verify", "-", "--now", NOW)
    assert code == 0
    assert "<stdin>" in out


def test_unreadable_file_exits_3(capsys, tmp_path: Path):
    code, out, _ = run(capsys, "verify", str(tmp_path / "missing.json"))
    assert code == 3
    assert out.startswith("ERROR") and "cannot read" in out


def test_security_finding_outranks_read_error(capsys, tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text("[NaN]")
    code, _, _ = run(capsys, "verify", str(tmp_path / "missing.json"), str(bad))
    assert code == 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["verify", "x", "--now", "yesterday"], "--now"),
        (["verify", "x", "--key", "/nonexistent/key.json"], "key file"),
        (["verify"], "SOURCE"),
        (["verify", "ftp://mirror.example/pith/x/bundle.json"], "only http(s) URLs"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_without_traceback(capsys, argv, needle):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors exit from inside the parser
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err


@pytest.fixture
def server() -> Iterator[str]:
    """A loopback HTTP server serving the real bundle at its mirror path."""
    body = Path(REAL_BUNDLE).read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == f"/pith/{'C' * 26}/bundle.json":  # an error page, 14 KB of it
                self.send_response(503)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path in (f"/pith/{REAL_SUFFIX}/bundle.json", f"/pith/{'A' * 26}/bundle.json"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    yield f"http://{host}:{port}"
    httpd.shutdown()
    httpd.server_close()


def test_url_is_fetched_and_bound_to_its_suffix(capsys, server: str):
    """A URL's /pith/{suffix}/ must match the bundle; another record there is refused."""
    code, out, _ = run(capsys, "verify", f"{server}/pith/{REAL_SUFFIX}/bundle.json", "--now", NOW)
    assert code == 0, out
    code, out, _ = run(capsys, "verify", f"{server}/pith/{'A' * 26}/bundle.json", "--now", NOW)
    assert code == 1
    assert "pith_number_mismatch" in out


def test_url_404_exits_3(capsys, server: str):
    code, out, _ = run(capsys, "verify", f"{server}/pith/{'B' * 26}/bundle.json")
    assert code == 3
    assert "HTTP 404" in out


def test_dead_url_exits_3(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, _ = run(capsys, "verify", f"http://127.0.0.1:{port}/pith/{REAL_SUFFIX}/bundle.json")
    assert code == 3
    assert out.startswith("ERROR") and out.count("/bundle.json") == 1, out  # URL named once


def test_expect_names_the_record_every_document_must_be(capsys):
    code, out, _ = run(capsys, "verify", REAL_BUNDLE, "--now", NOW, "--expect", REAL_SUFFIX)
    assert code == 0, out
    other = "A" * 26
    code, out, _ = run(capsys, "verify", REAL_BUNDLE, "--now", NOW, "--expect", other)
    assert code == 1 and "pith_number_mismatch" in out


def test_clock_skew_lets_a_document_be_ahead_by_that_much(capsys):
    """The real bundle as of a day before it was built: refused, unless the skew says so."""
    day_before = "2026-05-01T00:00:00Z"
    code, out, _ = run(capsys, "verify", REAL_BUNDLE, "--now", day_before, "--clock-skew", "0s")
    assert code == 1 and "timestamp_future" in out
    code, out, _ = run(capsys, "verify", REAL_BUNDLE, "--now", day_before, "--clock-skew", "3650d")
    assert code == 0, out


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--expect", "nope"], "--expect"),
        (["--clock-skew", "forever"], "--clock-skew"),
    ],
)
def test_a_bad_option_value_is_a_usage_error(capsys, argv, named):
    code, _, err = run(capsys, "verify", REAL_BUNDLE, *argv)
    assert code == 2 and named in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["diff", "A" * 26, "--from", str(2**63)],
        ["diff", "A" * 26, "--to", "0"],
        ["evidence", str(2**63), "--out", "x"],
        ["evidence", "twelve", "--out", "x"],
    ],
)
def test_an_id_out_of_range_is_a_usage_error(capsys, argv):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "is not" in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["--json"], []])
def test_a_reader_that_left_does_not_change_the_exit_code(tmp_path: Path, args: list[str]):
    """`pithcrawl verify --json BAD | head` under pipefail: still 1, and no traceback."""
    doc = json.loads((REAL / f"{REAL_SUFFIX}.bundle.json").read_bytes())
    doc["built_at"] = "2026-05-01T00:00:00Z"  # after the hash: bundle_hash_mismatch
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte is written
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pithcrawl", "verify", *args, str(bad), str(bad)],
            # Buffered, as a terminal-less stdout is by default: the end of the output
            # is flushed after the command, and must not fail then either.
            env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=60,
        )
    finally:
        os.close(write)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


@pytest.mark.parametrize("where", ["file", "url"])
def test_a_document_over_max_bytes_is_malformed_json(capsys, tmp_path: Path, server, where):
    """contract.md: "too large" is `malformed_json`, critical: exit 1 with the finding
    (it used to be a read error, exit 3, which scripts take for an outage)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[crawl]\nmax_bytes = 4096\n")  # the real bundle is 14 KB
    source = REAL_BUNDLE if where == "file" else f"{server}/pith/{REAL_SUFFIX}/bundle.json"
    code, out, _ = run(capsys, "--config", str(cfg), "verify", source, "--json")
    assert code == 1
    (result,) = json.loads(out)["results"]
    assert result["ok"] is False
    (found,) = result["findings"]
    assert (found["code"], found["severity"]) == ("malformed_json", "critical")
    assert "too large" in found["message"]


def test_an_error_page_over_max_bytes_is_an_http_error_not_a_finding(capsys, tmp_path, server):
    """A 503 with a large body is the mirror failing (exit 3), not a malformed document."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[crawl]\nmax_bytes = 4096\n")
    code, out, _ = run(
        capsys, "--config", str(cfg), "verify", f"{server}/pith/{'C' * 26}/bundle.json"
    )
    assert code == 3
    assert out.startswith("ERROR") and "HTTP 503" in out


def test_the_lines_say_what_a_document_is_and_which_number_it_claims(capsys, tmp_path):
    """A tampered bundle's FAIL line names the number it claims (what a reader looks up)
    and the one its record hashes to; a key file or a manifest is no Pith document, said
    in those words; a state.json's ok says what was checked of an unsigned document."""
    doc = json.loads((REAL / f"{REAL_SUFFIX}.bundle.json").read_bytes())
    doc["canonical_record"]["metadata"]["title_canon_sha256"] = "0" * 64
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    sources = [
        str(tampered),
        str(REAL / "pith-v1-2026-05.key.json"),
        str(REAL / "pith-mirrors.json"),
        str(REAL / f"{REAL_SUFFIX}.state.json"),
    ]
    code, out, _ = run(capsys, "verify", *sources, "--now", NOW)
    assert code == 1
    lines = [line for line in out.splitlines() if not line.startswith(" ")]
    claimed, key, manifest, state = lines
    assert claimed.startswith(f"FAIL  pith:2026:{REAL_SUFFIX} (its record hashes to pith:2026:")
    assert "pith_number_mismatch" in claimed
    assert key.endswith("not a Pith bundle or state (a key file: give it to --key FILE)")
    assert manifest.endswith("not a Pith bundle or state (a mirror manifest)")
    assert state.startswith(f"ok    pith:2026:{REAL_SUFFIX} ")
    assert state.endswith("(a state.json: shape and state_sha256 checked; states are unsigned)")
