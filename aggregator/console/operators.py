"""The operators' pages: the upstreams grid, one upstream's run history, one run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

import asyncpg
from aiohttp import web

from aggregator.api.paging import MAX_BIGINT, query_int
from aggregator.api.upstreams import state_of
from aggregator.console import chart
from aggregator.console.render import LIVE_TTL_S, Page, serve_page
from aggregator.db import console as db_console
from aggregator.db import runs as db_runs
from aggregator.db import upstreams as db_upstreams
from aggregator.errors import BadRequest, NotFound
from aggregator.keys import CONFIG

RUNS_PER_PAGE: Final = 25
CHART_RUNS: Final = 60
#: What each state means, shown beside the grid.
STATES: Final = {
    "healthy": "the last run succeeded and every record was confirmed recently",
    "stale": "no failure, but some records were not confirmed within stale_after",
    "failing": "the last run failed; scheduled runs go on",
    "circuit_open": "runs failed repeatedly; scheduled runs pause until the circuit closes",
    "running": "a run is in progress",
    "never_harvested": "no run has succeeded yet",
}


def console_state(row: Mapping[str, Any], stale_after_s: float) -> str:
    """The state shown for an upstream: the API's, refined with ``running`` and ``stale``."""
    if row["last_run_status"] == "running":
        return "running"
    state = state_of(row)
    if state == "healthy":
        finished = row["last_success_finished_at"]
        old = finished is not None and (row["now"] - finished).total_seconds() > stale_after_s
        if old or row["tools_stale"]:
            return "stale"
    return state


async def _upstreams(
    conn: Any, request: web.Request, name: str | None = None
) -> list[dict[str, Any]]:
    harvest = request.app[CONFIG].harvest
    rows = await db_upstreams.list_upstreams(
        conn,
        tombstone_after=harvest.tombstone_after,
        stale_after_s=harvest.stale_after_s,
        name=name,
    )
    return [{"row": r, "state": console_state(r, harvest.stale_after_s)} for r in rows]


async def upstreams_page(request: web.Request) -> web.Response:
    """GET /upstreams: every upstream with its state, last and next run, counts."""

    async def build(conn: Any) -> Page:
        items = await _upstreams(conn, request)
        counts: dict[str, int] = {}
        for item in items:
            counts[item["state"]] = counts.get(item["state"], 0) + 1
        return Page(
            "upstreams.html",
            {"title": "Upstreams", "items": items, "states": STATES, "state_counts": counts},
            expires_in_s=LIVE_TTL_S,
        )

    return await serve_page(request, build)


async def upstream_page(request: web.Request) -> web.Response:
    """GET /upstreams/{name}: state, run history chart, run counts, runs paged by ``before``."""
    name = request.match_info["name"]

    async def build(conn: Any) -> Page:
        before = query_int(request.query, "before", None, low=1, high=MAX_BIGINT)
        items = await _upstreams(conn, request, name)
        if not items:
            raise NotFound(f"no upstream named {name!r}")
        upstream_id = items[0]["row"]["id"]
        runs = await db_runs.list_runs(conn, upstream_id, limit=RUNS_PER_PAGE + 1, before=before)
        older = None
        if len(runs) > RUNS_PER_PAGE:
            runs = runs[:RUNS_PER_PAGE]
            older = runs[-1]["id"]
        series = await db_console.run_series(conn, upstream_id, limit=CHART_RUNS)
        return Page(
            "upstream.html",
            {
                "title": f"Upstream {name}",
                "item": items[0],
                "u": items[0]["row"],
                "runs": runs,
                "older": older,
                "before": before,
                "chart": chart.layout(series),
                "status_counts": await db_console.run_status_counts(conn, upstream_id),
                "states": STATES,
                "duration": _duration,
            },
            expires_in_s=LIVE_TTL_S,
        )

    return await serve_page(request, build)


def _duration(run: asyncpg.Record) -> str:
    if run["finished_at"] is None:
        return "running"
    seconds = (run["finished_at"] - run["started_at"]).total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else str(dt.timedelta(seconds=round(seconds)))


async def run_page(request: web.Request) -> web.Response:
    """GET /upstreams/{name}/runs/{run_id}: one run's counts, error and error samples."""
    name = request.match_info["name"]
    raw = request.match_info["run_id"]

    async def build(conn: Any) -> Page:
        if not raw.isdigit():
            raise BadRequest(f"a run id is a whole number, not {raw!r}")
        upstream_id = await db_upstreams.fetch_upstream_id(conn, name)
        if upstream_id is None:
            raise NotFound(f"no upstream named {name!r}")
        run = await db_console.fetch_run(conn, upstream_id, int(raw))
        if run is None:
            raise NotFound(f"upstream {name!r} has no run {raw}")
        samples = run["error_samples"] if isinstance(run["error_samples"], list) else []
        return Page(
            "run.html",
            {
                "title": f"Run {run['id']} of {name}",
                "name": name,
                "run": run,
                "samples": [str(s) for s in samples],
                "duration": _duration(run),
                "counts": [
                    (label, run[column])
                    for column, label in (
                        ("tools_seen", "tools seen"),
                        ("tools_new", "new"),
                        ("tools_changed", "changed"),
                        ("tools_unchanged", "unchanged"),
                        ("tools_tombstoned", "missing from the listing"),
                        ("tools_fetched", "details fetched"),
                        ("versions_seen", "versions"),
                        ("files_stored", "files stored"),
                        ("requests", "requests"),
                        ("not_modified", "answered 304"),
                        ("bytes_fetched", "bytes fetched"),
                        ("errors", "errors"),
                    )
                ],
            },
            expires_in_s=LIVE_TTL_S,
        )

    return await serve_page(request, build)
