"""`pithcrawl serve`: the archive as a Pith mirror, over a real loopback server.

Archives are made by real `sync` passes against loopback `TestMirror`s (bundles signed
with the test key); the server is `serve.serving` on 127.0.0.1, port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import aiohttp
import anyio
import pytest
from builder import BundleBuilder, TestSigner, canonical_record, serialize
from conftest import db_setting
from mirror import TestMirror

from pithcrawl.canon import canon, parse
from pithcrawl.commands.serve import parse_base_url, parse_bind
from pithcrawl.config import Config, parse_config
from pithcrawl.errors import OperationalError, UsageError
from pithcrawl.keys import TrustSet
from pithcrawl.location import PgUrl
from pithcrawl.mirrors import from_manifest
from pithcrawl.serve import Catalog, Server, not_modified, serving
from pithcrawl.store import Store
from pithcrawl.sync import sync_once
from pithcrawl.verify import verify_bundle

pytestmark = pytest.mark.anyio

UNKNOWN = "A" * 26


def config(tmp_path: Path, db: str | PgUrl, bases: list[str]) -> Config:
    mirrors = "".join(
        f'[[mirrors]]\nname = "m{i}"\nbase_url = "{b}"\n' for i, b in enumerate(bases)
    )
    return parse_config(
        f"db = {json.dumps(db_setting(Path(db) if isinstance(db, str) else db))}\n"
        f'[crawl]\ntimeout = "5s"\ndiscover = false\n{mirrors}',
        base_dir=tmp_path,
    )


def record(signer: TestSigner, i: int = 0, events: int = 2) -> BundleBuilder:
    b = BundleBuilder(signer, record=canonical_record(f"2611.{i:05d}", title=f"P{i}"))
    for _ in range(events):
        b.add_event()
    return b


def forged(b: BundleBuilder) -> bytes:
    """A bundle of `b`'s record with one event's payload changed after signing."""
    doc = b.build()
    doc["events"][1]["payload"] = {"graph_snapshot": {"forged": True}}
    return serialize(doc)


async def archive(
    tmp_path: Path, trust: TrustSet, db: str | PgUrl, *mirrors: TestMirror, track: list[str]
) -> Path | PgUrl:
    """Sync every tracked record from `mirrors` into a new archive (a file in `tmp_path`,
    or `archive_at`); where it is."""
    path = tmp_path / db if isinstance(db, str) else db
    async with await Store.open(path) as store:
        await store.watchlist.track(track, datetime.now(UTC))
    await sync_once(config(tmp_path, db, [m.base_url for m in mirrors]), path, [], trust)
    return path


@dataclass
class Site:
    server: Server
    store: Store
    db: Path | PgUrl
    http: aiohttp.ClientSession
    good: BundleBuilder
    """A record served with its state by the source mirror: trusted."""
    bad: BundleBuilder
    """A record whose only archived bundle is forged: untrusted."""

    def url(self, path: str) -> str:
        return self.server.url + path


@asynccontextmanager
async def site(
    tmp_path: Path,
    signer: TestSigner,
    trust: TrustSet,
    db: str | PgUrl = "a.db",
    **options: object,
) -> AsyncIterator[Site]:
    good, bad = record(signer, 0), record(signer, 1)
    async with AsyncExitStack() as stack:
        source = await stack.enter_async_context(TestMirror())
        source.put(good.bytes())
        source.put(forged(bad))
        where = await archive(tmp_path, trust, db, source, track=[good.suffix, bad.suffix])
        store = await stack.enter_async_context(await Store.open(db, readonly=True))
        server = await stack.enter_async_context(
            serving(store, "127.0.0.1", 0, trust=trust, **options)  # type: ignore[arg-type]
        )
        http = await stack.enter_async_context(aiohttp.ClientSession())
        yield Site(server, store, where, http, good, bad)


async def trusted_blob(store: Store, suffix: str, kind: str = "bundle") -> bytes:
    snaps = [s for s in await store.snapshots(suffix, kind=kind) if s.trusted]
    assert snaps, f"no trusted {kind} of {suffix}"
    return await store.get_blob(snaps[-1].body_sha256)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest() + '"'


async def test_bundle_is_the_archived_trusted_bytes_and_verifies(
    archive_at, tmp_path, signer, test_trust
):
    """200 with the exact archived bytes, which the verifier accepts; headers as specified."""
    async with site(tmp_path, signer, test_trust, archive_at) as s:
        async with s.http.get(s.url(f"/pith/{s.good.suffix}/bundle.json")) as r:
            assert r.status == 200
            body = await r.read()
            headers = r.headers
        assert body == await trusted_blob(s.store, s.good.suffix) == s.good.bytes()
        report = verify_bundle(
            body, test_trust, now=datetime.now(UTC), expected_suffix=s.good.suffix
        )
        assert report.ok, report.findings
        assert headers["Content-Type"] == "application/json"
        assert headers["ETag"] == etag_of(body)
        assert headers["Cache-Control"] == "public, max-age=60"
        assert "Last-Modified" in headers


async def test_if_none_match_gives_304(archive_at, tmp_path, signer, test_trust):
    """The ETag, a list holding it, its weak form and `*` all give 304; another tag, 200."""
    async with site(tmp_path, signer, test_trust, archive_at) as s:
        url = s.url(f"/pith/{s.good.suffix}/bundle.json")
        tag = etag_of(s.good.bytes())
        for header in (tag, f'"nope", {tag}', f"W/{tag}", "*"):
            async with s.http.get(url, headers={"If-None-Match": header}) as r:
                assert r.status == 304, header
                assert await r.read() == b""
                assert r.headers["ETag"] == tag
        async with s.http.get(url, headers={"If-None-Match": '"other"'}) as r:
            assert r.status == 200
            assert await r.read() == s.good.bytes()


def test_if_none_match_parsing():
    """RFC 9110 §13.1.2: lists across header lines, weak comparison, `*`."""
    tag = '"abc"'
    assert not_modified(['"x"', ' W/"abc" '], tag)
    assert not_modified(["*"], tag)
    assert not not_modified(['"abcd", "ab"'], tag)
    assert not not_modified([], tag)


async def test_head_has_the_headers_and_no_body(archive_at, tmp_path, signer, test_trust):
    async with site(tmp_path, signer, test_trust, archive_at) as s:
        for path in ("bundle.json", "state.json"):
            async with s.http.head(s.url(f"/pith/{s.good.suffix}/{path}")) as r:
                assert r.status == 200
                assert int(r.headers["Content-Length"]) > 0
                assert r.headers["ETag"].startswith('"')
                assert await r.read() == b""


async def test_well_known_path_serves_the_same_bytes(archive_at, tmp_path, signer, test_trust):
    async with (
        site(tmp_path, signer, test_trust, archive_at) as s,
        s.http.get(s.url(f"/.well-known/pith/{s.good.suffix}/bundle.json")) as r,
    ):
        assert r.status == 200
        assert await r.read() == s.good.bytes()


async def test_state_is_the_archived_state_equal_to_the_bundles(
    archive_at, tmp_path, signer, test_trust
):
    """state.json: the archived trusted bytes, whose content is the served bundle's state."""
    async with site(tmp_path, signer, test_trust, archive_at) as s:
        async with s.http.get(s.url(f"/pith/{s.good.suffix}/state.json")) as r:
            assert r.status == 200
            body = await r.read()
            assert r.headers["ETag"] == etag_of(body)
        assert body == await trusted_blob(s.store, s.good.suffix, "state")
        assert canon(parse(body)) == canon(parse(s.good.bytes())["state"])


async def test_state_falls_back_to_the_bundles_own_state(archive_at, tmp_path, signer, test_trust):
    """A well-formed archived state.json that lags the bundle is never served: the
    bundle's `state`, serialised compactly, is."""
    b = record(signer, 0, events=1)
    wrong = json.dumps(b.build()["state"], separators=(",", ":")).encode()
    b.add_event()
    async with TestMirror() as source:
        source.put(b.bytes(), state=wrong)
        db = await archive(tmp_path, test_trust, archive_at, source, track=[b.suffix])
    async with (
        await Store.open(db, readonly=True) as store,
        serving(store, "127.0.0.1", 0, trust=test_trust) as server,
        aiohttp.ClientSession() as http,
    ):
        assert await trusted_blob(store, b.suffix, "state") == wrong  # archived, well-formed
        async with http.get(f"{server.url}/pith/{b.suffix}/state.json") as r:
            assert r.status == 200
            body = await r.read()
    state = parse(b.bytes())["state"]
    assert body == json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode()


async def test_newest_built_at_across_mirrors_is_served(archive_at, tmp_path, signer, test_trust):
    """Two mirrors, one a version behind: the bundle with the newest `built_at` is served."""
    b = record(signer, 0, events=1)
    old = b.bytes()
    b.add_event()
    new = b.bytes()
    async with TestMirror() as behind, TestMirror() as ahead:
        behind.put(old)
        ahead.put(new)
        db = await archive(tmp_path, test_trust, archive_at, ahead, behind, track=[b.suffix])
    async with (
        await Store.open(db, readonly=True) as store,
        serving(store, "127.0.0.1", 0, trust=test_trust) as server,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{server.url}/pith/{b.suffix}/bundle.json") as r:
            assert await r.read() == new
        async with http.get(f"{server.url}/pith/{b.suffix}/state.json") as r:
            assert canon(parse(await r.read())) == canon(parse(new)["state"])


@pytest.mark.parametrize(
    "path",
    [
        f"/pith/{UNKNOWN}/bundle.json",
        f"/pith/{UNKNOWN}/state.json",
        f"/.well-known/pith/{UNKNOWN}/bundle.json",
        "/pith/2sz3gmwfcmmcupzjqtonowsjz2/bundle.json",  # lower case
        "/pith/2SZ3GMWFCMMCUPZJQTONOWSJZ/bundle.json",  # 25 characters
        "/pith/2SZ3GMWFCMMCUPZJQTONOWSJZ22/bundle.json",  # 27 characters
        "/pith/2SZ3GMWFCMMCUPZJQTONOWSJZ1/bundle.json",  # 1 is not base32
        "/pith/../../../etc/passwd",
        "/pith/../a.db",
        "/pith/..%2F..%2F..%2Fetc%2Fpasswd/bundle.json",
        "/pith/%2E%2E/bundle.json",
        "/pith/%2e%2e%2fa.db/state.json",
        "/pith/%00/bundle.json",
        "/a.db",
        "/pith/",
    ],
)
async def test_unknown_or_malformed_suffixes_are_404(
    archive_at, tmp_path, signer, test_trust, path
):
    """Sent as raw bytes on the wire (no client normalisation): always a JSON 404."""
    async with site(tmp_path, signer, test_trust, archive_at) as s:
        status, body = await raw_get(s.server.url, path)
    assert status == 404
    assert "error" in json.loads(body)


async def raw_get(base: str, path: str) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    async with await anyio.connect_tcp(host, int(port)) as conn:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        await conn.send(request.encode())
        data = b""
        with anyio.fail_after(5):
            while True:
                try:
                    data += await conn.receive()
                except anyio.EndOfStream:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_record_whose_only_snapshot_is_untrusted_is_404(
    archive_at, tmp_path, signer, test_trust
):
    """Archived, tracked, but never verified: nothing is served, neither bundle nor state."""
    async with site(tmp_path, signer, test_trust, archive_at) as s:
        snaps = await s.store.snapshots(s.bad.suffix)
        assert snaps
        assert not any(x.trusted for x in snaps)
        for path in ("bundle.json", "state.json"):
            async with s.http.get(s.url(f"/pith/{s.bad.suffix}/{path}")) as r:
                assert r.status == 404
                assert "error" in await r.json()


@pytest.mark.parametrize(
    "host", ["a@b", "evil.example/pith-mirrors.json?", "x:99999", "127.0.0.1:1 , evil"]
)
async def test_a_host_header_that_is_no_host_is_not_put_into_the_manifest(
    archive_at, tmp_path, signer, test_trust, host
):
    """The manifest's URLs come from the Host header: one that is not host[:port] (userinfo,
    a path, a bad port, a list) names nothing, and the server's own address is given."""
    async with (
        site(tmp_path, signer, test_trust, archive_at) as s,
        s.http.get(s.url("/pith-mirrors.json"), headers={"Host": host}) as r,
    ):
        assert r.status == 200
        (entry,) = (await r.json())["mirrors"]
    assert entry["base_url"] == s.server.url


@pytest.mark.parametrize("host", ["my_service:8787", "pith.example.:443", "[::1]:8787"])
async def test_a_host_header_naming_a_host_is_the_manifests_base(
    archive_at, tmp_path, signer, test_trust, host
):
    """Names as they are used (a service name with an underscore, a trailing dot, an IPv6
    literal) are hosts: the manifest gives them back."""
    async with (
        site(tmp_path, signer, test_trust, archive_at) as s,
        s.http.get(s.url("/pith-mirrors.json"), headers={"Host": host}) as r,
    ):
        (entry,) = (await r.json())["mirrors"]
    assert entry["base_url"] == f"http://{host}"


async def test_manifest_describes_this_server(archive_at, tmp_path, signer, test_trust):
    """A pith_mirror_manifest with one entry: this server's URLs, no public_key."""
    async with (
        site(tmp_path, signer, test_trust, archive_at) as s,
        s.http.get(s.url("/pith-mirrors.json")) as r,
    ):
        assert r.status == 200
        doc = await r.json()
    assert doc["manifest_type"] == "pith_mirror_manifest"
    assert doc["manifest_version"] == "1.0"
    assert doc["merge_version"] == "pith-open-graph-merge-v1"
    assert doc["generated_at"].endswith("Z")
    (entry,) = doc["mirrors"]
    port = s.server.url.rsplit(":", 1)[1]
    assert entry["name"] == f"pithcrawl@127.0.0.1:{port}"
    assert entry["base_url"] == s.server.url
    assert entry["bundle_pattern"] == s.server.url + "/pith/{suffix}/bundle.json"
    assert entry["state_pattern"] == s.server.url + "/pith/{suffix}/state.json"
    assert entry["well_known_pattern"] == s.server.url + "/.well-known/pith/{suffix}/bundle.json"
    assert entry["status"] == "mirror"
    assert "public_key" not in entry
    (listed,) = from_manifest(doc)
    assert listed.bundle_url(s.good.suffix) == s.url(f"/pith/{s.good.suffix}/bundle.json")


async def test_manifest_name_and_base_url_options(archive_at, tmp_path, signer, test_trust):
    options = {"name": "lab", "base_url": "https://mirror.example"}
    async with (
        site(tmp_path, signer, test_trust, archive_at, **options) as s,
        s.http.get(s.url("/pith-mirrors.json")) as r,
    ):
        (entry,) = (await r.json())["mirrors"]
    assert entry["name"] == "lab"
    assert entry["base_url"] == "https://mirror.example"
    assert entry["mirror_type"] == "https"
    assert entry["bundle_pattern"] == "https://mirror.example/pith/{suffix}/bundle.json"


async def test_healthz(archive_at, tmp_path, signer, test_trust):
    """200 with the count of servable records; 503 once the archive cannot answer."""
    async with site(tmp_path, signer, test_trust, archive_at) as s:
        async with s.http.get(s.url("/healthz")) as r:
            assert r.status == 200
            assert await r.json() == {"status": "ok", "records": 1}
        await s.store.close()
        async with s.http.get(s.url("/healthz")) as r:
            assert r.status == 503
            assert (await r.json())["status"] != "ok"


async def test_many_concurrent_clients(archive_at, tmp_path, signer, test_trust):
    """200 concurrent requests over 100 connections: all 200, identical bodies, and the
    archive read once (concurrent misses share one fill)."""
    async with site(tmp_path, signer, test_trust, archive_at) as s:
        url = s.url(f"/pith/{s.good.suffix}/bundle.json")
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def get() -> tuple[int, bytes]:
                async with http.get(url) as r:
                    return r.status, await r.read()

            results = await asyncio.gather(*(get() for _ in range(200)))
        assert {status for status, _ in results} == {200}
        assert {body for _, body in results} == {s.good.bytes()}
        assert s.server.catalog.fills == 1


async def test_newly_archived_history_is_served_after_revalidation(
    archive_at, tmp_path, signer, test_trust
):
    """A sync that archives a newer bundle while serving: the next check serves it."""
    b = record(signer, 0, events=1)
    async with TestMirror() as source:
        source.put(b.bytes())
        db = await archive(tmp_path, test_trust, archive_at, source, track=[b.suffix])
        async with (
            await Store.open(db, readonly=True) as store,
            serving(
                store,
                "127.0.0.1",
                0,
                trust=test_trust,
                catalog=Catalog(store, test_trust, revalidate_after=0),
            ) as server,
            aiohttp.ClientSession() as http,
        ):
            url = f"{server.url}/pith/{b.suffix}/bundle.json"
            async with http.get(url) as r:
                assert await r.read() == b.bytes()
            async with http.get(url) as r:  # unchanged: checked, not re-read
                assert r.status == 200
            assert server.catalog.fills == 1
            b.add_event()
            source.put(b.bytes())
            await sync_once(config(tmp_path, archive_at, [source.base_url]), db, [], test_trust)
            async with http.get(url) as r:
                assert await r.read() == b.bytes()
            async with http.get(f"{server.url}/pith/{b.suffix}/state.json") as r:
                assert canon(parse(await r.read())) == canon(parse(b.bytes())["state"])
            assert server.catalog.fills == 2


async def test_a_pithcrawl_archives_identical_bytes_from_anothers_serve(
    archive_at, tmp_path, signer, test_trust
):
    """Archive B, crawled from A's `serve`, holds A's trusted bytes, trusted, no alerts."""
    async with site(tmp_path, signer, test_trust, archive_at) as s:
        db_b = tmp_path / "b.db"
        async with await Store.open(db_b) as store:
            await store.watchlist.track([s.good.suffix, s.bad.suffix], datetime.now(UTC))
        summary = await sync_once(config(tmp_path, "b.db", [s.server.url]), db_b, [], test_trust)
        assert summary.alerts == 0
        assert summary.errors == 1  # A does not serve the record it could not verify
        async with await Store.open(db_b, readonly=True) as b:
            snap = await b.latest_snapshot(s.good.suffix, "m0", "bundle")
            assert snap is not None
            assert snap.trusted
            assert await b.get_blob(snap.body_sha256) == await trusted_blob(s.store, s.good.suffix)
            state = await b.latest_snapshot(s.good.suffix, "m0", "state")
            assert state is not None
            assert state.trusted
            assert await b.snapshots(s.bad.suffix) == []
            assert await b.events(kinds=["state_url_mismatch"]) == []
        # B's second pass is conditional: A answers 304 and nothing new is archived.
        again = await sync_once(config(tmp_path, "b.db", [s.server.url]), db_b, [], test_trust)
        assert again.new_snapshots == 0


async def test_a_busy_port_is_an_operational_error(archive_at, tmp_path, signer, test_trust):
    async with site(tmp_path, signer, test_trust, archive_at) as s:
        port = int(s.server.url.rsplit(":", 1)[1])
        with pytest.raises(OperationalError, match="cannot listen"):
            async with serving(s.store, "127.0.0.1", port, trust=test_trust):
                pass


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8787", ("127.0.0.1", 8787)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
    ],
)
def test_bind_addresses(text, expected):
    assert parse_bind(text) == expected


@pytest.mark.parametrize("text", ["8787", "127.0.0.1", ":8787", "host:99999", "::1:80", "a b:1"])
def test_bad_bind_addresses_are_usage_errors(text):
    with pytest.raises(UsageError, match="--bind"):
        parse_bind(text)


def test_base_url_option():
    assert parse_base_url("https://mirror.example/") == "https://mirror.example"
    assert parse_base_url(None) is None
    for bad in ("ftp://x", "mirror.example", "https://x/?q=1"):
        with pytest.raises(UsageError, match="--base-url"):
            parse_base_url(bad)


def test_the_command_serves_until_sigterm(archive_at, tmp_path, signer, test_trust):
    """`pithcrawl serve` as a process: one start line with its URL, answers, and a
    graceful exit 0 on SIGTERM."""
    b = record(signer)

    async def build() -> Path:
        async with TestMirror() as source:
            source.put(b.bytes())
            return await archive(tmp_path, test_trust, archive_at, source, track=[b.suffix])

    db = anyio.run(build)
    (tmp_path / "k.json").write_text(json.dumps(signer.public_key()))
    cfg = tmp_path / "serve.toml"
    cfg.write_text('[trust]\nkeys = ["k.json"]\n')  # the keys the archive was judged under
    command = ["--log-format", "json", "serve", "--bind", "127.0.0.1:0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pithcrawl", "--config", str(cfg), "--db", str(db), *command],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stderr is not None
        line = started(proc.stderr)
        assert line["records"] == 1
        with urllib.request.urlopen(f"{line['url']}/pith/{b.suffix}/bundle.json") as r:
            assert r.read() == b.bytes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def started(stderr: IO[str]) -> dict[str, Any]:
    """The `serve_started` log line; everything logged before it if it never comes."""
    seen = []
    for text in stderr:
        seen.append(text)
        with contextlib.suppress(ValueError):
            line = json.loads(text)
            if isinstance(line, dict) and line.get("event") == "serve_started":
                return line
    raise AssertionError("serve exited without starting:\n" + "".join(seen))


def test_the_command_needs_an_archive(tmp_path, capsys):
    from pithcrawl.cli import main

    assert main(["--db", str(tmp_path / "none.db"), "serve"]) == 2
    assert "no archive" in capsys.readouterr().err


async def test_a_client_that_never_finishes_its_request_is_dropped(
    archive_at, tmp_path, signer, test_trust, monkeypatch
):
    """A half-sent request holds a descriptor only for a while (aiohttp's default is an
    hour: enough silent clients locked everyone else out)."""
    from pithcrawl.serve import http as serve

    monkeypatch.setattr(serve, "IDLE_CLIENT_SECONDS", 0.5)
    async with site(tmp_path, signer, test_trust, archive_at) as s:
        host, port = s.server.url.removeprefix("http://").rsplit(":", 1)
        stream = await anyio.connect_tcp(host, int(port))
        async with stream:
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and nothing more
            with anyio.fail_after(5):
                with pytest.raises(anyio.EndOfStream):
                    await stream.receive()
        async with s.http.get(f"{s.server.url}/pith/{s.good.suffix}/bundle.json") as r:
            assert r.status == 200  # the others are served


async def test_a_body_trusted_under_keys_taken_out_since_is_never_served(
    archive_at, tmp_path, signer, test_trust
):
    """Two trusted versions of a record, then its key taken out of the trust set (say, as
    compromised): a pass judges the newest again and finds it untrusted, but the older
    one keeps the archive's old verdict. `serve` used to fall back to it (a 200, and a
    rollback to boot); it now serves only what verifies under its own keys: a 404."""
    from pithcrawl.keys import load_key

    b = record(signer, 0, events=1)
    async with TestMirror() as source:
        source.put(b.bytes())
        db = await archive(tmp_path, test_trust, archive_at, source, track=[b.suffix])
        b.add_event()
        source.put(b.bytes())
        cfg = config(tmp_path, archive_at, [source.base_url])
        await sync_once(cfg, db, [], test_trust)
        other = TrustSet([load_key(TestSigner("other-key").public_key())])
        assert (await sync_once(cfg, db, [], other)).untrusted == 1
    async with await Store.open(db, readonly=True) as store:
        trusted = [s for s in await store.snapshots(b.suffix) if s.trusted]
        assert len({s.body_sha256 for s in trusted}) == 2  # the old verdicts stand in it
        async with (
            serving(store, "127.0.0.1", 0, trust=other) as server,
            aiohttp.ClientSession() as http,
        ):
            for path in ("bundle.json", "state.json"):
                async with http.get(f"{server.url}/pith/{b.suffix}/{path}") as r:
                    assert r.status == 404, path
            judged = server.catalog.judged
            assert judged >= 1
            for _ in range(5):  # asked again: a query each, not the verifications again
                async with http.get(f"{server.url}/pith/{b.suffix}/bundle.json") as r:
                    assert r.status == 404
            assert server.catalog.judged == judged
        # The control: under the old keys, the older trusted body verifies and is served.
        async with (
            serving(store, "127.0.0.1", 0, trust=test_trust) as server,
            aiohttp.ClientSession() as http,
            http.get(f"{server.url}/pith/{b.suffix}/bundle.json") as r,
        ):
            assert r.status == 200


async def test_malformed_requests_get_a_400_and_leave_no_trace_in_the_log(
    archive_at, tmp_path, signer, test_trust, capsys
):
    """aiohttp logged each malformed request as a multi-line traceback, not JSON: a client
    sending thousands filled the log (1.7 MB in 5 s). The client gets its 400; the log
    stays quiet, and a real server error is still one JSON line."""
    import logging

    from pithcrawl.log import configure

    configure("json", 0)
    async with site(tmp_path, signer, test_trust, archive_at) as s:
        port = int(s.server.url.rsplit(":", 1)[1])
        capsys.readouterr()
        for request in (b"GET / HTTP/1.1\r\n\r\n", b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n"):
            stream = await anyio.connect_tcp("127.0.0.1", port)
            async with stream:
                await stream.send(request)
                assert (await stream.receive()).startswith(b"HTTP/1.0 400")
        logging.getLogger("aiohttp.server").error("handler failed", exc_info=ValueError("x"))
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    logged = json.loads(line)
    assert (logged["event"], logged["level"], logged["logger"]) == (
        "handler failed",
        "error",
        "aiohttp.server",
    )
    assert logged["exception"][0]["exc_type"] == "ValueError"


async def test_keys_learned_while_serving_are_served_under(tmp_path, signer, test_trust):
    """`serve` runs for weeks beside `run`, which may learn a rotated key: the keys are
    looked up again (`follow_keys`), and what verifies under them is served at once (a
    serve started before stayed with the old keys, and handed out an older version)."""
    from pithcrawl.keys import load_key
    from pithcrawl.serve import follow_keys

    other = TrustSet([load_key(TestSigner("other-key").public_key())])
    keys = [other]

    async def current() -> TrustSet:
        return keys[-1]

    b = record(signer, 0)
    async with TestMirror() as source:
        source.put(b.bytes())
        db = await archive(tmp_path, test_trust, "b.db", source, track=[b.suffix])
    async with (
        await Store.open(db, readonly=True) as store,
        serving(store, "127.0.0.1", 0, trust=other) as server,
        aiohttp.ClientSession() as http,
        anyio.create_task_group() as tg,
    ):
        url = f"{server.url}/pith/{b.suffix}/bundle.json"
        async with http.get(url) as r:
            assert r.status == 404  # the signer's key is not among serve's keys yet
        tg.start_soon(follow_keys, server.catalog, current, 0.05)
        keys.append(test_trust)  # a key learned meanwhile
        with anyio.fail_after(5):
            while True:
                async with http.get(url) as r:
                    if r.status == 200:
                        assert await r.read() == b.bytes()
                        break
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
