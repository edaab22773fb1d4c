"""The subcommands, one module each; `cli` builds the parser from this list."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from pithcrawl.commands import verify


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS = [
    Command(
        "verify",
        verify.HELP,
        verify.EXAMPLE,
        verify.add_arguments,
        verify.run,
    ),
]
