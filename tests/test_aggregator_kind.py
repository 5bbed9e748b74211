"""``kind = "aggregator"``: two real instances on two databases harvesting each other through
their change feeds keep the original provenance, never re-import their own records, and
settle with no duplicates and no growth."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from aggregator.app import create_app
from aggregator.config import Config, DatabaseConfig, HarvestConfig, UpstreamConfig
from aggregator.db.pool import create_pool
from aggregator.demo.registry import STATE, make_registry_app
from tests.conftest import database_copy
from tests.support import catalogue, cwl_tool, fetch, harvest

TRS = "/ga4gh/trs/v2"


def upstream(name: str, server: TestServer, **kw: Any) -> UpstreamConfig:
    return UpstreamConfig(name=name, url=str(server.make_url(TRS)), retries=1, timeout_s=10, **kw)


@pytest.fixture
async def pair(pg_admin_dsn: str, template_db: str) -> AsyncIterator[dict[str, Any]]:
    """Registries r1 and r2; aggregators A (harvesting r1 and B) and B (r2 and A)."""
    r1 = make_registry_app(catalogue([cwl_tool("r1a", marker="1"), cwl_tool("r1b", marker="1")]))
    r2 = make_registry_app(catalogue([cwl_tool("r2a", marker="2")]))
    servers = [TestServer(r1, host="127.0.0.1"), TestServer(r2, host="127.0.0.2")]
    for s in servers:
        await s.start_server()
    async with (
        database_copy(pg_admin_dsn, template_db) as dsn_a,
        database_copy(pg_admin_dsn, template_db) as dsn_b,
    ):
        harvest_config = HarvestConfig(tombstone_after=1, revalidate_after="0s")
        api_a = TestServer(create_app(Config(database=DatabaseConfig(url=dsn_a))), host="127.0.0.3")
        api_b = TestServer(create_app(Config(database=DatabaseConfig(url=dsn_b))), host="127.0.0.4")
        for s in (api_a, api_b):
            await s.start_server()
        config_a = Config(
            database=DatabaseConfig(url=dsn_a, pool_max=4),
            harvest=harvest_config,
            upstreams=(upstream("r1", servers[0]), upstream("b", api_b, kind="aggregator")),
        )
        config_b = Config(
            database=DatabaseConfig(url=dsn_b, pool_max=4),
            harvest=harvest_config,
            upstreams=(upstream("r2", servers[1]), upstream("a", api_a, kind="aggregator")),
        )
        pool_a, pool_b = await create_pool(dsn_a), await create_pool(dsn_b)
        try:
            yield {
                "a": (pool_a, config_a, dsn_a, api_a),
                "b": (pool_b, config_b, dsn_b, api_b),
                "r1": r1,
                "r2": r2,
            }
        finally:
            await pool_a.close()
            await pool_b.close()
            for s in (api_a, api_b, *servers):
                await s.close()


async def state(dsn: str) -> dict[str, Any]:
    tools = await fetch(dsn, "select id from catalogue_tools order by id")
    records = await fetch(
        dsn,
        """select u.name, t.external_id, t.doc_hash, t.origin from upstream_tools t
           join upstreams u on u.id = t.upstream_id order by 1, 2""",
    )
    return {
        "tools": [r["id"] for r in tools],
        "records": [(r["name"], r["external_id"], r["doc_hash"]) for r in records],
        "origins": {
            (r["name"], r["external_id"]): json.loads(r["origin"]) if r["origin"] else None
            for r in records
        },
    }


async def round_trip(pair: dict[str, Any]) -> None:
    for side in ("a", "b"):
        pool, config, _, _ = pair[side]
        for name in [u.name for u in config.upstreams]:
            outcomes = await harvest(pool, config, [name])
            assert outcomes[name].status == "succeeded", outcomes


async def test_two_aggregators_harvesting_each_other_settle(pair: dict[str, Any]) -> None:
    await round_trip(pair)
    await round_trip(pair)
    a, b = await state(pair["a"][2]), await state(pair["b"][2])
    # Every tool once on each side.
    assert a["tools"] == b["tools"] == ["r1a", "r1b", "r2a"]
    # A has r2's tool through B, and none of its own back; the same for B.
    assert [r[:2] for r in a["records"]] == [("b", "r2a"), ("r1", "r1a"), ("r1", "r1b")]
    assert [r[:2] for r in b["records"]] == [("a", "r1a"), ("a", "r1b"), ("r2", "r2a")]
    b_id = (await fetch(pair["b"][2], "select aggregator_instance_id() as id"))[0]["id"]
    a_id = (await fetch(pair["a"][2], "select aggregator_instance_id() as id"))[0]["id"]
    assert a["origins"][("b", "r2a")] == {"upstream": "r2", "via": [b_id]}
    assert b["origins"][("a", "r1a")] == {"upstream": "r1", "via": [a_id]}
    assert a["origins"][("r1", "r1a")] is None
    # Shown as r2 via B in the provenance record.
    async with aiohttp.ClientSession() as session:
        url = pair["a"][3].make_url("/aggregator/v1/tools/r2a/provenance")
        async with session.get(url) as r:
            member = (await r.json())["members"][0]
    assert member["upstream"] == "b" and member["origin"] == {"upstream": "r2", "via": [b_id]}

    # Further rounds: no growth, nothing changes, and nothing is fetched but the feed.
    await round_trip(pair)
    assert await state(pair["a"][2]) == a and await state(pair["b"][2]) == b
    last_run = """select r.requests, r.tools_changed from harvest_runs r join upstreams u
                  on u.id = r.upstream_id where u.name = $1 order by r.id desc limit 1"""
    run = (await fetch(pair["a"][2], last_run, "b"))[0]
    assert (run["requests"], run["tools_changed"]) == (3, 0)  # service-info, toolClasses, feed

    # A change upstream of B reaches A through B's feed (B harvests r2 after A harvests B:
    # one round late); A fetches that tool alone.
    changed = cwl_tool("r2a", marker="2")
    changed["description"] = "changed at r2"
    pair["r2"][STATE].catalogue = catalogue([changed])
    await round_trip(pair)
    await round_trip(pair)
    runs = await fetch(
        pair["a"][2],
        """select r.requests, r.tools_changed from harvest_runs r join upstreams u
           on u.id = r.upstream_id where u.name = 'b' order by r.id desc limit 2""",
    )
    assert [r["tools_changed"] for r in runs] == [1, 0]
    assert 3 < runs[0]["requests"] < 20
    docs = await fetch(
        pair["a"][2],
        "select doc->>'description' as d from upstream_tools where external_id = 'r2a'",
    )
    assert docs[0]["d"] == "changed at r2"
    assert (await state(pair["a"][2]))["tools"] == ["r1a", "r1b", "r2a"]

    # r1 drops a tool: removed at A, then at B through A's feed.
    pair["r1"][STATE].catalogue = catalogue([cwl_tool("r1a", marker="1")])
    await round_trip(pair)
    assert (await state(pair["a"][2]))["tools"] == ["r1a", "r2a"]
    assert (await state(pair["b"][2]))["tools"] == ["r1a", "r2a"]


async def test_harvesting_oneself_is_refused(pair: dict[str, Any]) -> None:
    pool, config, _, api = pair["a"]
    itself = dataclasses.replace(config, upstreams=(upstream("me", api, kind="aggregator"),))
    outcomes = await harvest(pool, itself)
    assert outcomes["me"].status == "failed"
    assert "itself" in (outcomes["me"].error or "")
