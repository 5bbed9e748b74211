"""``/aggregator/v1/upstreams``: each upstream's health, last runs, counts and run history."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

import asyncpg
import orjson
from aiohttp import web
from yarl import URL

from aggregator import redact
from aggregator.api.paging import MAX_BIGINT, query_int
from aggregator.db import runs as db_runs
from aggregator.db import upstreams as db_upstreams
from aggregator.errors import NotFound
from aggregator.keys import CONFIG, DB_POOL
from aggregator.trs.conformance import CATEGORIES, trend

PREFIX: Final = "/aggregator/v1/upstreams"
DEFAULT_RUNS: Final = 20
MAX_RUNS: Final = 100


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def state_of(row: Mapping[str, Any]) -> str:
    """``circuit_open``, ``failing``, ``removed``, ``paused``, ``healthy``, or
    ``never_harvested``."""
    if row["removed_at"] is not None:
        return "removed"
    if row["paused"]:
        return "paused"
    if row["circuit_open_until"] is not None and row["circuit_open_until"] > row["now"]:
        return "circuit_open"
    if row["consecutive_failures"]:
        return "failing"
    return "healthy" if row["last_success_id"] is not None else "never_harvested"


def upstream_json(row: Mapping[str, Any], stale_after_s: float) -> dict[str, Any]:
    """One upstream as the API shows it."""
    last_run = None
    if row["last_run_id"] is not None:
        last_run = {
            "id": row["last_run_id"],
            "status": row["last_run_status"],
            "started_at": _iso(row["last_run_started_at"]),
            "finished_at": _iso(row["last_run_finished_at"]),
            "error": _masked(row["last_run_error"]),
        }
    last_success = None
    if row["last_success_id"] is not None:
        last_success = {
            "id": row["last_success_id"],
            "started_at": _iso(row["last_success_started_at"]),
            "finished_at": _iso(row["last_success_finished_at"]),
        }
    return {
        "name": row["name"],
        "url": redact.text(row["url"]),
        "kind": row["kind"],
        "mode": row["mode"],
        "priority": row["priority"],
        "schedule": row["schedule"],
        "enabled": row["enabled"],
        "source": row["source"],
        "state": state_of(row),
        "consecutive_failures": row["consecutive_failures"],
        "circuit_open_until": _iso(row["circuit_open_until"]),
        "next_harvest_at": _iso(row["next_harvest_at"]),
        "pending_requests": row["pending_requests"],
        "last_run": last_run,
        "last_success": last_success,
        "counts": {
            "tools": row["tools"],
            "tools_missing": row["tools_tombstoned"],
            "tools_stale": row["tools_stale"],
            "versions": row["versions"],
        },
        "stale_after_s": stale_after_s,
        "runs_url": f"{PREFIX}/{row['name']}/runs",
        "paused": row["paused"],
        "paused_at": _iso(row["paused_at"]),
        "paused_by": row["paused_by"],
        "removed_at": _iso(row["removed_at"]),
        "conformance": conformance_json(row["conformance_runs"]),
    }


def conformance_json(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The last run's conformance figures, the last few runs' figures and their trend."""
    return {
        "last": runs[0] if runs else None,
        "recent": [{k: r.get(k, 0) for k in ("run_id", *CATEGORIES)} for r in runs],
        "trend": trend(runs),
    }


def run_json(row: asyncpg.Record) -> dict[str, Any]:
    """One run record as the API shows it."""
    finished = row["finished_at"]
    return {
        "id": row["id"],
        "status": row["status"],
        "trigger": row["trigger"],
        "worker": row["worker"],
        "started_at": _iso(row["started_at"]),
        "finished_at": _iso(finished),
        "duration_s": round((finished - row["started_at"]).total_seconds(), 3)
        if finished
        else None,
        "listing_complete": row["listing_complete"],
        "counts": {
            k: row[k]
            for k in (
                "tools_seen",
                "tools_new",
                "tools_changed",
                "tools_unchanged",
                "tools_tombstoned",
                "tools_fetched",
                "versions_seen",
                "files_stored",
                "requests",
                "not_modified",
                "bytes_fetched",
                "errors",
            )
        },
        "error": _masked(row["error"]),
        "error_samples": redact.deep(row["error_samples"]),
        "file_hosts": redact.deep(row["file_hosts"]),
    }


def _masked(value: str | None) -> str | None:
    return None if value is None else redact.text(value)


def _json(body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


async def _rows(request: web.Request, name: str | None = None) -> list[dict[str, Any]]:
    harvest = request.app[CONFIG].harvest
    return await db_upstreams.list_upstreams(
        request.app[DB_POOL],
        tombstone_after=harvest.tombstone_after,
        stale_after_s=harvest.stale_after_s,
        name=name,
    )


async def list_upstreams(request: web.Request) -> web.Response:
    """GET /aggregator/v1/upstreams: every upstream with its state and last runs."""
    stale = request.app[CONFIG].harvest.stale_after_s
    return _json([upstream_json(r, stale) for r in await _rows(request)])


async def get_upstream(request: web.Request) -> web.Response:
    """GET /aggregator/v1/upstreams/{name}."""
    name = request.match_info["name"]
    rows = await _rows(request, name)
    if not rows:
        raise NotFound(f"no upstream named {name!r}")
    return _json(upstream_json(rows[0], request.app[CONFIG].harvest.stale_after_s))


async def list_runs(request: web.Request) -> web.Response:
    """GET /aggregator/v1/upstreams/{name}/runs: run history, newest first.

    ``limit`` (1-100, default 20) runs older than the run ``before`` (a run id); the
    ``next_page`` header links to the following page.
    """
    name = request.match_info["name"]
    pool = request.app[DB_POOL]
    upstream_id = await db_upstreams.fetch_upstream_id(pool, name)
    if upstream_id is None:
        raise NotFound(f"no upstream named {name!r}")
    limit = query_int(request.query, "limit", DEFAULT_RUNS, low=1, high=MAX_RUNS)
    before = query_int(request.query, "before", None, low=1, high=MAX_BIGINT)
    rows = await db_runs.list_runs(pool, upstream_id, limit=limit + 1, before=before)
    headers = {}
    if len(rows) > limit:
        rows = rows[:limit]
        next_url = URL(str(request.url)).update_query(
            {"limit": str(limit), "before": str(rows[-1]["id"])}
        )
        headers["next_page"] = str(next_url)
    return _json([run_json(r) for r in rows], headers)


def add_routes(app: web.Application) -> None:
    """Mount the upstream endpoints."""
    app.router.add_get(PREFIX, list_upstreams)
    app.router.add_get(PREFIX + "/{name}", get_upstream)
    app.router.add_get(PREFIX + "/{name}/runs", list_runs)
