"""The published catalogue: rebuilding it after a publish, and every read the API makes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

# Qualified ids name one upstream record: "#upstream/<upstream name>/<upstream id>". A plain
# upstream id that starts with this prefix is never published plain, so the two cannot collide.
QUALIFIED_PREFIX: Final = "#upstream/"

_REBUILD: Final = (
    "delete from catalogue_tools",
    """
    insert into catalogue_tools (id, primary_member_id)
    select case when live.rank = 1 and left(live.external_id, 10) <> '#upstream/'
                then live.external_id
                else '#upstream/' || live.name || '/' || live.external_id end,
           live.id
    from (select t.id, t.external_id, u.name,
                 row_number() over (partition by t.external_id
                                    order by u.priority, u.name) as rank
          from upstream_tools t join upstreams u on u.id = t.upstream_id
          where t.missed_listings < $1) as live
    """,
    """
    insert into catalogue_members (upstream_tool_id, tool_id)
    select primary_member_id, id from catalogue_tools
    """,
    "insert into catalogue_ids (id, tool_id) select id, id from catalogue_tools",
    """
    insert into catalogue_ids (id, tool_id)
    select '#upstream/' || u.name || '/' || t.external_id, m.tool_id
    from catalogue_members m
    join upstream_tools t on t.id = m.upstream_tool_id
    join upstreams u on u.id = t.upstream_id
    on conflict (id) do nothing
    """,
)


async def rebuild_catalogue(conn: asyncpg.Connection[Any], *, tombstone_after: int) -> int:
    """Recompute the published catalogue from the live upstream records; return its generation.

    Each live upstream tool is one catalogue tool. Its id is its upstream id when that is
    unique among the upstreams (else the best-priority upstream keeps it), and its qualified
    id always resolves too. Call inside the publishing transaction.
    """
    for i, statement in enumerate(_REBUILD):
        if i == 1:
            await conn.execute(statement, tombstone_after)
        else:
            await conn.execute(statement)
    generation: int = await conn.fetchval(
        """update catalogue_state set generation = generation + 1, published_at = now()
           returning generation""")
    return generation


async def fetch_generation(conn: asyncpg.Connection[Any] | asyncpg.Pool[Any]) -> int:
    """The catalogue's current generation."""
    value: int = await conn.fetchval("select generation from catalogue_state")
    return value


@dataclass(frozen=True, slots=True)
class ToolFilter:
    """The /tools query filters (None: not filtered)."""

    id: str | None = None
    alias: str | None = None
    toolclass: str | None = None
    organization: str | None = None
    name: str | None = None
    descriptor_type: str | None = None


def _where(f: ToolFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if f.id is not None:
        clauses.append(f"c.id in (select tool_id from catalogue_ids where id = {arg(f.id)})")
    if f.alias is not None:
        clauses.append(f"t.doc->'aliases' ? {arg(f.alias)}")
    if f.toolclass is not None:
        clauses.append(f"t.doc->'toolclass'->>'name' = {arg(f.toolclass)}")
    if f.organization is not None:
        clauses.append(f"t.doc->>'organization' = {arg(f.organization)}")
    if f.name is not None:
        clauses.append(f"t.doc->>'name' = {arg(f.name)}")
    if f.descriptor_type is not None:
        clauses.append(
            f"""exists (select 1 from catalogue_members m2
                        join upstream_versions v on v.upstream_tool_id = m2.upstream_tool_id
                        where m2.tool_id = c.id
                          and v.doc->'descriptor_type' ? {arg(f.descriptor_type)})""")
    return (" where " + " and ".join(clauses)) if clauses else "", args


async def list_tool_ids(conn: asyncpg.Connection[Any] | asyncpg.Pool[Any], f: ToolFilter, *,
                        limit: int, offset: int) -> tuple[list[str], int]:
    """One page of catalogue tool ids in id order, and the number of matching tools."""
    where, args = _where(f)
    base = f"from catalogue_tools c join upstream_tools t on t.id = c.primary_member_id{where}"
    total: int = await conn.fetchval(f"select count(*) {base}", *args)  # noqa: S608
    rows = await conn.fetch(
        f"select c.id {base} order by c.id collate \"C\" limit {int(limit)} offset {int(offset)}",  # noqa: S608
        *args)
    return [r["id"] for r in rows], total


async def resolve_tool_id(conn: asyncpg.Connection[Any] | asyncpg.Pool[Any],
                          requested: str) -> str | None:
    """The catalogue tool that *requested* (a plain or qualified id) names, if any."""
    tool_id: str | None = await conn.fetchval(
        "select tool_id from catalogue_ids where id = $1", requested)
    return tool_id


@dataclass(frozen=True, slots=True)
class MemberRow:
    """One upstream record behind a catalogue tool."""

    tool_id: str
    member_id: int
    is_primary: bool
    external_id: str
    doc: dict[str, Any]
    upstream: str
    upstream_url: str
    mode: str
    first_seen: Any
    last_confirmed: Any
    tombstoned_at: Any


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One upstream version of a catalogue tool."""

    id: int
    member_id: int
    key: str
    external_id: str
    doc: dict[str, Any]
    mode: str
    upstream: str
    upstream_url: str
    upstream_tool_id: str


_MEMBERS: Final = """
select c.id as tool_id, t.id as member_id, t.id = c.primary_member_id as is_primary,
       t.external_id, t.doc, u.name as upstream, u.url as upstream_url, u.mode,
       t.first_seen, t.last_confirmed, t.tombstoned_at
from catalogue_tools c
join catalogue_members m on m.tool_id = c.id
join upstream_tools t on t.id = m.upstream_tool_id
join upstreams u on u.id = t.upstream_id
where c.id = any($1::text[])
order by c.id, u.priority, u.name
"""

_VERSIONS: Final = """
select v.id, v.upstream_tool_id as member_id, v.key, v.external_id, v.doc, u.mode,
       u.name as upstream, u.url as upstream_url, t.external_id as upstream_tool_id
from catalogue_members m
join upstream_tools t on t.id = m.upstream_tool_id
join upstreams u on u.id = t.upstream_id
join upstream_versions v on v.upstream_tool_id = m.upstream_tool_id
where m.tool_id = any($1::text[])
order by u.priority, u.name, v.position
"""


async def fetch_tools(conn: asyncpg.Connection[Any] | asyncpg.Pool[Any],
                      tool_ids: Sequence[str]) -> dict[str, tuple[list[MemberRow],
                                                                   list[VersionRow]]]:
    """Members and versions of each of *tool_ids* (absent ids are left out)."""
    ids = list(tool_ids)
    members = [MemberRow(**dict(r)) for r in await conn.fetch(_MEMBERS, ids)]
    out: dict[str, tuple[list[MemberRow], list[VersionRow]]] = {}
    owner: dict[int, str] = {}
    for m in members:
        out.setdefault(m.tool_id, ([], []))[0].append(m)
        owner[m.member_id] = m.tool_id
    for r in await conn.fetch(_VERSIONS, ids):
        v = VersionRow(**dict(r))
        out[owner[v.member_id]][1].append(v)
    return out


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


async def fetch_files(conn: asyncpg.Connection[Any] | asyncpg.Pool[Any], version_id: int, *,
                      descriptor_type: str | None = None, path: str | None = None,
                      file_types: Sequence[str] | None = None,
                      with_content: bool = True) -> list[FileRow]:
    """Files of version *version_id*, optionally narrowed by type, path and file types.

    Type-independent containerfiles (descriptor type '') are included with any type.
    """
    content = "fc.content" if with_content else "null::bytea"
    rows = await conn.fetch(
        f"""select f.descriptor_type, f.path, f.file_type, f.sha256, f.checksum_status, f.url,
                   {content} as content
            from upstream_files f left join file_contents fc on fc.sha256 = f.sha256
            where f.upstream_version_id = $1
              and ($2::text is null or f.descriptor_type in ($2, ''))
              and ($3::text is null or f.path = $3)
              and ($4::text[] is null or f.file_type = any($4))
            order by f.file_type <> 'PRIMARY_DESCRIPTOR', f.path collate "C" """,  # noqa: S608
        version_id, descriptor_type, path, list(file_types) if file_types else None)
    return [FileRow(**dict(r)) for r in rows]
