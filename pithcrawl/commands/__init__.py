"""The subcommands, one module each; `cli` builds the parser from this list."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from pithcrawl.commands import (
    events,
    evidence,
    fsck,
    history,
    migrate,
    run,
    serve,
    status,
    sync,
    verify,
)


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS = [
    Command("verify", verify.HELP, verify.EXAMPLE, verify.add_arguments, verify.run),
    Command("track", sync.TRACK_HELP, sync.TRACK_EXAMPLE, sync.add_track_arguments, sync.run_track),
    Command(
        "untrack",
        sync.UNTRACK_HELP,
        sync.UNTRACK_EXAMPLE,
        sync.add_track_arguments,
        sync.run_untrack,
    ),
    Command("sync", sync.SYNC_HELP, sync.SYNC_EXAMPLE, sync.add_sync_arguments, sync.run_sync),
    Command("run", run.HELP, run.EXAMPLE, run.add_arguments, run.run),
    Command("status", status.HELP, status.EXAMPLE, status.add_arguments, status.run),
    Command("history", history.HELP, history.EXAMPLE, history.add_arguments, history.run),
    Command(
        "diff",
        history.DIFF_HELP,
        history.DIFF_EXAMPLE,
        history.add_diff_arguments,
        history.run_diff,
    ),
    Command("events", events.HELP, events.EXAMPLE, events.add_arguments, events.run),
    Command("evidence", evidence.HELP, evidence.EXAMPLE, evidence.add_arguments, evidence.run),
    Command("serve", serve.HELP, serve.EXAMPLE, serve.add_arguments, serve.run),
    Command("fsck", fsck.HELP, fsck.EXAMPLE, fsck.add_arguments, fsck.run),
    Command("migrate", migrate.HELP, migrate.EXAMPLE, migrate.add_arguments, migrate.run),
]
