"""pithcrawl at work, offline, in one command (`make demo`).

What it does, each step printed as it happens:

1. starts two Pith mirrors on loopback, `alpha` and `beta`, serving the shipped real
   fixture (the registry's signed bundle of pith:2026:2SZ3GMWFCMMCUPZJQTONOWSJZ2) and a
   record of a demo registry (a key made for this run: the fixtures hold one version of
   the real record, and a rollback needs an older valid one);
2. `pithcrawl track` and `pithcrawl sync` with a configuration in a temporary directory:
   everything verifies, exit 0;
3. `beta` turns bad: it serves a tampered copy of the real bundle (its title changed) and
   the demo record's older, validly signed bundle (a rollback);
4. `pithcrawl sync` again: exit 1, and `pithcrawl status` shows the alerts;
5. `pithcrawl evidence` exports each alert's proof (the documents and the keys);
6. `pithcrawl serve` with the status pages; open the printed URL. Ctrl-C stops
   everything and removes the temporary directory.

    python demo/demo.py [--port 8787] [--no-wait] [--keep]

`--no-wait` stops after checking that the status page answers (for tests and CI);
`--keep` leaves the temporary directory (its path is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))  # the test suite's loopback mirror and signer

from builder import BundleBuilder, TestSigner, canonical_record  # noqa: E402
from mirror import TestMirror  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "real"
REAL = "2SZ3GMWFCMMCUPZJQTONOWSJZ2"


def _die_with_parent() -> None:
    """In each child: be sent SIGTERM when the demo dies, however it dies (Linux), so no
    `serve` is left listening after a SIGKILL of the demo."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: Ctrl-C still stops all
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def pithcrawl_command() -> list[str]:
    """This checkout's pithcrawl, run by this interpreter (the venv `make demo` made)."""
    return [sys.executable, "-m", "pithcrawl"]


MEANING = {
    0: "nothing wrong",
    1: "a security finding",
    2: "a usage or configuration error",
    3: "an operational failure",
}


def shown_command() -> str:
    """How a person runs this checkout's pithcrawl: the venv's script, relative to here."""
    script = Path(sys.executable).parent / "pithcrawl"
    if not script.exists():
        return "pithcrawl"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


async def run(*args: str, config: Path) -> int:
    """A pithcrawl command as a user would type it, its output shown (its log lines,
    JSON on stderr when that is not a terminal, are left out: the output says it all)."""
    print(f"$ {shown_command()} --config {config} {' '.join(args)}", flush=True)
    proc = await asyncio.create_subprocess_exec(
        *pithcrawl_command(), "--config", str(config), *args,
        stdout=sys.stdout, stderr=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent,
    )  # fmt: skip
    try:
        code = await proc.wait()
    except asyncio.CancelledError:  # Ctrl-C or SIGTERM: the command stops with the demo
        proc.kill()
        await proc.wait()
        raise
    if args[0] == "sync":  # the others report; their exit code says only that they ran
        print(f"(exit {code}: {MEANING.get(code, 'see docs/commands.md')})", flush=True)
    return code


async def alert_ids(config: Path) -> dict[str, int]:
    """The id of the open alert of each kind (the first `status --json` lists), from one
    `status --json`."""
    proc = await asyncio.create_subprocess_exec(
        *pithcrawl_command(),
        "--config",
        str(config),
        "status",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    out, _ = await proc.communicate()
    ids: dict[str, int] = {}
    for a in json.loads(out)["open_alerts"]:
        ids.setdefault(a["kind"], a["id"])
    return ids


def free_port(wanted: int) -> int:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", wanted))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tampered(bundle: bytes) -> bytes:
    """The real bundle with its paper's title changed: its signatures no longer match."""
    doc = json.loads(bundle)
    for event in doc["events"]:
        paper = event.get("payload", {}).get("graph_snapshot", {}).get("paper")
        if isinstance(paper, dict):
            paper["title"] = "A Different Title, Slipped In by a Mirror"
    return json.dumps(doc, separators=(",", ":")).encode()


async def wait_for(url: str, seconds: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        try:
            await loop.run_in_executor(None, lambda: urllib.request.urlopen(url, timeout=2).read())  # noqa: S310 (our loopback URL)
            return
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def demo(tmp: Path, port: int, wait: bool) -> int:
    registry = TestSigner("demo-registry-key", seed=os.urandom(32))
    (tmp / "demo.key.json").write_text(json.dumps(registry.public_key()))
    shutil.copy(FIXTURES / "pith-v1-2026-05.key.json", tmp / "registry.key.json")
    title = "A Demo Record of the Demo Registry"
    demo_record = BundleBuilder(registry, record=canonical_record("2612.99999", title=title))
    paper = {"graph_snapshot": {"paper": {"title": title}}}
    demo_record.add_event(payload=paper)
    older = demo_record.bytes()
    demo_record.add_event(payload=paper)
    newer = demo_record.bytes()
    real_bundle = (FIXTURES / f"{REAL}.bundle.json").read_bytes()
    real_state = (FIXTURES / f"{REAL}.state.json").read_bytes()

    async with TestMirror() as alpha, TestMirror() as beta:
        step("two Pith mirrors on loopback, serving the same records")
        for mirror in (alpha, beta):
            mirror.put(real_bundle, real_state)
            mirror.put(newer)
        print(f"alpha  {alpha.base_url}\nbeta   {beta.base_url}")
        print(f"records: pith:2026:{REAL} (the registry's, from the shipped fixtures)")
        print(f"         {demo_record.pith_number} (signed by a demo key made for this run)")
        config = tmp / "pithcrawl.toml"
        config.write_text(
            'db = "archive.db"\n'
            '[trust]\nkeys = ["registry.key.json", "demo.key.json"]\n'
            '[crawl]\ndiscover = false\ntimeout = "5s"\n'
            f'[[mirrors]]\nname = "alpha"\nbase_url = "{alpha.base_url}"\n'
            f'[[mirrors]]\nname = "beta"\nbase_url = "{beta.base_url}"\n'
        )
        print(f"configuration: {config}")

        step("watch both records and crawl: every hash, signature and timestamp checked")
        await run("track", f"pith:2026:{REAL}", demo_record.pith_number, config=config)
        first = await run("sync", config=config)

        step("beta turns bad: a tampered copy of one record, an older version of the other")
        beta.put(tampered(real_bundle), real_state)
        beta.put(older)
        print("beta now serves the real bundle with its title changed (signatures broken)")
        print("and the demo record's previous bundle: valid, but older than what it served")

        step("crawl again: pithcrawl notices, and says so with exit 1")
        second = await run("sync", config=config)
        await run("status", config=config)

        step("every alert carries its proof: export each alert's documents and keys")
        ids = await alert_ids(config)
        for kind in ("document_invalid", "rollback"):
            number = ids[kind]
            evidence = tmp / f"alert-{number}"
            await run("evidence", str(number), "--out", str(evidence), config=config)
            for path in sorted(evidence.rglob("*")):
                if path.is_file():
                    print(f"  {path}")
        print(
            "Each README.txt names the claim and gives the `pithcrawl verify` command that"
            " re-checks each document offline, with what to expect."
        )
        step("the status pages")
        chosen = free_port(port)
        if chosen != port:
            print(f"(port {port} is taken: using {chosen})")
        url = f"http://127.0.0.1:{chosen}/"
        serve = await asyncio.create_subprocess_exec(
            *pithcrawl_command(), "--config", str(config), "serve",
            "--bind", f"127.0.0.1:{chosen}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        try:
            await wait_for(url)
            print(
                f"\nsync exit codes: {first} before, {second} after beta turned bad.\n"
                f"Next: read {tmp}/alert-*/README.txt; track a real record and"
                " `make sync` (README); configure mirrors and alerts (docs/configuration.md)."
            )
            print(f"open {url} (the rolled-back record: {url}ui/record/{demo_record.suffix})")
            if wait:
                print(
                    "Ctrl-C stops the mirrors and the server and removes the demo's files"
                    " (`make demo ARGS=--keep` keeps them)."
                )
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGINT, stop.set)
                loop.add_signal_handler(signal.SIGTERM, stop.set)
                await stop.wait()
        finally:
            if serve.returncode is None:
                serve.send_signal(signal.SIGTERM)
                await serve.wait()
    return 0 if (first, second) == (0, 1) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8787, help="for the status pages (default 8787)")
    ap.add_argument("--no-wait", action="store_true", help="stop once the status page answers")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pithcrawl-demo-"))
    print(f"demo directory: {tmp}")

    async def stoppable() -> int:
        # SIGTERM stops the demo as Ctrl-C does: the running step is cancelled (a
        # handler raising KeyboardInterrupt could land where it is swallowed, and the
        # demo went on to serve with nobody waiting for it).
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await demo(tmp, args.port, not args.no_wait)

    try:
        return asyncio.run(stoppable())
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"removed {tmp}")


if __name__ == "__main__":
    sys.exit(main())
