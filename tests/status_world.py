"""An archive worth looking at, for the status pages' tests: two loopback mirrors, two
real `sync` passes, and open alerts of the kinds people come to the pages for.

- `calm`: both mirrors serve it; in the second pass `other` goes back to an older
  bundle: a `rollback`;
- `forked`: the mirrors serve histories that neither contains: a `mirror_divergence`;
- `hostile`: a validly signed bundle whose title carries script, `onerror=` and
  `javascript:` payloads (every one aimed at `canary`, a loopback server that counts
  what reaches it);
- `tampered`: `other` serves a copy with a changed event: `document_invalid`;
- `moved`: `other` redirects it to a `javascript:` URL, so the mirror's error text
  carries a payload too; a third pass, hours later, finds it still failing:
  `mirror_unreachable`.

async with world(tmp_path, signer) as w:
    w.db, w.config, w.trust, w.canary.hits

with served_world(tmp_path, signer, db) as w:  # built and served from a thread of its own
    ...                                        # (a world tests in other event loops share)
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import anyio
from aiohttp import web
from builder import BundleBuilder, TestSigner, canonical_record, serialize
from clocks import TestClock
from conftest import db_setting
from mirror import TestMirror

from pithcrawl.config import Config, parse_config
from pithcrawl.keys import TrustSet, load_key
from pithcrawl.location import PgUrl
from pithcrawl.store import Store
from pithcrawl.sync import Summary, sync_once

GOOD, OTHER = "good", "other"


def payloads(canary: str) -> dict[str, str]:
    """Markup that would run, load or navigate if a page let it through."""
    return {
        "title": (
            f"<script>document.title='pwned';fetch('{canary}/script')</script>"
            f'<img src="{canary}/img" onerror="alert(1)">'
            f'<a href="javascript:alert(2)">click</a> A paper'
        ),
        "location": f'javascript:alert(3)//<script src="{canary}/location"></script>',
    }


class Canary(TestMirror):
    """A loopback server that counts every request reaching it (a `TestMirror` counts
    only those for its documents): where the payloads would load from."""

    async def _extra(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        return await super()._extra(request)


@dataclass
class World:
    tmp: Path
    good: TestMirror
    other: TestMirror
    canary: TestMirror
    signer: TestSigner
    clock: TestClock
    records: dict[str, BundleBuilder]
    summaries: list[Summary]
    db: Path | PgUrl
    """The archive: a file in `tmp`, or `archive_at`."""

    @property
    def trust(self) -> TrustSet:
        return TrustSet([load_key(self.signer.public_key())])

    @property
    def config_path(self) -> Path:
        return self.tmp / "pithcrawl.toml"

    @property
    def config(self) -> Config:
        return parse_config(self.config_path.read_text(), base_dir=self.tmp)

    def suffix(self, name: str) -> str:
        return self.records[name].suffix

    async def sync(self) -> Summary:
        summary = await sync_once(self.config, self.db, [], self.trust, clock=self.clock.clock)
        self.summaries.append(summary)
        return summary


def _record(signer: TestSigner, arxiv: str, title: str, events: int = 1) -> BundleBuilder:
    b = BundleBuilder(signer, record=canonical_record(arxiv, title=title))
    for _ in range(events):
        b.add_event(payload={"graph_snapshot": {"paper": {"title": title}}})
    return b


@asynccontextmanager
async def world(
    tmp_path: Path, signer: TestSigner, db: Path | PgUrl | None = None
) -> AsyncIterator[World]:
    async with TestMirror() as good, TestMirror() as other, Canary() as canary:
        hostile = payloads(canary.base_url)
        calm = _record(signer, "2612.00001", "A calm paper")
        calm_v1 = calm.bytes()
        calm.add_event(payload={"graph_snapshot": {"paper": {"title": "A calm paper"}}})
        forked_good = _record(signer, "2612.00002", "A forked paper")
        forked_other = _record(signer, "2612.00002", "A forked paper")
        forked_good.add_event(payload={"graph_snapshot": {"side": "good"}})
        forked_other.add_event(payload={"graph_snapshot": {"side": "other"}})
        evil = _record(signer, "2612.00003", hostile["title"])
        tampered = _record(signer, "2612.00004", "A tampered paper", events=2)
        moved = _record(signer, "2612.00005", "A paper that moved")
        for mirror in (good, other):
            for b in (calm, forked_good, evil, tampered, moved):
                mirror.put(b.bytes())
        key = tmp_path / "test.key.json"
        key.write_text(json.dumps(signer.public_key()))
        (tmp_path / "pithcrawl.toml").write_text(
            f"db = {json.dumps(db_setting(db))}\n"
            f'[trust]\nkeys = ["{key.name}"]\nclock_skew = "3650d"\n'
            '[crawl]\ntimeout = "5s"\ndiscover = false\n'
            '[alerts]\nunreachable_after = "1h"\n'
            f'[[mirrors]]\nname = "{GOOD}"\nbase_url = "{good.base_url}"\n'
            f'[[mirrors]]\nname = "{OTHER}"\nbase_url = "{other.base_url}"\n'
        )
        w = World(
            tmp_path,
            good,
            other,
            canary,
            signer,
            TestClock(),
            {
                "calm": calm,
                "forked": forked_good,
                "hostile": evil,
                "tampered": tampered,
                "moved": moved,
            },
            [],
            tmp_path / "archive.db" if db is None else db,
        )
        async with await Store.open(w.db) as store:
            await store.watchlist.track([b.suffix for b in w.records.values()], w.clock.at)
        await w.sync()
        w.clock.advance(timedelta(hours=7))
        other.put(calm_v1)
        other.put(forked_other.bytes())
        doc = tampered.build()
        doc["events"][1]["payload"] = {"graph_snapshot": {"forged": True}}
        other.put(serialize(doc))
        other.fail(moved.suffix, 302, headers={"Location": hostile["location"]})
        await w.sync()
        w.clock.advance(timedelta(hours=7))  # past unreachable_after, still failing
        await w.sync()
        yield w


@contextmanager
def served_world(
    tmp_path: Path, signer: TestSigner, db: Path | PgUrl | None = None
) -> Iterator[World]:
    """`world`, built in an event loop of a thread of its own and served from it while the
    block runs (its mirrors answer, its canary counts): a world for tests that run in
    event loops of their own to share."""
    built: list[World] = []
    failed: list[BaseException] = []
    ready, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        async with world(tmp_path, signer, db) as w:
            built.append(w)
            ready.set()
            await anyio.to_thread.run_sync(stop.wait)

    def run() -> None:
        try:
            anyio.run(serve)
        except BaseException as e:  # raised where the world is used
            failed.append(e)
        finally:
            ready.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        assert ready.wait(120), "the world was not built in 120 s"
        if failed:
            raise failed[0]
        yield built[0]
    finally:
        stop.set()
        t.join(30)
    if failed:
        raise failed[0]
