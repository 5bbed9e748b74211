"""Rendering our TRS documents from the catalogue, in either profile (pure: no I/O).

Two profiles share this code. The *default* profile emits TRS 2.0.1 documents with the
upstream's own extra fields and our provenance extension (``sources``); the *strict* profile
emits exactly the fields of TRS 2.0.0, with the values its enums allow, so that client
libraries whose models forbid unknown fields can read every answer.

Upstream documents are read tolerantly but not trusted: every known field is checked against
the type the schema gives it (``conform``), coerced where that is lossless (a numeric id becomes
a string) and dropped where it is not, so that every answer validates against the schema.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from aggregator.trs.model import (
    DESCRIPTOR_TYPES,
    DESCRIPTOR_TYPES_200,
    FILE_TYPES,
    IMAGE_TYPES,
    CatalogueTool,
    CatalogueVersion,
    Source,
    VersionSource,
)

SHA256: Final = "sha-256"

# A field spec: a converter that returns the conforming value, or _DROP.
_DROP: Final = object()
Conv = Callable[[Any], Any]


def _string(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return _DROP


def _boolean(value: Any) -> Any:
    return value if isinstance(value, bool) else _DROP


def _integer(value: Any) -> Any:
    if isinstance(value, bool):
        return _DROP
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else _DROP
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return _DROP


def _enum(values: Sequence[str]) -> Conv:
    by_upper = {v.upper(): v for v in values}

    def conv(value: Any) -> Any:
        return by_upper.get(value.upper(), _DROP) if isinstance(value, str) else _DROP

    return conv


def _array(item: Conv) -> Conv:
    def conv(value: Any) -> Any:
        if not isinstance(value, list):
            return _DROP
        out = [item(v) for v in value]
        return [v for v in out if v is not _DROP]

    return conv


def _unique(conv: Conv) -> Conv:
    def unique(value: Any) -> Any:
        out = conv(value)
        return out if out is _DROP else list(dict.fromkeys(out))

    return unique


def _object(
    fields: Mapping[str, Conv], *, keep_extra: bool, required: Mapping[str, Any] | None = None
) -> Conv:
    def conv(value: Any) -> Any:
        if not isinstance(value, Mapping):
            return _DROP
        return conform(value, fields, keep_extra=keep_extra, required=required)

    return conv


def conform(
    doc: Mapping[str, Any],
    fields: Mapping[str, Conv],
    *,
    keep_extra: bool,
    required: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """*doc* with every field of *fields* converted (or dropped), and *required* defaults.

    Fields not in *fields* are kept when *keep_extra* (``None`` values excepted: no TRS field
    is nullable), else dropped.
    """
    out: dict[str, Any] = {}
    for key, value in doc.items():
        conv = fields.get(key)
        if conv is None:
            if keep_extra and value is not None:
                out[key] = value
            continue
        if value is None:
            continue
        converted = conv(value)
        if converted is not _DROP:
            out[key] = converted
    for key, default in (required or {}).items():
        out.setdefault(key, default() if callable(default) else default)
    return out


@dataclass(frozen=True, slots=True)
class Schema:
    """The field specs of one TRS version's documents."""

    strict: bool
    descriptor_types: tuple[str, ...]
    tool: Mapping[str, Conv]
    version: Mapping[str, Conv]
    tool_class: Mapping[str, Conv]


def _schema(*, strict: bool) -> Schema:
    types = DESCRIPTOR_TYPES_200 if strict else DESCRIPTOR_TYPES
    keep = not strict
    checksum = _object({"checksum": _string, "type": _string}, keep_extra=False)
    image = _object(
        {
            "registry_host": _string,
            "image_name": _string,
            "size": _integer,
            "updated": _string,
            "checksum": _array(checksum),
            "image_type": _enum(IMAGE_TYPES),
        },
        keep_extra=keep,
    )
    tool_class = {"id": _string, "name": _string, "description": _string}
    version: dict[str, Conv] = {
        "author": _array(_string),
        "name": _string,
        "url": _string,
        "id": _string,
        "is_production": _boolean,
        "images": _array(image),
        "descriptor_type": _unique(_array(_enum(types))),
        "containerfile": _boolean,
        "meta_version": _string,
        "verified": _boolean,
        "verified_source": _array(_string),
        "signed": _boolean,
        "included_apps": _array(_string),
    }
    if not strict:
        version["descriptor_type_version"] = _type_versions
    tool: dict[str, Conv] = {
        "url": _string,
        "id": _string,
        "aliases": _unique(_array(_string)),
        "organization": _string,
        "name": _string,
        "toolclass": _object(tool_class, keep_extra=keep),
        "description": _string,
        "meta_version": _string,
        "has_checker": _boolean,
        "checker_url": _string,
    }
    return Schema(strict, types, tool, version, tool_class)


def _type_versions(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return _DROP
    strings = _array(_string)
    out = {str(k): strings(v) for k, v in value.items()}
    return {k: v for k, v in out.items() if v is not _DROP}


DEFAULT: Final = _schema(strict=False)
STRICT: Final = _schema(strict=True)


@dataclass(slots=True)
class Staleness:
    """Decides whether a record is stale at *now*, and remembers when the next one turns stale.

    Attributes:
        now: The time the document is rendered at.
        after: How long after its last confirmation a record becomes stale.
        next_change: The earliest time after *now* at which a rendered ``stale`` flips.
    """

    now: dt.datetime
    after: dt.timedelta
    next_change: dt.datetime | None = field(default=None)

    def stale(self, last_confirmed: dt.datetime) -> bool:
        """Whether a record last confirmed at *last_confirmed* is stale."""
        deadline = last_confirmed + self.after
        if deadline <= self.now:
            return True
        if self.next_change is None or deadline < self.next_change:
            self.next_change = deadline
        return False


def tool_url(base: str, tool_id: str) -> str:
    """Our URL of a tool: the id percent-encoded into one segment."""
    return f"{base}/tools/{quote(tool_id, safe='')}"


def version_url(base: str, tool_id: str, key: str) -> str:
    """Our URL of a tool version."""
    return f"{tool_url(base, tool_id)}/versions/{quote(key, safe='')}"


def upstream_tool_url(upstream_base: str, upstream_id: str) -> str:
    """The upstream's TRS URL of one of its tools."""
    return tool_url(upstream_base.rstrip("/"), upstream_id)


def upstream_version_url(source: VersionSource) -> str:
    """The upstream's TRS URL of one of its versions."""
    return version_url(source.upstream_base.rstrip("/"), source.upstream_tool_id, source.key)


def _tool_source(s: Source, staleness: Staleness) -> dict[str, Any]:
    return {
        "upstream": s.upstream,
        "upstream_id": s.upstream_id,
        "upstream_url": upstream_tool_url(s.upstream_base, s.upstream_id),
        "first_seen": s.first_seen.isoformat(),
        "last_confirmed": s.last_confirmed.isoformat(),
        "stale": staleness.stale(s.last_confirmed),
    }


def _version_source(
    v: VersionSource, members: Mapping[tuple[str, str], Source], staleness: Staleness
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "upstream": v.upstream,
        "upstream_id": v.upstream_id,
        "upstream_tool_id": v.upstream_tool_id,
        "upstream_url": upstream_version_url(v),
    }
    # A version's provenance times are its tool record's.
    member = members.get((v.upstream, v.upstream_tool_id))
    if member is not None:
        out["first_seen"] = member.first_seen.isoformat()
        out["last_confirmed"] = member.last_confirmed.isoformat()
        out["stale"] = staleness.stale(member.last_confirmed)
    return out


def render_version(
    base: str,
    tool: CatalogueTool,
    version: CatalogueVersion,
    schema: Schema,
    staleness: Staleness | None,
) -> dict[str, Any]:
    """A ToolVersion: the served source's document with our id and url, conformed to *schema*.

    In the default profile (*staleness* given) it names its ``sources``.
    """
    out = conform(version.doc, schema.version, keep_extra=not schema.strict)
    out["url"] = version_url(base, tool.id, version.key)
    out["id"] = version.key
    out.setdefault("name", version.key)
    if staleness is not None:
        members = {(s.upstream, s.upstream_id): s for s in tool.sources}
        out["sources"] = [_version_source(v, members, staleness) for v in version.sources]
        if version.conflict:
            out["conflict"] = True
    return out


def render_tool(
    base: str, tool: CatalogueTool, schema: Schema, staleness: Staleness | None
) -> dict[str, Any]:
    """A Tool: the merged document with our id and url and the merged versions.

    In the default profile (*staleness* given) it names its ``sources``, primary first.
    """
    out = conform(
        tool.doc,
        schema.tool,
        keep_extra=not schema.strict,
        required={
            "organization": "",
            "toolclass": lambda: {"id": "", "name": "", "description": ""},
        },
    )
    out.pop("versions", None)
    out["id"] = tool.id
    out["url"] = tool_url(base, tool.id)
    out.setdefault("aliases", [])
    out["versions"] = [render_version(base, tool, v, schema, staleness) for v in tool.versions]
    if staleness is not None:
        out["sources"] = [_tool_source(s, staleness) for s in tool.sources]
    return out


def checksums(sha256: str | None) -> list[dict[str, str]]:
    """The ``checksum`` array of a FileWrapper: sha-256 of the bytes served, when known."""
    return [{"checksum": sha256, "type": SHA256}] if sha256 else []


def file_wrapper(
    content: bytes | None,
    sha256: str | None,
    url: str | None,
    *,
    image_type: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A FileWrapper for stored bytes; bytes that are not UTF-8 are offered by url only.

    *url* is where the bytes are served (the upstream's original, or our own endpoint for a
    binary file); the content is our mirror's copy, and the checksum is of exactly the bytes
    stored, whether or not they are inline. *extra* holds the upstream's own further fields
    (default profile only), which never replace ours.
    """
    out: dict[str, Any] = {}
    text: str | None = None
    if content is not None:
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is not None:
        out["content"] = text
    out["checksum"] = checksums(sha256) if content is not None else []
    if url:
        out["url"] = url
    if image_type is not None:
        out["image_type"] = image_type
    for key, value in (extra or {}).items():
        out.setdefault(key, value)
    return out


def tool_file(
    path: str,
    file_type: str,
    sha256: str | None,
    *,
    strict: bool,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ToolFile; 2.0.1 adds one ``checksum`` object (not an array), which 2.0.0 lacks.

    *extra* holds the upstream's own further fields, kept unless *strict*.
    """
    out: dict[str, Any] = {
        "path": path,
        "file_type": file_type if file_type in FILE_TYPES else "OTHER",
    }
    if sha256 and not strict:
        out["checksum"] = {"checksum": sha256, "type": SHA256}
    if not strict:
        for key, value in (extra or {}).items():
            out.setdefault(key, value)
    return out


def union_tool_classes(per_upstream: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The union of the upstreams' tool classes, one per name (case-insensitive), sorted.

    The first upstream (in the order given) to name a class gives its id and description.
    """
    seen: dict[str, dict[str, Any]] = {}
    for classes in per_upstream:
        for c in classes:
            if not isinstance(c, Mapping):
                continue
            name = str(c.get("name") or "")
            if name and name.lower() not in seen:
                seen[name.lower()] = {
                    "id": str(c.get("id") or ""),
                    "name": name,
                    "description": str(c.get("description") or ""),
                }
    return sorted(seen.values(), key=lambda c: c["name"].lower())


def error(code: int, message: str) -> dict[str, Any]:
    """A TRS Error."""
    return {"code": code, "message": message}
