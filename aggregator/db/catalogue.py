"""Reading the published catalogue: resolving ids, merged tools with their sources, files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aggregator.trs.model import CatalogueTool, CatalogueVersion, Source, VersionSource

if TYPE_CHECKING:
    from aggregator.db.pool import Executor


@dataclass(frozen=True, slots=True)
class FileRow:
    """One stored file of a version."""

    descriptor_type: str
    path: str
    file_type: str
    sha256: str | None
    checksum_status: str
    url: str | None
    content: bytes | None
    #: The upstream's own fields: {"wrapper": {...}, "tool_file": {...}}.
    extra: dict[str, Any] | None = None


_RESOLVE: Final = "select catalogue_resolve($1)"


async def resolve_tool_id(conn: Executor, requested: str) -> str | None:
    """The catalogue tool that *requested* names, if any: its own id, a member's qualified or
    plain upstream id, or an id it once had (see ``catalogue_resolve`` in sql/)."""
    tool_id: str | None = await conn.fetchval(_RESOLVE, requested)
    return tool_id


_TOOLS: Final = """
select c.id, c.conflicts, c.primary_member_id, t.id as member_id, t.external_id, t.doc,
       u.name as upstream, u.url as upstream_base, u.mode, t.first_seen, t.last_confirmed,
       t.tombstoned_at, m.joined_by
from catalogue_tools c
join catalogue_members m on m.tool_id = c.id
join upstream_tools t on t.id = m.upstream_tool_id
join upstreams u on u.id = t.upstream_id
where c.id = any($1::text[])
order by c.id, t.id <> c.primary_member_id, u.priority, u.name, t.external_id
"""

_VERSIONS: Final = """
select cv.tool_id, cv.key, cv.conflict, v.id as version_row_id, v.key as upstream_key,
       v.external_id, v.doc, t.external_id as upstream_tool_id, u.name as upstream,
       u.url as upstream_base, u.mode
from catalogue_versions cv
cross join lateral unnest(cv.source_ids) with ordinality as s(version_id, n)
join upstream_versions v on v.id = s.version_id
join upstream_tools t on t.id = v.upstream_tool_id
join upstreams u on u.id = t.upstream_id
where cv.tool_id = any($1::text[])
order by cv.tool_id, cv.position, cv.key, s.n
"""


async def fetch_tools(conn: Executor, tool_ids: Sequence[str]) -> dict[str, CatalogueTool]:
    """The catalogue tools *tool_ids* with their sources and versions (absent ids left out)."""
    ids = list(tool_ids)
    out: dict[str, CatalogueTool] = {}
    for r in await conn.fetch(_TOOLS, ids):
        tool = out.get(r["id"])
        if tool is None:
            doc = dict(r["doc"])
            doc["aliases"] = []
            tool = out[r["id"]] = CatalogueTool(r["id"], doc, [], [], r["conflicts"])
        # Aliases are the union of the members', the primary's first.
        aliases = tool.doc["aliases"]
        for alias in r["doc"].get("aliases") or []:
            if alias not in aliases:
                aliases.append(alias)
        tool.sources.append(
            Source(
                r["member_id"],
                r["upstream"],
                r["external_id"],
                r["upstream_base"],
                r["mode"],
                r["first_seen"],
                r["last_confirmed"],
                r["tombstoned_at"],
                r["joined_by"],
            )
        )
    current: CatalogueVersion | None = None
    current_tool = ""
    for r in await conn.fetch(_VERSIONS, ids):
        source = VersionSource(
            r["version_row_id"],
            r["upstream"],
            r["external_id"],
            r["upstream_tool_id"],
            r["upstream_base"],
            r["upstream_key"],
            r["mode"],
        )
        if current is None or (current.key, current_tool) != (r["key"], r["tool_id"]):
            current = CatalogueVersion(r["key"], r["doc"], r["conflict"], source, [])
            current_tool = r["tool_id"]
            out[current_tool].versions.append(current)
        current.sources.append(source)
    return out


# Without content the join to file_contents is removed by the planner.
_FILES_TEMPLATE = """
select f.descriptor_type, f.path, f.file_type, f.sha256, f.checksum_status, f.url,
       {content} as content, f.extra
from upstream_files f left join file_contents fc on fc.sha256 = f.sha256
where f.upstream_version_id = $1
  and ($2::text is null or f.descriptor_type in ($2, ''))
  and ($3::text is null or f.path = $3)
  and ($4::text[] is null or f.file_type = any($4))
order by f.file_type <> 'PRIMARY_DESCRIPTOR', f.path collate "C"
"""
_FILES: Final = _FILES_TEMPLATE.format(content="fc.content")
_FILES_WITHOUT_CONTENT: Final = _FILES_TEMPLATE.format(content="null::bytea")


async def fetch_files(
    conn: Executor,
    version_id: int,
    *,
    descriptor_type: str | None = None,
    path: str | None = None,
    file_types: Sequence[str] | None = None,
    with_content: bool = True,
) -> list[FileRow]:
    """Files of version *version_id*, optionally narrowed by type, path and file types.

    Type-independent containerfiles (descriptor type '') are included with any type.
    """
    rows = await conn.fetch(
        _FILES if with_content else _FILES_WITHOUT_CONTENT,
        version_id,
        descriptor_type,
        path,
        list(file_types) if file_types else None,
    )
    return [FileRow(**dict(r)) for r in rows]
