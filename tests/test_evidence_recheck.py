"""An evidence package's recheck commands reproduce the alert, run as written: with the
archive's clock skew, and as documents of the alert's record (a mirror serving another
record's document is what some alerts are about). Real archives, real processes."""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from builder import BundleBuilder, TestSigner, canonical_record
from mirror import TestMirror

from pithcrawl.config import load_config
from pithcrawl.keys import TrustSet, load_key
from pithcrawl.store import Alert, Store
from pithcrawl.sync import sync_once

PITHCRAWL = [sys.executable, "-m", "pithcrawl"]


def _archive(
    tmp_path: Path, signer: TestSigner, suffix: str, served: list[Any], extra: str = ""
) -> tuple[Path, list[Alert]]:
    """One pass over `suffix`, each mirror serving its item of `served` (a bundle, a
    (bundle, state) pair, or a function of the mirror); the open alerts."""
    cfg = tmp_path / "pithcrawl.toml"

    async def go() -> list[Alert]:
        async with AsyncExitStack() as stack:
            mirrors = [await stack.enter_async_context(TestMirror()) for _ in served]
            (tmp_path / "test.key.json").write_text(json.dumps(signer.public_key()))
            cfg.write_text(
                f'db = "archive.db"\n[trust]\nkeys = ["test.key.json"]\n{extra}\n'
                '[crawl]\ntimeout = "5s"\ndiscover = false\n'
                + "".join(
                    f'[[mirrors]]\nname = "m{i}"\nbase_url = "{m.base_url}"\n'
                    for i, m in enumerate(mirrors)
                )
            )
            config = load_config(cfg)
            async with await Store.open(config.db_path({})) as store:
                await store.watchlist.track([suffix], datetime.now(UTC))
            for m, item in zip(mirrors, served, strict=True):
                if callable(item):
                    item(m)
                else:
                    m.put(*(item if isinstance(item, tuple) else (item,)))
            trust = TrustSet([load_key(signer.public_key())])
            await sync_once(config, config.db_path({}), [], trust)
        async with await Store.open(config.db_path({}), readonly=True) as store:
            return await store.alerts.open_alerts()

    return cfg, anyio.run(go)


def _rechecks(cfg: Path, alert: Alert, out: Path) -> list[tuple[dict[str, Any], int, str]]:
    """Write the alert's evidence, then run each recheck command from its directory."""
    argv = [*PITHCRAWL, "--config", str(cfg), "-q", "evidence", str(alert.id), "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    results = []
    for document, command in zip(summary["documents"], summary["recheck"], strict=True):
        words = shlex.split(command)
        assert words[:2] == ["pithcrawl", "verify"]
        run = subprocess.run(
            [*PITHCRAWL, *words[1:]], capture_output=True, text=True, cwd=out, check=False
        )
        results.append((document, run.returncode, run.stdout + run.stderr))
    return results


def _record(signer: TestSigner, number: str = "2611.00042") -> BundleBuilder:
    b = BundleBuilder(signer, record=canonical_record(number, title="E"))
    b.add_event()
    return b


def test_a_bundle_of_another_record_fails_its_recheck(tmp_path: Path, signer: TestSigner):
    b, other = _record(signer), _record(signer, "2611.00043")

    def serve_other(m: TestMirror) -> None:  # the other record's bundle at b's address
        m.bundles[b.suffix] = other.bytes()

    cfg, alerts = _archive(tmp_path, signer, b.suffix, [serve_other])
    (alert,) = [a for a in alerts if a.kind == "document_invalid"]
    ((document, code, out),) = _rechecks(cfg, alert, tmp_path / "out")
    assert document["trusted"] is False
    assert code == 1 and "pith_number_mismatch" in out, out


def test_a_state_of_another_record_fails_its_recheck(tmp_path: Path, signer: TestSigner):
    b, other = _record(signer), _record(signer, "2611.00043")
    state = json.dumps(other.build()["state"], separators=(",", ":")).encode()
    cfg, alerts = _archive(tmp_path, signer, b.suffix, [(b.bytes(), state)])
    (alert,) = [a for a in alerts if a.kind == "state_url_mismatch"]
    results = _rechecks(cfg, alert, tmp_path / "out")
    ((code, out),) = [(c, o) for d, c, o in results if d["kind"] == "state"]
    assert code == 1 and "pith_number_mismatch" in out, out


def test_the_rechecks_allow_the_archives_clock_skew(tmp_path: Path, signer: TestSigner):
    """One side of a divergence was built days ahead, within the archive's 30 days of
    skew: both sides verify again as they did when archived."""
    a = BundleBuilder(signer, record=canonical_record("2611.00042", title="E"))
    b = copy.deepcopy(a)
    a.add_event(payload={"graph_snapshot": {"side": "a"}})
    b.add_event(payload={"graph_snapshot": {"side": "b"}})
    ahead = a.bytes(built_at=f"{datetime.now(UTC) + timedelta(days=4):%Y-%m-%dT%H:%M:%SZ}")
    cfg, alerts = _archive(
        tmp_path, signer, a.suffix, [ahead, b.bytes()], extra='clock_skew = "30d"'
    )
    (alert,) = [x for x in alerts if x.kind == "mirror_divergence"]
    for document, code, out in _rechecks(cfg, alert, tmp_path / "out"):
        assert document["trusted"] is True
        assert code == 0, out
