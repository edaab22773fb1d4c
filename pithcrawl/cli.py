"""The command line: parse, call the core, print, map the outcome to an exit code.

A thin shell (STYLE.md): every command's work lives in the module that owns it. Exit
codes are the contract's: 0 nothing wrong, 1 a security finding, 2 usage or config,
3 operational failure only. A user's mistake is a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast

from pithcrawl import __version__
from pithcrawl.commands import COMMANDS
from pithcrawl.errors import EXIT_OPERATIONAL, EXIT_USAGE, OperationalError, PithcrawlError
from pithcrawl.location import archive_argument
from pithcrawl.log import configure
from pithcrawl.runtime import tune_gc
from pithcrawl.text import escaped, json_escape


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 2 with one line, as every pithcrawl error does."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"pithcrawl: error: {message}\n")


def _common(defaults: bool) -> _Parser:
    """The global options, accepted before or after the command.

    Under a command they default to SUPPRESS, so an option given before the command
    is not reset by the command's own parser.
    """
    common = _Parser(add_help=False, argument_default=None if defaults else argparse.SUPPRESS)
    common.add_argument("--config", type=Path, metavar="FILE", help="configuration file (TOML)")
    common.add_argument(
        "--db",
        type=archive_argument,
        metavar="FILE|URL",
        help="archive: a SQLite file, or a PostgreSQL database (postgresql://…)",
    )
    common.add_argument("--log-format", choices=("json", "console"), help="log format on stderr")
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if defaults else argparse.SUPPRESS,
        help="more detail",
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=0 if defaults else argparse.SUPPRESS,
        help="less output",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pithcrawl",
        description="Watchdog and archive for the Pith open graph.",
        parents=[_common(defaults=True)],
    )
    parser.add_argument("--version", action="version", version=f"pithcrawl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    below = _common(defaults=False)
    for command in COMMANDS:
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=f"{command.help}\n\nexample: {command.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[below],
        )
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_gc()
    configure(args.log_format, args.verbose - args.quiet)
    stdout = sys.stdout
    # Started with stdout closed (`>&-`): Python has none, and the output goes nowhere.
    sys.stdout = cast(TextIO, _ReaderMayLeave(stdout or open(os.devnull, "w")))  # noqa: SIM115
    try:
        code: int = args.run(args)
        # What is still buffered goes out (or into /dev/null) through the wrapper now: at
        # exit, a flush into a closed pipe would end the process with 120 instead.
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BaseException as e:
        return _failed(e)
    finally:
        with suppress(PithcrawlError):  # after a failure: its message is what counts
            sys.stdout.flush()
        sys.stdout = stdout
    return code


class _ReaderMayLeave:
    """stdout for a reader that may stop reading (`pithcrawl status | head -1`), or a
    disk that fills up.

    Once the pipe is closed, output goes to /dev/null and the command runs on to its own
    exit code: `verify URL | head` under `set -o pipefail` must still say 1 for a bad
    document, not fail with a traceback and 3. Any other failure to write (a full disk)
    is an `OperationalError` (exit 3, one line). And, last of all, no character that is
    not printable reaches the terminal raw (the commands escape what they print; this
    catches what one might miss): it is written as a `\\u` escape, valid in JSON too.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if not text.isprintable():
            text = _unprintable_escaped(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)
        except OSError as e:
            raise OperationalError(f"cannot write the output: {e.strerror or e}") from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()
        except OSError as e:
            raise OperationalError(f"cannot write the output: {e.strerror or e}") from None

    def _reader_gone(self) -> None:
        # What is still buffered, and all that follows, then flushes into /dev/null,
        # also at exit, where a flush into the closed pipe would print a warning.
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError):
            return  # not a file (a test's capture): nothing to redirect
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _unprintable_escaped(text: str) -> str:
    """Every character that is not printable, but the line break and tab of our own
    output, as a `\\u` escape (lone surrogates, control codes, format marks)."""
    return "".join(ch if ch.isprintable() or ch in "\n\t" else json_escape(ch) for ch in text)


def _failed(error: BaseException) -> int:
    """A message and the contract's exit code for an error that ended a command.

    Errors raised inside a task group arrive wrapped in exception groups; the first
    pithcrawl error inside decides. Anything else is a bug: its traceback is printed
    and the exit is 3 (pithcrawl failed), never 1, which scripts read as a security
    finding.
    """
    if isinstance(error, SystemExit):
        raise error
    found = _first_ours(error)
    if found is not None:
        # A message may quote what an operator typed or a mirror sent: shown escaped.
        print(f"pithcrawl: {escaped(str(found))}", file=sys.stderr)
        return found.exit_code
    traceback.print_exception(error, file=sys.stderr)
    print(
        "pithcrawl: internal error (a bug: please report it with the trace above)", file=sys.stderr
    )
    return EXIT_OPERATIONAL


def _first_ours(error: BaseException) -> PithcrawlError | None:
    if isinstance(error, PithcrawlError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _first_ours(inner)
            if found is not None:
                return found
    return None
