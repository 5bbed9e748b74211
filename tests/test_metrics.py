"""/metrics parsed with Prometheus' own parser, /healthz and /readyz, across processes too."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from aggregator.app import create_app
from aggregator.config import Config, DatabaseConfig, HarvestConfig, UpstreamConfig
from aggregator.demo.registry import make_registry_app
from tests.support import catalogue, cwl_tool, database_copy, fetch, harvest
from tests.test_cli import child_env, free_port, kill, wait_for_json, write_config
from tests.test_upstreams_api import down

TRS = "/ga4gh/trs/v2"


async def scrape(client: TestClient[Any, Any]) -> dict[tuple[str, frozenset[Any]], float]:
    """Every sample of /metrics by (name, labels), read by prometheus_client's parser."""
    r = await client.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    return samples(await r.text())


def samples(text: str) -> dict[tuple[str, frozenset[Any]], float]:
    """The samples of a Prometheus text document."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(got: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    """One sample's value; 0 when absent."""
    return got.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_requests_cache_and_upstreams(
    db_dsn: str, pool: asyncpg.Pool[Any], aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """Requests by route template and status with latencies, cache hits and misses, the
    catalogue, and per upstream its last status, success time, records, circuit and fetch
    errors by kind."""
    good = await aiohttp_server(make_registry_app(catalogue([cwl_tool("t1")])))
    dead = await aiohttp_server(make_registry_app(catalogue([]), middlewares=[down]))
    ups = tuple(
        UpstreamConfig(name=n, url=str(s.make_url(TRS)), retries=0, timeout_s=2)
        for n, s in (("good", good), ("dead", dead))
    )
    config = Config(database=DatabaseConfig(url=db_dsn), upstreams=ups)
    await harvest(pool, config)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    before = await scrape(client)
    route = f"{TRS}/tools/{{id}}"
    for _ in range(3):
        assert (await client.get(f"{TRS}/tools/t1")).status == 200
    assert (await client.get(f"{TRS}/tools/nope")).status == 404
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "trs_aggregator_http_requests_total"
    assert delta(requests, route=route, method="GET", status="200") == 3
    assert delta(requests, route=route, method="GET", status="404") == 1
    latency = "trs_aggregator_http_request_duration_seconds_count"
    assert delta(latency, route=route, method="GET") == 4
    assert delta("trs_aggregator_response_cache_total", result="miss") >= 1
    assert delta("trs_aggregator_response_cache_total", result="hit") >= 2
    assert value(after, "trs_aggregator_catalogue_tools") == 1
    assert value(after, "trs_aggregator_catalogue_generation") >= 1
    assert value(after, "trs_aggregator_database_up") == 1
    status = "trs_aggregator_upstream_last_run_status"
    assert value(after, status, upstream="good", status="succeeded") == 1
    assert value(after, status, upstream="dead", status="failed") == 1
    assert (
        value(after, "trs_aggregator_upstream_last_success_timestamp_seconds", upstream="good") > 0
    )
    assert value(after, "trs_aggregator_upstream_tools", upstream="good", state="live") == 1
    assert value(after, "trs_aggregator_upstream_circuit_open", upstream="dead") == 0
    assert (
        value(after, "trs_aggregator_upstream_fetch_errors_total", upstream="dead", kind="http_5xx")
        >= 1
    )
    assert value(after, "trs_aggregator_upstream_schedule_seconds", upstream="good") == 6 * 3600
    assert value(after, "trs_aggregator_upstream_last_run_duration_seconds", upstream="good") > 0


async def test_metrics_add_up_across_processes(db_dsn: str, tmp_path: Path) -> None:
    """Two serve processes sharing PROMETHEUS_MULTIPROC_DIR: a scrape of either counts the
    requests both answered."""
    shared = tmp_path / "prom"
    shared.mkdir()
    procs: list[asyncio.subprocess.Process] = []
    urls = []
    with contextlib.ExitStack() as files:
        await _serve_two(db_dsn, tmp_path, shared, procs, urls, files)


async def _serve_two(  # noqa: PLR0917 - the fixtures it needs
    db_dsn: str, tmp_path: Path, shared: Path, procs: list[Any], urls: list[Any], files: Any
) -> None:
    try:
        for i in range(2):
            port = free_port()
            cfg = write_config(tmp_path / f"serve{i}.toml", db_dsn, {}, port=port)
            log = tmp_path / f"serve{i}.log"
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "aggregator",
                    "serve",
                    "--config",
                    str(cfg),
                    env=child_env(PROMETHEUS_MULTIPROC_DIR=str(shared)),
                    stdout=files.enter_context(log.open("wb")),
                    stderr=asyncio.subprocess.STDOUT,
                )
            )
            urls.append((f"http://127.0.0.1:{port}", log))
        async with aiohttp.ClientSession() as session:
            for (url, log), proc in zip(urls, procs, strict=True):
                await wait_for_json(session, f"{url}/healthz", proc, log)
            for url, _ in urls:
                for _ in range(3):
                    async with session.get(f"{url}/healthz") as r:
                        assert r.status == 200
            for url, _ in urls:
                async with session.get(f"{url}/metrics") as r:
                    got = samples(await r.text())
                count = value(
                    got,
                    "trs_aggregator_http_requests_total",
                    route="/healthz",
                    method="GET",
                    status="200",
                )
                assert count >= 8  # 2 x (3 + at least one readiness poll)
    finally:
        for proc in procs:
            await kill(proc)


async def test_readiness_follows_the_database(
    pg_admin_dsn: str, template_db: str, aiohttp_client: Any
) -> None:
    """/readyz is 200 with a reachable, migrated database and 503 (with the reason) while the
    database refuses connections; /healthz stays 200 throughout."""
    async with database_copy(pg_admin_dsn, template_db) as dsn:
        name = urlsplit(dsn).path.lstrip("/")
        config = Config(database=DatabaseConfig(url=dsn, pool_max=2), harvest=HarvestConfig())
        client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
        r = await client.get("/readyz")
        assert r.status == 200, await r.text()
        body = await r.json()
        assert body["status"] == "ready" and body["checks"]["schema"] == "ok"
        await fetch(pg_admin_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await fetch(
            pg_admin_dsn,
            f"select pg_terminate_backend(pid) from pg_stat_activity where datname = '{name}'",
        )
        try:
            r = await client.get("/readyz")
            assert r.status == 503
            body = await r.json()
            assert body["code"] == 503 and "unreachable" in body["message"]
            assert body["checks"]["database"] == "unreachable"
            assert (await client.get("/healthz")).status == 200
        finally:
            await fetch(pg_admin_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        r = await client.get("/readyz")
        assert r.status == 200, await r.text()
        with contextlib.suppress(Exception):
            await client.close()
