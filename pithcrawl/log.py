"""structlog, configured in one place: JSON lines off a TTY, readable on one.

Owns the processors, the level from -v/-q, and the output stream (stderr: stdout is
for results). Units of work bind `pith_number` and `mirror` with contextvars.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

_settings: tuple[str, int] = ("json", 0)
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
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
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
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    if _stdlib_handler is not None:
        root.removeHandler(_stdlib_handler)
    root.addHandler(handler)
    # Libraries' debug lines (aiosqlite's two per statement) are not pithcrawl's -v.
    root.setLevel(max(level, logging.INFO))
    _stdlib_handler = handler


def settings() -> tuple[str, int]:
    """The format and verbosity last configured, for a worker process to log the same way."""
    return _settings


class _Stderr:
    """Whatever `sys.stderr` is at the moment of writing (tests swap it; so may embedders)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def get_logger(name: str = "pithcrawl") -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
