"""The fetch-error counters of /metrics (migration 0027's running totals): after every run,
whatever its end (succeeded, failed, abandoned by its worker, by a worker that died, cancelled),
they equal the sum over every run's fetch errors that /metrics computed before, and never go
down; the migration fills them from the runs already recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from aggregator.app import create_app
from aggregator.config import Config, DatabaseConfig, UpstreamConfig
from aggregator.db import metrics, runs
from aggregator.db.migrate import migrate
from aggregator.db.operations import save_conformance
from aggregator.demo.registry import make_registry_app
from tests.support import catalogue, cwl_tool, database_copy, harvest
from tests.test_metrics import scrape
from tests.test_migrate import migrations_copy  # noqa: F401 - the fixture
from tests.test_upstreams_api import down

TRS = "/ga4gh/trs/v2"

#: What /metrics summed at each scrape before migration 0027.
EVERY_RUN: str = """
select u.name, e.key as kind, sum(e.value::bigint)::float8 as n
from harvest_runs r join upstreams u on u.id = r.upstream_id,
     jsonb_each_text(r.conformance -> 'fetch_errors') e
where u.removed_at is null group by 1, 2
"""


async def counted(pool: asyncpg.Pool[Any]) -> dict[tuple[str, str], float]:
    """The counters as /metrics reads them now, by (upstream, kind)."""
    return {(u, k): n for u, k, n in await metrics.fetch_error_counts(pool)}


async def summed(pool: asyncpg.Pool[Any]) -> dict[tuple[str, str], float]:
    """The counters summed over every run, as /metrics did."""
    return {(r["name"], r["kind"]): r["n"] for r in await pool.fetch(EVERY_RUN)}


async def finished(
    pool: asyncpg.Pool[Any], upstream_id: int, status: str, errors: dict[str, int]
) -> int:
    """A run started and ended as the runner records it, with fetch errors *errors*."""
    async with pool.acquire() as conn:
        run_id = await runs.insert_run(conn, upstream_id)
        async with conn.transaction():
            await runs.finish_run(
                conn,
                run_id,
                status=status,
                counts=runs.RunCounts(errors=sum(errors.values())),
                listing_complete=status != "failed",
                error=None if status != "failed" else "down",
            )
            await save_conformance(conn, run_id, {"fetch_errors": errors} if errors else {})
    return run_id


async def test_totals_follow_every_run(
    pool: asyncpg.Pool[Any], db_dsn: str, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """Runs harvested for real (one upstream down: failed, with errors), recorded as the runner
    records them, abandoned and cancelled: after each, the counters equal the sum over the
    runs and none went down; the scrape shows them; a removed upstream's are not shown, and
    deleting an upstream takes its totals away."""
    good = await aiohttp_server(make_registry_app(catalogue([cwl_tool("t1")])))
    dead = await aiohttp_server(make_registry_app(catalogue([]), middlewares=[down]))
    ups = tuple(
        UpstreamConfig(name=n, url=str(s.make_url(TRS)), retries=0, timeout_s=2)
        for n, s in (("good", good), ("dead", dead))
    )
    config = Config(database=DatabaseConfig(url=db_dsn), upstreams=ups)
    seen: list[dict[tuple[str, str], float]] = [{}]

    async def check(*, removed: str = "") -> None:
        now = await counted(pool)
        assert now == await summed(pool)
        for key, n in seen[-1].items():
            if key[0] != removed:
                assert now[key] >= n, key
        seen.append(now)

    await check()
    await harvest(pool, config)
    await check()
    assert seen[-1][("dead", "http_5xx")] >= 1
    ids = {r["name"]: r["id"] for r in await pool.fetch("select id, name from upstreams")}
    await finished(pool, ids["good"], "partial", {"timeout": 3, "http_4xx": 1})
    await check()
    await finished(pool, ids["good"], "failed", {"timeout": 2, "connection": 5})
    await check()
    await finished(pool, ids["good"], "succeeded", {})
    await check()
    await harvest(pool, config, ["dead"])
    await check()
    # Abandoned: by its worker stopping, by a worker that died, by an operator's cancel.
    async with pool.acquire() as conn:
        stopped = await runs.insert_run(conn, ids["dead"])
        await runs.abandon_run(conn, stopped, "the worker stopped before the run ended")
        await runs.insert_run(conn, ids["good"])
    await check()
    assert await runs.abandon_orphaned_runs(pool) == 1
    await check()
    # A run whose figures are recorded after it was abandoned (they count, as in the sum).
    await save_conformance(pool, stopped, {"fetch_errors": {"http_5xx": 4}})
    await check()
    assert seen[-1][("dead", "http_5xx")] == seen[-2][("dead", "http_5xx")] + 4
    assert seen[-1][("good", "timeout")] == 5
    assert seen[-1][("good", "connection")] == 5

    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    scraped = await scrape(client)
    name = "trs_aggregator_upstream_fetch_errors_total"
    shown = {
        (dict(labels)["upstream"], dict(labels)["kind"]): n
        for (metric, labels), n in scraped.items()
        if metric == name
    }
    assert shown == seen[-1]

    await pool.execute("update upstreams set removed_at = now() where name = 'good'")
    await check(removed="good")
    assert {u for u, _ in seen[-1]} == {"dead"}
    await pool.execute("delete from upstreams where name = 'dead'")
    gone = "select count(*) from upstream_fetch_errors where upstream_id = $1"
    assert await pool.fetchval(gone, ids["dead"]) == 0
    await check(removed="dead")
    assert seen[-1] == {}


async def test_migration_fills_totals(
    pg_admin_dsn: str,
    migrations_copy: Path,  # noqa: F811 - the fixture
) -> None:
    """Runs recorded before migration 0027 are counted by the totals it fills, as the sum
    over them counts them."""
    later = [p for p in migrations_copy.glob("*.sql") if int(p.name[:4]) >= 27]
    kept = {p: p.read_text() for p in later}
    for p in later:
        p.unlink()
    async with database_copy(pg_admin_dsn, prefix="f") as dsn:
        await migrate(dsn, migrations_copy)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "insert into upstreams (name, url, kind, mode, priority) select 'u' || g, "
                "'https://u' || g || '.test/ga4gh/trs/v2', 'trs', 'mirror', g "
                "from generate_series(1, 3) g"
            )
            await conn.execute(
                "insert into harvest_runs (upstream_id, status, conformance) "
                "select (select min(id) from upstreams) + g % 3, "
                "(array['succeeded', 'failed', 'abandoned', 'partial'])[1 + g % 4], "
                "case when g % 5 = 0 then '{}' "
                "else jsonb_build_object('fetch_errors', "
                "jsonb_build_object('timeout', g, 'http_5xx', g % 7)) end "
                "from generate_series(1, 200) g"
            )
        finally:
            await conn.close()
        for p, text in kept.items():
            p.write_text(text)
        assert await migrate(dsn, migrations_copy)
        pool = await asyncpg.create_pool(dsn)
        try:
            totals = await counted(pool)
            assert totals == await summed(pool)
            assert len(totals) == 6
            assert totals[("u1", "timeout")] == sum(
                g for g in range(1, 201) if g % 3 == 0 and g % 5
            )
        finally:
            await pool.close()
