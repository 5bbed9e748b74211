"""In-memory GA4GH TRS 2.0.1 server: serves the demo upstreams and is the tests' fake registry."""

from __future__ import annotations

import io
import logging
import posixpath
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import quote, unquote

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from aggregator.api.middleware import with_final_status
from aggregator.api.negotiation import not_modified, wants_zip
from aggregator.api.paging import query_int
from aggregator.demo.catalogues import Catalogue, as_catalogue
from aggregator.errors import BadRequest, NotFound
from aggregator.trs.model import DESCRIPTOR_TYPES
from aggregator.trs.parse import sha256_hex

__all__ = ["CONFIG", "REQUESTS", "STATE", "Catalogue", "RegistryState", "make_registry_app"]

log = logging.getLogger(__name__)


class RegistryState:
    """Mutable holder for the served catalogue, so it can be swapped while the app runs."""

    def __init__(self, catalogue: Catalogue | Mapping[str, Any]) -> None:
        self._catalogue = as_catalogue(catalogue)

    @property
    def catalogue(self) -> Catalogue:
        """The catalogue answered from; assign a Catalogue or a plain dict to replace it."""
        return self._catalogue

    @catalogue.setter
    def catalogue(self, value: Catalogue | Mapping[str, Any]) -> None:
        self._catalogue = as_catalogue(value)


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Static server settings."""

    base_path: str
    page_size: int
    offset_style: Literal["index", "page"]


REQUESTS: Final = web.AppKey("requests", list[str])
STATE: Final = web.AppKey("trs_state", RegistryState)
CONFIG: Final = web.AppKey("trs_config", RegistryConfig)


def _q(value: str) -> str:
    return quote(value, safe="")


def _root(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}{request.app[CONFIG].base_path}"


def _respond(
    request: web.Request, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Answer `body` with a strong ETag, or 304 when If-None-Match matches it."""
    all_headers = {**(headers or {}), "ETag": '"' + sha256_hex(body)[:40] + '"'}
    if not_modified(request, all_headers["ETag"]):
        return web.Response(status=304, headers=all_headers)
    charset = "utf-8" if content_type.startswith("text/") else None
    return web.Response(body=body, content_type=content_type, charset=charset, headers=all_headers)


def _json(request: web.Request, obj: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return _respond(request, orjson.dumps(obj), "application/json", headers)


def _text(request: web.Request, text: str) -> web.Response:
    return _respond(request, text.encode("utf-8"), "text/plain")


def _path_param(request: web.Request, name: str, index: int) -> str:
    """A decoded path parameter, checked against the raw segment it was routed from."""
    value = request.match_info[name]
    base_parts = len([p for p in request.app[CONFIG].base_path.split("/") if p])
    raw_parts = request.rel_url.raw_parts
    pos = 1 + base_parts + index
    if pos >= len(raw_parts) or unquote(raw_parts[pos]) != value:
        raise NotFound(f"{name} {value!r} is not a single percent-encoded path segment")
    return value


def _find_tool(request: web.Request) -> Mapping[str, Any]:
    tool_id = _path_param(request, "id", 1)
    tool = request.app[STATE].catalogue.tool(tool_id)
    if tool is None:
        raise NotFound(f"Tool {tool_id!r} not found")
    return tool


def _find_version(request: web.Request) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    tool = _find_tool(request)
    version_id = _path_param(request, "version_id", 3)
    for version in tool.get("versions") or ():
        if version.get("id") == version_id:
            return tool, version
    raise NotFound(f"Version {version_id!r} of tool {tool['id']!r} not found")


def _parse_type(raw: str) -> tuple[str, bool]:
    """Normalise a `{type}` segment to (DescriptorType, plain?) — case-insensitive, `-` or `_`."""
    norm = raw.upper().replace("-", "_")
    plain = norm.startswith("PLAIN_")
    dtype = norm.removeprefix("PLAIN_")
    if dtype not in DESCRIPTOR_TYPES:
        raise NotFound(f"Unknown descriptor type {raw!r}")
    return dtype, plain


def _typed_files(version: Mapping[str, Any], dtype: str) -> list[Mapping[str, Any]]:
    files = (version.get("files") or {}).get(dtype)
    if not files:
        raise NotFound(f"Type {dtype} not available for version {version.get('id')!r}")
    return list(files)


def _file_at(files: Sequence[Mapping[str, Any]], relative_path: str) -> Mapping[str, Any]:
    """Find a file by its exact path, else by the normalised form of both paths."""
    for f in files:
        if f["path"] == relative_path:
            return f
    wanted = posixpath.normpath(relative_path.lstrip("/"))
    for f in files:
        if posixpath.normpath(f["path"]) == wanted:
            return f
    raise NotFound(f"File {relative_path!r} not found")


def _primary(files: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    for f in files:
        if f.get("file_type") == "PRIMARY_DESCRIPTOR":
            return f
    raise NotFound("No primary descriptor")


def _version_base(root: str, tool: Mapping[str, Any], version: Mapping[str, Any]) -> str:
    return f"{root}/tools/{_q(tool['id'])}/versions/{_q(version['id'])}"


def _descriptor_url(vbase: str, dtype: str, path: str) -> str:
    """The PLAIN_ URL of a file; unencoded `/` keeps relative imports resolvable against it."""
    parts = path.split("/")
    encoded = _q(path) if ".." in parts or "" in parts else quote(path, safe="/")
    return f"{vbase}/PLAIN_{dtype}/descriptor/{encoded}"


def _wrapper(content: str, url: str) -> dict[str, Any]:
    checksum = [{"checksum": sha256_hex(content.encode()), "type": "sha-256"}]
    return {"content": content, "checksum": checksum, "url": url}


def _tool_json(root: str, tool: Mapping[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in tool.items() if k not in ("url", "versions")}
    versions = [_version_json(root, tool, v) for v in tool.get("versions") or ()]
    return {"url": f"{root}/tools/{_q(tool['id'])}", **body, "versions": versions}


def _version_json(root: str, tool: Mapping[str, Any], version: Mapping[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in version.items() if k not in ("url", "files", "containerfile")}
    url = _version_base(root, tool, version)
    return {"url": url, **body, "containerfile": bool(version.get("containerfile"))}


_FILTERS: Final[Mapping[str, Callable[[Mapping[str, Any], str], bool]]] = {
    "id": lambda t, v: t.get("id") == v,
    "alias": lambda t, v: v in (t.get("aliases") or ()),
    "name": lambda t, v: t.get("name") == v,
    "organization": lambda t, v: t.get("organization") == v,
    "toolClass": lambda t, v: str((t.get("toolclass") or {}).get("name", "")).lower() == v.lower(),
    "descriptorType": lambda t, v: any(
        v.upper() in {str(d).upper() for d in ver.get("descriptor_type") or ()}
        for ver in t.get("versions") or ()
    ),
}


async def _service_info(request: web.Request) -> web.Response:
    return _json(request, request.app[STATE].catalogue.service_info)


async def _tool_classes(request: web.Request) -> web.Response:
    return _json(request, list(request.app[STATE].catalogue.tool_classes))


async def _list_tools(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    limit = min(query_int(request.query, "limit", cfg.page_size, low=1), cfg.page_size)
    offset = query_int(request.query, "offset", 0, low=0)
    active = [(f, request.query[k]) for k, f in _FILTERS.items() if k in request.query]
    tools = [t for t in request.app[STATE].catalogue.tools if all(f(t, v) for f, v in active)]
    per_page = cfg.offset_style == "page"
    start = offset * limit if per_page else offset
    last_start = max(0, (len(tools) - 1) // limit * limit)

    def link(row: int) -> str:
        value = row // limit if per_page else row
        return str(request.url.update_query({"offset": str(value), "limit": str(limit)}))

    headers = {
        "self_link": str(request.url.update_query({"offset": str(offset), "limit": str(limit)})),
        "last_page": link(last_start),
        "current_offset": str(offset),
        "current_limit": str(limit),
    }
    if start + limit < len(tools):
        headers["next_page"] = link(start + limit)
    root = _root(request)
    return _json(request, [_tool_json(root, t) for t in tools[start : start + limit]], headers)


async def _get_tool(request: web.Request) -> web.Response:
    return _json(request, _tool_json(_root(request), _find_tool(request)))


async def _list_versions(request: web.Request) -> web.Response:
    tool, root = _find_tool(request), _root(request)
    return _json(request, [_version_json(root, tool, v) for v in tool.get("versions") or ()])


async def _get_version(request: web.Request) -> web.Response:
    tool, version = _find_version(request)
    return _json(request, _version_json(_root(request), tool, version))


async def _descriptor(request: web.Request) -> web.Response:
    tool, version = _find_version(request)
    dtype, plain = _parse_type(request.match_info["type"])
    files = _typed_files(version, dtype)
    relative_path = request.match_info.get("relative_path")
    found = _primary(files) if relative_path is None else _file_at(files, relative_path)
    if plain:
        return _text(request, found["content"])
    url = _descriptor_url(_version_base(_root(request), tool, version), dtype, found["path"])
    return _json(request, _wrapper(found["content"], url))


async def _files(request: web.Request) -> web.Response:
    tool, version = _find_version(request)
    dtype, _ = _parse_type(request.match_info["type"])
    entries = [*_typed_files(version, dtype)]
    entries += [{**c, "file_type": "CONTAINERFILE"} for c in version.get("containerfile") or ()]
    fmt = request.query.get("format")
    if fmt not in (None, "zip"):
        raise BadRequest(f"Unsupported format {fmt!r}; only 'zip' is supported")
    if fmt == "zip" or wants_zip(request):
        return _zip(request, f"{tool['id']}-{version['id']}", entries)
    listing = [
        {
            "path": f["path"],
            "file_type": f.get("file_type", "OTHER"),
            "checksum": {"checksum": sha256_hex(f["content"].encode()), "type": "sha-256"},
        }
        for f in entries
    ]
    return _json(request, listing)


def _zip(request: web.Request, stem: str, entries: Sequence[Mapping[str, Any]]) -> web.Response:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in entries:  # fixed timestamps keep the archive (and its ETag) reproducible
            info = zipfile.ZipInfo(f["path"], date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, f["content"], compress_type=zipfile.ZIP_DEFLATED)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") + ".zip"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return _respond(request, buf.getvalue(), "application/zip", headers)


async def _tests(request: web.Request) -> web.Response:
    tool, version = _find_version(request)
    dtype, plain = _parse_type(request.match_info["type"])
    tests = [f for f in _typed_files(version, dtype) if f.get("file_type") == "TEST_FILE"]
    if plain:
        return _text(request, "\n".join(f["content"] for f in tests))
    vbase = _version_base(_root(request), tool, version)
    wrappers = [_wrapper(f["content"], _descriptor_url(vbase, dtype, f["path"])) for f in tests]
    return _json(request, wrappers)


async def _containerfile(request: web.Request) -> web.Response:
    tool, version = _find_version(request)
    containerfiles = version.get("containerfile") or ()
    if not containerfiles:
        raise NotFound(f"Version {version['id']!r} has no containerfile")
    url = _version_base(_root(request), tool, version) + "/containerfile"
    return _json(request, [_wrapper(c["content"], url) for c in containerfiles])


@web.middleware
async def _record_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: log every request with the status finally answered."""

    def record(status: int) -> None:
        request.app[REQUESTS].append(f"{request.method} {request.raw_path} > {status}")

    return await with_final_status(request, handler, record)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = orjson.dumps({"code": status, "message": message})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error (ours, aiohttp's routing errors, crashes) into TRS `Error` JSON."""
    keep: dict[str, str] = {}
    try:
        return await handler(request)
    except (NotFound, BadRequest) as exc:
        status, message = exc.status, exc.message
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        status, message = exc.status, exc.reason
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    except Exception:
        log.exception("demo registry handler failed for %s", request.raw_path)
        status, message = 500, "Internal Server Error"
    return _error(status, message, keep)


def make_registry_app(
    catalogue: Catalogue | Mapping[str, Any],
    *,
    base_path: str = "/ga4gh/trs/v2",
    page_size: int = 100,
    offset_style: Literal["index", "page"] = "index",
    middlewares: Sequence[Middleware] = (),
) -> web.Application:
    """Build an aiohttp app serving `catalogue` as a TRS 2.0.1 registry under `base_path`.

    `page_size` is both the default and the maximum `limit`; `offset_style` "index" reads
    `offset` as a row index, "page" as a page number (Dockstore). Custom `middlewares` run
    inside the request recorder and the JSON error mapper. Swap the catalogue at runtime with
    `app[STATE].catalogue = new`; every request is appended to `app[REQUESTS]`.
    """
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    if offset_style not in ("index", "page"):
        raise ValueError(f"offset_style must be 'index' or 'page', not {offset_style!r}")
    base = "/" + base_path.strip("/") if base_path.strip("/") else ""
    app = web.Application(middlewares=[_record_requests, _json_errors, *middlewares])
    app[REQUESTS] = []
    app[STATE] = RegistryState(catalogue)
    app[CONFIG] = RegistryConfig(base, page_size, offset_style)
    version = "/tools/{id}/versions/{version_id}"
    routes = {
        "/service-info": _service_info,
        "/toolClasses": _tool_classes,
        "/tools": _list_tools,
        "/tools/{id}": _get_tool,
        "/tools/{id}/versions": _list_versions,
        version: _get_version,
        version + "/containerfile": _containerfile,
        version + "/{type}/descriptor": _descriptor,
        version + "/{type}/descriptor/{relative_path:.+}": _descriptor,
        version + "/{type}/files": _files,
        version + "/{type}/tests": _tests,
    }
    for path, handler in routes.items():
        app.router.add_get(base + path, handler)
    return app
