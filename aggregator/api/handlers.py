"""TRS v2 read handlers, named after the TRS operations, answering from the database."""

from __future__ import annotations

import io
import zipfile
from typing import Any, Final
from urllib.parse import quote

import orjson
from aiohttp import web

from aggregator import __version__
from aggregator.api.paging import paging_headers, parse_page
from aggregator.db import catalogue as db
from aggregator.errors import BadRequest, NotFound
from aggregator.keys import CONFIG, DB_POOL
from aggregator.trs import render
from aggregator.trs.model import CatalogueVersion
from aggregator.trs.parse import DescriptorType, parse_descriptor_type

MOUNTS: Final = ("/ga4gh/trs/v2", "/api/ga4gh/trs/v2", "/api/ga4gh/v2")


def json_response(data: Any, *, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    """Serialise *data* with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


def base_url(request: web.Request) -> str:
    """The TRS base URL this request came in on (public_url from config when set)."""
    public = request.app[CONFIG].server.public_url.rstrip("/")
    origin = public or f"{request.scheme}://{request.host}"
    for mount in MOUNTS:
        if request.path.startswith(mount + "/") or request.path == mount:
            return origin + mount
    return origin + MOUNTS[0]


async def get_service_info(request: web.Request) -> web.Response:
    """GET /service-info: GA4GH service-info 1.0, type org.ga4gh:trs:2.0.1."""
    pool = request.app[DB_POOL]
    rows = await pool.fetch("select name from upstreams order by priority, name")
    state = await pool.fetchrow("select generation, published_at from catalogue_state")
    return json_response({
        "id": "org.trs-aggregator",
        "name": "trs-aggregator",
        "type": {"group": "org.ga4gh", "artifact": "trs", "version": "2.0.1"},
        "description": f"A federated TRS catalogue aggregating {len(rows)} upstream registries: "
                       + ", ".join(r["name"] for r in rows),
        "organization": {"name": "trs-aggregator", "url": base_url(request)},
        "version": __version__,
        "updatedAt": state["published_at"].isoformat(),
    })


async def list_tool_classes(request: web.Request) -> web.Response:
    """GET /toolClasses: the union of the upstreams' tool classes."""
    rows = await request.app[DB_POOL].fetch(
        "select tool_classes from upstreams order by priority, name")
    return json_response(render.union_tool_classes([r["tool_classes"] for r in rows]))


async def list_tools(request: web.Request) -> web.Response:
    """GET /tools with paging and filters."""
    page = parse_page(request.query)
    q = request.query
    descriptor_type = None
    if q.get("descriptorType"):
        parsed = parse_descriptor_type(q["descriptorType"])
        if parsed is None or parsed.plain:
            raise BadRequest(f"descriptorType: unknown type {q['descriptorType']!r}")
        descriptor_type = parsed.name
    f = db.ToolFilter(id=q.get("id"), alias=q.get("alias"), toolclass=q.get("toolClass"),
                      organization=q.get("organization"), name=q.get("name") or q.get("toolname"),
                      descriptor_type=descriptor_type)
    pool = request.app[DB_POOL]
    ids, total = await db.list_tool_ids(pool, f, limit=page.limit, offset=page.offset)
    tools = await _render_tools(request, ids)
    return json_response(tools, headers=paging_headers(request.url, page, total))


async def _render_tools(request: web.Request, ids: list[str]) -> list[dict[str, Any]]:
    found = await db.fetch_tools(request.app[DB_POOL], ids)
    base = base_url(request)
    return [render.render_tool(base, found[i]) for i in ids if i in found]


async def _resolve(request: web.Request) -> str:
    requested = request.match_info["id"]
    tool_id = await db.resolve_tool_id(request.app[DB_POOL], requested)
    if tool_id is None:
        raise NotFound(f"no tool with id {requested!r}")
    return tool_id


async def get_tool(request: web.Request) -> web.Response:
    """GET /tools/{id}."""
    tool_id = await _resolve(request)
    (tool,) = await _render_tools(request, [tool_id])
    return json_response(tool)


async def list_tool_versions(request: web.Request) -> web.Response:
    """GET /tools/{id}/versions."""
    tool_id = await _resolve(request)
    (tool,) = await _render_tools(request, [tool_id])
    return json_response(tool["versions"])


async def _version(request: web.Request) -> tuple[str, CatalogueVersion]:
    """The requested version: by its key, else by an upstream version id of one of its sources."""
    tool_id = await _resolve(request)
    requested = request.match_info["version_id"]
    tool = (await db.fetch_tools(request.app[DB_POOL], [tool_id]))[tool_id]
    for v in tool.versions:
        if v.key == requested:
            return tool_id, v
    for v in tool.versions:
        if any(s.upstream_id == requested for s in v.sources):
            return tool_id, v
    raise NotFound(f"tool {tool_id!r} has no version {requested!r}")


async def get_tool_version(request: web.Request) -> web.Response:
    """GET /tools/{id}/versions/{version_id}."""
    tool_id, v = await _version(request)
    return json_response(render.render_version(base_url(request), tool_id, v.key, v.doc))


def _type(request: web.Request) -> DescriptorType:
    raw = request.match_info["type"]
    parsed = parse_descriptor_type(raw)
    if parsed is None:
        raise NotFound(f"unknown descriptor type {raw!r}; expected CWL, WDL, NFL, GALAXY or SMK, "
                       "optionally PLAIN_")
    return parsed


def _upstream_redirect(request: web.Request, v: CatalogueVersion,
                       tail: str) -> web.HTTPException:
    """In index mode, file endpoints send clients to the upstream's own URL."""
    s = v.served
    target = (f"{s.upstream_base}/tools/{quote(s.upstream_tool_id, safe='')}/versions/"
              f"{quote(s.key, safe='')}/{tail}")
    if request.query_string:
        target += "?" + request.query_string
    return web.HTTPTemporaryRedirect(target)


async def get_descriptor(request: web.Request) -> web.StreamResponse:
    """GET .../{type}/descriptor and .../{type}/descriptor/{relative_path}."""
    t = _type(request)
    tool_id, v = await _version(request)
    relative = request.match_info.get("relative_path")
    if v.served.mode == "index":
        tail = f"{request.match_info['type']}/descriptor"
        if relative is not None:
            tail += "/" + quote(relative, safe="")
        raise _upstream_redirect(request, v, tail)
    pool = request.app[DB_POOL]
    if relative is None:
        files = await db.fetch_files(pool, v.served.version_row_id, descriptor_type=t.name,
                                     file_types=["PRIMARY_DESCRIPTOR"])
        if not files:
            raise NotFound(f"version {v.key!r} of {tool_id!r} has no {t.name} descriptor")
    else:
        path = _clean_path(relative)
        files = await db.fetch_files(pool, v.served.version_row_id,
                                     descriptor_type=t.name, path=path)
        if not files:
            raise NotFound(f"version {v.key!r} of {tool_id!r} has no {t.name} file {path!r}")
    f = files[0]
    if f.content is None:
        raise NotFound(f"the content of {f.path!r} was not mirrored")
    if t.plain:
        return web.Response(body=f.content, content_type="text/plain", charset="utf-8")
    return json_response(render.file_wrapper(f.content, f.sha256, f.url))


def _clean_path(relative: str) -> str:
    """Accept ``a/b.cwl``, ``/a/b.cwl`` and ``./a/b.cwl``; the stored paths are relative."""
    path = relative
    while path.startswith("/"):
        path = path[1:]
    if path.startswith("./"):
        path = path[2:]
    if not path:
        raise BadRequest("relative_path is empty")
    return path


async def list_files(request: web.Request) -> web.StreamResponse:
    """GET .../{type}/files (and ``?format=zip``)."""
    t = _type(request)
    tool_id, v = await _version(request)
    if v.served.mode == "index":
        raise _upstream_redirect(request, v, f"{request.match_info['type']}/files")
    fmt = request.query.get("format")
    if fmt not in (None, "", "zip"):
        raise BadRequest(f"format must be 'zip', not {fmt!r}")
    want_zip = fmt == "zip" or "application/zip" in request.headers.get("Accept", "")
    files = await db.fetch_files(request.app[DB_POOL], v.served.version_row_id,
                                 descriptor_type=t.name,
                                 with_content=want_zip)
    if not files:
        raise NotFound(f"version {v.key!r} of {tool_id!r} has no {t.name} files")
    if want_zip:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for f in files:
                if f.content is not None:
                    archive.writestr(_clean_path(f.path), f.content)
        name = quote(f"{tool_id}-{v.key}-{t.name}.zip".replace("/", "_"), safe="")
        return web.Response(body=buffer.getvalue(), content_type="application/zip", headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{name}"})
    return json_response([render.tool_file(f.path, f.file_type, f.sha256) for f in files])


async def list_tests(request: web.Request) -> web.StreamResponse:
    """GET .../{type}/tests."""
    t = _type(request)
    _, v = await _version(request)
    if v.served.mode == "index":
        raise _upstream_redirect(request, v, f"{request.match_info['type']}/tests")
    files = await db.fetch_files(request.app[DB_POOL], v.served.version_row_id,
                                 descriptor_type=t.name,
                                 file_types=["TEST_FILE"])
    if t.plain:
        return web.Response(body=b"\n".join(f.content or b"" for f in files),
                            content_type="text/plain", charset="utf-8")
    return json_response([render.file_wrapper(f.content, f.sha256, f.url) for f in files])


async def get_containerfile(request: web.Request) -> web.StreamResponse:
    """GET .../containerfile."""
    tool_id, v = await _version(request)
    if v.served.mode == "index":
        raise _upstream_redirect(request, v, "containerfile")
    files = await db.fetch_files(request.app[DB_POOL], v.served.version_row_id,
                                 file_types=["CONTAINERFILE"])
    if not files:
        raise NotFound(f"version {v.key!r} of {tool_id!r} has no containerfile")
    unique = {f.sha256 or f.path: f for f in reversed(files)}
    return json_response([render.file_wrapper(f.content, f.sha256, f.url)
                          for f in reversed(unique.values())])


def add_routes(app: web.Application) -> None:
    """Mount every TRS read endpoint under each of MOUNTS."""
    for m in MOUNTS:
        v = m + "/tools/{id}/versions/{version_id}"
        app.router.add_get(m + "/service-info", get_service_info)
        app.router.add_get(m + "/toolClasses", list_tool_classes)
        app.router.add_get(m + "/tools", list_tools)
        app.router.add_get(m + "/tools/{id}", get_tool)
        app.router.add_get(m + "/tools/{id}/versions", list_tool_versions)
        app.router.add_get(v, get_tool_version)
        app.router.add_get(v + "/containerfile", get_containerfile)
        app.router.add_get(v + "/{type}/descriptor", get_descriptor)
        app.router.add_get(v + "/{type}/descriptor/{relative_path:.+}", get_descriptor)
        app.router.add_get(v + "/{type}/files", list_files)
        app.router.add_get(v + "/{type}/tests", list_tests)
