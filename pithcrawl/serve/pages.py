"""The status pages: read-only HTML for people, served by `serve` beside the mirror
routes (`--no-ui` leaves them out).

Owns the pages' routes (`/`, `/ui/records`, `/ui/record/{suffix}`, `/ui/alerts`,
`/ui/alert/{id}`, `/ui/mirror/{name}`, `/ui/body/{sha256}`, the stylesheet), the
checking of their query parameters, the Jinja2 environment (autoescape on: every value a
template prints is escaped) and the headers every page carries: a Content-Security-Policy
that allows no script at all, `nosniff`, no referrer. What a page shows is
`serve.views`'; the pages work without JavaScript.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import anyio
import jinja2
import structlog
from aiohttp import web

from pithcrawl import __version__
from pithcrawl.config import Config
from pithcrawl.errors import ConfigError, StoreCorrupt, StoreError
from pithcrawl.pith import parse_reference
from pithcrawl.serve import views
from pithcrawl.store import Store
from pithcrawl.store.browse import FIRST
from pithcrawl.timestamps import format_seconds

log = structlog.get_logger("pithcrawl.serve")

#: No script, no plugin, no frame, no form or fetch leaving this server: even a value a
#: template failed to escape could not run or call out.
POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
    " base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_SUFFIX = re.compile(r"[A-Z2-7]{26}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True, slots=True)
class Ui:
    """What the pages need beyond the archive."""

    config: Config
    command: views.Command = field(default_factory=views.Command)
    """How to run pithcrawl on this archive, for the commands a page shows."""
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    store: Store | None = None
    """A connection of the pages' own (read-only), so their whole-archive reads never
    queue the mirror routes' reads behind them; None: the server's."""


class _BadRequest(Exception):
    pass


#: Archived bodies sent at once; the time one may take; the piece written at a time.
BODIES_AT_ONCE = 4
BODY_SECONDS = 60.0
BODY_PIECE = 64 * 1024

#: How old the overview's figures may be before a request refreshes them.
FIGURES_MAX_AGE = 30.0


class Figures:
    """The overview's figures (every mirror's health, lag and last day: whole-archive
    reads that take seconds on 50,000 records), read once and kept for `max_age`
    seconds. A request finding them older is answered with them at once and starts one
    refresh in the background (stale-while-revalidate); only the first read is waited
    for. An idle server reads nothing. Each page says when its figures were read."""

    def __init__(
        self,
        store: Store,
        ui: Ui,
        max_age: float = FIGURES_MAX_AGE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store, self._ui, self._max_age, self._monotonic = store, ui, max_age, monotonic
        self._view: views.Overview | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None

    async def get(self) -> views.Overview:
        if self._view is None:
            async with self._lock:
                if self._view is None:
                    await self._read()
        elif self._monotonic() - self._read_at >= self._max_age and self._refresh is None:
            self._refresh = asyncio.get_running_loop().create_task(self._background())
        assert self._view is not None
        return self._view

    async def _read(self) -> None:
        view = await views.overview(self._store, self._ui.config, self._ui.clock())
        self._view, self._read_at = view, self._monotonic()

    async def _background(self) -> None:
        try:
            async with self._lock:
                await self._read()
        except StoreError as e:  # the last figures stay, with the time they were read
            log.error("figures_refresh_failed", error=str(e))
        except Exception:  # a bug: logged, and the last figures stay
            log.exception("figures_refresh_failed")
        finally:
            self._refresh = None

    def warm(self) -> None:
        """Start the first read now, in the background (a server just started)."""
        if self._view is None and self._refresh is None:
            self._refresh = asyncio.get_running_loop().create_task(self._background())

    async def close(self) -> None:
        task = self._refresh
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


def _when(at: datetime | None) -> str:
    return "-" if at is None else format_seconds(at)


def _int(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    if _ID.fullmatch(text) is None:
        raise _BadRequest(f"{name} must be a snapshot or alert id (digits)")
    return int(text)


class Pages:
    def __init__(self, store: Store, ui: Ui) -> None:
        self.store = store
        self.ui = ui
        static = files("pithcrawl.serve") / "static"
        self._css = (static / "ui.css").read_bytes()
        self._icon = (static / "icon.svg").read_bytes()
        self.figures = Figures(store, ui)
        self._bodies = anyio.Semaphore(BODIES_AT_ONCE)

    async def _page(
        self,
        request: web.Request,
        template: str,
        make: Callable[[], Awaitable[dict[str, Any] | None]],
    ) -> web.StreamResponse:
        try:
            context = await make()
        except _BadRequest as e:
            return self._error(request, 400, str(e))
        except StoreCorrupt as e:
            log.error("page_failed", path=request.path, error=str(e))
            return self._error(request, 500, f"a row of the archive is damaged ({e})")
        except StoreError as e:
            log.error("page_failed", path=request.path, error=str(e))
            return self._error(request, 503, "the archive cannot be read now")
        except ConfigError as e:  # a key file `serve` reads again, changed meanwhile
            log.error("page_failed", path=request.path, error=str(e))
            return self._error(request, 500, f"the configuration cannot be read now: {e}")
        except Exception:
            # A bug met on what the archive holds costs this page, never the server.
            log.exception("page_failed", path=request.path)
            return self._error(
                request, 500, "an internal error (a bug: see the page_failed log line)"
            )
        if context is None:
            return self._error(request, 404, "nothing of that name in the archive")
        return self._render(request, template, context)

    def _render(
        self, request: web.Request, template: str, context: dict[str, Any], status: int = 200
    ) -> web.StreamResponse:
        context.setdefault("now", self.ui.clock())
        context["version"] = __version__
        response = aiohttp_jinja2.render_template(template, request, context, status=status)
        response.headers.update(HEADERS)
        return response

    def _error(self, request: web.Request, status: int, message: str) -> web.StreamResponse:
        return self._render(request, "error.html", {"status": status, "message": message}, status)

    # -- the pages ------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.StreamResponse:
        async def make() -> dict[str, Any]:
            return {"view": await self.figures.get(), "now": self.ui.clock()}

        return await self._page(request, "overview.html", make)

    async def records(self, request: web.Request) -> web.StreamResponse:
        async def make() -> dict[str, Any]:
            after = request.query.get("after", "")
            if after and _SUFFIX.fullmatch(after) is None:
                raise _BadRequest("after must be a Pith suffix")
            rows = await self.store.browse.records(after=after, limit=views.PAGE + 1)
            more = rows[views.PAGE - 1].suffix if len(rows) > views.PAGE else None
            count = await self.store.watchlist.tracked_count()
            return {"rows": rows[: views.PAGE], "next": more, "count": count, "after": after}

        return await self._page(request, "records.html", make)

    async def find(self, request: web.Request) -> web.StreamResponse:
        """`/ui/record?pith=…`: the record a Pith Number, suffix or bundle URL names."""
        try:
            suffix = parse_reference(request.query.get("pith", ""))
        except ValueError as e:
            return self._error(request, 400, f"pith: {e}")
        raise web.HTTPSeeOther(f"/ui/record/{suffix}")

    async def record(self, request: web.Request) -> web.StreamResponse:
        suffix = request.match_info["suffix"]

        async def make() -> dict[str, Any] | None:
            if _SUFFIX.fullmatch(suffix) is None:
                return None
            a, b = _int(request, "a"), _int(request, "b")
            if (a is None) != (b is None):
                raise _BadRequest("pick two snapshots to compare: one as from (a), one as to (b)")
            page = await views.record(self.store, suffix, before=_int(request, "before"), a=a, b=b)
            if page is None:
                return None
            if a is not None and b is not None and page.diff is None:
                raise _BadRequest("a and b must be bundle snapshots of this record")
            return {"page": page, "command": self.ui.command, "alarming": views.ALARMING}

        return await self._page(request, "record.html", make)

    async def alerts(self, request: web.Request) -> web.StreamResponse:
        async def make() -> dict[str, Any]:
            state = request.query.get("state", "open")
            if state not in ("open", "closed", "all"):
                raise _BadRequest("state must be open, closed or all")
            before = _int(request, "before")
            rows = await self.store.browse.alerts(
                state=state, before=FIRST if before is None else before, limit=views.PAGE + 1
            )
            more = rows[views.PAGE - 1].id if len(rows) > views.PAGE else None
            return {"rows": rows[: views.PAGE], "next": more, "state": state}

        return await self._page(request, "alerts.html", make)

    async def alert(self, request: web.Request) -> web.StreamResponse:
        text = request.match_info["id"]

        async def make() -> dict[str, Any] | None:
            if _ID.fullmatch(text) is None:
                return None
            page = await views.alert(self.store, self.ui.config, int(text), self.ui.command)
            return None if page is None else {"page": page}

        return await self._page(request, "alert.html", make)

    async def mirror(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]

        async def make() -> dict[str, Any] | None:
            now = self.ui.clock()
            view = await self.figures.get()
            row = next((m for m in view.mirrors if m.status.name == name), None)
            if row is None:
                return None
            after = request.query.get("after", "")
            if after and _SUFFIX.fullmatch(after) is None:
                raise _BadRequest("after must be a Pith suffix")
            failing = await self.store.browse.failing(name, after=after, limit=views.PAGE + 1)
            since = now - timedelta(days=views.HISTORY_DAYS - 1)
            days = await self.store.browse.days(name, since, now)
            before = _int(request, "before")
            alerts = await self.store.browse.alerts(
                state="all",
                mirror=name,
                before=FIRST if before is None else before,
                limit=views.PAGE + 1,
            )
            return {
                "row": row,
                "history": views.history(days, now),
                "failing": failing[: views.PAGE],
                "failing_next": failing[views.PAGE - 1].suffix
                if len(failing) > views.PAGE
                else None,
                "alerts": alerts[: views.PAGE],
                "alerts_next": alerts[views.PAGE - 1].id if len(alerts) > views.PAGE else None,
                "now": now,
                "read_at": view.now,
            }

        return await self._page(request, "mirror.html", make)

    async def body(self, request: web.Request) -> web.StreamResponse:
        """An archived body, byte for byte, as plain text in a sandbox: a mirror's bytes
        are shown, never interpreted. A few at a time, each written in pieces as the
        client reads them (and dropped if it stops reading), so clients that never read
        cannot make the server hold many bodies at once."""
        sha256 = request.match_info["sha256"]
        if _SHA256.fullmatch(sha256) is None:
            return self._error(request, 404, "not a body's sha256")
        async with self._bodies:
            try:
                if not await self.store.browse.has_body(sha256):
                    return self._error(request, 404, "no such body in the archive")
                data = await self.store.get_blob(sha256)
            except StoreCorrupt as e:
                return self._error(request, 500, f"the body is damaged ({e})")
            except StoreError:
                return self._error(request, 503, "the archive cannot be read now")
            response = web.StreamResponse(
                headers={**HEADERS, "Content-Security-Policy": "sandbox; default-src 'none'"}
            )
            response.content_type = "text/plain"
            response.charset = "utf-8"
            response.content_length = len(data)
            with anyio.move_on_after(BODY_SECONDS) as scope:
                await response.prepare(request)
                view = memoryview(data)
                for at in range(0, len(data), BODY_PIECE):
                    await response.write(view[at : at + BODY_PIECE])  # waits for the client
            if scope.cancelled_caught and request.transport is not None:
                request.transport.close()  # too slow a reader: its slot is for others
            return response

    async def css(self, request: web.Request) -> web.StreamResponse:
        return _static(self._css, "text/css")

    async def icon(self, request: web.Request) -> web.StreamResponse:
        return _static(self._icon, "image/svg+xml")


def _static(body: bytes, content_type: str) -> web.Response:
    return web.Response(
        body=body,
        content_type=content_type,
        headers={
            "Cache-Control": "public, max-age=3600",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        },
    )


def add_pages(app: web.Application, store: Store, ui: Ui) -> None:
    """The pages' routes and templates on `app` (before its catch-all route)."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("pithcrawl.serve", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        shown=views.shown,
        href=views.href,
        when=_when,
        part=lambda text: quote(str(text), safe=""),
    )
    env.globals.update(age=views.age)
    pages = Pages(ui.store or store, ui)

    async def figures(app: web.Application) -> AsyncIterator[None]:
        pages.figures.warm()
        yield
        await pages.figures.close()

    app.cleanup_ctx.append(figures)
    app.router.add_get("/", pages.overview)
    app.router.add_get("/ui/records", pages.records)
    app.router.add_get("/ui/record", pages.find)
    app.router.add_get("/ui/record/{suffix}", pages.record)
    app.router.add_get("/ui/alerts", pages.alerts)
    app.router.add_get("/ui/alert/{id}", pages.alert)
    app.router.add_get("/ui/mirror/{name:(?s:.+)}", pages.mirror)  # any name, newlines too
    app.router.add_get("/ui/body/{sha256}", pages.body)
    app.router.add_get("/ui/ui.css", pages.css)
    app.router.add_get("/ui/icon.svg", pages.icon)
    app.router.add_get("/favicon.ico", pages.icon)
