"""Crawling and archiving, end to end: real loopback mirrors, a real SQLite archive,
bundles signed with a test key. Each test runs whole `sync` passes (`sync.sync_once`)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from builder import BundleBuilder, TestSigner, canonical_record, serialize
from conftest import VANTAGE
from mirror import TestMirror
from postgres import raw

from pithcrawl.commands.sync import exit_code, summary_line
from pithcrawl.config import Config, parse_config
from pithcrawl.keys import TrustSet, load_key
from pithcrawl.location import PgUrl
from pithcrawl.store import Store
from pithcrawl.sync import Summary, sync_once

pytestmark = pytest.mark.anyio


@dataclass
class Env:
    config: Config
    db: Path | PgUrl
    trust: TrustSet
    mirrors: list[TestMirror]

    async def sync(self, *named: str) -> Summary:
        return await sync_once(self.config, self.db, list(named), self.trust)

    @asynccontextmanager
    async def store(self) -> AsyncIterator[Store]:
        async with await Store.open(self.db, readonly=True) as store:
            yield store


def _config(tmp_path: Path, bases: list[str], extra: str = "discover = false") -> Config:
    mirrors = "".join(
        f'[[mirrors]]\nname = "m{i}"\nbase_url = "{b}"\n' for i, b in enumerate(bases)
    )
    return parse_config(
        f'db = "archive.db"\n[crawl]\ntimeout = "5s"\n{extra}\n{mirrors}',
        base_dir=tmp_path,
    )


@asynccontextmanager
async def env(
    tmp_path: Path, signer: TestSigner, n: int = 2, *, db: Path | PgUrl | None = None
) -> AsyncIterator[Env]:
    """`n` loopback mirrors, and the archive at `db` (`archive_at`), else in `tmp_path`."""
    async with AsyncExitStack() as stack:
        mirrors = [await stack.enter_async_context(TestMirror()) for _ in range(n)]
        config = _config(tmp_path, [m.base_url for m in mirrors])
        trust = TrustSet([load_key(signer.public_key())])
        yield Env(config, tmp_path / "archive.db" if db is None else db, trust, mirrors)


def record(signer: TestSigner, i: int = 0, events: int = 1) -> BundleBuilder:
    b = BundleBuilder(signer, record=canonical_record(f"2611.{i:05d}", title=f"P{i}"))
    for _ in range(events):
        b.add_event()
    return b


def serve(e: Env, *builders: BundleBuilder, only: list[int] | None = None) -> None:
    for i, m in enumerate(e.mirrors):
        if only is None or i in only:
            for b in builders:
                m.put(b.bytes())


async def track(e: Env, *builders: BundleBuilder) -> None:
    async with await Store.open(e.db) as store:
        await store.watchlist.track([b.suffix for b in builders], datetime.now(UTC))


async def test_first_sync_archives_every_record_from_every_mirror(archive_at, tmp_path, signer):
    """3 records × 2 mirrors: a trusted bundle and state.json snapshot each, bodies kept once."""
    async with env(tmp_path, signer, db=archive_at) as e:
        builders = [record(signer, i) for i in range(3)]
        serve(e, *builders)
        await track(e, *builders)
        summary = await e.sync()
        assert (summary.records, summary.mirrors, summary.errors) == (3, 2, 0)
        assert summary.new_snapshots == 12
        assert summary.alerts == 0
        async with e.store() as store:
            for b in builders:
                for m in ("m0", "m1"):
                    snap = await store.latest_snapshot(b.suffix, m, "bundle", trusted=True)
                    assert snap is not None
                    assert await store.get_blob(snap.body_sha256) == b.bytes()
                    assert snap.event_count == 2
            stats = await store.maintenance.stats()
            assert stats["blobs"] == 6  # the same bytes from two mirrors are one blob


async def test_unchanged_resync_is_conditional_and_stores_no_body(archive_at, tmp_path, signer):
    """Nothing changed: every request is conditional (304) and no snapshot or blob is added."""
    async with env(tmp_path, signer, db=archive_at) as e:
        builders = [record(signer, i) for i in range(3)]
        serve(e, *builders)
        await track(e, *builders)
        await e.sync()
        async with e.store() as store:
            before = await store.maintenance.stats()
        summary = await e.sync()
        assert summary.new_snapshots == 0
        assert summary.events == 0
        assert sum(sum(m.conditional_hits.values()) for m in e.mirrors) == 12
        async with e.store() as store:
            after = await store.maintenance.stats()
        assert after["snapshots"] == before["snapshots"]
        assert after["blob_bytes_stored"] == before["blob_bytes_stored"]


async def test_added_event_gives_snapshot_delta_and_event_added(archive_at, tmp_path, signer):
    """A mirror adds an event: a new snapshot stored as a small delta against the last
    one, the state.json as a delta against its bundle, and an event_added."""
    async with env(tmp_path, signer, db=archive_at) as e:
        b = record(signer)
        serve(e, b)
        await track(e, b)
        await e.sync()
        first = b.bytes()
        new = b.add_event()
        e.mirrors[0].put(b.bytes())
        summary = await e.sync()
        assert summary.new_snapshots == 2  # bundle and state.json, on m0 only
        async with e.store() as store:
            snaps = await store.snapshots(b.suffix, mirror="m0")
            assert len(snaps) == 2
            assert snaps[1].prev_id == snaps[0].id
            assert await store.get_blob(snaps[0].body_sha256) == first
            assert await store.get_blob(snaps[1].body_sha256) == b.bytes()
            states = await store.snapshots(b.suffix, mirror="m0", kind="state")
            events = await store.events(kinds=["event_added"])
        with raw(e.db) as conn:
            stored = {
                sha: (base, size, stored)
                for sha, base, size, stored in conn.execute(
                    "SELECT sha256, base, size, length(data) FROM blobs"
                )
            }
        base, size, kept = stored[snaps[1].body_sha256]
        assert base == snaps[0].body_sha256 and kept < size / 8
        assert stored[states[-1].body_sha256][0] == snaps[1].body_sha256
        assert len(events) == 1
        assert events[0].mirrors == ("m0",)
        assert new["event_id"] in json.dumps(events[0].evidence)
        assert events[0].evidence["url"].startswith(e.mirrors[0].base_url)


async def test_correction_and_key_rotation(archive_at, tmp_path, signer):
    """A correction superseding an event, signed by a newly announced (trusted) key."""
    second = TestSigner("test-key-2")
    async with env(tmp_path, signer, db=archive_at) as e:
        e.trust = TrustSet([load_key(signer.public_key()), load_key(second.public_key())])
        b = record(signer)
        serve(e, b)
        await track(e, b)
        await e.sync()
        b.extra_keys.append(second.public_key())
        b.add_event(
            "correction",
            {"correction": {"reason": "wrong figure"}},
            supersedes=[b.events[1]["event_id"]],
            signer=second,
        )
        serve(e, b)
        summary = await e.sync()
        assert summary.alerts == 0
        async with e.store() as store:
            kinds = sorted({ev.kind for ev in await store.events()})
        assert kinds == ["correction", "event_added", "key_rotation"]


async def test_rollback_is_a_critical_alert(archive_at, tmp_path, signer):
    """A mirror that goes back to an older bundle (an event dropped) raises `rollback`."""
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = record(signer, events=1)
        old = b.bytes()
        b.add_event()
        serve(e, b)
        await track(e, b)
        assert (await e.sync()).alerts == 0
        e.mirrors[0].put(old)
        summary = await e.sync()
        assert summary.alerts >= 1
        async with e.store() as store:
            rollbacks = await store.events(kinds=["rollback"])
        assert rollbacks
        assert all(r.severity == "critical" for r in rollbacks)
        evidence = rollbacks[0].evidence
        assert evidence["previous_body_sha256"] != evidence["body_sha256"]


async def test_tampered_body_is_archived_as_evidence_never_trusted(archive_at, tmp_path, signer):
    """document_invalid with the findings; the body is kept; no trusted snapshot exists."""
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = record(signer)
        doc = b.build()
        doc["events"][1]["payload"] = {"graph_snapshot": {"forged": True}}
        e.mirrors[0].put(serialize(doc))
        await track(e, b)
        summary = await e.sync()
        assert summary.alerts == 1
        async with e.store() as store:
            assert await store.latest_snapshot(b.suffix, "m0", "bundle", trusted=True) is None
            snap = await store.latest_snapshot(b.suffix, "m0", "bundle")
            assert snap is not None
            assert not snap.trusted
            assert "event_hash_mismatch" in {f.code for f in snap.findings}
            assert await store.get_blob(snap.body_sha256) == serialize(doc)
            (alert,) = await store.events(kinds=["document_invalid"])
        assert alert.evidence["body_sha256"] == snap.body_sha256
        # state.json is not even fetched for an untrusted bundle
        assert e.mirrors[0].hits[f"/pith/{b.suffix}/state.json"] == 0


async def test_state_json_differing_from_the_bundle(archive_at, tmp_path, signer):
    """A mirror whose state.json is not its bundle's state: state_url_mismatch."""
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = record(signer)
        other = record(signer, 7)
        e.mirrors[0].put(b.bytes(), state=json.dumps(other.build()["state"]).encode())
        await track(e, b)
        summary = await e.sync()
        assert summary.alerts == 1
        async with e.store() as store:
            (alert,) = await store.events(kinds=["state_url_mismatch"])
        assert alert.severity == "critical"


async def test_503_with_retry_after_is_retried_later_even_after_a_restart(
    archive_at, tmp_path, signer
):
    """The mirror asked for an hour: the pair is due then, and a new pass (a new process
    opening the same archive) does not ask before."""
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = record(signer)
        serve(e, b)
        e.mirrors[0].fail(b.suffix, 503, retry_after="3600")
        await track(e, b)
        summary = await e.sync()
        assert summary.errors == 1
        assert summary.alerts == 0
        async with e.store() as store:
            state = await store.fetch_state(b.suffix, "m0", "bundle", vantage=VANTAGE)
        assert state is not None
        assert state.failures == 1
        assert state.next_due is not None
        assert state.next_due >= datetime.now(UTC) + timedelta(seconds=3590)
        hits = sum(e.mirrors[0].hits.values())
        again = await e.sync()
        # Put off, not fetched: no error of this pass, but the pass still ends in 3.
        assert (again.deferred, again.errors) == (1, 0)
        assert exit_code(again) == 3
        assert "1 put off" in summary_line(again) and "0 errors" in summary_line(again)
        assert sum(e.mirrors[0].hits.values()) == hits


async def test_dead_mirror_is_an_error_with_backoff(archive_at, tmp_path, signer):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = record(signer)
        serve(e, b)
        e.config = _config(tmp_path, [e.mirrors[0].base_url, f"http://127.0.0.1:{port}"])
        await track(e, b)
        summary = await e.sync()
        assert summary.errors == 1
        assert summary.new_snapshots == 2
        async with e.store() as store:
            state = await store.fetch_state(b.suffix, "m1", "bundle", vantage=VANTAGE)
        assert state is not None
        assert state.last_error is not None
        assert "127.0.0.1" in state.last_error
        assert state.next_due is not None
        assert state.next_due > datetime.now(UTC)


async def test_well_known_address_is_the_fallback(archive_at, tmp_path, signer):
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = record(signer)
        serve(e, b)
        e.mirrors[0].hidden.add(b.suffix)
        await track(e, b)
        summary = await e.sync()
        assert summary.errors == 0
        async with e.store() as store:
            snap = await store.latest_snapshot(b.suffix, "m0", "bundle", trusted=True)
        assert snap is not None
        assert "/.well-known/pith/" in snap.url


def hint(b: BundleBuilder, base: str) -> None:
    b.mirror_hints.append(
        {
            "mirror_type": "https",
            "name": "hinted",
            "base_url": base,
            "bundle_url": f"{base}/pith/{b.suffix}/bundle.json",
            "state_url": f"{base}/pith/{b.suffix}/state.json",
            "well_known_bundle_url": f"{base}/.well-known/pith/{b.suffix}/bundle.json",
            "status": "mirror",
        }
    )


async def test_hinted_loopback_mirror_is_refused_by_default(archive_at, tmp_path, signer):
    """mirror_hints pointing at a plain-http loopback address are not followed."""
    async with env(tmp_path, signer, n=2, db=archive_at) as e:
        b = record(signer)
        hint(b, e.mirrors[1].base_url)
        serve(e, b)
        e.config = _config(tmp_path, [e.mirrors[0].base_url], "discover = true")
        await track(e, b)
        await e.sync()
        summary = await e.sync()
        assert summary.mirrors == 1
        assert sum(e.mirrors[1].hits.values()) == 0
        async with e.store() as store:
            assert [m.origin for m in await store.watchlist.mirrors()].count("discovered") == 0


async def test_hinted_mirror_is_crawled_when_allowed(archive_at, tmp_path, signer):
    """With allow_private_hosts, a hinted mirror joins the crawl from the next pass on."""
    async with env(tmp_path, signer, n=2, db=archive_at) as e:
        b = record(signer)
        hint(b, e.mirrors[1].base_url)
        serve(e, b)
        e.config = _config(
            tmp_path, [e.mirrors[0].base_url], "discover = true\nallow_private_hosts = true"
        )
        await track(e, b)
        await e.sync()
        summary = await e.sync()
        assert summary.mirrors == 2
        assert summary.new_snapshots == 2  # the hinted mirror's bundle and state.json
        assert sum(e.mirrors[1].hits.values()) > 0


def test_hints_become_patterns():
    """A hint's URLs for one record become patterns for every record."""
    from pithcrawl.mirrors import from_hints

    b = record(TestSigner("k"))
    hint(b, "https://mirror.example")
    (site,) = from_hints(b.build(), b.suffix)
    assert site.bundle_url("X" * 26) == f"https://mirror.example/pith/{'X' * 26}/bundle.json"
    assert site.origin == "discovered"


@pytest.mark.parametrize("follow", [True, False])
async def test_follow_rotations_trusts_a_key_announced_by_a_verified_bundle(
    archive_at, tmp_path, signer, follow
):
    """A bundle signed by a trusted key announces key 2; later events signed by key 2 are
    trusted only when `trust.follow_rotations` is on (and the key survives a restart)."""
    second = TestSigner("rotated-key")
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        e.config = _config(
            tmp_path,
            [e.mirrors[0].base_url],
            f"discover = false\n[trust]\nfollow_rotations = {str(follow).lower()}",
        )
        b = record(signer)
        b.extra_keys.append(second.public_key())
        serve(e, b)
        await track(e, b)
        assert (await e.sync()).alerts == 0
        b.add_event(signer=second)
        serve(e, b)
        summary = await e.sync()
        async with e.store() as store:
            learned = await store.learned_keys()
            alerts = await store.events(kinds=["untrusted_key"])
        if follow:
            assert [k["key_id"] for k in learned] == ["rotated-key"]
            assert summary.alerts == 0
            assert not alerts
        else:
            assert learned == []
            assert summary.alerts == 1
            assert len(alerts) == 1


async def test_mirrors_listed_by_a_manifest_are_crawled(archive_at, tmp_path, signer):
    """A `manifest` mirror entry: the manifest's mirrors (with their own patterns) are used."""
    async with env(tmp_path, signer, n=2, db=archive_at) as e:
        b = record(signer)
        serve(e, b, only=[1])
        listed = e.mirrors[1].base_url
        manifest = {
            "manifest_type": "pith_mirror_manifest",
            "manifest_version": "1.0",
            "mirrors": [
                {
                    "name": "listed",
                    "base_url": listed,
                    "bundle_pattern": f"{listed}/pith/{{suffix}}/bundle.json",
                    "state_pattern": f"{listed}/pith/{{suffix}}/state.json",
                    "well_known_pattern": f"{listed}/.well-known/pith/{{suffix}}/bundle.json",
                    "status": "mirror",
                },
                {"name": "broken", "base_url": "not a url"},
            ],
        }
        e.mirrors[0].extra["/pith-mirrors.json"] = json.dumps(manifest).encode()
        e.config = parse_config(
            f"[crawl]\ndiscover = false\nallow_private_hosts = true\n"
            f'[[mirrors]]\nname = "registry"\n'
            f'manifest = "{e.mirrors[0].base_url}/pith-mirrors.json"\n',
            base_dir=tmp_path,
        )
        await track(e, b)
        summary = await e.sync()
        assert (summary.mirrors, summary.errors, summary.new_snapshots) == (1, 0, 2)
        async with e.store() as store:
            assert await store.latest_snapshot(b.suffix, "registry/listed", "bundle", trusted=True)


@pytest.mark.parametrize("mirrors", [5, True, {"name": "x"}, "mirrors", None, []])
async def test_a_manifest_of_any_shape_is_read_or_told_unreadable(
    archive_at, tmp_path, signer, mirrors
):
    """A manifest is unsigned network input: whatever its `mirrors` holds, the pass goes
    on with no mirror from it (and says why), never ends with a traceback."""
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = record(signer)
        _use_manifest(e, tmp_path, mirrors)
        await track(e, b)
        summary = await e.sync()
        assert (summary.mirrors, summary.errors) == (0, 0)
        # Told: the pass ends in 3 for a manifest it could not read (one that lists
        # nothing, `[]` or null, is read).
        unread = 0 if mirrors in ([], None) else 1
        assert (summary.manifests_unread, exit_code(summary)) == (unread, 3 * unread)


async def test_a_discovered_mirror_is_dropped_when_private_hosts_are_no_longer_allowed(
    archive_at, tmp_path, signer
):
    async with env(tmp_path, signer, n=2, db=archive_at) as e:
        b = record(signer)
        hint(b, e.mirrors[1].base_url)
        serve(e, b)
        allowed = "discover = true\nallow_private_hosts = true"
        e.config = _config(tmp_path, [e.mirrors[0].base_url], allowed)
        await track(e, b)
        await e.sync()
        assert (await e.sync()).mirrors == 2
        e.config = _config(tmp_path, [e.mirrors[0].base_url], "discover = true")
        hits = sum(e.mirrors[1].hits.values())
        assert (await e.sync()).mirrors == 1
        assert sum(e.mirrors[1].hits.values()) == hits


def _listing(name: str, base: str) -> dict[str, str]:
    return {
        "name": name,
        "base_url": base,
        "bundle_pattern": f"{base}/pith/{{suffix}}/bundle.json",
        "state_pattern": f"{base}/pith/{{suffix}}/state.json",
    }


def _use_manifest(e, tmp_path, entries) -> None:
    doc = {"manifest_type": "pith_mirror_manifest", "manifest_version": "1.0", "mirrors": entries}
    e.mirrors[0].extra["/pith-mirrors.json"] = json.dumps(doc).encode()
    e.config = parse_config(
        f"[crawl]\ndiscover = false\nallow_private_hosts = true\n"
        f'timeout = "3s"\n[[mirrors]]\nname = "registry"\n'
        f'manifest = "{e.mirrors[0].base_url}/pith-mirrors.json"\n',
        base_dir=tmp_path,
    )


async def test_a_manifest_mirror_no_one_can_look_up_fails_alone(archive_at, tmp_path, signer):
    async with env(tmp_path, signer, n=2, db=archive_at) as e:
        b = record(signer)
        serve(e, b, only=[1])
        _use_manifest(
            e, tmp_path, [_listing("good", e.mirrors[1].base_url), _listing("bad", "https://a..b")]
        )
        await track(e, b)
        summary = await e.sync()
        assert (summary.mirrors, summary.errors, summary.new_snapshots) == (2, 1, 2)


async def test_a_mirror_the_manifest_no_longer_lists_is_no_longer_crawled(
    archive_at, tmp_path, signer
):
    """The manifest's listing now is what counts (its last one, while it cannot be read):
    mirrors it dropped used to be crawled for good, and a manifest rotating names grew
    the crawl without bound."""
    async with env(tmp_path, signer, n=3, db=archive_at) as e:
        b = record(signer)
        serve(e, b, only=[1, 2])
        await track(e, b)
        _use_manifest(e, tmp_path, [_listing("one", e.mirrors[1].base_url)])
        assert (await e.sync()).mirrors == 1
        _use_manifest(e, tmp_path, [_listing("two", e.mirrors[2].base_url)])
        hits = sum(e.mirrors[1].hits.values())
        assert (await e.sync()).mirrors == 1
        assert sum(e.mirrors[1].hits.values()) == hits
        e.mirrors[0].extra["/pith-mirrors.json"] = b"not json"  # unreadable: "two" stands
        assert (await e.sync()).mirrors == 1


async def test_a_manifest_that_cannot_be_read_is_told_by_sync_and_status(
    archive_at, tmp_path, signer
):
    """Its last listing is crawled, but the pass ends in 3 and `status` shows the
    manifest's last read and its error; a manifest entry dropped from the configuration
    leaves its mirrors shown as no longer crawled, with nothing due."""
    from pithcrawl.commands.status import gather

    async with env(tmp_path, signer, n=2, db=archive_at) as e:
        b = record(signer)
        serve(e, b, only=[1])
        await track(e, b)
        _use_manifest(e, tmp_path, [_listing("one", e.mirrors[1].base_url)])
        first = await e.sync()
        assert (first.manifests_unread, exit_code(first)) == (0, 0)
        del e.mirrors[0].extra["/pith-mirrors.json"]  # now a 404
        again = await e.sync()
        assert (again.mirrors, again.errors, again.manifests_unread) == (1, 0, 1)
        assert exit_code(again) == 3
        assert "1 manifest(s) unreadable" in summary_line(again)
        rows = {m.name: m for m in (await gather(e.config, e.db)).mirrors}
        entry = rows["registry"]
        assert entry.manifest == f"{e.mirrors[0].base_url}/pith-mirrors.json"
        assert entry.records == 1  # the mirrors it listed when last read
        assert entry.last_success_at is not None and entry.last_failure_at is not None
        assert entry.last_error is not None and "404" in entry.last_error
        assert rows["registry/one"].crawled and rows["registry/one"].next_due is not None
        e.config = _config(tmp_path, [e.mirrors[1].base_url], "discover = false")
        rows = {m.name: m for m in (await gather(e.config, e.db)).mirrors}
        assert not rows["registry/one"].crawled and rows["registry/one"].next_due is None
        assert "registry" not in rows or not rows["registry"].crawled


async def test_status_says_crawled_only_of_mirrors_the_last_pass_crawled(
    archive_at, tmp_path, signer
):
    """A manifest listing a mirror also configured by hand: the pass crawls it once, under
    the configured name, and `status` must not call the manifest's duplicate crawled."""
    from pithcrawl.commands.status import gather, render

    async with env(tmp_path, signer, n=2, db=archive_at) as e:
        b = record(signer)
        serve(e, b, only=[1])
        await track(e, b)
        base = e.mirrors[1].base_url
        doc = {
            "manifest_type": "pith_mirror_manifest",
            "manifest_version": "1.0",
            "mirrors": [_listing("one", base)],
        }
        e.mirrors[0].extra["/pith-mirrors.json"] = json.dumps(doc).encode()
        e.config = parse_config(
            f"[crawl]\ndiscover = false\nallow_private_hosts = true\n"
            f'[[mirrors]]\nname = "direct"\nbase_url = "{base}"\n'
            f'[[mirrors]]\nname = "registry"\n'
            f'manifest = "{e.mirrors[0].base_url}/pith-mirrors.json"\n',
            base_dir=tmp_path,
        )
        assert (await e.sync()).mirrors == 1
        rows = {m.name: m for m in (await gather(e.config, e.db)).mirrors}
        assert rows["direct"].crawled and rows["direct"].next_due is not None
        assert not rows["registry/one"].crawled
        assert rows["registry"].manifest is not None and rows["registry"].records == 1
        # For people, a manifest's row counts the mirrors it listed, not "records".
        status = await gather(e.config, e.db)
        (line,) = [x for x in render(status) if x.startswith("registry ")]
        assert " 1 mirrors listed " in line
        # Mirrors configured since the last pass are crawled (by the next one).
        e.config = _config(tmp_path, [base, f"{base}/x"])
        rows = {m.name: m for m in (await gather(e.config, e.db)).mirrors}
        assert rows["m0"].crawled and rows["m1"].crawled
        assert not rows["direct"].crawled  # taken out of the configuration


async def test_a_manifest_listing_too_many_mirrors_is_not_read(archive_at, tmp_path, signer):
    from pithcrawl.mirrors import MANIFEST_MAX

    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = record(signer)
        listing = [_listing(f"m{i}", f"http://m{i}.invalid") for i in range(MANIFEST_MAX + 1)]
        _use_manifest(e, tmp_path, listing)
        await track(e, b)
        assert (await e.sync()).mirrors == 0


class _NoValidatorsMirror(TestMirror):
    """Sends no ETag: every fetch again is a 200 of the same bytes."""

    __test__ = False

    def _serve(self, request, table):
        response = super()._serve(request, table)
        response.headers.pop("ETag", None)
        return response


@pytest.mark.parametrize("validators", [True, False])
async def test_an_unchanged_bundle_is_judged_again_when_its_key_is_no_longer_trusted(
    archive_at, tmp_path, signer, validators
):
    """The key that signed a bundle is taken out of the trust set (compromised, say): the
    same bytes, 304 or 200, are untrusted now, told as such (they used to stay trusted on
    the strength of the old verdict)."""
    from pithcrawl.keys import TrustSet, load_key

    mirror = TestMirror() if validators else _NoValidatorsMirror()
    async with env(tmp_path, signer, n=0, db=archive_at) as e, mirror as m:
        e.mirrors = [m]
        e.config = _config(tmp_path, [m.base_url])
        b = record(signer)
        serve(e, b)
        await track(e, b)
        first = await e.sync()
        assert (first.untrusted, first.alerts) == (0, 0)
        e.trust = TrustSet([load_key(TestSigner("another-key").public_key())])
        second = await e.sync()
        assert (second.untrusted, second.alerts) == (1, 1), second
        assert (await e.sync()).alerts == 1  # the same alert, still open
        async with e.store() as store:  # and `serve` no longer hands it out
            assert await store.trusted.newest_bundle(b.suffix) is None
        e.trust = TrustSet([load_key(signer.public_key())])  # trusted again
        fourth = await e.sync()
        assert (fourth.untrusted, fourth.alerts) == (0, 0), fourth


async def test_an_unchanged_bundle_is_trusted_once_its_key_is(archive_at, tmp_path, signer):
    """A bundle refused for a key nobody trusted is trusted, its alert closed, once the
    key is (it used to stay untrusted for as long as its bytes stayed the same)."""
    from pithcrawl.keys import TrustSet, load_key

    second = TestSigner("second-key")
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        b = record(second)
        serve(e, b)
        await track(e, b)
        assert (await e.sync()).untrusted == 1
        e.trust = TrustSet([load_key(signer.public_key()), load_key(second.public_key())])
        summary = await e.sync()
        assert (summary.untrusted, summary.alerts) == (0, 0)


async def test_a_learned_key_does_not_outlive_the_key_that_vouched_for_it(
    archive_at, tmp_path, signer
):
    """follow_rotations: K1's bundle announces K2, which is learned. K1 is then taken out
    of the configuration: a bundle signed by K2 alone is not trusted (it used to be)."""
    from pithcrawl.keys import TrustSet, load_key

    k2, k3 = TestSigner("rotated-key"), TestSigner("unrelated-key")
    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        e.config = _config(
            tmp_path, [e.mirrors[0].base_url], "discover = false\n[trust]\nfollow_rotations = true"
        )
        a = record(signer, 0)
        a.extra_keys.append(k2.public_key())
        serve(e, a)
        await track(e, a)
        assert (await e.sync()).alerts == 0
        c = record(k2, 1)  # signed by K2 alone
        serve(e, c)
        await track(e, c)
        assert (await e.sync(c.suffix)).untrusted == 0  # K2 learned, vouched for by K1
        e.trust = TrustSet([load_key(k3.public_key())])  # K1 no longer trusted
        summary = await e.sync(c.suffix)
        assert summary.untrusted == 1
        async with e.store() as store:
            assert await store.trusted.newest_bundle(c.suffix) is None


class _Always304Mirror(TestMirror):
    """Answers 304 Not Modified to every request, conditional or not."""

    __test__ = False

    def _serve(self, request, table):
        self.hits[request.path] += 1
        return web.Response(status=304)


async def test_a_304_to_a_request_for_a_body_is_a_failed_fetch(archive_at, tmp_path, signer):
    """Nothing was archived from the URL, so "not modified" stands for nothing: a failed
    fetch, retried later (it used to count as a mirror serving an untrusted bundle, exit
    1, with no alert to say so)."""
    async with env(tmp_path, signer, n=0, db=archive_at) as e, _Always304Mirror() as m:
        e.mirrors = [m]
        e.config = _config(tmp_path, [m.base_url])
        b = record(signer)
        await track(e, b)
        summary = await e.sync()
        assert (summary.untrusted, summary.errors, summary.alerts) == (0, 1, 0)
        async with e.store() as store:
            state = await store.fetch_state(b.suffix, "m0", "bundle", vantage=VANTAGE)
        assert state is not None and "304 Not Modified" in (state.last_error or "")


async def test_a_snapshot_whose_body_is_gone_costs_its_pair_not_the_pass(
    archive_at, tmp_path, signer
):
    """A trusted snapshot pointing at a body the archive no longer has (damage, or an
    edit behind pithcrawl's back): that record's pair is an error of the pass
    (`archive_damaged`), and every other record is still crawled and archived; the pass
    used to end there, with nothing of the others archived."""

    async with env(tmp_path, signer, n=1, db=archive_at) as e:
        a, b = record(signer, 0), record(signer, 1)
        serve(e, a, b)
        await track(e, a, b)
        await e.sync()
        with raw(e.db) as conn:  # foreign keys off, as an editor has them
            if isinstance(e.db, PgUrl):
                conn.execute("SET session_replication_role = replica")
            conn.execute(
                "INSERT INTO snapshots (suffix, mirror, kind, fetched_at, url, status,"
                " body_sha256, trusted, built_at, event_count)"
                " SELECT suffix, mirror, kind, fetched_at, url, status, ?, 1, built_at,"
                " event_count FROM snapshots WHERE suffix = ? AND kind = 'bundle'",
                ("f" * 64, a.suffix),
            )
        a.add_event()
        b.add_event()
        serve(e, a, b)
        summary = await e.sync()
        assert summary.errors >= 1
        async with e.store() as store:
            newest = await store.latest_snapshot(b.suffix, "m0", "bundle", trusted=True)
        assert newest is not None and newest.event_count == 3  # b was still crawled
