"""The catalogue pages: a tool (tabs), a version with its file trees, one file highlighted."""

from __future__ import annotations

import datetime as dt
import posixpath
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from aggregator.api.files import find_file
from aggregator.api.handlers import find_version
from aggregator.api.provenance import provenance
from aggregator.console import highlight
from aggregator.console.render import (
    TRS_MOUNT,
    Page,
    file_path,
    origin,
    safe_href,
    serve_page,
    text,
    text_list,
    tool_path,
    version_path,
)
from aggregator.db import catalogue as db
from aggregator.db.catalogue import FileRow
from aggregator.errors import BadRequest, NotFound
from aggregator.keys import CONFIG
from aggregator.trs.model import CatalogueTool, CatalogueVersion
from aggregator.trs.paths import safe_tree_path
from aggregator.trs.render import tool_url, upstream_version_url, version_url

TABS: Final = ("overview", "versions", "provenance", "use")


def _stale_after(request: web.Request) -> float:
    return request.app[CONFIG].harvest.stale_after_s


# -- tool ----------------------------------------------------------------------------------------


async def _tool(conn: Any, requested: str) -> CatalogueTool:
    tool_id = await db.resolve_tool_id(conn, requested)
    tool = (await db.fetch_tools(conn, [tool_id])).get(tool_id) if tool_id else None
    if tool is None:
        raise NotFound(f"no tool with id {requested!r}")
    return tool


def _authors(tool: CatalogueTool) -> list[str]:
    out: list[str] = []
    for v in tool.versions:
        for a in text_list(v.doc.get("author")):
            if a not in out:
                out.append(a)
    return out


def _types(v: CatalogueVersion) -> list[str]:
    return [t.upper() for t in text_list(v.doc.get("descriptor_type"))]


def _expires_in(tool: CatalogueTool, now: dt.datetime, stale_after: float) -> float | None:
    """Seconds until the next source turns stale (a badge on the page flips then)."""
    pending = [
        (s.last_confirmed + dt.timedelta(seconds=stale_after) - now).total_seconds()
        for s in tool.sources
    ]
    future = [p for p in pending if p > 0]
    return min(future) if future else None


def bioschemas(tool: CatalogueTool, page_url: str, trs: str) -> dict[str, Any]:
    """Bioschemas ComputationalWorkflow (or SoftwareApplication) JSON-LD of *tool*."""
    doc = tool.doc
    is_workflow = (
        "workflow"
        in text(
            (doc.get("toolclass") or {}).get("name")
            if isinstance(doc.get("toolclass"), dict)
            else ""
        ).lower()
    )
    types = sorted({t for v in tool.versions for t in _types(v)})
    out: dict[str, Any] = {
        "@context": "https://schema.org",
        "@type": "ComputationalWorkflow" if is_workflow else "SoftwareApplication",
        "dct:conformsTo": (
            "https://bioschemas.org/profiles/ComputationalWorkflow/1.0-RELEASE"
            if is_workflow
            else "https://bioschemas.org/profiles/Tool/1.0-RELEASE"
        ),
        "@id": page_url,
        "url": page_url,
        "identifier": tool.id,
        "name": text(doc.get("name")) or tool.id,
        "sameAs": [
            f"{s.upstream_base.rstrip('/')}/tools/{quote(s.upstream_id, safe='')}"
            for s in tool.sources
        ],
        "isBasedOn": tool_url(trs, tool.id),
    }
    if text(doc.get("description")):
        out["description"] = text(doc.get("description"))
    if text_list(doc.get("aliases")):
        out["alternateName"] = text_list(doc.get("aliases"))
    if text(doc.get("organization")):
        out["producer"] = {"@type": "Organization", "name": text(doc.get("organization"))}
    authors = _authors(tool)
    if authors:
        out["creator"] = [{"@type": "Person", "name": a} for a in authors]
    if types:
        out["programmingLanguage"] = types
    if tool.versions:
        out["version"] = tool.versions[0].key
    return out


def snippets(tool: CatalogueTool, own: str, trs: str) -> list[dict[str, Any]]:
    """Commands that run or fetch the tool when pasted, newest version first."""
    if not tool.versions:
        return []
    v = tool.versions[0]
    ref = f"{tool.id}:{v.key}"
    types = _types(v) or ["CWL"]
    out: list[dict[str, Any]] = []
    if "CWL" in types:
        out.append(
            {
                "title": "cwltool",
                "note": "cwltool resolves the id through this service's TRS API.",
                "code": f"cwltool --add-ga4gh-tool-registry {shlex.quote(own)} "
                f"{shlex.quote(ref)} job.yml",
            }
        )
    runner = "toil-wdl-runner" if "WDL" in types and "CWL" not in types else "toil-cwl-runner"
    if tool.id.startswith("#workflow/"):
        out.append(
            {
                "title": "Toil",
                "note": "Toil reads TRS ids from the service named by TOIL_TRS_ROOT.",
                "code": f"TOIL_TRS_ROOT={shlex.quote(own)} {runner} {shlex.quote(ref)} job.yml",
            }
        )
    else:
        plain = f"{version_url(trs, tool.id, v.key)}/PLAIN_{types[0]}/descriptor"
        out.append(
            {
                "title": "Toil",
                "note": "Toil takes only #workflow/ ids by TRS; run the descriptor by its URL.",
                "code": f"{runner} {shlex.quote(plain)} job.yml",
            }
        )
    out.append(
        {
            "title": "TRS (this service)",
            "note": "The merged record, with every source.",
            "code": f"curl {shlex.quote(version_url(trs, tool.id, v.key))}",
        }
    )
    out.extend(
        {
            "title": f"TRS ({s.upstream})",
            "note": "The original record at its registry.",
            "code": f"curl {shlex.quote(upstream_version_url(s))}",
        }
        for s in v.sources
    )
    return out


async def _conflict_columns(
    conn: Any, tool: CatalogueTool, keys: Sequence[str]
) -> list[dict[str, Any]]:
    """One column per version of a name clash: where it comes from and what it holds."""
    columns = []
    for key in keys:
        v = next((x for x in tool.versions if x.key == key), None)
        if v is None:
            continue
        rows = await db.fetch_files(conn, v.served.version_row_id, with_content=False)
        columns.append(
            {
                "version": v,
                "upstreams": sorted({s.upstream for s in v.sources}),
                "types": _types(v),
                "authors": text_list(v.doc.get("author")),
                "files": [(r.path, r.sha256) for r in rows if r.file_type != "TEST_FILE"],
            }
        )
    return columns


async def tool_page(request: web.Request) -> web.Response:
    """GET /tools/{id}: the tool's tabs (overview, versions, provenance, use it)."""
    requested = request.match_info["id"]
    tab = request.query.get("tab") or "overview"

    async def build(conn: Any) -> Page:
        if tab not in TABS:
            raise BadRequest(f"tab must be one of {', '.join(TABS)}, not {tab!r}")
        tool = await _tool(conn, requested)
        now = dt.datetime.now(dt.UTC)
        own = origin(request)
        trs = own + TRS_MOUNT
        stale_after = _stale_after(request)
        record = provenance(tool, requested=requested, now=now, stale_after=stale_after)
        clashes = []
        if tab == "versions":
            for c in tool.conflicts:
                if c.get("kind") == "version":
                    columns = await _conflict_columns(conn, tool, c.get("keys") or [])
                    clashes.append(
                        {"name": c.get("version"), "reason": c.get("reason"), "columns": columns}
                    )
        return Page(
            "tool.html",
            {
                "title": text(tool.doc.get("name")) or tool.id,
                "tool": tool,
                "doc": tool.doc,
                "tab": tab,
                "tabs": TABS,
                "record": record,
                "authors": _authors(tool),
                "toolclass": tool.doc.get("toolclass")
                if isinstance(tool.doc.get("toolclass"), dict)
                else {},
                "types": _types,
                "clashes": clashes,
                "refused": [c for c in record["conflicts"] if c.get("kind") == "join_refused"],
                "snippets": snippets(tool, own, trs),
                "trs_json": tool_url(trs, tool.id),
                "provenance_json": f"/aggregator/v1/tools/{quote(tool.id, safe='')}/provenance",
                "jsonld": bioschemas(tool, own + tool_path(tool.id), trs),
            },
            expires_in_s=_expires_in(tool, now, stale_after),
        )

    return await serve_page(request, build)


# -- version and files ---------------------------------------------------------------------------


@dataclass(slots=True)
class Node:
    """A directory of a version's file tree."""

    name: str
    dirs: dict[str, Node] = field(default_factory=dict)
    files: list[tuple[str, FileRow, str]] = field(default_factory=list)


def file_tree(tool_id: str, key: str, rows: Sequence[FileRow], descriptor_type: str) -> Node:
    """The files of one descriptor type as a tree of directories, each file with its page."""
    root = Node("")
    for r in rows:
        path = safe_tree_path(r.path)
        if path is None:  # a path that would leave the tree is never shown
            continue
        parts = path.split("/")
        node = root
        for part in parts[:-1]:
            node = node.dirs.setdefault(part, Node(part))
        node.files.append((parts[-1], r, file_path(tool_id, key, descriptor_type, r.path)))
    return root


def _group(rows: Sequence[FileRow], version_types: Sequence[str]) -> dict[str, list[FileRow]]:
    """Files by descriptor type; a type-independent file (containerfile) goes with each type."""
    types = [t for t in dict.fromkeys([*version_types, *(r.descriptor_type for r in rows)]) if t]
    shared = [r for r in rows if r.descriptor_type == ""]
    if not types:
        return {"": shared} if shared else {}
    return {
        t: sorted(
            [r for r in rows if r.descriptor_type == t] + shared,
            key=lambda r: (r.file_type != "PRIMARY_DESCRIPTOR", r.path),
        )
        for t in types
        if any(r.descriptor_type == t for r in rows) or shared
    }


async def _version(conn: Any, request: web.Request) -> tuple[CatalogueTool, CatalogueVersion]:
    tool = await _tool(conn, request.match_info["id"])
    return tool, find_version(tool, request.match_info["version_id"])


async def version_page(request: web.Request) -> web.Response:
    """GET /tools/{id}/versions/{version_id}: the version, its sources and its file trees."""

    async def build(conn: Any) -> Page:
        tool, v = await _version(conn, request)
        rows = await db.fetch_files(conn, v.served.version_row_id, with_content=False)
        trs = origin(request) + TRS_MOUNT
        groups = _group(rows, _types(v))
        return Page(
            "version.html",
            {
                "title": f"{text(tool.doc.get('name')) or tool.id} {v.key}",
                "tool": tool,
                "v": v,
                "types": _types(v),
                "authors": text_list(v.doc.get("author")),
                "images": [i for i in v.doc.get("images") or [] if isinstance(i, dict)],
                "trees": {t: file_tree(tool.id, v.key, g, t) for t, g in groups.items()},
                "zips": {
                    t: f"{version_url(trs, tool.id, v.key)}/{t}/files?format=zip"
                    for t, g in groups.items()
                    if t and any(r.sha256 for r in g)
                },
                "index_mode": v.served.mode == "index",
                "upstream_url": upstream_version_url(v.served),
                "trs_json": version_url(trs, tool.id, v.key),
                "safe_href": safe_href,
            },
        )

    return await serve_page(request, build)


async def file_page(request: web.Request) -> web.Response:
    """GET /tools/{id}/versions/{version_id}/files?type=T&path=P: one file, highlighted."""
    q = request.query

    async def build(conn: Any) -> Page:
        descriptor_type = q.get("type", "")
        requested = q.get("path", "")
        if not requested:
            raise BadRequest("path is required")
        tool, v = await _version(conn, request)
        rows = await db.fetch_files(
            conn,
            v.served.version_row_id,
            descriptor_type=descriptor_type or None,
            with_content=False,
        )
        if descriptor_type:
            rows = [r for r in rows if r.descriptor_type in (descriptor_type, "")]
        found = find_file(rows, requested)
        full = await db.fetch_files(
            conn,
            v.served.version_row_id,
            descriptor_type=found.descriptor_type or None,
            path=found.path,
        )
        content = next(
            (r.content for r in full if r.descriptor_type == found.descriptor_type), None
        )
        shown = (
            highlight.show(content, found.path, descriptor_type) if content is not None else None
        )
        trs = origin(request) + TRS_MOUNT
        base = version_url(trs, tool.id, v.key)
        api_type = descriptor_type or next(iter(_types(v)), "")
        relative = quote(safe_tree_path(found.path) or found.path, safe="/")
        if api_type:
            trs_json = f"{base}/{api_type}/descriptor/{relative}"
            raw = f"{base}/PLAIN_{api_type}/descriptor/{relative}"
        else:
            trs_json = raw = f"{base}/containerfile"
        groups = _group(rows, _types(v))
        return Page(
            "file.html",
            {
                "title": posixpath.basename(found.path)
                + f" · {text(tool.doc.get('name')) or tool.id}",
                "tool": tool,
                "v": v,
                "f": found,
                "descriptor_type": descriptor_type,
                "shown": shown,
                "size": len(content) if content is not None else None,
                "tree": file_tree(
                    tool.id, v.key, groups.get(descriptor_type, rows), descriptor_type
                ),
                "trs_json": trs_json,
                "raw": raw,
                "upstream_url": safe_href(found.url) or upstream_version_url(v.served),
                "version_href": version_path(tool.id, v.key),
            },
        )

    return await serve_page(request, build)
