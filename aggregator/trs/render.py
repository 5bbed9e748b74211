"""Rendering our TRS documents from stored upstream records (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

from aggregator.trs.model import CatalogueTool

SHA256: Final = "sha-256"


def tool_url(base: str, tool_id: str) -> str:
    """Our URL of a tool: the id percent-encoded into one segment."""
    return f"{base}/tools/{quote(tool_id, safe='')}"


def version_url(base: str, tool_id: str, key: str) -> str:
    """Our URL of a tool version."""
    return f"{tool_url(base, tool_id)}/versions/{quote(key, safe='')}"


def render_version(base: str, tool_id: str, key: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """A ToolVersion: the upstream document with our url."""
    out = dict(doc)
    out["url"] = version_url(base, tool_id, key)
    out.setdefault("id", key)
    out.setdefault("name", key)
    return out


def render_tool(base: str, tool: CatalogueTool) -> dict[str, Any]:
    """A Tool: the primary member's document with our id and url, the members' aliases
    joined, and the merged versions."""
    out = dict(tool.doc)
    out["id"] = tool.id
    out["url"] = tool_url(base, tool.id)
    out.setdefault("organization", "")
    aliases: list[str] = []
    for alias in out.get("aliases") or []:
        if alias not in aliases:
            aliases.append(alias)
    out["aliases"] = aliases
    out["versions"] = [render_version(base, tool.id, v.key, v.doc) for v in tool.versions]
    return out


def file_wrapper(content: bytes | None, sha256: str | None, url: str | None) -> dict[str, Any]:
    """A FileWrapper for stored bytes; bytes that are not UTF-8 are offered by url only."""
    text: str | None = None
    if content is not None:
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    out: dict[str, Any] = {"content": text}
    out["checksum"] = [{"checksum": sha256, "type": SHA256}] if sha256 and text is not None else []
    if url:
        out["url"] = url
    return out


def tool_file(path: str, file_type: str, sha256: str | None) -> dict[str, Any]:
    """A ToolFile (2.0.1: checksum is one object)."""
    out: dict[str, Any] = {"path": path, "file_type": file_type}
    if sha256:
        out["checksum"] = {"checksum": sha256, "type": SHA256}
    return out


def union_tool_classes(per_upstream: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The union of the upstreams' tool classes, one per name, first id and description kept."""
    seen: dict[str, dict[str, Any]] = {}
    for classes in per_upstream:
        for c in classes:
            name = str(c.get("name", ""))
            if name and name.lower() not in seen:
                seen[name.lower()] = {"id": str(c.get("id", "")), "name": name,
                                      "description": str(c.get("description") or "")}
    return sorted(seen.values(), key=lambda c: c["name"])


def error(code: int, message: str) -> dict[str, Any]:
    """A TRS Error."""
    return {"code": code, "message": message}
