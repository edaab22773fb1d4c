"""Deeply nested documents from a mirror cost only their own pair: refused or judged,
never a crashed process (orjson 3.12.0 and 3.13.0 corrupt memory serialising lists
nested about 75 deep; pyproject.toml keeps them out, and these shapes keep it so).

Run in child processes: a memory corruption aborts the process, which must fail the
test, not take pytest down with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mirror import TestMirror

SHAPES = """
import sys
from pithcrawl.canon import MalformedJSON, canon, parse, parse_compact
import json
for depth in (60, 75, 84, 90, 100, 120, 150, 200, 253, 254, 255, 300):
    for width in (0, 1, 5, 20, 30, 100):
        shapes = []
        d = 1
        for _ in range(depth): d = [d] + [1] * width
        shapes.append({"x": d})
        d = {}
        for _ in range(depth): d = {"a": d, "b": [1.5] * width}
        shapes.append(d)
        for doc in shapes:
            data = json.dumps(doc, separators=(",", ":")).encode()
            try:
                canon(parse(data))
            except MalformedJSON:
                pass
            parse_compact(data)
print("survived")
"""


def evil(depth: int = 120, width: int = 20) -> bytes:
    d: object = 1
    for _ in range(depth):
        d = [d] + [1] * width
    return json.dumps({"bundle_type": "pith_open_graph_bundle", "x": d}).encode()


def test_parsing_and_writing_deep_documents_never_crashes() -> None:
    run = subprocess.run(
        [sys.executable, "-c", SHAPES], check=False, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and run.stdout.strip() == "survived", run.stderr[-2000:]


def test_verify_of_a_deep_document_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(evil())
    run = subprocess.run(
        [sys.executable, "-m", "pithcrawl", "verify", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
    assert run.stdout.startswith("FAIL")


@pytest.mark.anyio
async def test_a_mirror_serving_one_is_an_alert_not_a_crash(tmp_path: Path) -> None:
    suffix = "A" * 26
    async with TestMirror() as m:
        m.bundles[suffix] = evil()
        m.states[suffix] = evil(100, 30)
        (tmp_path / "p.toml").write_text(
            'db = "a.db"\n[crawl]\ndiscover = false\ntimeout = "5s"\n'
            f'[[mirrors]]\nname = "m"\nbase_url = "{m.base_url}"\n'
        )
        base = [sys.executable, "-m", "pithcrawl", "--config", str(tmp_path / "p.toml")]
        await anyio.run_process([*base, "track", suffix])
        proc = await anyio.run_process([*base, "sync"], check=False, stderr=subprocess.PIPE)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert b"document_invalid" in proc.stderr
