"""What the commands share: the configuration and archive they work on, and for the
read-only reports (`status`, `history`, `diff`, `events`, …) their plain text forms.

Owns finding the archive without creating it (a missing file is a usage error that
says to run `sync` first), reading the PITH argument, the plain text forms of times,
sizes and tables, and printing: every line and JSON document goes out through `say` or
`print_json`, which escape what could act on a terminal. It opens nothing for writing
and holds no command's logic.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pithcrawl.config import Config, load_config
from pithcrawl.errors import UsageError
from pithcrawl.location import Where
from pithcrawl.pith import parse_reference
from pithcrawl.text import escaped, json_text
from pithcrawl.timestamps import format_seconds


def load(args: argparse.Namespace) -> tuple[Config, Where]:
    """The configuration (`--config`, or the defaults) and the archive (`--db`)."""
    config = load_config(args.config) if args.config else Config()
    return config, db_file(args, config)


def db_file(args: argparse.Namespace, config: Config) -> Where:
    """The archive (`--db`, else the configuration's): a file (a directory is a usage
    error) or a PostgreSQL database."""
    db: Where = args.db or config.db_path(os.environ)
    if isinstance(db, Path) and db.is_dir():
        named = "--db" if args.db else "db"
        raise UsageError(f"{named}: {db} is a directory; name the archive's file in it")
    return db


def archive(args: argparse.Namespace) -> tuple[Config, Where]:
    """The configuration and the archive's path; `UsageError` if there is no archive.

    Checked before opening: a read-only open must never leave an empty database behind.
    """
    config, db = load(args)
    if isinstance(db, Path) and not db.is_file():
        raise UsageError(f"no archive at {db}; run `pithcrawl sync` first")
    return config, db


def suffix_of(ref: str) -> str:
    """The suffix a PITH argument names, or a `UsageError` that quotes it."""
    try:
        return parse_reference(ref)
    except ValueError as e:
        raise UsageError(f"PITH {ref!r}: {e}") from None


def row_id(text: str) -> int:
    """An argparse type: an archive row id (a snapshot's or an alert's), 1 to 2**63 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is not an id (ids run from 1 to 2**63 - 1)")
    return value


def when(at: datetime | None) -> str:
    """A time for people: RFC 3339 UTC to the second, or '-'."""
    return "-" if at is None else format_seconds(at)


def size(n: int) -> str:
    """A byte count for people: B, KiB, MiB or GiB."""
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded. Every cell
    is shown escaped (`text.escaped`): a cell may hold what a mirror sent."""
    rows = [[escaped(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip()
        for r in (header, *rows)
    ]


def print_json(doc: Any, *, indent: int | None = None) -> None:
    """One JSON document on stdout, every non-printable character in it escaped."""
    print(json_text(doc, indent=indent))


def say(*lines: str) -> None:
    """Lines for people on stdout, each one line whatever its fields hold: a character
    that is not printable (a line break, an escape code from a mirror) is shown escaped,
    so no field can clear the screen or forge a line."""
    for line in lines:
        print(escaped(line))
