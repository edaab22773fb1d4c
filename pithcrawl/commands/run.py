"""`pithcrawl run`: the daemon. SIGTERM/SIGINT stop it gracefully; SIGHUP reloads."""

from __future__ import annotations

import argparse

import anyio

from pithcrawl.commands.report import db_file
from pithcrawl.config import Config, load_config
from pithcrawl.errors import EXIT_OK
from pithcrawl.sdnotify import Notifier
from pithcrawl.trust import load_trust

HELP = "The daemon: crawl every record when due, until SIGTERM; SIGHUP reloads the config."
EXAMPLE = "pithcrawl --config /etc/pithcrawl/pithcrawl.toml run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    path = args.config

    def load() -> Config:
        return load_config(path) if path else Config()

    config = load()
    db = db_file(args, config)
    from pithcrawl.daemon import Daemon

    daemon = Daemon(load, db, lambda c: load_trust(c.trust.keys), Notifier())
    anyio.run(daemon.run)
    return EXIT_OK
