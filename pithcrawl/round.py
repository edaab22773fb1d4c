"""A round: the crawl of the tracked records under one configuration, trust set and clock.

`sync` (one pass: a round, all its pairs, done) and `run` (a round per configuration, per
hour and per trust set, its pairs as they come due) open and finish the same round.
Opening one fixes everything its crawler needs: the records the configuration tracks,
the mirrors to crawl (manifests read now), the trust set (learned keys included),
whether unchanged bodies are judged again (the keys changed since their verdicts), the
sinks (told of alerts opened before they were configured) and the one HTTP client.
Nothing of it changes once it is open: a new configuration, a new hour or new keys make
a new round.

It owns the work that spans pairs: the rules over records and mirrors that time alone
can trigger, and the end of hold-downs (`check`); alert delivery (`deliver`); noting the
trust set the archive's verdicts now stand on (`judged_all`). Each pair is
`crawl.Crawler.sync_pair`'s; which pairs, and when, is `sync`'s and `daemon`'s.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from pithcrawl.alert import Sinks, deliver_due, deliver_to, sink_names
from pithcrawl.clock import Clock
from pithcrawl.config import Config
from pithcrawl.crawl import Crawler
from pithcrawl.fetch.client import fetcher_for
from pithcrawl.keys import TrustSet
from pithcrawl.metrics import Metrics
from pithcrawl.mirrors import Site, resolve
from pithcrawl.pith import parse_reference
from pithcrawl.store import Alert, Store
from pithcrawl.trust import TRUST_DIGEST, with_learned


@dataclass(frozen=True, slots=True)
class Round:
    config: Config
    store: Store
    clock: Clock
    crawler: Crawler
    sites: tuple[Site, ...]
    unread: tuple[str, ...]
    """The manifests that could not be read now (their last listing is crawled)."""
    sinks: Sinks
    metrics: Metrics | None
    digest: str
    """The trust set the round opened with (keys it learns later are not in it)."""

    @property
    def trust(self) -> TrustSet:
        return self.crawler.trust

    @property
    def reverify(self) -> bool:
        return self.crawler.reverify

    @property
    def mirror_names(self) -> list[str]:
        return [s.name for s in self.sites]

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        config: Config,
        store: Store,
        trust: TrustSet,
        clock: Clock,
        *,
        secret: bytes | None,
        limits: Config | None = None,
        reverify: bool | None = None,
        metrics: Metrics | None = None,
    ) -> AsyncIterator[Round]:
        """Open a round, with its HTTP client for as long as the block runs.

        `limits`: the configuration whose fetch limits this process's crawler uses (a
        pass shared with worker processes takes its share of them). `reverify`: judge
        unchanged bodies again, or not (None: when the trust set is not the one the
        archive's verdicts were reached under)."""
        now = clock.now()
        node = config.node
        await store.nodes.seen(
            node.node_name,
            node.vantage_name,
            now,
            interval=config.crawl.interval,
        )
        await store.adopt_unplaced(node.vantage_name)
        if config.watch.pith:
            await store.watchlist.track([parse_reference(p) for p in config.watch.pith], now)
        # A sink configured since an alert opened is told of it (sinks change only here:
        # at the start of a pass, and of each round of the daemon).
        await store.deliveries.queue_open(sink_names(config.alerts), now)
        own = limits or config
        async with fetcher_for(own.crawl) as fetcher:
            sites, unread = await resolve(config, store, fetcher, now)
            for site in sites:
                if site.origin == "config":
                    await store.watchlist.upsert_mirror(site.row(now))
            learned = await with_learned(trust, store, config)
            if reverify is None:
                reverify = await store.setting(TRUST_DIGEST) != learned.digest
            crawler = Crawler(
                own,
                store,
                fetcher,
                learned,
                clock.now,
                metrics=metrics or Metrics(),
                reverify=reverify,
                mirrors=[s.name for s in sites],
            )
            yield cls(
                config,
                store,
                clock,
                crawler,
                tuple(sites),
                tuple(unread),
                Sinks(config.alerts, fetcher, secret),
                metrics,
                learned.digest,
            )
        await store.nodes.seen(
            node.node_name,
            node.vantage_name,
            clock.now(),
            interval=config.crawl.interval,
        )

    async def seen(self) -> None:
        """This node is alive and crawling (`status` shows when it was last seen)."""
        node = self.config.node
        await self.store.nodes.seen(
            node.node_name,
            node.vantage_name,
            self.clock.now(),
            interval=self.config.crawl.interval,
        )

    async def check(self, named: Sequence[str] | None = None) -> list[Alert]:
        """The rules time alone can trigger, over `named` records (None: every tracked
        one): a lag turning stale, a mirror failing too long; then the hold-downs that
        ended. The alerts this opened (each an entry of the event log)."""
        conditions = self.crawler.conditions
        opened = await conditions.recheck(named or None, self.mirror_names)
        opened += await conditions.check_mirrors(self.mirror_names)
        await conditions.close_cleared()
        return opened

    async def deliver(self, sink: str | None = None) -> int:
        """Attempt the due deliveries, to one sink or all; how many were delivered."""
        rand = random.Random()  # noqa: S311 - jitter, not crypto
        now = self.clock.now()
        if sink is None:
            delivered, _ = await deliver_due(
                self.store, self.sinks, now, rand, metrics=self.metrics
            )
        else:
            delivered, _ = await deliver_to(
                self.store, self.sinks, sink, now, rand, metrics=self.metrics
            )
        return delivered

    async def judged_all(self) -> None:
        """Every archived body was judged under the trust set this round opened with:
        note it, so later rounds judge unchanged bodies again only when the keys change
        again (a key learned during the round is such a change)."""
        await self.store.set_setting(TRUST_DIGEST, self.digest)

    def others_wrote(self) -> None:
        """Other processes (a pass's workers) opened and closed alerts in the archive."""
        self.crawler.conditions.forget_open_scopes()
