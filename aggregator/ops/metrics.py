"""``/metrics`` (Prometheus text format through prometheus-client), ``/healthz`` and ``/readyz``.

Request counts and latencies are counted in each API process. With several processes on one
port, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory shared by them (before they
start): every process then writes its samples there and any process's scrape sums them all
(prometheus-client's multiprocess mode). Everything about the catalogue and the upstreams is
read from the database at scrape time, so any process gives the same answer.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Final

import asyncpg
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

from aggregator import __version__
from aggregator.api.cache import RESPONSE_CACHE, cache_key
from aggregator.api.middleware import with_final_status
from aggregator.config import Config
from aggregator.db import metrics as db_metrics
from aggregator.db.generation import catalogue_generation
from aggregator.db.migrate import applied_migrations, default_directory, load_migrations
from aggregator.db.upstreams import list_upstreams
from aggregator.errors import ConfigError
from aggregator.harvest.scheduler import trigger_for
from aggregator.keys import CONFIG, DB_POOL
from aggregator.ops.upstreams import stored_upstream

READY_TIMEOUT_S: Final = 2.0
_HANDLED_KEY: Final = web.RequestKey("trs_aggregator_handled", bool)

REQUESTS: Final = Counter(
    "trs_aggregator_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
LATENCY: Final = Histogram(
    "trs_aggregator_http_request_duration_seconds",
    "Time to answer HTTP requests, by route template.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CACHE: Final = Counter(
    "trs_aggregator_response_cache",
    "GET and HEAD requests answered from the response cache (hit) or rendered and cached (miss).",
    ["result"],
)

#: The response cache's hits, bound once (the warm path counts them on every request).
CACHE_HITS: Final = CACHE.labels("hit")


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request (outermost middleware)."""
    started = time.perf_counter()

    def record(status: int) -> None:
        route = _route(request)
        REQUESTS.labels(route, request.method, str(status)).inc()
        LATENCY.labels(route, request.method).observe(time.perf_counter() - started)
        if request.method in ("GET", "HEAD") and status in (200, 304):
            if not request.get(_HANDLED_KEY):
                CACHE.labels("hit").inc()
            elif request.app[RESPONSE_CACHE].get(cache_key(request)) is not None:
                CACHE.labels("miss").inc()

    return await with_final_status(request, handler, record)


@web.middleware
async def mark_handled(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Note that a handler ran (innermost middleware): the response cache did not answer."""
    request[_HANDLED_KEY] = True
    return await handler(request)


def _process_registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def _schedule_seconds(row: asyncpg.Record) -> float | None:
    trigger = trigger_for(stored_upstream(row))
    first = trigger.get_next_fire_time(None, row["now"])
    second = trigger.get_next_fire_time(first, first) if first else None
    if first is None or second is None:
        return None
    return float((second - first).total_seconds())


async def _database_registry(pool: asyncpg.Pool[Any], config: Config) -> CollectorRegistry:
    """Gauges read from the database now: the catalogue and every upstream."""
    registry = CollectorRegistry()
    generation, tool_count = await db_metrics.catalogue_size(pool)
    Gauge("trs_aggregator_catalogue_generation", "Catalogue generation.", registry=registry).set(
        generation
    )
    Gauge("trs_aggregator_catalogue_tools", "Merged tools the API serves.", registry=registry).set(
        tool_count
    )
    labels = ["upstream"]
    last_status = Gauge(
        "trs_aggregator_upstream_last_run_status",
        "1 for the status of each upstream's last run.",
        ["upstream", "status"],
        registry=registry,
    )
    last_success = Gauge(
        "trs_aggregator_upstream_last_success_timestamp_seconds",
        "When each upstream's last successful (or partial) run finished.",
        labels,
        registry=registry,
    )
    duration = Gauge(
        "trs_aggregator_upstream_last_run_duration_seconds",
        "How long each upstream's last finished run took.",
        labels,
        registry=registry,
    )
    tools = Gauge(
        "trs_aggregator_upstream_tools",
        "Each upstream's records by state (live, missing, stale).",
        ["upstream", "state"],
        registry=registry,
    )
    circuit = Gauge(
        "trs_aggregator_upstream_circuit_open",
        "1 while an upstream's circuit breaker is open.",
        labels,
        registry=registry,
    )
    failures = Gauge(
        "trs_aggregator_upstream_consecutive_failures",
        "Failed runs in a row.",
        labels,
        registry=registry,
    )
    paused = Gauge(
        "trs_aggregator_upstream_paused",
        "1 while an upstream is paused.",
        labels,
        registry=registry,
    )
    schedule = Gauge(
        "trs_aggregator_upstream_schedule_seconds",
        "Time between an upstream's scheduled harvests.",
        labels,
        registry=registry,
    )
    errors = Counter(
        "trs_aggregator_upstream_fetch_errors",
        "Errors recorded by an upstream's harvest runs, by kind.",
        ["upstream", "kind"],
        registry=registry,
    )
    harvest = config.harvest
    rows = await list_upstreams(
        pool, tombstone_after=harvest.tombstone_after, stale_after_s=harvest.stale_after_s
    )
    durations = await db_metrics.last_run_durations(pool)
    for r in rows:
        if r["removed_at"] is not None:
            continue
        name = r["name"]
        if r["last_run_status"] is not None:
            last_status.labels(name, r["last_run_status"]).set(1)
        if r["last_success_finished_at"] is not None:
            last_success.labels(name).set(r["last_success_finished_at"].timestamp())
        if name in durations:
            duration.labels(name).set(durations[name])
        tools.labels(name, "live").set(r["tools"] - r["tools_tombstoned"])
        tools.labels(name, "missing").set(r["tools_tombstoned"])
        tools.labels(name, "stale").set(r["tools_stale"])
        is_open = r["circuit_open_until"] is not None and r["circuit_open_until"] > r["now"]
        circuit.labels(name).set(1 if is_open else 0)
        failures.labels(name).set(r["consecutive_failures"])
        paused.labels(name).set(1 if r["paused"] else 0)
    for row in await db_metrics.scheduled_upstreams(pool):
        try:
            seconds = _schedule_seconds(row)
        except ConfigError:  # a row no configuration accepts any more: no schedule to show
            continue
        if seconds is not None:
            schedule.labels(row["name"]).set(seconds)
    for name, kind, n in await db_metrics.fetch_error_counts(pool):
        errors.labels(name, kind).inc(n)
    return registry


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: this process's (or all processes') requests, and the database's state."""
    body = generate_latest(_process_registry())
    try:
        body += generate_latest(await _database_registry(request.app[DB_POOL], request.app[CONFIG]))
        up = 1
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        up = 0
    database = CollectorRegistry()
    Gauge(
        "trs_aggregator_database_up", "1 when the database answered this scrape.", registry=database
    ).set(up)
    body += generate_latest(database)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def healthz(_request: web.Request) -> web.Response:
    """GET /healthz: the process answers (the database is not consulted)."""
    return _json(200, {"status": "ok", "version": __version__, "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: 200 when the database answers, is fully migrated and the catalogue is
    loaded; else 503 with the reasons."""
    checks: dict[str, str] = {}
    reasons: list[str] = []
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with request.app[DB_POOL].acquire() as conn:
                # Only an answer says the database is reachable: a pooled connection the
                # server has just closed is handed out before anyone notices.
                applied = await applied_migrations(conn)
                checks["database"] = "ok"
                missing = sorted({m.name for m in load_migrations(default_directory())} - applied)
                checks["schema"] = "ok" if not missing else "missing " + ", ".join(missing)
                if missing:
                    reasons.append(f"the database lacks migrations {', '.join(missing)}")
                generation = request.app[RESPONSE_CACHE].generation
                if generation is None:
                    generation = await catalogue_generation(conn)
                checks["catalogue"] = f"generation {generation}"
    except Exception as e:  # noqa: BLE001 - whatever went wrong, this process is not ready
        checks.setdefault("database", "unreachable")
        reasons.append(f"the database is unreachable: {type(e).__name__}: {e}".rstrip(": "))
    if reasons:
        message = "; ".join(reasons)
        return _json(
            503,
            {
                "code": 503,
                "message": message,
                "status": "not ready",
                "checks": checks,
                "reasons": reasons,
            },
        )
    return _json(200, {"status": "ready", "checks": checks})


def add_routes(app: web.Application) -> None:
    """Mount /metrics, /healthz and /readyz."""
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
