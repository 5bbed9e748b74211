"""Fixtures of the console tests: a catalogue of hostile strings, and one headless Chromium (the
Debian package, driven by Playwright) for the whole session."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aggregator.config import Config, DatabaseConfig, UpstreamConfig
from aggregator.db.pool import create_pool
from aggregator.demo.registry import make_registry_app
from aggregator.harvest.runner import Harvester, make_session
from tests.populated import TRS, live_api
from tests.support import catalogue, cwl_tool, dsn_with_db, fetch, run_sync

#: Debian's chromium; never a browser Playwright downloads.
CHROMIUM = os.environ.get("AGGREGATOR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Where the tests save their screenshots (the README shows the committed ones).
SCREENSHOTS_ENV = "AGGREGATOR_SCREENSHOTS"
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
#: Generous: the machine running the suite may be busy.
TIMEOUT_MS = 60_000

# Every string sets window.__pwned if it ever runs.
SCRIPT = "<script>window.__pwned=1</script>"
IMG = '<img src=x onerror="window.__pwned=1">'
JS_URL = "javascript:window.__pwned=1"
RTL = "\u202eevil-org\u202c"
LONG = "x" * 400
HOSTILE_ID = "#workflow/github.com/evil/" + SCRIPT.replace("/", "")
HOSTILE_NAME = f'{SCRIPT}"><svg onload=window.__pwned=1>'


def hostile_tool() -> dict[str, Any]:
    """A tool whose every field tries to run script, break out of markup or the layout."""
    tool = cwl_tool(HOSTILE_ID, aliases=[IMG, JS_URL, "</script><script>window.__pwned=1//"])
    tool.update(
        name=HOSTILE_NAME,
        organization=RTL,
        description=f"{IMG} see {JS_URL} and {LONG}",
        url=JS_URL,
    )
    v = tool["versions"][0]
    v["author"] = [f"</script><script>window.__pwned=1</script>{RTL}", IMG]
    v["name"] = SCRIPT
    v["url"] = JS_URL
    v["images"] = [{"registry_host": JS_URL, "image_name": IMG}]
    v["files"]["CWL"][0]["content"] = f"cwlVersion: v1.2\nclass: Workflow\n# {SCRIPT} {IMG}\n"
    return tool


@web.middleware
async def _broken(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every request fails, with a hostile message."""
    return web.json_response({"code": 503, "message": f"down {SCRIPT}"}, status=503)


async def _harvest_hostile(dsn: str) -> None:
    evil = TestServer(make_registry_app(catalogue([hostile_tool(), cwl_tool("plain")])))
    dead = TestServer(make_registry_app(catalogue([]), middlewares=[_broken]))
    await evil.start_server()
    await dead.start_server()
    try:
        ups = (
            UpstreamConfig(name="evil", url=str(evil.make_url(TRS)), retries=0, timeout_s=5),
            UpstreamConfig(name="dead", url=str(dead.make_url(TRS)), retries=0, timeout_s=5),
        )
        config = Config(database=DatabaseConfig(url=dsn, pool_max=2), upstreams=ups)
        pool = await create_pool(dsn)
        try:
            async with make_session(config) as session:
                harvester = Harvester(pool, session, config)
                for _ in range(2):  # runs 1, 2 (evil) then 3, 4 (dead): a history to chart
                    assert (await harvester.harvest(ups[0])).status == "succeeded"
                for _ in range(2):
                    assert (await harvester.harvest(ups[1])).status == "failed"
        finally:
            await pool.close()
    finally:
        await evil.close()
        await dead.close()


@pytest.fixture(scope="session")
def hostile_origin(pg_admin_dsn: str, template_db: str) -> Iterator[str]:
    """An API over a catalogue of hostile strings and a failing upstream."""
    name = f"hostile_{uuid.uuid4().hex[:12]}"
    run_sync(fetch(pg_admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    try:
        run_sync(_harvest_hostile(dsn_with_db(pg_admin_dsn, name)))
        with live_api(pg_admin_dsn, name, prefix="hostile") as origin:
            yield origin
    finally:
        run_sync(fetch(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium (Debian's package, launched by Playwright) for the module that
    holds every browser test: Playwright's synchronous API keeps an event loop running in this
    thread until it stops, which the asyncio tests of other modules cannot share."""
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, timeout=TIMEOUT_MS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (own context) that fails the test on any script error or dialog."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield p
    context.close()
    assert not errors, errors


def screenshot(page: Any, name: str, tmp_path: Path) -> Path:
    """Save a screenshot of *page* as *name*.png: under $AGGREGATOR_SCREENSHOTS when set (how
    docs/screenshots is refreshed), else under *tmp_path*."""
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path
