"""`pithcrawl migrate --to DB`: copy the archive into another one (SQLite to PostgreSQL,
and back, or file to file).

Takes the source's writers' lock for the whole copy (no crawl may write what is being
copied), refuses a target that is not empty, and leaves the target marked unfinished
until every table's row count matches and every body has been read back against its
sha256 (`store.copy`). Interrupted, the target is refused by every command; run the
same migrate again to complete it. The source is never written.
"""

from __future__ import annotations

import argparse
import sys
import time

import anyio

from pithcrawl.commands.report import archive, print_json, say
from pithcrawl.errors import EXIT_OK, StoreError, StoreLocked, UsageError
from pithcrawl.location import Where, absolute, archive_argument, make_room
from pithcrawl.store import Store
from pithcrawl.store.copy import Copied

HELP = "Copy the archive into an empty one (a SQLite file or a PostgreSQL URL), checked."
EXAMPLE = "pithcrawl --db /var/lib/pithcrawl/pithcrawl.db migrate --to postgresql:///pith"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--to",
        required=True,
        type=archive_argument,
        metavar="FILE|URL",
        help="the empty archive to copy into: a SQLite file or a postgresql:// URL",
    )
    p.add_argument("--json", action="store_true", help="what was copied, as one JSON document")


def run(args: argparse.Namespace) -> int:
    _, source = archive(args)
    target: Where = absolute(args.to)
    source = absolute(source)
    if str(target) == str(source):
        raise UsageError(f"--to: {target} is the archive being copied")
    make_room(target)
    started = time.monotonic()
    try:
        copied = anyio.run(_copy, source, target, not args.json)
    except StoreLocked:
        raise
    except StoreError as e:
        raise StoreError(
            f"the copy failed: {e}. The target stays marked unfinished (every command"
            " refuses it): remove the cause and run migrate again, or empty the target"
        ) from e
    seconds = time.monotonic() - started
    rows = sum(copied.rows.values())
    if args.json:
        print_json(
            {
                "from": str(source),
                "to": str(target),
                "rows": copied.rows,
                "bodies_checked": copied.bodies_checked,
                "nul_escaped": copied.nul_escaped,
                "duration_s": round(seconds, 3),
            }
        )
    else:
        if copied.nul_escaped:
            say(
                f"note: {copied.nul_escaped} text values held a NUL character, which"
                " PostgreSQL's text cannot hold: the copy keeps each as the escape \\x00"
            )
        say(
            f"copied {rows} rows of {len(copied.rows)} tables from {source} to {target}"
            f" in {seconds:.1f}s; every table's count matches, and all"
            f" {copied.bodies_checked} bodies read back against their sha256"
        )
    return EXIT_OK


async def _copy(source: Where, target: Where, chatty: bool) -> Copied:
    from pithcrawl.store.copy import copy_archive

    def progress(table: str, rows: int) -> None:
        if chatty and sys.stderr.isatty():
            print(f"\r{table}: {rows} rows", end="", file=sys.stderr, flush=True)

    async with await Store.open(source, exclusive=True) as src:
        try:
            dst = await Store.open(target, exclusive=True, unfinished=True)
        except StoreLocked as e:
            if e.ours:
                raise UsageError(f"--to: {target} is the archive being copied") from None
            raise
        async with dst:
            copied = await copy_archive(src, dst, str(source), progress)
    if chatty and sys.stderr.isatty():
        print(file=sys.stderr)
    return copied
