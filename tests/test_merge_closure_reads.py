"""One slice of an incremental merge looks up less, using what its closure found: the same
results as the lookups from the tables."""

from __future__ import annotations

import random
from typing import Any

import asyncpg

from aggregator.db.merge_evidence import CLOSURE_TABLES, closure, refresh_evidence
from aggregator.db.merge_ids import assign_ids
from aggregator.db.merge_read import load_nodes, tools_holding
from aggregator.demo.registry import make_registry_app
from aggregator.merge.engine import QUALIFIED_PREFIX, merge
from tests.support import catalogue, config_for, cwl_tool, harvest, with_priority

TOMBSTONE_AFTER = 3


async def test_one_slice_assigns_ids_as_the_lookups_from_the_tables_do(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """The tools the closure found holding its records, and the ids assigned when the merge's
    own records are left out of the plain-id claimants, equal those looked up in the tables
    (upstreams sharing plain ids, some records changed)."""
    rng = random.Random(20261202)
    aliases = [f"https://github.com/lab/r{i}" for i in range(8)]

    def random_catalogue(upstream: str) -> dict[str, Any]:
        tools = [
            cwl_tool(
                f"t{i}",
                aliases=rng.sample(aliases, rng.randint(0, 2)),
                marker=rng.choice(["same", upstream]),
            )
            for i in range(6)
        ]
        return catalogue(tools)

    names = ("red", "green", "blue")
    servers = {n: await aiohttp_server(make_registry_app(random_catalogue(n))) for n in names}
    config = with_priority(config_for(db_dsn, servers), "blue", 5)
    await harvest(pool, config)
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            for _ in range(4):
                # Some records change their aliases, as a harvest would change them.
                ids = [r["id"] for r in await conn.fetch("select id from upstream_tools")]
                dirty = rng.sample(ids, 5)
                for i in dirty:
                    await conn.execute(
                        "update upstream_tools set doc = jsonb_set(doc, '{aliases}', $2) "
                        "where id = $1",
                        i,
                        rng.sample(aliases, rng.randint(0, 2)),
                    )
                await conn.execute(CLOSURE_TABLES)
                await refresh_evidence(conn, dirty, TOMBSTONE_AFTER, keep_old=True)
                affected = await closure(
                    conn,
                    set(dirty),
                    max_per_upstream=1,
                    tombstone_after=TOMBSTONE_AFTER,
                    partners={},
                )
                part = sorted(affected)
                nodes, identifying = await load_nodes(conn, part, TOMBSTONE_AFTER)
                components = merge(nodes, identifying=identifying)
                released = await tools_holding(conn, part, held=True)
                assert sorted(released) == sorted(await tools_holding(conn, part, held=False))
                closed = await assign_ids(conn, components, released, closed=True)
                assert closed == await assign_ids(conn, components, released)
                # Plain ids are claimed across upstreams: some tools lose theirs.
                assert any(i.startswith(QUALIFIED_PREFIX) for i in closed[0])
        finally:
            await tx.rollback()
