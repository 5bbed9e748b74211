"""``GET /aggregator/v1/search``: ranked full-text search of the merged catalogue."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final
from urllib.parse import quote

import orjson
from aiohttp import web
from yarl import URL

from aggregator.db import search as db
from aggregator.db.search import FACET_EXACT_LIMIT
from aggregator.errors import BadRequest
from aggregator.keys import CONFIG, DB_POOL
from aggregator.trs.parse import parse_descriptor_type

PATH: Final = "/aggregator/v1/search"
DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 100
TRS_BASE: Final = "/ga4gh/trs/v2"


def encode_cursor(after: tuple[float, str]) -> str:
    """An opaque cursor for the page after hit (score, id)."""
    return base64.urlsafe_b64encode(orjson.dumps(list(after))).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (score, id) a cursor of :func:`encode_cursor` names; BadRequest when it is not one."""
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise BadRequest(f"cursor {cursor[:80]!r} is not a cursor this endpoint gave") from None
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not isinstance(raw[0], int | float)
        or isinstance(raw[0], bool)
        or not isinstance(raw[1], str)
    ):
        raise BadRequest(f"cursor {cursor[:80]!r} is not a cursor this endpoint gave")
    return float(raw[0]), raw[1]


def _flag(query: Any, name: str) -> bool | None:
    raw = str(query.get(name, "")).strip().lower()
    if not raw:
        return None
    if raw not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false, not {query[name]!r}")
    return raw == "true"


def parse_query(query: Any) -> tuple[db.SearchQuery, int, tuple[float, str] | None, bool]:
    """The search, page size, keyset position and whether facets are wanted, from the URL."""

    def get(name: str) -> str | None:
        value = query.get(name, "").strip()
        return value or None

    descriptor_type = get("descriptorType")
    if descriptor_type is not None:
        parsed = parse_descriptor_type(descriptor_type)
        if parsed is None:
            raise BadRequest(f"descriptorType {descriptor_type!r} is not a descriptor type")
        descriptor_type = parsed.name
    raw_limit = get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise BadRequest(f"limit must be an integer, not {raw_limit!r}") from None
        if limit < 1:
            raise BadRequest(f"limit must be at least 1, not {limit}")
        limit = min(limit, MAX_LIMIT)
    cursor = get("cursor")
    facets = _flag(query, "facets")
    search = db.SearchQuery(
        text=query.get("q", ""),
        upstream=get("upstream"),
        descriptor_type=descriptor_type,
        toolclass=get("toolClass"),
        organization=get("organization"),
        has_checker=_flag(query, "hasChecker"),
    )
    return search, limit, decode_cursor(cursor) if cursor else None, facets is not False


async def get_search(request: web.Request) -> web.Response:
    """GET /aggregator/v1/search."""
    search, limit, after, facets = parse_query(request.query)
    result = await db.search(request.app[DB_POOL], search, limit=limit, after=after, facets=facets)
    public = request.app[CONFIG].server.public_url.rstrip("/")
    origin = public or f"{request.scheme}://{request.host}"
    body: dict[str, Any] = {
        "query": db.sanitise(search.text),
        "total": result.total,
        "hits": [
            {
                "id": h.id,
                "url": f"{origin}{TRS_BASE}/tools/{quote(h.id, safe='')}",
                "score": h.score,
                "name": h.name,
                "organization": h.organization,
                "toolclass": h.toolclass,
                "upstreams": h.upstreams,
                "descriptor_types": h.descriptor_types,
                "has_checker": h.has_checker,
                "highlights": h.highlights,
            }
            for h in result.hits
        ],
        "next": None,
    }
    if facets:
        body["facets"] = result.facets
        body["facets_estimated"] = result.facets_estimated
    headers = {}
    if result.next_after is not None:
        cursor = encode_cursor(result.next_after)
        url = URL(origin + PATH).with_query(
            [(k, v) for k, v in request.query.items() if k != "cursor"] + [("cursor", cursor)]
        )
        body["next"] = str(url)
        headers["Link"] = f'<{url}>; rel="next"'
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


def _param(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "description": description,
        "schema": schema or {"type": "string"},
    }


def openapi_paths(servers: list[dict[str, str]]) -> dict[str, Any]:
    """The OpenAPI path item of the search endpoint."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        "/search": {
            "servers": servers,
            "get": {
                "summary": "Ranked full-text search of the merged catalogue",
                "description": "Tools are ranked by PostgreSQL full-text search: names, aliases "
                "and ids weigh most, then organisation and authors, then descriptions. The "
                'query is read as web search text (`"a phrase"`, `or`, `-word`); no text '
                "is an error. A name within a typo or two of a query word also matches "
                "(trigram similarity). Every filter applies to the merged tool: a tool "
                "matches when any of its upstream records does.",
                "operationId": "aggregatorSearch",
                "tags": ["aggregator"],
                "parameters": [
                    _param(
                        "q",
                        "The search text (at most 200 characters are read). Empty: "
                        "every tool, by id.",
                    ),
                    _param(
                        "upstream",
                        "Only tools with a record from this upstream (its configured name).",
                    ),
                    _param(
                        "descriptorType",
                        "Only tools with a version of this type "
                        "(CWL, WDL, NFL, GALAXY, SMK; `PLAIN_` forms accepted).",
                    ),
                    _param("toolClass", "Only tools of this tool class; case-insensitive."),
                    _param("organization", "Only tools of this organisation; case-insensitive."),
                    _param(
                        "hasChecker",
                        "`true`: only tools with a checker workflow; `false`: only tools without.",
                        {"type": "boolean"},
                    ),
                    _param(
                        "facets",
                        "`false` leaves out the facet counts (and `facets_estimated`).",
                        {"type": "boolean"},
                    ),
                    _param(
                        "limit",
                        f"Hits per page, 1 or more (default {DEFAULT_LIMIT}, at most {MAX_LIMIT}).",
                        {"type": "integer", "minimum": 1},
                    ),
                    _param(
                        "cursor",
                        "Where the page starts: the `cursor` of the `next` URL "
                        "of the previous page (keyset paging).",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "A page of hits, best first, with the total number of "
                        "hits, the facet counts over the hits (estimated past "
                        f"{FACET_EXACT_LIMIT:,} hits), and the URL of the next page.",
                        "headers": {
                            "Link": {
                                "description": 'The next page: `<url>; rel="next"`.',
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/SearchResult"}
                            }
                        },
                    },
                    "400": {"description": "A parameter is not valid.", "content": error},
                },
            },
        }
    }


SCHEMAS: Final[dict[str, Any]] = {
    "SearchResult": {
        "type": "object",
        "required": ["query", "total", "hits", "next"],
        "properties": {
            "query": {"type": "string", "description": "The text as it was read."},
            "total": {"type": "integer", "description": "Hits over all pages."},
            "hits": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "url", "score", "name"],
                    "properties": {
                        "id": {"type": "string", "description": "The merged tool's id."},
                        "url": {"type": "string", "description": "Its TRS URL."},
                        "score": {"type": "number"},
                        "name": {"type": "string"},
                        "organization": {"type": "string"},
                        "toolclass": {"type": "string", "nullable": True},
                        "upstreams": {"type": "array", "items": {"type": "string"}},
                        "descriptor_types": {"type": "array", "items": {"type": "string"}},
                        "has_checker": {"type": "boolean"},
                        "highlights": {
                            "type": "object",
                            "description": "`name` and `description` with the matched words "
                            "in `<mark>…</mark>` (only those that match).",
                            "additionalProperties": {"type": "string"},
                        },
                    },
                },
            },
            "facets": {
                "type": "object",
                "description": "Per filter (`upstream`, `descriptor_type`, `toolclass`, "
                "`organization`, `has_checker`), how many hits have each value. Without `q`: "
                "exact, whatever the number of hits. With `q`: exact up to "
                f"{FACET_EXACT_LIMIT:,} hits; above that, estimated from a sample of about "
                f"{FACET_EXACT_LIMIT:,} hits (chosen by a hash of the tool id) scaled to the "
                "total, and a value no sampled hit has is left out (see `facets_estimated`).",
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                },
            },
            "facets_estimated": {
                "type": "boolean",
                "description": "Present with `facets`: true when the counts are estimates "
                f"(`q` given and more than {FACET_EXACT_LIMIT:,} hits), false when they are "
                "exact.",
            },
            "next": {"type": "string", "nullable": True, "description": "The next page."},
        },
    }
}


def add_routes(app: web.Application) -> None:
    """Mount the search endpoint."""
    app.router.add_get(PATH, get_search)
