"""Rendering our TRS documents from stored upstream records (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

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


def render_tool(base: str, tool_id: str, doc: Mapping[str, Any],
                versions: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """A Tool: the primary upstream document with our id, url and the given versions.

    *versions* are (key, document) pairs; a key already rendered is skipped, so the first
    source of a version name wins.
    """
    out = dict(doc)
    out["id"] = tool_id
    out["url"] = tool_url(base, tool_id)
    out.setdefault("organization", "")
    out.setdefault("aliases", [])
    rendered: list[dict[str, Any]] = []
    keys: set[str] = set()
    for key, vdoc in versions:
        if key not in keys:
            keys.add(key)
            rendered.append(render_version(base, tool_id, key, vdoc))
    out["versions"] = rendered
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
