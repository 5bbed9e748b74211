"""Responses served from memory per catalogue generation, and keyset paging underneath."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from aggregator.api.cache import LISTENER_NAME, RESPONSE_CACHE, ResponseCache, make_entry
from aggregator.app import create_app
from aggregator.db.generation import CATALOGUE_CHANNEL
from aggregator.db.queries import ToolQuery, page_ids, page_index
from tests.populated import BWA, NESTED, TRS, api_config, enc
from tests.support import eventually

Client = TestClient[Any, Any]


@pytest.fixture
async def db(populated_dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to the test's copy of the populated database."""
    conn = await asyncpg.connect(populated_dsn)
    yield conn
    await conn.close()


async def publish(db: asyncpg.Connection[Any], *, notify: bool = True) -> int:
    """Bump the generation as a publish does, announcing it unless told not to."""
    generation: int = await db.fetchval(
        "update catalogue_state set generation = generation + 1 returning generation"
    )
    if notify:
        await db.execute("select pg_notify($1, $2)", CATALOGUE_CHANNEL, str(generation))
    return generation


async def description(client: Client, tool_id: str = NESTED) -> str | None:
    tool = await (await client.get(f"{TRS}/tools/{enc(tool_id)}")).json()
    value: str | None = tool.get("description")
    return value


async def rewrite_description(db: asyncpg.Connection[Any], text: str) -> None:
    await db.execute(
        "update upstream_tools set doc = jsonb_set(doc, '{description}', to_jsonb("
        "$1::text)) where external_id = $2",
        text,
        NESTED,
    )


async def test_answers_come_from_memory_until_a_publish(
    own_trs: Client, db: asyncpg.Connection[Any]
) -> None:
    """A change in the database is not seen until the generation changes; then it is."""
    assert await description(own_trs) is None
    etag = (await own_trs.get(f"{TRS}/tools/{enc(NESTED)}")).headers["ETag"]
    await rewrite_description(db, "changed behind the cache")
    assert await description(own_trs) is None
    generation = await publish(db)

    async def fresh() -> bool:
        return await description(own_trs) == "changed behind the cache"

    await eventually(fresh)
    r = await own_trs.get(f"{TRS}/tools/{enc(NESTED)}", headers={"If-None-Match": etag})
    assert r.status == 200 and r.headers["ETag"] != etag
    unchanged = f"{TRS}/tools/{enc(BWA)}"
    before = (await own_trs.get(unchanged)).headers["ETag"]
    await publish(db)
    await eventually(lambda: _is(lambda: _generation(own_trs), generation + 1))
    r = await own_trs.get(unchanged, headers={"If-None-Match": before})
    assert r.status == 304, "an answer the publish did not change keeps its ETag"


async def test_every_api_process_hears_of_a_publish(
    populated_dsn: str, aiohttp_client: Any, db: asyncpg.Connection[Any]
) -> None:
    """Two API processes on one database both drop their cache when a publish is announced."""
    clients = [await aiohttp_client(create_app(api_config(populated_dsn))) for _ in range(2)]
    for client in clients:
        assert await description(client) is None
    await rewrite_description(db, "announced")
    await publish(db)
    for client in clients:

        async def fresh(client: Client = client) -> bool:
            return await description(client) == "announced"

        await eventually(fresh)


async def test_a_lost_listener_reconnects_and_catches_up(
    own_trs: Client, db: asyncpg.Connection[Any]
) -> None:
    """When the LISTEN connection dies, the cache is off until it reconnects and reads the
    generation, so a publish missed meanwhile is still seen."""
    cache = own_trs.server.app[RESPONSE_CACHE]
    assert await description(own_trs) is None
    killed = await db.fetchval(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity "
        "where datname = current_database() and application_name = $1",
        LISTENER_NAME,
    )
    assert killed == 1
    await rewrite_description(db, "missed while away")
    generation = await publish(db, notify=False)

    async def caught_up() -> bool:
        return cache.generation == generation

    await eventually(caught_up)
    assert await description(own_trs) == "missed while away"


async def test_stale_flags_turn_without_a_new_generation(
    own_trs: Client, db: asyncpg.Connection[Any]
) -> None:
    """A cached answer whose sources turn stale (7 days unconfirmed) is rendered again then:
    the answer cached while fresh expires when the first source turns stale, with no publish."""
    # Fresh for a few more seconds: long enough for the first answer on a loaded machine.
    await db.execute(
        "update upstream_tools set last_confirmed = now() - interval '7 days' "
        "+ interval '4 seconds' where external_id = $1",
        NESTED,
    )
    generation = await publish(db)
    await eventually(lambda: _is(lambda: _generation(own_trs), generation))

    async def stale() -> bool | None:
        tool = await (await own_trs.get(f"{TRS}/tools/{enc(NESTED)}")).json()
        flag: bool = tool["sources"][0]["stale"]
        return flag

    assert await stale() is False
    await eventually(lambda: _is(stale, True), what="the cached answer turning stale")
    assert await _generation(own_trs) == generation, "it took a publish to turn stale"


async def _generation(client: Client) -> int | None:
    generation: int | None = client.server.app[RESPONSE_CACHE].generation
    return generation


async def _is(check: Callable[[], Awaitable[Any]], value: Any) -> bool:
    return await check() is value


async def test_concurrent_misses_render_once(populated_dsn: str) -> None:
    """Many requests for one uncached answer wait for a single render."""
    from aggregator.db.pool import create_pool

    pool = await create_pool(populated_dsn)
    try:
        cache = ResponseCache(pool)
        cache.set_generation(await pool.fetchval("select generation from catalogue_state"))
        renders = 0

        async def render(conn: Any, generation: int) -> Any:
            nonlocal renders
            renders += 1
            await asyncio.sleep(0.05)
            return make_entry(200, b"{}", "application/json", generation=generation)

        entries = await asyncio.gather(*(cache.fill("key", render) for _ in range(20)))
        assert renders == 1 and len({id(e) for e in entries}) == 1
        assert cache.get("key") is entries[0]
        cache.set_generation((cache.generation or 0) + 1)
        assert cache.get("key") is None
    finally:
        await pool.close()


@pytest.mark.parametrize(
    "query", [ToolQuery(), ToolQuery(toolclass="Workflow"), ToolQuery(organization="quirky")]
)
async def test_keyset_pages_equal_an_offset_scan(
    db: asyncpg.Connection[Any], query: ToolQuery
) -> None:
    """From checkpoints every 2 rows, every (offset, limit) page is the one OFFSET would give."""
    statement, args = query.statement(
        "select c.id from catalogue_tools c where true{where} order by c.sort_key", first_arg=1
    )
    expected = [r["id"] for r in await db.fetch(statement, *args)]
    index = await page_index(db, query, stride=2)
    assert index.total == len(expected) and len(index.checkpoints) == (len(expected) + 1) // 2
    for offset in range(len(expected) + 1):
        for limit in (1, 2, 3, 7):
            got = await page_ids(db, query, index, offset=offset, limit=limit)
            assert got == expected[offset : offset + limit], (offset, limit)
