"""Being a polite client of a fragile upstream: circuit breaker, rate limit, time budget."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from aggregator.config import Config, DatabaseConfig, HarvestConfig, UpstreamConfig
from aggregator.demo.registry import REQUESTS, STATE, make_registry_app
from aggregator.harvest.runner import Harvester, make_session
from tests.support import catalogue, cwl_tool, eventually, harvest

TRS = "/ga4gh/trs/v2"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def switchable(state: dict[str, Any]) -> Any:
    """A registry middleware answering state["status"] to paths containing state["where"], and
    delaying by state["delay"] paths ending with state["delay_where"]."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        state.setdefault("times", []).append(time.monotonic())
        if state.get("delay") and request.path.endswith(state.get("delay_where", "")):
            await asyncio.sleep(state["delay"])
        if state.get("status") and state.get("where", "") in request.path:
            return web.json_response(
                {"code": state["status"], "message": "down"}, status=state["status"]
            )
        return await handler(request)

    return middleware


def config_of(dsn: str, *upstreams: UpstreamConfig, **harvest_options: Any) -> Config:
    """A config for *upstreams* with harvest settings *harvest_options*."""
    return Config(
        database=DatabaseConfig(url=dsn, pool_max=6),
        harvest=HarvestConfig(**harvest_options),
        upstreams=upstreams,
    )


def fast(name: str, url: str, **options: Any) -> UpstreamConfig:
    """An upstream that retries once, quickly."""
    return UpstreamConfig(
        name=name, url=url, **{"retries": 1, "backoff_s": 0.01, "timeout_s": 2.0, **options}
    )


async def test_circuit_opens_after_failed_runs_and_a_probe_closes_it(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """Two failed scheduled runs open the circuit: the next tick sends nothing; after the pause
    a tick probes the upstream again, and a success closes the circuit."""
    state: dict[str, Any] = {"status": 503}
    server = await aiohttp_server(
        make_registry_app(catalogue([cwl_tool("a")]), middlewares=[switchable(state)])
    )
    up = fast("up", str(server.make_url(TRS)))
    config = config_of(db_dsn, up, circuit_failures=2, circuit_open_for="1s")
    async with make_session(config) as session:
        harvester = Harvester(pool, session, config)
        outcomes = [await harvester.harvest(up, trigger="scheduled") for _ in range(2)]
        assert [o.status for o in outcomes] == ["failed", "failed"]
        row = await pool.fetchrow("select * from upstreams where name = 'up'")
        assert row["consecutive_failures"] == 2 and row["circuit_open_until"] is not None
        sent = len(server.app[REQUESTS])
        skipped = await harvester.harvest(up, trigger="scheduled")
        assert skipped.status == "skipped" and "circuit open" in (skipped.error or "")
        assert len(server.app[REQUESTS]) == sent, "a request reached an open circuit"

        state["status"] = None

        async def probed() -> Any:  # the pause is 1s
            outcome = await harvester.harvest(up, trigger="scheduled")
            return outcome if outcome.status != "skipped" else None

        probe = await eventually(probed, what="a probe after the pause", interval=0.1)
        assert probe.status == "succeeded"
    row = await pool.fetchrow("select * from upstreams where name = 'up'")
    assert row["consecutive_failures"] == 0 and row["circuit_open_until"] is None


async def test_a_dead_upstream_stops_the_run_instead_of_being_hammered(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """When requests keep failing after their retries, the run stops sending after
    abort_after_failures of them and its record says so."""
    state: dict[str, Any] = {"status": 503, "where": "/versions"}
    server = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool(f"t{i}") for i in range(20)]), middlewares=[switchable(state)]
        )
    )
    up = fast("up", str(server.make_url(TRS)), abort_after_failures=3, concurrency=2)
    outcome = (await harvest(pool, config_of(db_dsn, up)))["up"]
    assert outcome.status == "failed"
    assert "stopped after 3 requests in a row failed" in (outcome.error or "")
    tried = [r for r in server.app[REQUESTS] if r.endswith("/versions > 503")]
    assert len(tried) <= (3 + up.concurrency) * (up.retries + 1) < 20 * (up.retries + 1)
    assert await pool.fetchval("select consecutive_failures from upstreams where name = 'up'") == 1


async def test_rate_limit_spaces_requests_to_one_upstream_only(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """rate_limit caps requests per second to its upstream; another upstream runs at full speed."""
    limited_state: dict[str, Any] = {}
    free_state: dict[str, Any] = {}
    limited = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool(f"l{i}") for i in range(2)]),
            middlewares=[switchable(limited_state)],
        )
    )
    free = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool(f"f{i}") for i in range(2)]), middlewares=[switchable(free_state)]
        )
    )
    config = config_of(
        db_dsn,
        fast("limited", str(limited.make_url(TRS)), rate_limit=5, concurrency=4),
        fast("free", str(free.make_url(TRS)), concurrency=4),
    )
    started = time.monotonic()
    outcomes = await harvest(pool, config)
    assert {o.status for o in outcomes.values()} == {"succeeded"}
    # The n-th request to the limited upstream cannot leave before (n-1)/rate after the start,
    # and arrives later still: a lower bound that load cannot break.
    times = limited_state["times"]
    assert times[-1] - started >= (len(times) - 1) / 5 * 0.95
    # The free upstream's concurrent requests come closer together than the limit allows.
    free_times = sorted(free_state["times"])
    assert min(b - a for a, b in itertools.pairwise(free_times)) < 1 / 5 / 2


async def test_time_budget_publishes_what_was_fetched_and_keeps_the_rest(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """A run out of time after its listing stops fetching: tools not reached keep what was
    published, none is tombstoned, and the run says how many were not refreshed."""
    state: dict[str, Any] = {}
    server = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool(f"t{i}", marker="old") for i in range(6)]),
            middlewares=[switchable(state)],
        )
    )
    up = fast("up", str(server.make_url(TRS)), concurrency=1)
    assert (await harvest(pool, config_of(db_dsn, up)))["up"].status == "succeeded"
    server.app[STATE].catalogue = catalogue([cwl_tool(f"t{i}", marker="new") for i in range(6)])
    # Each tool takes 2s; the budget of 3s covers the listing and one or two tools, never all
    # six (12s), however loaded the machine.
    state.update(delay=2, delay_where="/versions")
    started = time.monotonic()
    outcome = (
        await harvest(
            pool, config_of(db_dsn, dataclasses.replace(up, run_budget_s=3, timeout_s=10))
        )
    )["up"]
    assert time.monotonic() - started < 10
    assert outcome.status == "partial"
    assert outcome.counts.tools_seen == 6 and outcome.counts.tools_tombstoned == 0
    assert 1 <= outcome.counts.tools_fetched <= 2
    assert any(
        "time budget of 3s ran out" in e and "not refreshed" in e
        for e in outcome.counts.error_samples
    )
    contents = await pool.fetch(
        """select convert_from(c.content, 'UTF8') as text from upstream_files f
           join file_contents c on c.sha256 = f.sha256
           where f.file_type = 'PRIMARY_DESCRIPTOR'"""
    )
    new = sum("new" in r["text"] for r in contents)
    assert new == outcome.counts.tools_fetched and len(contents) == 6


async def test_time_budget_running_out_during_the_listing_publishes_nothing(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """A listing unfinished at twice the budget fails the run; nothing is published."""
    state: dict[str, Any] = {"delay": 1.0, "delay_where": "/tools"}
    server = await aiohttp_server(
        make_registry_app(catalogue([cwl_tool("a")]), middlewares=[switchable(state)])
    )
    up = fast("up", str(server.make_url(TRS)), run_budget_s=0.3)
    outcome = (await harvest(pool, config_of(db_dsn, up)))["up"]
    assert outcome.status == "failed"
    assert "ran out before the listing finished" in (outcome.error or "")
    assert await pool.fetchval("select count(*) from upstream_tools") == 0
