"""/aggregator/v1/upstreams: each upstream's state, last runs and counts; paged run history."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from aggregator.app import create_app
from aggregator.config import Config, DatabaseConfig, HarvestConfig, UpstreamConfig
from aggregator.demo.registry import STATE, make_registry_app
from aggregator.harvest.runner import Harvester, make_session
from tests.support import catalogue, cwl_tool

TRS = "/ga4gh/trs/v2"
UPSTREAMS = "/aggregator/v1/upstreams"


@web.middleware
async def down(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every request fails with 503."""
    return web.json_response({"code": 503, "message": "down"}, status=503)


async def test_upstreams_show_state_last_runs_counts_and_run_history(
    db_dsn: str, pool: asyncpg.Pool[Any], aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """A healthy and a dead upstream: states, last success, counts, stale records, and the
    dead one's failed runs paged newest first with their error samples."""
    good = await aiohttp_server(make_registry_app(catalogue([cwl_tool("a"), cwl_tool("b")])))
    dead = await aiohttp_server(make_registry_app(catalogue([]), middlewares=[down]))
    ups = tuple(
        UpstreamConfig(name=n, url=str(s.make_url(TRS)), retries=0, timeout_s=2)
        for n, s in (("good", good), ("dead", dead))
    )
    config = Config(
        database=DatabaseConfig(url=db_dsn),
        harvest=HarvestConfig(circuit_failures=2),
        upstreams=ups,
    )
    async with make_session(config) as session:
        harvester = Harvester(pool, session, config)
        assert (await harvester.harvest(ups[0])).status == "succeeded"
        for _ in range(3):
            assert (await harvester.harvest(ups[1])).status == "failed"
    await pool.execute(
        "update upstream_tools set last_confirmed = now() - interval '8 days' "
        "where external_id = 'b'"
    )
    client = await aiohttp_client(create_app(config))

    listed = await (await client.get(UPSTREAMS)).json()
    by_name = {u["name"]: u for u in listed}
    assert by_name["good"]["state"] == "healthy"
    assert by_name["good"]["last_success"]["id"] == by_name["good"]["last_run"]["id"]
    assert by_name["good"]["counts"] == {
        "tools": 2,
        "tools_missing": 0,
        "tools_stale": 1,
        "versions": 2,
    }
    assert by_name["good"]["stale_after_s"] == 7 * 86400
    assert by_name["dead"]["state"] == "circuit_open"
    assert by_name["dead"]["consecutive_failures"] == 3
    assert by_name["dead"]["last_success"] is None
    assert "503" in by_name["dead"]["last_run"]["error"]
    one = await (await client.get(f"{UPSTREAMS}/dead")).json()
    assert one == by_name["dead"]

    r = await client.get(f"{UPSTREAMS}/dead/runs", params={"limit": "2"})
    first = await r.json()
    assert [run["status"] for run in first] == ["failed", "failed"]
    assert first[0]["id"] > first[1]["id"]
    assert first[0]["trigger"] == "manual" and first[0]["counts"]["errors"] == 1
    assert "503" in first[0]["error_samples"][0]
    r = await client.session.get(r.headers["next_page"])
    rest = await r.json()
    assert len(rest) == 1 and rest[0]["id"] < first[1]["id"]
    assert "next_page" not in r.headers


async def test_upstream_errors_are_trs_error_json(
    db_dsn: str, pool: asyncpg.Pool[Any], aiohttp_client: Any
) -> None:
    """An unknown upstream is 404 and a bad paging parameter 400, as {"code", "message"}."""
    client = await aiohttp_client(create_app(Config(database=DatabaseConfig(url=db_dsn))))
    assert await (await client.get(UPSTREAMS)).json() == []
    for path, status in ((f"{UPSTREAMS}/nope", 404), (f"{UPSTREAMS}/nope/runs", 404)):
        r = await client.get(path)
        assert r.status == status and (await r.json())["code"] == status
    await pool.execute(
        "insert into upstreams (name, url, kind, mode) "
        "values ('x', 'http://127.0.0.1/x', 'trs', 'mirror')"
    )
    for query in ("limit=0", "limit=101", "limit=x", "before=0"):
        r = await client.get(f"{UPSTREAMS}/x/runs?{query}")
        assert r.status == 400, query
        body = await r.json()
        assert body["code"] == 400 and body["message"], query


async def test_counts_are_kept_between_publishes_and_follow_each_one(
    db_dsn: str, pool: asyncpg.Pool[Any], aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """Record counts (a pass over every record of the upstream) are computed once per publish
    of that upstream, not at every request; each publish shows in them."""
    server = await aiohttp_server(make_registry_app(catalogue([cwl_tool("a"), cwl_tool("b")])))
    up = UpstreamConfig(name="up", url=str(server.make_url(TRS)), retries=0, timeout_s=5)
    config = Config(database=DatabaseConfig(url=db_dsn), upstreams=(up,))
    client = await aiohttp_client(create_app(config))

    async def counts() -> dict[str, int]:
        listed = await (await client.get(f"{UPSTREAMS}/up")).json()
        return dict(listed["counts"])

    async with make_session(config) as session:
        harvester = Harvester(pool, session, config)
        assert (await harvester.harvest(up)).status == "succeeded"
        assert (await counts())["tools"] == 2
        # Between publishes the counts are not read again: a change made behind the
        # harvester's back (here, by hand) shows only with the next publish.
        await pool.execute("delete from upstream_versions")
        assert (await counts())["versions"] == 2
        server.app[STATE].catalogue = catalogue([cwl_tool(n) for n in ("a", "b", "c")])
        assert (await harvester.harvest(up)).status == "succeeded"
        after = await counts()
    assert after["tools"] == 3 and after["versions"] == 3 and after["tools_stale"] == 0
