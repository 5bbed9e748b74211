"""Staging in batches written in the background: every tool arrives, and a batch that cannot be
written fails the run with nothing published and nothing left staged."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from aggregator.config import Config, DatabaseConfig, UpstreamConfig
from aggregator.demo.registry import make_registry_app
from aggregator.harvest import crawl
from aggregator.harvest.crawl import RunOutcome
from aggregator.harvest.runner import harvest_upstreams, make_session
from tests.support import catalogue, cwl_tool

TRS = "/ga4gh/trs/v2"
IDS = [f"t{i:02d}" for i in range(14)]

#: A staged tool PostgreSQL refuses to store (raised from inside the batch's COPY).
REFUSE_T09 = """
create function refuse_t09() returns trigger language plpgsql as $$
begin
    if new.external_id = 't09' then
        raise exception 'staging refused t09';
    end if;
    return new;
end $$;
create trigger refuse_t09 before insert on staged_tools
    for each row execute function refuse_t09();
"""


async def harvest_once(pool: asyncpg.Pool[Any], dsn: str, server: TestServer) -> RunOutcome:
    up = UpstreamConfig(
        name="up", url=str(server.make_url(TRS)), retries=0, timeout_s=5, concurrency=4
    )
    config = Config(database=DatabaseConfig(url=dsn, pool_max=6), upstreams=(up,))
    async with make_session(config) as session:
        (outcome,) = await harvest_upstreams(pool, session, config)
    return outcome


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of three tools: a harvest of 14 writes several of them in the background."""
    monkeypatch.setattr(crawl, "STAGE_BATCH", 3)


@pytest.mark.usefixtures("small_batches")
async def test_every_batch_is_staged_and_published(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    server = await aiohttp_server(make_registry_app(catalogue([cwl_tool(i) for i in IDS])))
    first = await harvest_once(pool, db_dsn, server)
    assert first.status == "succeeded", first.error
    assert first.counts.tools_new == len(IDS)
    stored = await pool.fetch("select external_id from upstream_tools order by 1")
    assert [r["external_id"] for r in stored] == IDS
    files = await pool.fetchval("select count(*) from upstream_files")
    assert files >= len(IDS)
    again = await harvest_once(pool, db_dsn, server)
    assert again.status == "succeeded", again.error
    assert again.counts.tools_unchanged == len(IDS)
    assert await pool.fetchval("select count(*) from staged_tools") == 0


@pytest.mark.usefixtures("small_batches")
async def test_a_batch_that_cannot_be_written_fails_the_run(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    await pool.execute(REFUSE_T09)
    server = await aiohttp_server(make_registry_app(catalogue([cwl_tool(i) for i in IDS])))
    outcome = await harvest_once(pool, db_dsn, server)
    assert outcome.status == "failed"
    assert "staging refused t09" in (outcome.error or "")
    assert outcome.generation is None
    assert await pool.fetchval("select count(*) from upstream_tools") == 0
    # Nothing was written after the run ended: no batch outlives it.
    assert await pool.fetchval("select count(*) from staged_tools") == 0
    assert await pool.fetchval("select count(*) from staged_files") == 0
