"""`serve`'s status pages over real HTTP: what they show is what `status`, `diff` and
`evidence` say, everything a mirror sent is shown as text, and every list is paged.

The archive is `status_world`'s: two loopback mirrors, two real passes, a rollback, a
divergence, an invalid document and a hostile title (bundles signed with the test key).
(The same pages in a real browser: test_status_pages_browser.py.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from clocks import TestClock
from postgres import Cluster
from status_world import GOOD, OTHER, World, served_world, world

from pithcrawl.commands.evidence import body_refs
from pithcrawl.commands.status import gather
from pithcrawl.serve import Server, Ui, serving
from pithcrawl.serve.pages import POLICY
from pithcrawl.serve.views import PAGE, Command, href, shown
from pithcrawl.store import Mirror, Snapshot, Store

pytestmark = pytest.mark.anyio


class Page(HTMLParser):
    """A page's tags and text, as a browser's parser reads them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.ids: dict[str, str] = {}
        self._open: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        ident = dict(attrs).get("id")
        if ident:
            self.ids[ident] = ""
            self._open.append(ident)
        else:
            self._open.append("")

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        for ident in self._open:
            if ident:
                self.ids[ident] += data

    def links(self) -> list[str]:
        return [a["href"] or "" for t, a in self.tags if t == "a" and "href" in a]


def key_file(w: World) -> Path:
    return w.tmp / "test.key.json"


def COMMAND(w: World) -> Command:
    return Command(("/opt/pc/bin/pithcrawl",), ("--config", str(w.config_path)))


@asynccontextmanager
async def pages(w: World, *, ui: bool = True) -> AsyncIterator[Server]:
    async with (
        await Store.open(w.db, readonly=True) as store,
        serving(
            store,
            "127.0.0.1",
            0,
            trust=w.trust,
            ui=Ui(w.config, COMMAND(w), clock=w.clock.now) if ui else None,
        ) as server,
    ):
        yield server


async def get(server: Server, path: str) -> tuple[int, dict[str, str], str]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(server.url + path, allow_redirects=False) as r,
    ):
        return r.status, dict(r.headers), await r.text()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared_world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, signer: Any
) -> Iterator[World]:
    """One world a backend (a SQLite file, or a schema of the test process's PostgreSQL,
    as `archive_at` lends it), built once for the module's tests that only read it: `w`."""
    tmp = tmp_path_factory.mktemp("world")
    if request.param == "sqlite":
        with served_world(tmp, signer, tmp / "archive.db") as built:
            yield built
        return
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    where = cluster.lend()
    with served_world(tmp, signer, where) as built:
        yield built
    cluster.give_back(where)


@pytest.fixture
def w(shared_world: World) -> Iterator[World]:
    """The module's shared world, for a test that only reads it: the archive through
    read-only stores (`pages`, `gather`, `Store.open(readonly=True)`), the configuration
    and key files as they are, no request to its mirrors. The test gets a clock of its own
    (reading one moves it a microsecond); afterwards it is checked to have left the
    mirrors' counts and the files as it found them."""
    files = {p: p.read_bytes() for p in (shared_world.config_path, key_file(shared_world))}
    mirrors = (shared_world.good, shared_world.other, shared_world.canary)
    hits = [(Counter(m.hits), Counter(m.conditional_hits)) for m in mirrors]
    yield replace(
        shared_world,
        clock=TestClock(shared_world.clock.at),
        records=dict(shared_world.records),
        summaries=list(shared_world.summaries),
    )
    assert [(m.hits, m.conditional_hits) for m in mirrors] == hits, "a mirror was asked"
    assert {p: p.read_bytes() for p in files} == files, "a shared file was changed"


@pytest.fixture
def w_files_own(w: World, tmp_path: Path) -> World:
    """The shared world with its configuration and key file copied to the test's own
    directory (the archive's path or URL in it is absolute): a test may break them."""
    for p in (w.config_path, key_file(w)):
        shutil.copy(p, tmp_path / p.name)
    return replace(w, tmp=tmp_path)


@pytest.fixture
async def w_own(tmp_path: Path, signer: Any, archive_at: Any) -> AsyncIterator[World]:
    """A world of the test's own, for a test that writes to the archive."""
    async with world(tmp_path, signer, archive_at) as built:
        yield built


async def test_overview_shows_the_figures_of_status_json(w: World) -> None:
    status = (await gather(w.config, w.db)).to_json()
    async with pages(w) as server:
        code, headers, html = await get(server, "/")
    assert code == 200
    assert headers["Content-Security-Policy"] == POLICY
    page = Page(html)
    assert int(page.ids["records"]) == status["records"] == 5
    assert int(page.ids["open-alerts"]) == len(status["open_alerts"]) == 5
    assert int(page.ids["undelivered"]) == status["undelivered"]
    rows = {a["data-name"]: a for t, a in page.tags if t == "tr" and "data-name" in a}
    assert set(rows) == {m["name"] for m in status["mirrors"]} == {GOOD, OTHER}
    cells = re.findall(r'<tr class="mirror" data-name="([^"]+)">(.*?)</tr>', html, re.S)
    for name, row in cells:
        mirror = next(m for m in status["mirrors"] if m["name"] == name)
        fields = dict(re.findall(r'data-field="(\w+)">([^<]*)<', row))
        assert int(fields["records"]) == mirror["records"]
        assert int(fields["failures"]) == mirror["failures"]
        for key in ("last_success_at", "last_failure_at"):
            shown_at = fields[key]
            assert (shown_at == "-") == (mirror[key] is None)
            if mirror[key] is not None:
                assert mirror[key].startswith(shown_at.rstrip("Z"))
    # Every open alert, linked; each severity counted.
    for alert in status["open_alerts"]:
        assert f"/ui/alert/{alert['id']}" in page.links()
    counts = dict(re.findall(r'data-severity="(\w+)">(\d+)<', html))
    expected: dict[str, str] = {}
    for alert in status["open_alerts"]:
        expected[alert["severity"]] = str(int(expected.get(alert["severity"], "0")) + 1)
    assert counts == expected == {"critical": "4", "error": "1"}


async def test_each_open_alert_page_carries_its_evidence_and_the_commands(w: World) -> None:
    status = (await gather(w.config, w.db)).to_json()
    kinds = {a["kind"] for a in status["open_alerts"]}
    assert {"rollback", "mirror_divergence", "document_invalid", "mirror_unreachable"} <= kinds
    async with pages(w) as server:
        for alert in status["open_alerts"]:
            code, _, html = await get(server, f"/ui/alert/{alert['id']}")
            assert code == 200
            page = Page(html)
            assert page.ids["kind"] == alert["kind"]
            for ref in body_refs(alert["evidence"]):
                assert f"/ui/body/{ref.sha256}" in page.links()
                assert ref.sha256 in page.ids["verify-commands"]
            assert (
                f"/opt/pc/bin/pithcrawl --config {w.config_path} evidence {alert['id']} --out"
                in page.ids["evidence-command"]
            )
            if not body_refs(alert["evidence"]):
                assert alert["kind"] == "mirror_unreachable"
                continue
            assert "/opt/pc/bin/pithcrawl verify" in page.ids["verify-commands"]
            expected = "exit 1 (FAIL)" if alert["kind"] == "document_invalid" else "exit 0 (ok)"
            assert f"# expect: {expected}" in page.ids["verify-commands"]


async def test_record_page_diff_is_the_diff_command(w: World) -> None:
    suffix = w.suffix("calm")
    async with await Store.open(w.db, readonly=True) as store:
        series = await store.snapshots(suffix, mirror=OTHER)
    old, new = series[0].id, series[-1].id
    from pithcrawl.commands.history import _diff

    _, _, patch = await _diff(w.db, suffix, None, old, new)
    async with pages(w) as server:
        code, _, html = await get(server, f"/ui/record/{suffix}?a={old}&b={new}")
        assert code == 200
        page = Page(html)
        assert int(page.ids["change-count"]) == len(patch) > 0
        assert page.ids["title"] == "A calm paper"
        # The timeline: one dot a bundle snapshot, each linking to its own diff.
        dots = [a for t, a in page.tags if t == "circle" and "data-id" in a]
        async with await Store.open(w.db, readonly=True) as store:
            every = await store.snapshots(suffix)
        assert sorted(int(d["data-id"] or 0) for d in dots) == [s.id for s in every]
        assert f"/ui/record/{suffix}?a={old}&b={new}#diff" in page.links()
        # The two compared bundles, byte for byte.
        for snap in (series[0], series[-1]):
            async with await Store.open(w.db, readonly=True) as store:
                body = await store.get_blob(snap.body_sha256)
            code, headers, text = await get(server, f"/ui/body/{snap.body_sha256}")
            assert code == 200 and text.encode() == body
            assert headers["Content-Type"].startswith("text/plain")
            assert "sandbox" in headers["Content-Security-Policy"]


async def test_mirror_page_shows_what_fails_and_its_alerts(w: World) -> None:
    async with pages(w) as server:
        code, _, html = await get(server, f"/ui/mirror/{OTHER}")
        assert code == 200
        page = Page(html)
        assert f"/ui/record/{w.suffix('moved')}" in page.links()
        alert_links = {x for x in page.links() if x.startswith("/ui/alert/")}
        status = (await gather(w.config, w.db)).to_json()
        assert alert_links == {
            f"/ui/alert/{a['id']}" for a in status["open_alerts"] if OTHER in a["mirrors"]
        }
        code, _, html = await get(server, f"/ui/mirror/{GOOD}")
        assert code == 200 and "Nothing failing." in html


async def test_nothing_a_mirror_sent_becomes_markup(w: World) -> None:
    """The hostile title and the error text with a javascript: Location come out as
    text: no script element, no event handler attribute, no javascript: link, on any
    page; the text itself is there for a person to read."""
    paths = [
        "/",
        "/ui/records",
        "/ui/alerts?state=all",
        f"/ui/record/{w.suffix('hostile')}",
        f"/ui/record/{w.suffix('moved')}",
        f"/ui/mirror/{OTHER}",
        *(f"/ui/alert/{i}" for i in range(1, 6)),
    ]
    async with pages(w) as server:
        for path in paths:
            code, headers, html = await get(server, path)
            assert code == 200, path
            assert headers["Content-Security-Policy"] == POLICY
            page = Page(html)
            for tag, attrs in page.tags:
                assert tag not in ("script", "img", "iframe", "object", "embed"), (path, tag)
                assert not any(name.startswith("on") for name in attrs), (path, tag, attrs)
                for name in ("href", "src", "action"):
                    value = attrs.get(name) or ""
                    assert not value.lower().startswith(("javascript:", "data:")), (path, attrs)
        _, _, html = await get(server, f"/ui/record/{w.suffix('hostile')}")
        assert "<script>document.title" in Page(html).ids["title"]
        _, _, html = await get(server, f"/ui/mirror/{OTHER}")
        assert "javascript:alert(3)" in "".join(Page(html).text)
    assert sum(w.canary.hits.values()) == 0


async def test_lists_are_paged(w_own: World) -> None:
    fake = [
        base64.b32encode(hashlib.sha256(str(i).encode()).digest()).decode()[:26]
        for i in range(2 * PAGE + 7)
    ]
    async with await Store.open(w_own.db) as store:
        await store.watchlist.track(fake, datetime.now(UTC))
        total = await store.watchlist.tracked_count()
    seen: list[str] = []
    async with pages(w_own) as server:
        path, hops = "/ui/records", 0
        while path:
            code, _, html = await get(server, path)
            assert code == 200
            page = Page(html)
            rows = [x.rsplit("/", 1)[1] for x in page.links() if x.startswith("/ui/record/")]
            assert len(rows) <= PAGE
            seen += rows
            nxt = [x for x in page.links() if "?after=" in x]
            path, hops = (nxt[0] if nxt else ""), hops + 1
    assert len(seen) == len(set(seen)) == total
    assert seen == sorted(seen) and hops == -(-total // PAGE)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/ui/record/" + "A" * 26, 404),
        ("/ui/record/not-a-suffix", 404),
        ("/ui/alert/999", 404),
        ("/ui/alert/x", 404),
        ("/ui/mirror/nowhere", 404),
        ("/ui/alerts?state=bogus", 400),
        ("/ui/alerts?before=-1", 400),
        ("/ui/records?after=%3Cscript%3E", 400),
        ("/ui/record?pith=nonsense", 400),
        ("/ui/body/" + "0" * 64, 404),
        ("/ui/body/../../etc/passwd", 404),
    ],
)
async def test_bad_requests_get_a_page_that_says_why(w: World, path: str, code: int) -> None:
    async with pages(w) as server:
        got, headers, html = await get(server, path)
    assert got == code
    if path.startswith("/ui/") and "passwd" not in path:
        assert headers["Content-Security-Policy"] == POLICY
        assert "<script" not in html


async def test_a_pith_number_opens_its_record(w: World) -> None:
    suffix = w.suffix("calm")
    async with pages(w) as server:
        code, headers, _ = await get(server, f"/ui/record?pith=pith%3A2026%3A{suffix}")
    assert code == 303 and headers["Location"] == f"/ui/record/{suffix}"


async def test_no_ui_serves_the_mirror_routes_only(w: World) -> None:
    async with pages(w, ui=False) as server:
        code, _, body = await get(server, "/")
        assert code == 404 and json.loads(body)["error"] == "not found"
        code, _, _ = await get(server, f"/ui/record/{w.suffix('calm')}")
        assert code == 404
        code, _, _ = await get(server, f"/pith/{w.suffix('calm')}/bundle.json")
        assert code == 200


def test_only_http_urls_become_links() -> None:
    assert href("https://mirror.example/x") == "https://mirror.example/x"
    assert href("http://127.0.0.1:8787") == "http://127.0.0.1:8787"
    for bad in (
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        " javascript:alert(1)",
        "data:text/html,<script>",
        "//evil.example",
        "http:/x",
        "https://ok.example/\nx",
        "vbscript:x",
        None,
        42,
    ):
        assert href(bad) is None, bad


def test_shown_escapes_what_does_not_print() -> None:
    assert shown("a\x1b[31mb\u202ec") == "a\\x1b[31mb\\u202ec"
    assert shown("x" * 600, 10) == "x" * 9 + "…"
    assert shown("one\ntwo\x07", lines=True) == "one\ntwo\\x07"
    assert shown("one\ntwo") == "one\\x0atwo"


async def test_overview_figures_are_reread_after_max_age_without_waiting(w_own: World) -> None:
    """Stale-while-revalidate: a visit after `max_age` gets the figures it has at once
    and starts one read; the next visit sees what changed."""
    from pithcrawl.serve.pages import Figures

    ticks = [0.0]
    async with await Store.open(w_own.db, readonly=True) as store:
        figures = Figures(store, Ui(w_own.config, clock=w_own.clock.now), 30.0, lambda: ticks[0])
        first = await figures.get()
        assert first.status.records == 5
        async with await Store.open(w_own.db) as writer:
            await writer.watchlist.track(["B" * 26], datetime.now(UTC))
        ticks[0] = 29.0
        assert await figures.get() is first  # fresh enough: no read
        assert figures._refresh is None
        ticks[0] = 31.0
        assert await figures.get() is first  # stale: answered at once, a read started
        task = figures._refresh
        assert task is not None
        assert await figures.get() is first  # one read at a time
        assert figures._refresh is task
        await task
        again = await figures.get()
        assert again is not first and again.status.records == 6
        await figures.close()


def test_a_webhook_url_never_reaches_a_page() -> None:
    """Webhook URLs carry their secret (Slack's, say); a delivery error names the URL."""
    from pithcrawl.serve.views import redacted
    from pithcrawl.store import Delivery

    now = datetime.now(UTC)
    failed = Delivery(
        7,
        "webhook",
        "open",
        3,
        now,
        None,
        "webhook https://hooks.example/services/T0/B0/s3cr3t answered HTTP 500",
    )
    shown_error = redacted(failed).last_error
    assert shown_error == "webhook <alerts.webhook> answered HTTP 500"
    hook = Delivery(7, "hook", "open", 1, now, None, "hook /usr/bin/x exited 1")
    assert redacted(hook) == hook
    chat = Delivery(
        7,
        "hook:chat",
        "open",
        1,
        now,
        None,
        "hook exited 22: curl: (22) https://hooks.slack.com/services/T/B/xoxb-SECRET: 404",
    )
    assert redacted(chat).last_error == "hook exited 22: curl: (22) <a URL: see the log> 404"


async def test_every_fetch_is_counted_in_its_mirrors_hour(w: World) -> None:
    """`mirror_hours` against the mirrors' own request counts: each document fetched is
    one fetch; the new bodies are the passes' new snapshots; `other`'s two failed fetches
    (the redirect to javascript:, in passes two and three) are its failures."""
    async with await Store.open(w.db, readonly=True) as store:
        counts = await store.browse.recent(datetime(2000, 1, 1, tzinfo=UTC), w.clock.at)
    assert counts[GOOD].fetches == sum(w.good.hits.values()) > 0
    assert counts[OTHER].fetches == sum(w.other.hits.values()) > 0
    assert sum(c.changed for c in counts.values()) == sum(s.new_snapshots for s in w.summaries)
    assert (counts[GOOD].failures, counts[OTHER].failures) == (0, 2)
    assert counts[GOOD].untrusted == 0 < counts[OTHER].untrusted
    async with pages(w) as server:
        code, _, html = await get(server, f"/ui/mirror/{OTHER}")
    assert code == 200
    days = re.findall(r'<g class="day" data-day="([0-9-]+)">\s*<title>[^:]+: (\d+) fetches', html)
    assert len(days) == 30 and days[-1][0] == w.clock.at.date().isoformat()
    assert sum(int(n) for _, n in days) == counts[OTHER].fetches


def test_commands_on_pages_can_be_pasted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The program as `serve` was started, and its --config and --db made absolute."""
    import argparse

    from pithcrawl.commands.serve import command_of

    script = tmp_path / "venv" / "bin" / "pithcrawl"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    monkeypatch.setattr("sys.argv", [str(script), "serve"])
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(config=Path("etc/p.toml"), db=Path("a.db"))
    command = command_of(args)
    assert command.program == (str(script),)
    assert command.line("evidence", "3") == (
        f"{script} --config {tmp_path}/etc/p.toml --db {tmp_path}/a.db evidence 3"
    )
    monkeypatch.setattr("sys.argv", ["/usr/lib/python3/x/__main__.py"])
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("sys.executable", str(tmp_path / "venv" / "bin" / "python"))
    assert command_of(argparse.Namespace(config=None, db=None)).line("status") == (
        f"{script} status"  # `python -m pithcrawl`: the script beside the interpreter
    )
    spaced = Command((str(tmp_path / "my tools" / "pithcrawl"),))
    assert spaced.prefix() == f"'{tmp_path}/my tools/pithcrawl'"


def test_timeline_keeps_dots_apart_and_in_order() -> None:
    """Fetches a second apart after months of quiet are still two dots, in time order,
    inside the drawing."""
    from pithcrawl.serve.views import _GAP, _columns

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    times = [t0, t0.replace(month=6), t0.replace(month=6, second=1), t0.replace(month=6, second=2)]
    xs = _columns(times, 190.0, 880.0)
    ordered = [xs[t] for t in sorted(times)]
    assert ordered == sorted(ordered) and ordered[0] == 190.0 and ordered[-1] <= 880.0
    assert all(b - a >= _GAP - 0.1 for a, b in pairwise(ordered))
    many = [t0.replace(second=i % 60, minute=i // 60) for i in range(120)]
    squeezed = _columns(many, 190.0, 880.0)
    assert max(squeezed.values()) <= 880.0 and min(squeezed.values()) == 190.0
    assert _columns([t0, t0], 190.0, 880.0) == {t0: 535.0}


async def test_a_rollback_is_ringed_and_named_on_its_record(w: World) -> None:
    suffix = w.suffix("calm")
    async with await Store.open(w.db, readonly=True) as store:
        rolled = (await store.snapshots(suffix, mirror=OTHER))[-1]
    async with pages(w) as server:
        _, _, html = await get(server, f"/ui/record/{suffix}")
        rings = re.findall(r'class="snap trusted alarming" data-id="(\d+)"', html)
        assert rings == [str(rolled.id)]
        assert '<span class="sev sev-critical">rollback</span>' in html
        first = (await get(server, f"/ui/record/{suffix}?a={rolled.id}&b={rolled.id}"))[2]
        assert "nothing before it to compare with" in first
        code, _, html = await get(server, f"/ui/record/{suffix}?a={rolled.id}")
        assert code == 400 and "pick two snapshots" in html


def test_each_change_shows_the_value_it_really_replaced() -> None:
    """A patch's paths name the document as the operations before them left it: events
    0 and 2 dropped are shown as A and C, not as A and what is now at index 1."""
    import copy

    from pithcrawl.serve.views import changes

    before = {"events": [{"id": "A"}, {"id": "B"}, {"id": "C"}], "n": 3}
    after = {"events": [{"id": "B"}], "n": 1}
    rows, more = changes(before, after, copy.deepcopy(before), 500)
    removed = [json.loads(r.before or "null") for r in rows if r.op == "remove"]
    assert sorted(removed, key=lambda e: e["id"]) == [{"id": "A"}, {"id": "C"}]
    assert more == 0
    assert [json.loads(r.before or "0") for r in rows if r.path == "/n"] == [3]


def test_a_huge_value_is_cut_before_it_is_written() -> None:
    """800,000 characters in 400,000 items: the row shows a few hundred, says how many
    more, and never writes the rest."""
    import copy

    from pithcrawl.serve.views import CLIP, changes

    before = {"l": list(range(400_000))}
    after: dict[str, Any] = {"l": []}
    rows, _ = changes(before, after, copy.deepcopy(before), 500)
    assert len(rows) == 1 and rows[0].before is not None
    assert f"{400_000 - CLIP + 1} more items" in rows[0].before
    assert len(rows[0].before) < 5_000


async def test_a_key_file_broken_while_serving_costs_only_the_page(w_files_own: World) -> None:
    """The alert page reads trust.keys again (for the evidence's key files): a file
    replaced by junk meanwhile gives a page that says so, with the headers of any page."""
    async with pages(w_files_own) as server:
        key_file(w_files_own).write_text("{not json")
        code, headers, html = await get(server, "/ui/alert/1")
        assert code == 500 and "configuration cannot be read" in html
        assert headers["Content-Security-Policy"] == POLICY
        code, _, _ = await get(server, "/")
        assert code == 200


async def test_a_page_compares_bodies_up_to_a_size(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past DIFF_MAX_BYTES a page says to use `pithcrawl diff` instead."""
    from pithcrawl.serve import views

    suffix = w.suffix("calm")
    async with await Store.open(w.db, readonly=True) as store:
        series = await store.snapshots(suffix, mirror=OTHER)
    monkeypatch.setattr(views, "DIFF_MAX_BYTES", 100)
    async with pages(w) as server:
        code, _, html = await get(server, f"/ui/record/{suffix}?a={series[0].id}&b={series[-1].id}")
    assert code == 200 and "too large to compare on a page" in html


async def test_hours_counted_under_a_clock_that_ran_ahead_are_left_out(w_own: World) -> None:
    """Counts written while the clock was 20 days ahead neither swell "the last 24 h"
    nor the chart's scale once the clock is right again."""
    from datetime import timedelta

    from pithcrawl.store.browse import hour_of

    ahead = hour_of(w_own.clock.at + timedelta(days=20))
    async with await Store.open(w_own.db) as store:
        before = (await store.browse.recent(w_own.clock.at - timedelta(hours=23), w_own.clock.at))[
            OTHER
        ]
        async with store._db.write("a clock ahead") as s:
            await s.run("INSERT INTO mirror_hours VALUES (?, ?, 10000, 0, 0, 0)", (OTHER, ahead))
        after = (await store.browse.recent(w_own.clock.at - timedelta(hours=23), w_own.clock.at))[
            OTHER
        ]
        days = await store.browse.days(OTHER, w_own.clock.at - timedelta(days=29), w_own.clock.at)
    assert after == before and all(c.fetches < 10000 for _, c in days)


async def test_a_record_shows_its_newest_log_entries(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past LOG entries the page keeps the newest, and says how many there are."""
    from pithcrawl.serve import views

    suffix = w.suffix("forked")
    async with await Store.open(w.db, readonly=True) as store:
        entries = [e for e in await store.events() if e.suffix == suffix and e.snapshot_id]
    assert len(entries) >= 2
    newest = max(entries, key=lambda e: (e.at, e.id))
    monkeypatch.setattr(views, "LOG", 1)
    async with pages(w) as server:
        _, _, html = await get(server, f"/ui/record/{suffix}")
    page = Page(html)
    assert f"The newest 1 of {len(entries)} entries" in " ".join("".join(page.text).split())
    assert newest.kind in page.ids["log"]


async def test_a_mirror_name_with_a_line_break_has_its_page(w_own: World) -> None:
    """A configured name may hold any character; its link leads to its page."""
    from urllib.parse import quote

    async with await Store.open(w_own.db) as store:
        async with store._db.write("an odd mirror") as s:
            await s.run(
                "INSERT INTO fetch_state (suffix, mirror, kind, url, failures) "
                "VALUES (?, ?, 'bundle', 'u', 0)",
                (w_own.suffix("calm"), "odd\nname"),
            )
        await store.watchlist.upsert_mirror(
            Mirror(
                "odd\nname",
                "http://127.0.0.1:1",
                "{base_url}/b",
                "{base_url}/s",
                "config",
                datetime.now(UTC),
            )
        )
    async with pages(w_own) as server:
        code, _, html = await get(server, "/ui/mirror/" + quote("odd\nname", safe=""))
    assert code == 200 and "odd\\x0aname" in html


def test_a_timeline_widens_so_no_dot_covers_another() -> None:
    """200 fetch times a second apart: the drawing widens so each keeps its column."""
    from datetime import timedelta

    from pithcrawl.serve.views import _GAP, timeline

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    snaps = [
        Snapshot(i + 1, "S", "m", "bundle", t0 + timedelta(seconds=i), "u", 200, "a" * 64,
                 None, None, None, True, (), None)
        for i in range(200)
    ]  # fmt: skip
    drawn = timeline(snaps)
    xs = sorted(d.x for d in drawn.dots)
    assert drawn.width >= 199 * _GAP
    assert all(b - a >= _GAP - 0.1 for a, b in pairwise(xs))
