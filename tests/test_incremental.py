"""Incremental harvest: an unchanged upstream costs its listing; changes are fetched alone."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from aggregator.config import Config, DatabaseConfig, UpstreamConfig
from aggregator.demo.registry import REQUESTS, STATE, make_registry_app
from tests.support import catalogue, cwl_tool, harvest

TRS = "/ga4gh/trs/v2"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def dockstore_like(
    tool_id: str, *, stamp: str = "2026-01-01 00:00:00.0", marker: str = ""
) -> dict[str, Any]:
    """A tool whose versions carry meta_version, the time of their last update."""
    tool = cwl_tool(tool_id, marker=marker)
    for v in tool["versions"]:
        v["meta_version"] = stamp
    return tool


def config_for(dsn: str, url: str, **options: Any) -> Config:
    """One upstream ``up`` at *url*."""
    return Config(
        database=DatabaseConfig(url=dsn),
        upstreams=(UpstreamConfig(name="up", url=url, page_size=2, retries=0, **options),),
    )


def requests_since(server: Any, start: int) -> list[str]:
    """The registry's request log from entry *start* on, without the method."""
    return [r.removeprefix("GET ") for r in server.app[REQUESTS][start:]]


async def test_unchanged_upstream_costs_its_listing_and_nothing_else(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """Re-harvesting an unchanged upstream asks for the listing only, conditionally (304 for
    every page but the last), and counts every tool unchanged."""
    server = await aiohttp_server(
        make_registry_app(catalogue([dockstore_like(f"t{i}") for i in range(5)]), page_size=2)
    )
    config = config_for(db_dsn, str(server.make_url(TRS)))
    first = (await harvest(pool, config))["up"]
    assert first.counts.tools_new == 5 and first.counts.tools_fetched == 5
    mark = len(server.app[REQUESTS])
    second = (await harvest(pool, config))["up"]
    assert second.status == "succeeded"
    assert requests_since(server, mark) == [
        f"{TRS}/service-info > 200",
        f"{TRS}/toolClasses > 200",
        f"{TRS}/tools?limit=2 > 304",
        f"{TRS}/tools?limit=2&offset=2 > 304",
        f"{TRS}/tools?limit=2&offset=4 > 200",
    ]
    c = second.counts
    assert (
        c.tools_seen,
        c.tools_unchanged,
        c.tools_new,
        c.tools_changed,
        c.tools_fetched,
        c.not_modified,
    ) == (5, 5, 0, 0, 0, 2)
    run = await pool.fetchrow("select * from harvest_runs where id = $1", second.run_id)
    assert (run["tools_unchanged"], run["tools_fetched"], run["not_modified"]) == (5, 0, 2)
    assert (
        await pool.fetchval(
            "select count(*) from upstream_tools where last_run_id = $1", second.run_id
        )
        == 5
    )


async def test_only_changed_tools_are_fetched_and_every_change_is_counted(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """A new, a changed, a vanished and two unchanged tools: only the new and the changed one
    are fetched, and the run record counts each kind."""
    server = await aiohttp_server(
        make_registry_app(
            catalogue([dockstore_like(f"t{i}", marker="old") for i in range(4)]), page_size=2
        )
    )
    config = config_for(db_dsn, str(server.make_url(TRS)))
    await harvest(pool, config)
    server.app[STATE].catalogue = catalogue(
        [
            dockstore_like("t0", marker="old"),
            dockstore_like("t1", marker="old"),
            dockstore_like("t2", marker="new", stamp="2026-02-02 00:00:00.0"),  # changed
            dockstore_like("t9", marker="new"),
        ]
    )  # new; t3 vanished
    mark = len(server.app[REQUESTS])
    outcome = (await harvest(pool, config))["up"]
    c = outcome.counts
    assert (
        c.tools_new,
        c.tools_changed,
        c.tools_unchanged,
        c.tools_tombstoned,
        c.tools_fetched,
    ) == (1, 1, 2, 1, 2)
    fetched = {
        r.split("/")[5] for r in requests_since(server, mark) if r.startswith(f"{TRS}/tools/")
    }
    assert fetched == {"t2", "t9"}
    text = await pool.fetchval(
        """select convert_from(c.content, 'UTF8') from upstream_files f
           join file_contents c on c.sha256 = f.sha256
           join upstream_versions v on v.id = f.upstream_version_id
           join upstream_tools t on t.id = v.upstream_tool_id
           where t.external_id = 't2' and f.file_type = 'PRIMARY_DESCRIPTOR'"""
    )
    assert "new" in text


async def test_without_meta_version_details_are_fetched_and_compared_by_content(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """Listing entries without meta_version cannot reveal file changes: details are fetched
    every run, a changed file is picked up, and unchanged content counts as unchanged."""
    server = await aiohttp_server(
        make_registry_app(catalogue([cwl_tool("a", marker="old"), cwl_tool("b", marker="old")]))
    )
    config = config_for(db_dsn, str(server.make_url(TRS)))
    await harvest(pool, config)
    server.app[STATE].catalogue = catalogue(
        [cwl_tool("a", marker="new"), cwl_tool("b", marker="old")]
    )
    outcome = (await harvest(pool, config))["up"]
    c = outcome.counts
    assert (c.tools_fetched, c.tools_changed, c.tools_unchanged) == (2, 1, 1)


async def test_change_detection_listing_trusts_an_unchanged_listing(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """change_detection = "listing" skips tools whose listing entry is unchanged, even without
    meta_version; "fetch" fetches them although their entries carry one."""
    server = await aiohttp_server(make_registry_app(catalogue([cwl_tool("a")])))
    listing = config_for(db_dsn, str(server.make_url(TRS)), change_detection="listing")
    await harvest(pool, listing)
    assert (await harvest(pool, listing))["up"].counts.tools_fetched == 0
    server.app[STATE].catalogue = catalogue([dockstore_like("a")])
    fetch = config_for(db_dsn, str(server.make_url(TRS)), change_detection="fetch")
    await harvest(pool, fetch)
    assert (await harvest(pool, fetch))["up"].counts.tools_fetched == 1


async def test_a_tool_with_failed_files_is_fetched_again_next_run(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """A tool whose files failed is not taken as up to date: the next run, with the listing
    unchanged, fetches it again (its listing page in full) and completes it."""
    failing: dict[str, int] = {}

    @web.middleware
    async def fail(request: web.Request, handler: Handler) -> web.StreamResponse:
        if failing and request.path.endswith("/tools/b/versions/1.0/CWL/descriptor"):
            return web.json_response({"code": 500, "message": "x"}, status=500)
        return await handler(request)

    server = await aiohttp_server(
        make_registry_app(
            catalogue([dockstore_like("a", marker="old"), dockstore_like("b", marker="old")]),
            page_size=2,
            middlewares=[fail],
        )
    )
    config = config_for(db_dsn, str(server.make_url(TRS)))
    await harvest(pool, config)
    server.app[STATE].catalogue = catalogue(
        [dockstore_like("a", marker="new", stamp="2"), dockstore_like("b", marker="new", stamp="2")]
    )
    failing["on"] = 1
    assert (await harvest(pool, config))["up"].status == "partial"
    failing.clear()
    mark = len(server.app[REQUESTS])
    outcome = (await harvest(pool, config))["up"]
    assert outcome.status == "succeeded" and outcome.counts.tools_fetched == 1
    log = requests_since(server, mark)
    assert f"{TRS}/tools?limit=2 > 200" in log
    assert not any("/tools/a/" in r for r in log)
    assert any(r.endswith("/tools/b/versions/1.0/CWL/descriptor > 200") for r in log)
