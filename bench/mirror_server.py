"""A fast static Pith mirror for benchmarks: bodies from memory, strong ETags, reload on SIGHUP.

    python bench/mirror_server.py DIR [DIR...]

Serves DIR/{suffix}.bundle.json at /pith/{suffix}/bundle.json (and the .well-known
address) and DIR/{suffix}.state.json at /pith/{suffix}/state.json; a file in a later
DIR overrides the same name in an earlier one. Prints `port N` once listening on
127.0.0.1, and `reloaded K` after each SIGHUP re-reads the files whose mtime or size
changed. The ETag is the sha256 of the body; a matching If-None-Match gets a 304.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

_KINDS = ((".bundle.json", "bundle.json"), (".state.json", "state.json"))


class Files:
    """URL path → (body, ETag), rebuilt incrementally from the directories."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs
        self.table: dict[str, tuple[bytes, str]] = {}
        self._seen: dict[str, tuple[int, int]] = {}
        self._origin: dict[str, int] = {}  # URL path → index of the DIR that serves it

    def scan(self) -> int:
        changed = 0
        for rank, d in enumerate(self.dirs):
            with os.scandir(d) as entries:
                for entry in entries:
                    for ext, kind in _KINDS:
                        if not entry.name.endswith(ext):
                            continue
                        st = entry.stat()
                        sig = (st.st_mtime_ns, st.st_size)
                        path = f"/pith/{entry.name[: -len(ext)]}/{kind}"
                        if self._seen.get(entry.path) == sig or self._origin.get(path, -1) > rank:
                            continue
                        self._seen[entry.path] = sig
                        body = Path(entry.path).read_bytes()
                        self.table[path] = (body, f'"{hashlib.sha256(body).hexdigest()}"')
                        self._origin[path] = rank
                        changed += 1
        return changed


def app_for(files: Files) -> web.Application:
    async def serve(request: web.Request) -> web.Response:
        path = request.path.removeprefix("/.well-known")
        hit = files.table.get(path)
        if hit is None:
            return web.Response(status=404)
        body, etag = hit
        match = request.headers.get("If-None-Match")
        if match and (match.strip() == "*" or etag in (t.strip() for t in match.split(","))):
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type="application/json", headers={"ETag": etag})

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    return app


async def main(dirs: list[Path]) -> None:
    files = Files(dirs)
    files.scan()
    runner = web.AppRunner(app_for(files), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, lambda: print(f"reloaded {files.scan()}", flush=True))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"port {port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    asyncio.run(main([Path(a) for a in sys.argv[1:]]))
