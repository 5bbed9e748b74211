"""Database outages: the API serves what it has and says 503 for the rest, resumes by itself;
a harvest losing its database ends with one line and loses nothing; ``run`` survives.

The database is taken away through a proxy (``tests/pgproxy.py``) standing for the network
path to PostgreSQL, so the server other tests share keeps running.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aggregator.api.cache import RESPONSE_CACHE
from aggregator.app import create_app
from aggregator.config import Config, DatabaseConfig, UpstreamConfig
from aggregator.db.upstreams import request_harvest
from aggregator.demo.registry import STATE, make_registry_app
from tests.pgproxy import PgProxy
from tests.support import catalogue, config_for, cwl_tool, eventually, harvest
from tests.test_cli import free_port, kill, run_cli, start_cli, stop, write_config

TRS = "/ga4gh/trs/v2"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def proxy(db_dsn: str) -> AsyncIterator[PgProxy]:
    """A proxy to the test's database."""
    p = await PgProxy(db_dsn).start()
    yield p
    await p.close()


async def test_api_serves_cached_answers_and_503_while_the_database_is_away(
    aiohttp_server: Any,
    aiohttp_client: Any,
    pool: asyncpg.Pool[Any],
    db_dsn: str,
    proxy: PgProxy,
) -> None:
    """Cached answers keep coming, marked stale; everything else is a 503 TRS Error with
    Retry-After; when the database returns the API answers again with no restart."""
    registry = await aiohttp_server(make_registry_app(catalogue([cwl_tool("t")])))
    assert (await harvest(pool, config_for(db_dsn, {"up": registry})))["up"].status == "succeeded"
    config = Config(
        database=DatabaseConfig(url=proxy.dsn(), pool_max=4),
        upstreams=(UpstreamConfig(name="up", url=str(registry.make_url(TRS))),),
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    cache = client.server.app[RESPONSE_CACHE]
    warm = await client.get(f"{TRS}/tools")
    assert warm.status == 200
    before = await warm.read()
    assert len(cache) == 1

    proxy.cut()

    async def listener_lost() -> bool:
        return cache.generation is None

    await eventually(listener_lost, what="losing the generation listener")
    r = await client.get(f"{TRS}/tools")
    assert r.status == 200 and await r.read() == before
    assert "database unavailable" in r.headers["X-Aggregator-Stale"]
    for path in (f"{TRS}/tools/t/versions", f"{TRS}/service-info", "/aggregator/v1/upstreams"):
        r = await client.get(path)
        assert r.status == 503, (path, await r.text())
        assert r.headers["Retry-After"].isdigit()
        assert r.headers["Content-Type"].startswith("application/json")
        assert (await r.json())["code"] == 503

    proxy.restore()

    async def answers() -> bool:
        r = await client.get(f"{TRS}/tools/t/versions")
        return r.status == 200

    await eventually(answers, what="answering again")
    r = await client.get("/aggregator/v1/upstreams")
    assert r.status == 200


async def test_harvest_losing_its_database_ends_with_one_line_and_loses_nothing(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, proxy: PgProxy, tmp_path: Path
) -> None:
    """The database goes away mid-run: the command ends with one error line and no traceback,
    what was published stays, and the next run marks the dead run abandoned and publishes."""

    @web.middleware
    async def cut_on_b(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.endswith("/tools/b/versions"):
            proxy.cut()
        return await handler(request)

    registry = await aiohttp_server(
        make_registry_app(catalogue([cwl_tool("a", marker="old")]), middlewares=[cut_on_b])
    )
    direct = config_for(db_dsn, {"up": registry})
    assert (await harvest(pool, direct))["up"].status == "succeeded"
    registry.app[STATE].catalogue = catalogue(
        [cwl_tool("a", marker="new"), cwl_tool("b", marker="new")]
    )
    config = write_config(tmp_path / "agg.toml", proxy.dsn(), {"up": registry})
    r = await run_cli(tmp_path, "harvest", "--config", str(config), timeout=60)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "Logging error" not in r.stderr, r.stderr
    ours = [line for line in r.stderr.splitlines() if line.startswith("trs-aggregator:")]
    assert len(ours) == 1 and "database cannot be reached" in ours[0], r.stderr
    for line in r.stderr.splitlines():
        if not line.startswith("trs-aggregator:"):
            orjson.loads(line)  # every log line is JSON

    content = await pool.fetch("select encode(content, 'escape') as c from file_contents")
    assert any("old" in c["c"] for c in content)
    assert await pool.fetchval("select count(*) from catalogue_tools") == 1
    proxy.restore()
    assert (await harvest(pool, direct))["up"].status == "succeeded"
    statuses = await pool.fetch("select status from harvest_runs order by id")
    assert [s["status"] for s in statuses] == ["succeeded", "abandoned", "succeeded"]
    assert await pool.fetchval("select count(*) from catalogue_tools") == 2


async def test_run_survives_an_outage(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, proxy: PgProxy, tmp_path: Path
) -> None:
    """``run`` keeps answering through an outage (cached answers, else 503), logs JSON lines
    only, and once the database is back serves and harvests again without a restart."""
    registry = await aiohttp_server(make_registry_app(catalogue([cwl_tool("a")])))
    port = free_port()
    config = write_config(tmp_path / "agg.toml", proxy.dsn(), {"up": registry}, port=port)
    log = tmp_path / "run.log"
    base = f"http://127.0.0.1:{port}"
    proc = await start_cli(tmp_path, log, "run", "--config", str(config))
    try:
        async with aiohttp.ClientSession() as session:

            async def status(path: str) -> int:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(base + path) as r:
                        await r.read()
                        return r.status
                return 0

            async def harvested() -> bool:
                if proc.returncode is not None:
                    pytest.fail(f"run exited {proc.returncode}:\n{log.read_text()}")
                return await status(f"{TRS}/tools/a") == 200

            await eventually(harvested, what="the first harvest being served")
            assert await status(f"{TRS}/tools/a") == 200  # now cached
            proxy.cut()

            async def degraded() -> bool:
                return await status("/aggregator/v1/upstreams") == 503

            await eventually(degraded, what="503 during the outage")
            assert await status(f"{TRS}/tools/a") == 200
            assert await status(f"{TRS}/tools/a/versions") == 503
            registry.app[STATE].catalogue = catalogue([cwl_tool("a"), cwl_tool("b")])
            proxy.restore()
            async with pool.acquire() as conn:
                await request_harvest(conn, ["up"], requested_by="test")

            async def harvested_again() -> bool:
                return await status(f"{TRS}/tools/b") == 200

            await eventually(harvested_again, what="a harvest after the outage", timeout=60)
        assert await stop(proc, signal.SIGTERM, timeout=15) == 0, log.read_text()
    finally:
        await kill(proc)
    text = log.read_text()
    assert "Logging error" not in text and "Traceback" not in text, text
    for line in text.splitlines():
        orjson.loads(line)
