"""The status pages in a real browser: Debian's Chromium, driven by Playwright (launched
with `executable_path`, since Playwright cannot download its own browser here).

A person's path through an archive with a rollback and a divergence open: the overview
(its figures checked against `status --json`), a record, its timeline and diff, an
alert. Then the hostile record and the mirror whose error text carries payloads: no
dialog opens, the title stays, no request leaves for a payload's URL, no script element
exists. A screenshot of each page is saved under the test's temporary directory.

`.ci/run` (and `make test`) install Chromium when it is missing; without it these tests
fail and say so, they are never skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Dialog, Page, Request, async_playwright
from status_world import OTHER, World, world
from test_status_pages import pages

from pithcrawl.commands.status import gather

pytestmark = pytest.mark.anyio


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "Debian's chromium is not installed: `make test` and .ci/run install it"
        " (apt-get install chromium), or install it yourself"
    )


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses root otherwise
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium(), args=args)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def w(tmp_path: Path, signer: Any) -> AsyncIterator[World]:
    async with world(tmp_path, signer) as built:
        yield built


async def shot(page: Page, tmp: Path, name: str) -> None:
    path = tmp / "screenshots" / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a page was drawn, not a blank


async def text(page: Page, selector: str) -> str:
    return (await page.locator(selector).inner_text()).strip()


async def test_a_person_follows_the_links(w: World) -> None:
    status = (await gather(w.config, w.db)).to_json()
    async with pages(w) as server, browser() as b:
        page = await b.new_page(viewport={"width": 1300, "height": 900})
        await page.goto(server.url + "/")
        assert await page.title() == "Overview · pithcrawl"
        assert int(await text(page, "#records")) == status["records"]
        assert int(await text(page, "#open-alerts")) == len(status["open_alerts"])
        assert await page.locator("tr.mirror").count() == len(status["mirrors"])
        for m in status["mirrors"]:
            row = page.locator(f'tr.mirror[data-name="{m["name"]}"]')
            assert int(await row.locator('[data-field="failures"]').inner_text()) == m["failures"]
            assert int(await row.locator('[data-field="records"]').inner_text()) == m["records"]
        await shot(page, w.tmp, "overview")

        # The rollback alert's record, from the overview's alert table.
        rollback = next(
            a
            for a in status["open_alerts"]
            if a["kind"] == "rollback" and a["pith_number"].endswith(w.suffix("calm"))
        )
        row = page.locator("#alerts tr", has=page.locator(f'a[href="/ui/alert/{rollback["id"]}"]'))
        await row.locator('a[href^="/ui/record/"]').click()
        await page.wait_for_url(f"**/ui/record/{w.suffix('calm')}")
        assert await text(page, "#title") == "A calm paper"
        await shot(page, w.tmp, "record")

        # The newest dot of the timeline: what the rollback changed.
        await page.locator("#timeline circle").last.click()
        await page.wait_for_url("**#diff")
        assert int(await text(page, "#change-count")) > 0
        assert await page.locator("#changes tr.op-remove").count() >= 1  # the dropped event
        await shot(page, w.tmp, "diff")

        # Its alert, from the record's alert list.
        await page.locator(f'#record-alerts a[href="/ui/alert/{rollback["id"]}"]').click()
        await page.wait_for_url(f"**/ui/alert/{rollback['id']}")
        assert await text(page, "#kind") == "rollback"
        assert f"evidence {rollback['id']} --out" in await text(page, "#evidence-command")
        assert "pithcrawl verify" in await text(page, "#verify-commands")
        await shot(page, w.tmp, "alert")

        # The mirror it names.
        await page.locator(f'a[href="/ui/mirror/{OTHER}"]').first.click()
        await page.wait_for_url(f"**/ui/mirror/{OTHER}")
        await shot(page, w.tmp, "mirror")


async def test_hostile_content_never_runs(w: World) -> None:
    dialogs: list[str] = []
    requests: list[str] = []
    async with pages(w) as server, browser() as b:
        page = await b.new_page()

        async def dismiss(d: Dialog) -> None:
            dialogs.append(d.message)
            await d.dismiss()

        def seen(r: Request) -> None:
            requests.append(r.url)

        page.on("dialog", dismiss)
        page.on("request", seen)
        for name, path in (
            ("hostile-record", f"/ui/record/{w.suffix('hostile')}"),
            ("hostile-mirror", f"/ui/mirror/{OTHER}"),
            ("hostile-overview", "/"),
            ("hostile-moved", f"/ui/record/{w.suffix('moved')}"),
        ):
            await page.goto(server.url + path)
            await page.wait_for_load_state("networkidle")
            title = await page.title()
            assert "pwned" not in title and title.endswith(" · pithcrawl")
            assert await page.evaluate("document.scripts.length") == 0
            assert await page.locator("img, iframe, object, embed").count() == 0
            assert await page.locator('a[href^="javascript:" i]').count() == 0
            await shot(page, w.tmp, name)
        await page.goto(server.url + f"/ui/record/{w.suffix('hostile')}")
        assert "<script>document.title='pwned'" in await text(page, "#title")
    assert dialogs == []
    canary = w.canary.base_url
    assert [u for u in requests if u.startswith(canary)] == []
    assert all(u.startswith(server.url) for u in requests), requests
    assert sum(w.canary.hits.values()) == 0
