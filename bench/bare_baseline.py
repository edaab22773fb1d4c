"""The floor of a sync's HTTP: plain `aiohttp.ClientSession`, no pithcrawl code at all.

    python bench/bare_baseline.py get BASE_URL SUFFIXES_FILE ETAGS_FILE [CONCURRENCY]
    python bench/bare_baseline.py 304 BASE_URL SUFFIXES_FILE ETAGS_FILE [CONCURRENCY]

`get` GETs every record's bundle.json and state.json (`CONCURRENCY` at once, one
connection pool, bodies read whole, as a cold sync must) and writes the ETags it got to
ETAGS_FILE; `304` sends each back as `If-None-Match`, as an unchanged re-sync does, and
fails unless every answer is a 304. Either prints one JSON line: records, bytes, the
loop's wall and CPU seconds. `bench/sync_bench.py` runs both as whole processes, so their
figures, like pithcrawl's, include the interpreter's start and aiohttp's import.

It imports nothing from pithcrawl on purpose: it is the bar pithcrawl's own figures are
divided by.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp


async def crawl(mode: str, base: str, suffixes: list[str], etags: dict[str, str], n: int) -> int:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for suffix in suffixes:
        queue.put_nowait(suffix)
    got = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal got
        while not queue.empty():
            suffix = queue.get_nowait()
            for kind in ("bundle", "state"):
                url = f"{base}/pith/{suffix}/{kind}.json"
                headers = {"If-None-Match": etags[url]} if mode == "304" else None
                async with session.get(url, headers=headers) as response:
                    body = await response.read()
                    want = 304 if mode == "304" else 200
                    if response.status != want:
                        raise SystemExit(f"{url}: HTTP {response.status}, expected {want}")
                    got += len(body)
                    if mode == "get":
                        etags[url] = response.headers.get("ETag", "")

    connector = aiohttp.TCPConnector(limit=n, limit_per_host=n)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(n)))
    return got


def main() -> int:
    mode, base, suffix_file, etag_file, *rest = sys.argv[1:]
    if mode not in ("get", "304"):
        raise SystemExit("mode: get or 304")
    suffixes = Path(suffix_file).read_text().split()
    etags: dict[str, str] = {} if mode == "get" else json.loads(Path(etag_file).read_text())
    t0, c0 = time.perf_counter(), time.process_time()
    got = asyncio.run(crawl(mode, base.rstrip("/"), suffixes, etags, int(rest[0]) if rest else 32))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if mode == "get":
        Path(etag_file).write_text(json.dumps(etags))
    print(
        json.dumps({"records": len(suffixes), "bytes": got, "loop_wall_s": wall, "loop_cpu_s": cpu})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
