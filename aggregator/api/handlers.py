"""TRS read handlers, named after the TRS operations, for one profile under one base path.

Every response is rendered once per catalogue generation from one snapshot of the database
and then served from the response cache (``api/cache.py``); /service-info alone is read fresh.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from typing import Any, Final
from urllib.parse import quote, unquote

import orjson
from aiohttp import web

from aggregator import __version__, redact
from aggregator.api import files
from aggregator.api.cache import RESPONSE_CACHE, Entry, Render, cache_key, make_entry, send
from aggregator.api.negotiation import wants_zip
from aggregator.api.paging import paging_headers, parse_page
from aggregator.api.profiles import PROFILES, Profile
from aggregator.db import catalogue as db
from aggregator.db import queries
from aggregator.errors import BadRequest, NotFound
from aggregator.keys import CONFIG
from aggregator.trs import render
from aggregator.trs.model import CatalogueTool, CatalogueVersion
from aggregator.trs.parse import DescriptorType, parse_descriptor_type

DEFAULT_STALE_AFTER_S: Final = 7 * 86400
_TYPES: Final = "CWL, WDL, NFL, GALAXY or SMK, optionally as PLAIN_<type>"


def stale_after_s(request: web.Request) -> int:
    """Seconds after its last confirmation that an upstream record counts as stale."""
    return int(request.app[CONFIG].harvest.stale_after_s)


def error_entry(e: NotFound | BadRequest) -> Entry:
    """An error rendered as TRS Error JSON."""
    return make_entry(
        e.status,
        orjson.dumps(render.error(e.status, e.message)),
        "application/json",
        generation=None,
    )


def _tool_query(q: Any) -> queries.ToolQuery:
    """Read the /tools filters; empty values are "not filtered"."""

    def get(name: str) -> str | None:
        value = q.get(name)
        return value or None

    descriptor_type = None
    if get("descriptorType"):
        parsed = parse_descriptor_type(q["descriptorType"])
        if parsed is None:
            raise BadRequest(f"descriptorType must be {_TYPES}, not {q['descriptorType']!r}")
        descriptor_type = parsed.name
    checker = None
    if get("checker"):
        value = q["checker"].strip().lower()
        if value not in ("true", "false"):
            raise BadRequest(f"checker must be true or false, not {q['checker']!r}")
        checker = value == "true"
    return queries.ToolQuery(
        id=get("id"),
        alias=get("alias"),
        toolclass=get("toolClass"),
        descriptor_type=descriptor_type,
        registry=get("registry"),
        organization=get("organization"),
        name=get("name"),
        toolname=get("toolname"),
        description=get("description"),
        author=get("author"),
        checker=checker,
    )


def find_version(tool: CatalogueTool, requested: str) -> CatalogueVersion:
    """The version *requested* names: its key, an upstream id of one of its sources (Dockstore's
    ``<tool>:<name>``), its name (Toil asks by name), or its key in another case when that is
    unambiguous."""
    for v in tool.versions:
        if v.key == requested:
            return v
    for v in tool.versions:
        if any(s.upstream_id == requested for s in v.sources):
            return v
    for candidates in (
        [v for v in tool.versions if v.doc.get("name") == requested],
        [v for v in tool.versions if v.key.lower() == requested.lower()],
    ):
        if len(candidates) == 1:
            return candidates[0]
    raise NotFound(f"tool {tool.id!r} has no version {requested!r}")


def _service_id(host: str) -> str:
    """A reverse-domain service id from our host name."""
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 else host.strip("[]")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        if "." in name:
            return ".".join(reversed(name.lower().split("."))) + ".trs-aggregator"
    return "trs-aggregator"


class TrsApi:
    """The TRS endpoints of *profile* mounted at *mount*."""

    def __init__(self, profile: Profile, mount: str) -> None:
        self.profile = profile
        self.mount = mount

    def base_url(self, request: web.Request) -> str:
        """Our TRS base URL for this request (``server.public_url`` when configured)."""
        public = request.app[CONFIG].server.public_url.rstrip("/")
        return (public or f"{request.scheme}://{request.host}") + self.mount

    def _staleness(self, request: web.Request) -> render.Staleness | None:
        if self.profile.strict:
            return None
        return render.Staleness(
            dt.datetime.now(dt.UTC), dt.timedelta(seconds=stale_after_s(request))
        )

    @staticmethod
    def _expires(staleness: render.Staleness | None) -> float | None:
        if staleness is None or staleness.next_change is None:
            return None
        return time.monotonic() + (staleness.next_change - staleness.now).total_seconds()

    async def _serve(
        self, request: web.Request, render_entry: Render, *, cacheable: bool = True
    ) -> web.Response:
        cache = request.app[RESPONSE_CACHE]
        key = cache_key(request)
        entry = cache.get(key) if cacheable else None
        if entry is None:

            async def guarded(conn: Any, generation: int) -> Entry:
                try:
                    return await render_entry(conn, generation)
                except (NotFound, BadRequest) as e:
                    return error_entry(e)

            entry = await cache.fill(key if cacheable else object(), guarded)
        return await send(request, entry)

    async def _tool(self, conn: Any, requested: str) -> CatalogueTool:
        tool_id = await db.resolve_tool_id(conn, requested)
        if tool_id is None and "%" in requested:
            # Encoded twice by the client (trs-cli quotes an id that is already quoted).
            tool_id = await db.resolve_tool_id(conn, unquote(requested))
        tool = (await db.fetch_tools(conn, [tool_id])).get(tool_id) if tool_id else None
        if tool is None:
            raise NotFound(f"no tool with id {requested!r}")
        return tool

    def _type(self, request: web.Request) -> DescriptorType:
        raw = request.match_info["type"]
        parsed = parse_descriptor_type(raw)
        if parsed is None:
            raise NotFound(f"unknown descriptor type {raw!r}; expected {_TYPES}")
        return parsed

    # -- handlers ------------------------------------------------------------------------------

    async def get_service_info(self, request: web.Request) -> web.Response:
        """GET /service-info: GA4GH service-info 1.0 (type org.ga4gh:trs:2.0.1), summarising the
        upstreams."""
        base = self.base_url(request)

        async def build(conn: Any, generation: int) -> Entry:
            upstreams = await queries.upstream_summaries(conn)
            tools, _, published_at = await queries.catalogue_summary(conn)
            listed = ", ".join(f"{u.name} ({u.tools} tools)" for u in upstreams)
            origin = base[: -len(self.mount)]
            plain = {
                "id": _service_id(request.host),
                "name": "trs-aggregator",
                "type": {"group": "org.ga4gh", "artifact": "trs", "version": "2.0.0"},
                "description": f"A federated GA4GH TRS catalogue of {tools} tools",
                "organization": {"name": "trs-aggregator", "url": origin + "/"},
                "documentationUrl": origin + "/aggregator/v1/openapi.json",
                "updatedAt": published_at.isoformat(),
                "version": __version__,
            }
            if self.profile.strict:
                # Only the fields of GA4GH service-info 1.0: strict clients forbid others.
                return files.json_entry(plain, generation)
            return files.json_entry(
                {
                    "id": _service_id(request.host),
                    "name": "trs-aggregator",
                    "type": {"group": "org.ga4gh", "artifact": "trs", "version": "2.0.1"},
                    "description": (
                        f"A federated GA4GH TRS catalogue of {tools} tools merged from "
                        f"{len(upstreams)} upstream registries"
                        + (f": {listed}." if listed else ".")
                    ),
                    "organization": {"name": "trs-aggregator", "url": origin + "/"},
                    "documentationUrl": origin + "/aggregator/v1/openapi.json",
                    "updatedAt": published_at.isoformat(),
                    "version": __version__,
                    "catalogue": {
                        "tools": tools,
                        "generation": generation,
                        "published_at": published_at.isoformat(),
                    },
                    "upstreams": [
                        {
                            "name": u.name,
                            "url": redact.text(u.url),
                            "kind": u.kind,
                            "mode": u.mode,
                            "priority": u.priority,
                            "service_name": u.service_name,
                            "tools": u.tools,
                            "last_confirmed": u.last_confirmed.isoformat()
                            if u.last_confirmed
                            else None,
                        }
                        for u in upstreams
                    ],
                },
                generation,
            )

        return await self._serve(request, build, cacheable=False)

    async def list_tool_classes(self, request: web.Request) -> web.Response:
        """GET /toolClasses: the union of the upstreams' tool classes."""

        async def build(conn: Any, generation: int) -> Entry:
            classes = render.union_tool_classes(await queries.tool_classes(conn))
            return files.json_entry(classes, generation)

        return await self._serve(request, build)

    async def list_tools(self, request: web.Request) -> web.Response:
        """GET /tools: filters, keyset paging under numeric offsets, paging headers."""

        async def build(conn: Any, generation: int) -> Entry:
            page = parse_page(request.query)
            query = _tool_query(request.query)
            index = await request.app[RESPONSE_CACHE].page_index(conn, generation, query)
            ids = await queries.page_ids(conn, query, index, offset=page.offset, limit=page.limit)
            found = await db.fetch_tools(conn, ids)
            base, staleness = self.base_url(request), self._staleness(request)
            body = [
                render.render_tool(base, found[i], self.profile.schema, staleness)
                for i in ids
                if i in found
            ]
            headers = paging_headers(base + "/tools", request.query, page, index.total)
            return files.json_entry(
                body, generation, headers=headers, expires=self._expires(staleness)
            )

        return await self._serve(request, build)

    async def get_tool(self, request: web.Request) -> web.Response:
        """GET /tools/{id}."""

        async def build(conn: Any, generation: int) -> Entry:
            tool = await self._tool(conn, request.match_info["id"])
            staleness = self._staleness(request)
            body = render.render_tool(self.base_url(request), tool, self.profile.schema, staleness)
            return files.json_entry(body, generation, expires=self._expires(staleness))

        return await self._serve(request, build)

    async def list_tool_versions(self, request: web.Request) -> web.Response:
        """GET /tools/{id}/versions."""

        async def build(conn: Any, generation: int) -> Entry:
            tool = await self._tool(conn, request.match_info["id"])
            staleness = self._staleness(request)
            base = self.base_url(request)
            body = [
                render.render_version(base, tool, v, self.profile.schema, staleness)
                for v in tool.versions
            ]
            return files.json_entry(body, generation, expires=self._expires(staleness))

        return await self._serve(request, build)

    async def get_tool_version(self, request: web.Request) -> web.Response:
        """GET /tools/{id}/versions/{version_id}."""

        async def build(conn: Any, generation: int) -> Entry:
            tool = await self._tool(conn, request.match_info["id"])
            v = find_version(tool, request.match_info["version_id"])
            staleness = self._staleness(request)
            body = render.render_version(
                self.base_url(request), tool, v, self.profile.schema, staleness
            )
            return files.json_entry(body, generation, expires=self._expires(staleness))

        return await self._serve(request, build)

    async def _version(self, conn: Any, request: web.Request) -> tuple[str, CatalogueVersion]:
        tool = await self._tool(conn, request.match_info["id"])
        return tool.id, find_version(tool, request.match_info["version_id"])

    async def get_descriptor(self, request: web.Request) -> web.Response:
        """GET …/{type}/descriptor and …/{type}/descriptor/{relative_path}."""

        async def build(conn: Any, generation: int) -> Entry:
            t = self._type(request)
            tool_id, v = await self._version(conn, request)
            relative = request.match_info.get("relative_path")
            if v.served.mode == "index":
                tail = f"{request.match_info['type']}/descriptor"
                if relative is not None:
                    tail += "/" + quote(relative, safe="")
                return files.redirect_entry(v, tail, request.rel_url.raw_query_string)
            return await files.descriptor(
                conn,
                generation,
                v,
                t,
                relative,
                strict=self.profile.strict,
                version_url=render.version_url(self.base_url(request), tool_id, v.key),
            )

        return await self._serve(request, build)

    async def get_above_descriptor(self, request: web.Request) -> web.Response:
        """GET …/{type}/{path}: a file cwltool asks for after resolving a primary descriptor's
        ``../`` import against ``…/{type}/descriptor/{encoded primary path}``.

        ``…/{type}/x`` is one level above ``descriptor/``; when ``{type}`` is no descriptor
        type (or no file is found that way), ``{type}/x`` is read two levels above it, as
        ``…/versions/{v}/{dir}/x`` (``../../{dir}/x``), and answered as plain bytes. Deeper
        imports cannot be told from the TRS routes above ``/versions/{v}`` (see find_file).
        """

        async def build(conn: Any, generation: int) -> Entry:
            tool_id, v = await self._version(conn, request)
            raw_type = request.match_info["type"]
            relative = request.match_info["relative_path"]
            if v.served.mode == "index":
                tail = f"{quote(raw_type, safe='')}/{quote(relative, safe='/')}"
                return files.redirect_entry(v, tail, request.query_string)
            parsed = parse_descriptor_type(raw_type)
            attempts: list[tuple[DescriptorType, str, int]] = (
                [(parsed, relative, 1)] if parsed is not None else []
            )
            attempts.extend(
                (DescriptorType(str(name), plain=True), f"{raw_type}/{relative}", 2)
                for name in v.doc.get("descriptor_type") or ()
            )
            version_url = render.version_url(self.base_url(request), tool_id, v.key)
            for t, path, level in attempts:
                try:
                    return await files.descriptor(
                        conn,
                        generation,
                        v,
                        t,
                        path,
                        strict=self.profile.strict,
                        version_url=version_url,
                        level=level,
                    )
                except NotFound:
                    continue
            raise NotFound(f"no file {raw_type}/{relative!r} in version {v.key!r}")

        return await self._serve(request, build)

    async def list_files(self, request: web.Request) -> web.Response:
        """GET …/{type}/files, and a zip of them with ``?format=zip`` or Accept:
        application/zip."""

        async def build(conn: Any, generation: int) -> Entry:
            t = self._type(request)
            tool_id, v = await self._version(conn, request)
            fmt = request.query.get("format")
            if fmt not in (None, "", "zip"):
                raise BadRequest(f"format must be 'zip', not {fmt!r}")
            if v.served.mode == "index":
                return files.redirect_entry(
                    v, f"{request.match_info['type']}/files", request.rel_url.raw_query_string
                )
            return await files.files(
                conn,
                generation,
                tool_id,
                v,
                t,
                want_zip=fmt == "zip" or wants_zip(request),
                strict=self.profile.strict,
            )

        return await self._serve(request, build)

    async def list_tests(self, request: web.Request) -> web.Response:
        """GET …/{type}/tests."""

        async def build(conn: Any, generation: int) -> Entry:
            t = self._type(request)
            _, v = await self._version(conn, request)
            if v.served.mode == "index":
                return files.redirect_entry(
                    v, f"{request.match_info['type']}/tests", request.rel_url.raw_query_string
                )
            return await files.tests(conn, generation, v, t)

        return await self._serve(request, build)

    async def get_containerfile(self, request: web.Request) -> web.Response:
        """GET …/containerfile."""

        async def build(conn: Any, generation: int) -> Entry:
            _, v = await self._version(conn, request)
            if v.served.mode == "index":
                return files.redirect_entry(v, "containerfile", request.rel_url.raw_query_string)
            return await files.containerfiles(conn, generation, v)

        return await self._serve(request, build)

    def add_routes(self, app: web.Application) -> None:
        """Mount every endpoint of the profile under the base path (HEAD with each GET)."""
        m = self.mount
        v = m + "/tools/{id}/versions/{version_id}"
        app.router.add_get(m + "/service-info", self.get_service_info)
        app.router.add_get(m + "/toolClasses", self.list_tool_classes)
        app.router.add_get(m + "/tools", self.list_tools)
        app.router.add_get(m + "/tools/{id}", self.get_tool)
        app.router.add_get(m + "/tools/{id}/versions", self.list_tool_versions)
        app.router.add_get(v, self.get_tool_version)
        app.router.add_get(v + "/containerfile", self.get_containerfile)
        app.router.add_get(v + "/{type}/descriptor", self.get_descriptor)
        app.router.add_get(v + "/{type}/descriptor/{relative_path:.+}", self.get_descriptor)
        app.router.add_get(v + "/{type}/files", self.list_files)
        app.router.add_get(v + "/{type}/tests", self.list_tests)
        # cwltool resolves a primary descriptor's "../x" imports against a URL in which the
        # primary's own directory was encoded into one segment: "…/{type}/x". Last, so that
        # the routes above win.
        app.router.add_get(v + "/{type}/{relative_path:.+}", self.get_above_descriptor)


def add_routes(app: web.Application) -> None:
    """Mount every profile at each of its base paths."""
    for profile in PROFILES:
        for mount in profile.mounts:
            TrsApi(profile, mount).add_routes(app)
