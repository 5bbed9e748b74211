"""``/aggregator/v1/tools/{id}/provenance``: a merged tool's members, evidence and conflicts."""

from __future__ import annotations

import datetime as dt
from typing import Any, Final
from urllib.parse import quote

import orjson
from aiohttp import web

from aggregator.db import catalogue as db
from aggregator.db.merge import qualified_id
from aggregator.errors import NotFound
from aggregator.keys import CONFIG, DB_POOL
from aggregator.trs.model import CatalogueTool, Source, VersionSource

PREFIX: Final = "/aggregator/v1"


def stale_after_s(request: web.Request) -> float:
    """Seconds after its last confirmation that a record counts as stale."""
    return request.app[CONFIG].harvest.stale_after_s


def provenance(
    tool: CatalogueTool,
    *,
    requested: str,
    now: dt.datetime,
    stale_after: float,
    origins: dict[int, Any] | None = None,
) -> dict[str, Any]:
    """The full provenance record of *tool*."""
    names = {s.member_id: qualified_id(s.upstream, s.upstream_id) for s in tool.sources}

    def member(s: Source) -> dict[str, Any]:
        return {
            "qualified_id": names[s.member_id],
            "upstream": s.upstream,
            "upstream_id": s.upstream_id,
            "upstream_url": f"{s.upstream_base}/tools/{quote(s.upstream_id, safe='')}",
            "primary": s is tool.primary,
            "first_seen": s.first_seen.isoformat(),
            "last_confirmed": s.last_confirmed.isoformat(),
            "stale": (now - s.last_confirmed).total_seconds() > stale_after,
            "missing_since": s.tombstoned_at.isoformat() if s.tombstoned_at else None,
            "origin": (origins or {}).get(s.member_id),
            "joined_by": [{**j, "with": names.get(j["with"], str(j["with"]))} for j in s.joined_by],
        }

    def version_source(v: VersionSource) -> dict[str, Any]:
        return {
            "upstream": v.upstream,
            "upstream_tool_id": v.upstream_tool_id,
            "upstream_version_id": v.upstream_id,
            "upstream_url": f"{v.upstream_base}/tools/{quote(v.upstream_tool_id, safe='')}"
            f"/versions/{quote(v.key, safe='')}",
        }

    conflicts = []
    for recorded in tool.conflicts:
        c = dict(recorded)
        for end in ("a", "b"):
            if end in c:
                c[end] = names.get(c[end], str(c[end]))
        conflicts.append(c)
    return {
        "id": tool.id,
        "requested_id": requested,
        "members": [member(s) for s in tool.sources],
        "versions": [
            {
                "key": v.key,
                "conflict": v.conflict,
                "served": version_source(v.served),
                "sources": [version_source(s) for s in v.sources],
            }
            for v in tool.versions
        ],
        "conflicts": conflicts,
    }


async def get_provenance(request: web.Request) -> web.Response:
    """GET /aggregator/v1/tools/{id}/provenance."""
    requested = request.match_info["id"]
    pool = request.app[DB_POOL]
    tool_id = await db.resolve_tool_id(pool, requested)
    tool = (await db.fetch_tools(pool, [tool_id])).get(tool_id) if tool_id else None
    if tool is None:
        raise NotFound(f"no tool with id {requested!r}")
    origins = {
        r["id"]: r["origin"]
        for r in await pool.fetch(
            "select id, origin from upstream_tools where id = any($1::bigint[])",
            [s.member_id for s in tool.sources],
        )
    }
    body = provenance(
        tool,
        requested=requested,
        now=dt.datetime.now(dt.UTC),
        stale_after=stale_after_s(request),
        origins=origins,
    )
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def add_routes(app: web.Application) -> None:
    """Mount the provenance endpoint."""
    app.router.add_get(PREFIX + "/tools/{id}/provenance", get_provenance)
