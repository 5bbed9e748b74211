"""``GET /aggregator/v1/changes``: the change feed of the merged catalogue, as JSON pages or,
with ``Accept: text/event-stream``, as a stream that follows new publishes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson
import structlog
from aiohttp import web
from yarl import URL

from aggregator.db import changes as db
from aggregator.db.generation import CATALOGUE_CHANNEL
from aggregator.db.pool import connect
from aggregator.errors import BadRequest
from aggregator.keys import CONFIG, DB_POOL

log = structlog.get_logger()

PATH: Final = "/aggregator/v1/changes"
DEFAULT_LIMIT: Final = 500
MAX_LIMIT: Final = 5000
PRUNE_EVERY_S: Final = 60.0


class Publishes:
    """Wakes event streams when a publish is announced (one LISTEN connection per process,
    opened when the first stream starts)."""

    def __init__(self, dsn: str | None) -> None:
        self.dsn = dsn
        self.event = asyncio.Event()
        self.conn: Any = None
        self.lock = asyncio.Lock()

    def _notified(self, *_: Any) -> None:
        self.event.set()
        self.event = asyncio.Event()

    async def current(self) -> asyncio.Event:
        """The event the next publish sets (listening from now on)."""
        async with self.lock:
            if self.conn is None and self.dsn is not None:
                self.conn = await connect(self.dsn)
                await self.conn.add_listener(CATALOGUE_CHANNEL, self._notified)
        return self.event

    @staticmethod
    async def wait(event: asyncio.Event, seconds: float) -> None:
        """Return when *event* is set, or after *seconds*."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    async def close(self) -> None:
        """Close the LISTEN connection."""
        if self.conn is not None:
            await self.conn.close()


PUBLISHES: Final = web.AppKey("change_feed_publishes", Publishes)
LAST_PRUNE: Final = web.AppKey("change_feed_last_prune", list[float])


async def publishes_ctx(app: web.Application) -> AsyncIterator[None]:
    """The LISTEN connection of the event streams, for the app's lifetime."""
    app[PUBLISHES] = publishes = Publishes(app[CONFIG].database.url)
    app[LAST_PRUNE] = [0.0]
    yield
    await publishes.close()


def _cursor(raw: str | None, name: str) -> int:
    if raw is None or raw.strip() == "":
        return 0
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadRequest(
            f"{name} must be a cursor this feed gave (an integer), not {raw!r}"
        ) from None
    if value < 0:
        raise BadRequest(f"{name} must be 0 or more, not {value}")
    return value


def _gone(request: web.Request, since: int, head: int, instance: str) -> web.Response:
    origin = f"{request.scheme}://{request.host}"
    public = request.app[CONFIG].server.public_url.rstrip("/")
    body = {
        "code": 410,
        "message": f"cursor {since} is older than the feed's retention "
        f"({request.app[CONFIG].changes.retention}) or is not from this feed: read the "
        f"catalogue again (GET /ga4gh/trs/v2/tools, every page), then continue from cursor "
        f"{head}",
        "cursor": str(head),
        "resync": (public or origin) + "/ga4gh/trs/v2/tools",
        "aggregator": {"id": instance},
    }
    return web.Response(status=410, body=orjson.dumps(body), content_type="application/json")


async def _maybe_prune(request: web.Request) -> None:
    last = request.app[LAST_PRUNE]
    if time.monotonic() - last[0] < PRUNE_EVERY_S:
        return
    last[0] = time.monotonic()
    pruned = await db.prune(request.app[DB_POOL], request.app[CONFIG].changes.retention_s)
    if pruned:
        log.info("changes_pruned", changes=pruned)


async def get_changes(request: web.Request) -> web.StreamResponse:
    """GET /aggregator/v1/changes?since=CURSOR&limit=N."""
    if "text/event-stream" in request.headers.get("Accept", ""):
        return await _stream(request)
    if request.query.get("since", "").strip() == "latest":
        pool = request.app[DB_POOL]
        head = await db.head(pool)
        return web.Response(
            body=orjson.dumps(
                {
                    "aggregator": {"id": await db.instance_id(pool)},
                    "changes": [],
                    "cursor": str(head),
                    "head": str(head),
                    "more": False,
                }
            ),
            content_type="application/json",
        )
    since = _cursor(request.query.get("since"), "since")
    raw_limit = request.query.get("limit", "").strip()
    try:
        limit = int(raw_limit) if raw_limit else DEFAULT_LIMIT
    except ValueError:
        raise BadRequest(f"limit must be an integer, not {raw_limit!r}") from None
    if limit < 1:
        raise BadRequest(f"limit must be at least 1, not {limit}")
    limit = min(limit, MAX_LIMIT)
    pool = request.app[DB_POOL]
    await _maybe_prune(request)
    retention = request.app[CONFIG].changes.retention_s
    page = await db.read_changes(pool, since, limit, retention)
    instance = await db.instance_id(pool)
    if page.expired:
        return _gone(request, since, page.head, instance)
    cursor = page.changes[-1].seq if page.changes else since
    more = cursor < page.head
    body = {
        "aggregator": {"id": instance},
        "changes": [c.as_json() for c in page.changes],
        "cursor": str(cursor),
        "head": str(page.head),
        "more": more,
    }
    headers = {}
    if more:
        url = URL(str(request.url)).update_query(since=str(cursor), limit=str(limit))
        headers["Link"] = f'<{url}>; rel="next"'
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


async def _stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every change after the cursor (``since`` or ``Last-Event-ID``),
    then each new one as publishes happen; a comment line every heartbeat while idle."""
    since = _cursor(
        request.headers.get("Last-Event-ID") or request.query.get("since"), "Last-Event-ID"
    )
    pool = request.app[DB_POOL]
    config = request.app[CONFIG].changes
    publishes = request.app[PUBLISHES]
    event = await publishes.current()
    page = await db.read_changes(pool, since, MAX_LIMIT, config.retention_s)
    instance = await db.instance_id(pool)
    if page.expired:
        return _gone(request, since, page.head, instance)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    await response.write(f"retry: 2000\n: aggregator {instance}\n\n".encode())
    cursor = since
    while True:
        for change in page.changes:
            data = orjson.dumps(change.as_json()).decode()
            await response.write(
                f"id: {change.seq}\nevent: {change.kind}\ndata: {data}\n\n".encode()
            )
            cursor = change.seq
        if page.changes and cursor < page.head:
            page = await db.read_changes(pool, cursor, MAX_LIMIT, config.retention_s)
            continue
        started = time.monotonic()
        await publishes.wait(event, config.heartbeat_s)
        event = await publishes.current()
        page = await db.read_changes(pool, cursor, MAX_LIMIT, config.retention_s)
        if page.expired:
            await response.write(b"event: expired\ndata: {}\n\n")
            break
        if not page.changes and time.monotonic() - started >= config.heartbeat_s * 0.9:
            await response.write(b": heartbeat\n\n")
    return response


def openapi_paths(servers: list[dict[str, str]]) -> dict[str, Any]:
    """The OpenAPI path item of the change feed."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        "/changes": {
            "servers": servers,
            "get": {
                "summary": "The change feed of the merged catalogue",
                "description": "Every change to the merged catalogue in commit order: a tool "
                "`added`, `changed` (`parts`: metadata, versions, files, sources), `removed` "
                "(its records' tombstones expired), `merged` into another (`into`), `split` "
                "(`into`: the tools its records went to), `id_changed` (`previous_id`). "
                "Reading the feed from cursor 0 and applying it gives the current catalogue: "
                "after each change, fetch the tool by `id` (its state is `digest`). With "
                "`Accept: text/event-stream` the answer is a stream of server-sent events "
                "(`id:` is the cursor, `event:` the kind, `data:` the change) that follows "
                "new publishes, with a comment line every heartbeat while idle; reconnecting "
                "with `Last-Event-ID` resumes after that change. Changes are kept for "
                "`changes.retention`.",
                "operationId": "aggregatorChanges",
                "tags": ["aggregator"],
                "parameters": [
                    {
                        "name": "since",
                        "in": "query",
                        "description": "The cursor to continue from (0 or absent: the start; "
                        "`latest`: no changes, only the cursor of the newest one, to follow "
                        "from after reading the whole catalogue).",
                        "schema": {
                            "oneOf": [
                                {"type": "integer", "minimum": 0},
                                {"type": "string", "enum": ["latest"]},
                            ]
                        },
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "description": f"Changes per page, 1 or more (default {DEFAULT_LIMIT}, "
                        f"at most {MAX_LIMIT}).",
                        "schema": {"type": "integer", "minimum": 1},
                    },
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "description": "Event streams: the cursor to resume after.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "A page of changes (JSON), or an event stream.",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ChangePage"}
                            },
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    "400": {"description": "A parameter is not valid.", "content": error},
                    "410": {
                        "description": "Changes after the cursor have passed retention, or "
                        "the cursor is not from this feed: read the whole catalogue again "
                        "(`resync`), then continue from `cursor`.",
                        "content": error,
                    },
                },
            },
        }
    }


_CHANGE: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["cursor", "kind", "id", "generation", "time"],
    "properties": {
        "cursor": {"type": "string"},
        "kind": {"type": "string", "enum": list(db.KINDS)},
        "id": {"type": "string", "description": "The tool (its new id for id_changed)."},
        "generation": {"type": "integer", "description": "The catalogue generation."},
        "time": {"type": "string", "format": "date-time"},
        "parts": {"type": "array", "items": {"type": "string"}},
        "into": {
            "description": "merged: the tool it joined; split: the tools it became.",
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        },
        "previous_id": {"type": "string"},
        "digest": {"type": "string", "description": "The tool's state after the change."},
    },
}

SCHEMAS: Final[dict[str, Any]] = {
    "Change": _CHANGE,
    "ChangePage": {
        "type": "object",
        "required": ["aggregator", "changes", "cursor", "head", "more"],
        "properties": {
            "aggregator": {
                "type": "object",
                "description": "This instance (`id` is stable: aggregators harvesting each "
                "other recognise their own records by it).",
                "properties": {"id": {"type": "string"}},
            },
            "changes": {"type": "array", "items": {"$ref": "#/components/schemas/Change"}},
            "cursor": {"type": "string", "description": "Continue from here."},
            "head": {"type": "string", "description": "The newest change's cursor."},
            "more": {"type": "boolean"},
        },
    },
}


def add_routes(app: web.Application) -> None:
    """Mount the change feed."""
    app.cleanup_ctx.append(publishes_ctx)
    app.router.add_get(PATH, get_changes)
