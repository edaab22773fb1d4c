"""`pithcrawl serve`: the archive as a Pith mirror, until SIGTERM/SIGINT.

Parses the bind address and the manifest's options, loads the trust set (a body is
served only if it verifies under it), opens the archive read-only (a `sync` or `run`
may keep writing to it meanwhile) and runs `serve.serving` until a signal cancels it;
the server then closes gracefully. What is served, and how, is `pithcrawl.serve`'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import signal
import sys
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio
import structlog
from anyio.abc import TaskStatus

from pithcrawl.commands.report import archive
from pithcrawl.config import Config
from pithcrawl.errors import EXIT_OK, UsageError
from pithcrawl.keys import TrustSet
from pithcrawl.location import Where, absolute
from pithcrawl.store import Store
from pithcrawl.trust import load_trust, with_learned

if TYPE_CHECKING:
    from pithcrawl.serve import Ui
    from pithcrawl.serve.views import Command

HELP = "Serve the archive as a Pith mirror (the exact verified bytes), until SIGTERM."
EXAMPLE = "pithcrawl serve --bind 127.0.0.1:8787"
DEFAULT_BIND = "127.0.0.1:8787"

log = structlog.get_logger("pithcrawl.serve")

_BIND = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([^\s:\[\]/]+)):(\d{1,5})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_BIND}; [::1]:8787 for IPv6; port 0: any)",
    )
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="the public URL in /pith-mirrors.json (default: the URL each client used)",
    )
    p.add_argument(
        "--name",
        metavar="NAME",
        help="this mirror's name in /pith-mirrors.json (default: pithcrawl@HOST:PORT)",
    )
    p.add_argument(
        "--no-ui",
        action="store_true",
        help="serve the mirror routes only, not the status pages (/ and /ui/)",
    )


def parse_bind(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as (host, port); `UsageError` otherwise."""
    m = _BIND.fullmatch(text.strip())
    port = int(m.group(3)) if m else -1
    if m is None or not 0 <= port <= 65535:
        raise UsageError(f"--bind {text!r}: expected HOST:PORT, like {DEFAULT_BIND} or [::1]:8787")
    return m.group(1) or m.group(2), port


def parse_base_url(text: str | None) -> str | None:
    """An http(s) URL without query or fragment, without its trailing slash."""
    if text is None:
        return None
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise UsageError(
            f"--base-url {text!r}: expected an http(s) URL like https://mirror.example"
        )
    return text.strip().rstrip("/")


def run(args: argparse.Namespace) -> int:
    config, db = archive(args)
    host, port = parse_bind(args.bind)
    base_url = parse_base_url(args.base_url)
    trust = load_trust(config.trust.keys)
    _raise_descriptor_limit()
    from pithcrawl.serve import Ui

    ui = None if args.no_ui else Ui(config, command_of(args))
    anyio.run(partial(_serve, config, trust, db, (host, port), (args.name, base_url), ui=ui))
    return EXIT_OK


def command_of(args: argparse.Namespace) -> Command:
    """How this `serve` was started, for the commands its pages print: the program (its
    absolute path unless `pithcrawl` on the PATH is it) and the archive's `--config` and
    `--db`, absolute."""
    from pithcrawl.serve.views import Command

    program: tuple[str, ...] = ("pithcrawl",)
    started = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    on_path = shutil.which("pithcrawl")
    if started is not None and started.name == "pithcrawl" and started.is_file():
        if on_path is None or Path(on_path).resolve() != started:
            program = (str(started),)
    elif started is not None and started.name == "__main__.py" and on_path is None:
        # `python -m pithcrawl`: the script beside that interpreter, else the same way.
        script = Path(sys.executable).parent / "pithcrawl"
        program = (str(script),) if script.is_file() else (sys.executable, "-m", "pithcrawl")
    options: list[str] = []
    if args.config:
        options += ["--config", str(Path(args.config).resolve())]
    if args.db:
        # A URL without its password: the pages are for anyone who can reach them.
        options += ["--db", str(absolute(args.db))]
    return Command(program, tuple(options))


def _raise_descriptor_limit() -> None:
    """A server holds a descriptor per client: take the most the system allows this
    process (the soft limit up to the hard one), as servers do."""
    try:
        import resource
    except ImportError:  # not on Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve(
    config: Config,
    trust: TrustSet,
    db: Where,
    bind: tuple[str, int],
    manifest: tuple[str | None, str | None],
    *,
    ui: Ui | None,
) -> None:
    (host, port), (name, base_url) = bind, manifest
    async with (
        await Store.open(db, readonly=True) as store,
        # The status pages read on a connection of their own (see `Ui.store`).
        await Store.open(db, readonly=True) as pages_store,
        anyio.create_task_group() as tg,
    ):
        if ui is not None:
            ui = dataclasses.replace(ui, store=pages_store)
        await tg.start(_stop_on_signal, tg.cancel_scope)
        from pithcrawl.serve import follow_keys, serving

        # A body is served only if it verifies under the configured keys now (and the
        # keys learned from rotations that still stand), whatever the archive's verdict.
        configured = trust

        async def keys() -> TrustSet:
            return await with_learned(configured, store, config)

        async with serving(
            store,
            host,
            port,
            name=name,
            base_url=base_url,
            trust=await keys(),
            clock_skew=config.trust.clock_skew,
            ui=ui,
        ) as server:
            if config.trust.follow_rotations:  # a `run` alongside may learn keys
                tg.start_soon(follow_keys, server.catalog, keys)
            log.info(
                "serve_started",
                bind=f"{host}:{port}",
                url=server.url,
                status_pages=None if ui is None else f"{server.url}/",
                name=server.name,
                db=str(db),
                records=await store.trusted.record_count(),
            )
            await anyio.sleep_forever()


async def _stop_on_signal(
    stop: anyio.CancelScope, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("serve_stopping", signal=signal.Signals(signum).name)
            stop.cancel()
            return
