"""An arena: a good mirror and a hostile one on loopback, serving the same records.

Every attack on pithcrawl is played here next to an honest mirror, and every pass is
checked for what the attack must never cost: the good mirror's records archived and
trusted, exactly as it serves them now.

async with arena(tmp_path, signer) as a:
    a.hostile.route(a.hostile.bundle_path(a.records[0].suffix), respond(...))
    summary = await a.sync()          # one pass, then `assert_good_archived`
    a.advance()                       # the good mirror serves a new event of each record
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder import BundleBuilder, TestSigner, canonical_record
from clocks import TestClock
from conftest import VANTAGE
from hostile import HostileMirror
from mirror import TestMirror

from pithcrawl.config import Config, load_config, parse_config
from pithcrawl.daemon import Daemon
from pithcrawl.keys import TrustSet, load_key
from pithcrawl.sdnotify import Notifier
from pithcrawl.store import Store
from pithcrawl.sync import Summary, sync_once

GOOD = "good"
HOSTILE = "hostile"


@dataclass
class Arena:
    tmp: Path
    good: TestMirror
    hostile: HostileMirror
    records: list[BundleBuilder]
    signer: TestSigner
    extra: str = ""
    """More `[crawl]` keys, and any sections after it."""
    timeout: str = "1s"
    passes: int = 0
    summaries: list[Summary] = field(default_factory=list)
    clock: TestClock = field(default_factory=TestClock)
    """The passes' wall clock (`clock.advance` stands for time passing)."""

    @property
    def db(self) -> Path:
        return self.tmp / "archive.db"

    @property
    def trust(self) -> TrustSet:
        return TrustSet([load_key(self.signer.public_key())])

    def config_text(self) -> str:
        key = self.tmp / "test.key.json"
        key.write_text(json.dumps(self.signer.public_key()))
        return (
            f'db = "archive.db"\n[trust]\nkeys = ["{key.name}"]\nclock_skew = "3650d"\n'
            f'[crawl]\ntimeout = "{self.timeout}"\ndiscover = false\n{self.extra}\n'
            f'[[mirrors]]\nname = "{GOOD}"\nbase_url = "{self.good.base_url}"\n'
            f'[[mirrors]]\nname = "{HOSTILE}"\nbase_url = "{self.hostile.base_url}"\n'
        )

    def config(self) -> Config:
        return parse_config(self.config_text(), base_dir=self.tmp)

    def write_config(self) -> Path:
        path = self.tmp / "pithcrawl.toml"
        path.write_text(self.config_text())
        return path

    def daemon(self, **options: Any) -> Daemon:
        """`pithcrawl run` in this process, on this configuration, with short periods."""
        cfg = self.write_config()
        return Daemon(
            lambda: load_config(cfg),
            self.db,
            lambda _: self.trust,
            Notifier({}),
            idle_poll=0.1,
            deliver_every=0.1,
            check_every=0.2,
            **options,
        )

    def advance(self) -> None:
        """The good mirror serves each record with one more event."""
        for b in self.records:
            b.add_event()
            self.good.put(b.bytes())

    async def sync(self) -> Summary:
        """One pass; the good mirror's records must come out of it archived."""
        summary = await sync_once(self.config(), self.db, [], self.trust, clock=self.clock.clock)
        self.passes += 1
        self.summaries.append(summary)
        await self.assert_good_archived()
        return summary

    async def assert_good_archived(self) -> None:
        """Every record is archived and trusted from the good mirror as it serves it now."""
        async with await Store.open(self.db, readonly=True) as store:
            for b in self.records:
                snap = await store.latest_snapshot(b.suffix, GOOD, "bundle", trusted=True)
                assert snap is not None, f"pass {self.passes}: {b.suffix} not archived"
                assert await store.get_blob(snap.body_sha256) == b.bytes(), (
                    f"pass {self.passes}: the good mirror's {b.suffix} is not the archived one"
                )
                state = await store.fetch_state(b.suffix, GOOD, "bundle", vantage=VANTAGE)
                assert state is not None and state.failures == 0


@asynccontextmanager
async def arena(
    tmp_path: Path,
    signer: TestSigner,
    *,
    records: int = 2,
    extra: str = "",
    fetch_timeout: str = "1s",
) -> AsyncIterator[Arena]:
    """Both mirrors up, serving `records` records (one event each), all tracked."""
    async with TestMirror() as good, HostileMirror() as hostile:
        built = []
        for i in range(records):
            b = BundleBuilder(signer, record=canonical_record(f"2612.{i:05d}", title=f"A{i}"))
            b.add_event()
            good.put(b.bytes())
            hostile.put(b.bytes())
            built.append(b)
        a = Arena(tmp_path, good, hostile, built, signer, extra, fetch_timeout)
        async with await Store.open(a.db) as store:
            await store.watchlist.track([b.suffix for b in built], datetime.now(UTC))
        yield a
