"""The command line: parse, call the core, print, map the outcome to an exit code.

A thin shell (STYLE.md): every command's work lives in the module that owns it. Exit
codes are the contract's: 0 nothing wrong, 1 a security finding, 2 usage or config,
3 operational failure only. A user's mistake is a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from pithcrawl import __version__
from pithcrawl.commands import COMMANDS
from pithcrawl.errors import EXIT_USAGE, PithcrawlError, UsageError
from pithcrawl.log import configure


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
    common.add_argument("--db", type=Path, metavar="FILE", help="archive database")
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
    configure(args.log_format, args.verbose - args.quiet)
    try:
        code: int = args.run(args)
    except UsageError as e:
        print(f"pithcrawl: {e}", file=sys.stderr)
        return e.exit_code
    except PithcrawlError as e:
        print(f"pithcrawl: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    return code
