"""structlog, configured in one place: JSON lines off a TTY, readable on one.

Owns the processors, the level from -v/-q, and the output stream (stderr: stdout is
for results). Units of work bind what they are about with contextvars; the (record,
mirror) pair a task is crawling has a variable of its own (`pair`), set and reset once
per pair, which a pass of 100,000 pairs pays for cheaply.

Each line is one `write` to the file descriptor, so the lines of the worker processes
sharing a pass's stderr never run into each other (a message and its newline were two
writes). On a terminal, every value is shown escaped: a mirror's error text cannot move
the cursor or forge a line (JSON escapes on its own). Under systemd (`JOURNAL_STREAM`
names our stderr), each line starts with its syslog priority (`<3>` for an error), so
`journalctl -p err` finds alerts.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

from pithcrawl.text import escaped

_settings: tuple[str, int] = ("json", 0)
#: The (suffix, mirror) a task is crawling: `suffix` and `mirror` in each of its lines.
_PAIR: ContextVar[tuple[str, str] | None] = ContextVar("pithcrawl_pair", default=None)


@contextmanager
def pair(suffix: str, mirror: str) -> Iterator[None]:
    """Log lines within name this record and mirror (unless they name their own)."""
    token = _PAIR.set((suffix, mirror))
    try:
        yield
    finally:
        _PAIR.reset(token)


def _add_pair(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    bound = _PAIR.get()
    if bound is not None:
        event.setdefault("suffix", bound[0])
        event.setdefault("mirror", bound[1])
    return event


#: The handler through which the standard library's loggers (aiohttp's, asyncio's) write:
#: replaced, not added to, when `configure` runs again.
_stdlib_handler: logging.Handler | None = None


def configure(fmt: str | None = None, verbosity: int = 0, stream: TextIO | None = None) -> None:
    """Set up structlog. `fmt` is "json", "console" or None (pick by whether it is a TTY)."""
    global _settings, _stdlib_handler  # noqa: PLW0603 - one configuration per process
    out: TextIO = stream or _Stderr()  # type: ignore[assignment] # write/flush/isatty is all
    if fmt is None:
        fmt = "console" if out.isatty() else "json"
    _settings = (fmt, verbosity)
    level = {-1: logging.WARNING, 0: logging.INFO}.get(max(-1, min(verbosity, 1)), logging.DEBUG)
    renderer: structlog.typing.Processor
    shown: list[structlog.typing.Processor] = []
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        shown = [_escape_values]
    after = [_journal_priority] if _to_journal() else []
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_pair,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks as data in JSON; the console renderer writes its own.
            *([structlog.processors.dict_tracebacks] if fmt == "json" else []),
            *shown,
            renderer,
            *after,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # WriteLogger: the line and its newline in one write (PrintLogger made two).
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: the same lines, JSON off a TTY, with
    # a traceback as data rather than as lines of text that break a reader of JSON.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *([structlog.processors.dict_tracebacks] if fmt == "json" else []),
                *shown,
                renderer,
                *after,
            ],
        )
    )
    root = logging.getLogger()
    if _stdlib_handler is not None:
        root.removeHandler(_stdlib_handler)
    root.addHandler(handler)
    # Libraries' debug lines (aiosqlite's two per statement) are not pithcrawl's -v.
    root.setLevel(max(level, logging.INFO))
    # psycopg warns of a pipeline it could not end when its server went away: the error
    # pithcrawl reports for the same moment says it, once.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    _stdlib_handler = handler


def settings() -> tuple[str, int]:
    """The format and verbosity last configured, for a worker process to log the same way."""
    return _settings


def _escape_values(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Every string value (and the event name) as `text.escaped` shows it."""
    return {k: escaped(v) if isinstance(v, str) else v for k, v in event.items()}


#: syslog priorities of the log levels (sd-daemon(3)'s `<N>` prefixes).
_PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "info": 6, "debug": 7}


def _journal_priority(logger: object, method: str, rendered: Any) -> str:
    level = "warning" if method == "warn" else method
    return f"<{_PRIORITY.get(level, 6)}>{rendered}"


def _to_journal() -> bool:
    """Whether stderr is the journal's stream (`JOURNAL_STREAM` is its device:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return bool(expected) and expected == f"{st.st_dev}:{st.st_ino}"


class _Stderr:
    """Whatever `sys.stderr` is at the moment of writing (tests swap it; so may embedders).

    A real file is written with one `os.write` per line: lines of several processes
    sharing it stay whole (a pipe keeps writes of up to 4 KiB whole)."""

    def write(self, text: str) -> int:
        stream = sys.stderr
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            return stream.write(text)  # not a file (a test's capture)
        stream.flush()  # what was written to it before goes first
        data = text.encode("utf-8", "backslashreplace")
        while data:
            data = data[os.write(fd, data) :]
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def get_logger(name: str = "pithcrawl") -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
