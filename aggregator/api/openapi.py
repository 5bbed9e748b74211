"""Our OpenAPI document: the official TRS 2.0.1 schema plus what we add to it.

Served at ``/aggregator/v1/openapi.json``. The additions are the provenance fields of the
default profile (``sources`` on Tool and ToolVersion, ``conflict`` on ToolVersion, the
upstream summary in service-info), the documented matching rules of the /tools filters, the
``Link`` header, the error, 304 and redirect answers, and the /aggregator/v1 endpoints.
"""

from __future__ import annotations

import copy
from importlib.resources import files
from typing import Any, Final

import orjson
from aiohttp import web

from aggregator import __version__
from aggregator.api import admin, changes, search
from aggregator.api.cache import make_entry, send
from aggregator.api.profiles import DEFAULT_PROFILE, STRICT_PROFILE
from aggregator.keys import OPENAPI

PATH: Final = "/aggregator/v1/openapi.json"

_FILTERS: Final = {
    "id": "A tool id, plain or qualified (`#upstream/<upstream>/<upstream id>`): exact match.",
    "alias": "Tools with this alias (on any of their upstream records); case-insensitive.",
    "toolClass": "Tools of this tool class name (any upstream record); case-insensitive.",
    "descriptorType": "Tools with a version of this descriptor type (any upstream record). "
    "`PLAIN_` forms are read as the type itself; other values answer 400.",
    "registry": "Tools with an image whose `registry_host` is this; case-insensitive.",
    "organization": "Tools whose organization (on any upstream record) is this; case-insensitive.",
    "name": "Tools with an image of this name (the last path segment of `image_name` without "
    "tag or digest), or whose tool name is this; case-insensitive.",
    "toolname": "Tools whose name (on any upstream record) is this; case-insensitive.",
    "description": "Tools whose description contains this; case-insensitive.",
    "author": "Tools with a version one of whose authors contains this; case-insensitive.",
    "checker": "`true`: only checker workflows (tools that are the `checker_url` of another "
    "tool); `false`: only the other tools.",
    "offset": "Start index (a row number, 0 or more; a page past the end is empty). The "
    "registry pages by keyset underneath, so deep pages cost what the first does.",
    "limit": "Page size, 1 or more; above 1000 the page holds 1000 (see `current_limit`).",
}

_TIMESTAMP: Final = {"type": "string", "format": "date-time"}

_SCHEMAS: Final[dict[str, Any]] = {
    "Source": {
        "type": "object",
        "description": "An upstream record behind a merged tool (default profile only).",
        "required": [
            "upstream",
            "upstream_id",
            "upstream_url",
            "first_seen",
            "last_confirmed",
            "stale",
        ],
        "properties": {
            "upstream": {"type": "string", "description": "The upstream's configured name."},
            "upstream_id": {"type": "string", "description": "The tool's id upstream."},
            "upstream_url": {"type": "string", "description": "The tool's URL upstream."},
            "first_seen": _TIMESTAMP,
            "last_confirmed": {
                **_TIMESTAMP,
                "description": "When a harvest last saw the record upstream.",
            },
            "stale": {
                "type": "boolean",
                "description": "Not confirmed for longer than `harvest.stale_after_s`.",
            },
        },
    },
    "VersionSource": {
        "type": "object",
        "description": "An upstream version behind a merged version (default profile only).",
        "required": ["upstream", "upstream_id", "upstream_tool_id", "upstream_url"],
        "properties": {
            "upstream": {"type": "string"},
            "upstream_id": {"type": "string", "description": "The version's id upstream."},
            "upstream_tool_id": {"type": "string"},
            "upstream_url": {"type": "string"},
            "first_seen": _TIMESTAMP,
            "last_confirmed": _TIMESTAMP,
            "stale": {"type": "boolean"},
        },
    },
    "UpstreamSummary": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "url": {"type": "string"},
            "kind": {"type": "string", "enum": ["trs", "static", "aggregator"]},
            "mode": {"type": "string", "enum": ["mirror", "index"]},
            "priority": {"type": "integer"},
            "service_name": {"type": "string"},
            "tools": {"type": "integer", "description": "Its records in the catalogue."},
            "last_confirmed": _TIMESTAMP,
        },
    },
    "ProvenanceVersionSource": {
        "type": "object",
        "required": ["upstream", "upstream_tool_id", "upstream_version_id", "upstream_url"],
        "properties": {
            "upstream": {"type": "string"},
            "upstream_tool_id": {"type": "string"},
            "upstream_version_id": {"type": "string"},
            "upstream_url": {"type": "string"},
        },
    },
    "Provenance": {
        "type": "object",
        "description": "The full provenance record of a merged tool.",
        "required": ["id", "members", "versions", "conflicts"],
        "properties": {
            "id": {"type": "string"},
            "requested_id": {"type": "string"},
            "members": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "qualified_id": {"type": "string"},
                        "upstream": {"type": "string"},
                        "upstream_id": {"type": "string"},
                        "upstream_url": {"type": "string"},
                        "primary": {
                            "type": "boolean",
                            "description": "Its fields are the ones served.",
                        },
                        "first_seen": _TIMESTAMP,
                        "last_confirmed": _TIMESTAMP,
                        "stale": {"type": "boolean"},
                        "missing_since": {**_TIMESTAMP, "nullable": True},
                        "origin": {
                            "type": "object",
                            "nullable": True,
                            "description": "For a record harvested from another "
                            "trs-aggregator: the upstream it comes from there (`upstream`) "
                            "and the aggregators it came through, nearest first (`via`).",
                            "properties": {
                                "upstream": {"type": "string"},
                                "via": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                        "joined_by": {
                            "type": "array",
                            "description": "The evidence that joined "
                            "this member to another (named by qualified id): its kind "
                            "(uuid, trs, doi, repo, biotools, content, xref, alias, or "
                            "operator for an operator's always rule) and value, and the "
                            "other evidence both hold.",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "with": {"type": "string"},
                                    "evidence": {"type": "string"},
                                    "value": {"type": "string"},
                                    "rule": {"type": "string"},
                                    "also": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "evidence": {"type": "string"},
                                                "value": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
            "versions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "key": {"type": "string", "description": "The version id we serve."},
                        "conflict": {"type": "boolean"},
                        "served": {"$ref": "#/components/schemas/ProvenanceVersionSource"},
                        "sources": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/ProvenanceVersionSource"},
                        },
                    },
                },
            },
            "conflicts": {
                "type": "array",
                "description": "Disagreements the merge kept "
                "visible: one version name with different content, and joins refused "
                "(a and b by qualified id, the evidence, and the reason: one upstream, "
                "negative evidence, or an operator's never rule).",
                "items": {"type": "object"},
            },
        },
    },
}


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def build() -> dict[str, Any]:
    """The OpenAPI document of the default profile and the /aggregator/v1 endpoints."""
    raw = (files("aggregator.api") / "schemas" / "trs-2.0.1.openapi.json").read_bytes()
    doc: dict[str, Any] = copy.deepcopy(orjson.loads(raw))
    doc["info"]["title"] = "trs-aggregator: GA4GH TRS 2.0.1 with provenance"
    doc["info"]["version"] = __version__
    doc["info"]["description"] = (
        "A federated catalogue of GA4GH TRS registries. The default profile answers TRS 2.0.1 "
        "with provenance extensions (`sources`, `conflict`, the service-info `upstreams`) at "
        + ", ".join(f"`{m}`" for m in DEFAULT_PROFILE.mounts)
        + ". The strict profile at `"
        + STRICT_PROFILE.mounts[0]
        + "` answers the same endpoints (no /service-info) with "
        "exactly the fields of TRS 2.0.0 and no extensions. Every error is TRS `Error` JSON. "
        "GET answers carry an ETag (If-None-Match gives 304), CORS headers, and are gzipped "
        "when large and accepted.\n\nThe TRS part of this document is the official TRS 2.0.1 "
        "schema (Apache License 2.0, GA4GH), extended."
    )
    doc["servers"] = [{"url": m} for m in DEFAULT_PROFILE.mounts]
    schemas = doc["components"]["schemas"]
    schemas.update(copy.deepcopy(_SCHEMAS))
    schemas["Tool"]["properties"]["sources"] = {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Source"},
        "description": "Extension: the upstream records merged into this tool, primary first.",
    }
    version = schemas["ToolVersion"]["properties"]
    version["sources"] = {
        "type": "array",
        "items": {"$ref": "#/components/schemas/VersionSource"},
        "description": "Extension: the upstream versions with this content.",
    }
    version["conflict"] = {
        "type": "boolean",
        "description": "Extension: upstreams publish "
        "different content under this version name (the served one wins).",
    }
    service = schemas["Service"]["properties"]
    service["upstreams"] = {
        "type": "array",
        "items": {"$ref": "#/components/schemas/UpstreamSummary"},
    }
    service["catalogue"] = {
        "type": "object",
        "properties": {
            "tools": {"type": "integer"},
            "generation": {"type": "integer"},
            "published_at": _TIMESTAMP,
        },
    }
    for path, item in doc["paths"].items():
        operation = item["get"]
        responses = operation["responses"]
        responses.setdefault("400", _error_response("A parameter is not valid."))
        responses.setdefault("404", _error_response("Not found."))
        responses.setdefault("304", {"description": "Not modified (If-None-Match)."})
        if "{type}" in path or path.endswith("containerfile"):
            responses.setdefault(
                "307",
                {
                    "description": "The upstream is indexed, not "
                    "mirrored: the file is at the upstream's URL."
                },
            )
        for param in operation.get("parameters", []):
            name = param.get("name")
            if name in _FILTERS and path == "/tools":
                param["description"] = _FILTERS[name]
        if path == "/tools":
            for name in ("offset", "limit"):
                operation["parameters"].append(
                    {
                        "name": name,
                        "in": "query",
                        "description": _FILTERS[name],
                        "schema": {"type": "integer", "minimum": 1 if name == "limit" else 0},
                    }
                )
            operation["parameters"] = [p for p in operation["parameters"] if "$ref" not in p]
            responses["200"]["headers"]["Link"] = {
                "description": "RFC 8288 links: self, first, last, and next and prev when they "
                "exist.",
                "schema": {"type": "string"},
            }
    own = [{"url": "/aggregator/v1"}]
    doc["paths"]["/tools/{id}/provenance"] = {
        "servers": own,
        "get": {
            "summary": "The full provenance of a merged tool",
            "operationId": "aggregatorToolProvenance",
            "tags": ["aggregator"],
            "parameters": [{"$ref": "#/components/parameters/id"}],
            "responses": {
                "200": {
                    "description": "Its members with their evidence, its versions' sources, "
                    "its conflicts.",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Provenance"}}
                    },
                },
                "404": _error_response("No such tool."),
            },
        },
    }
    doc["paths"].update(search.openapi_paths(own))
    doc["paths"].update(changes.openapi_paths(own))
    schemas.update(search.SCHEMAS)
    schemas.update(changes.SCHEMAS)
    doc["paths"]["/openapi.json"] = {
        "servers": own,
        "get": {
            "summary": "This document",
            "operationId": "aggregatorOpenapi",
            "tags": ["aggregator"],
            "responses": {
                "200": {
                    "description": "OpenAPI 3.0",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        },
    }
    admin.describe(doc)
    return doc


async def get_openapi(request: web.Request) -> web.Response:
    """GET /aggregator/v1/openapi.json."""
    return await send(
        request, make_entry(200, request.app[OPENAPI], "application/json", generation=None)
    )


def add_routes(app: web.Application) -> None:
    """Build the document once and mount it."""
    app[OPENAPI] = orjson.dumps(build())
    app.router.add_get(PATH, get_openapi)
