"""Writing merged tools into the catalogue: their ids, their rows, and only the rows that
differ from what is there."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog

from aggregator.db.merge_ids import assign_ids
from aggregator.merge.engine import (
    Component,
    Node,
    VersionNode,
    merge_versions,
)

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

log = structlog.get_logger()

# Changed tools from which the statistics of the tables a publish writes and the merge reads
# are refreshed inside the transaction (the planner must see a large change's rows).
ANALYZE_AFTER: Final = 500


# A merge of many slices stages the id history of all of them and saves it once at the end, in
# the order of its key: one pass over the history's index instead of one per slice (nothing in
# the merge reads the history).
_HISTORY_ALL_TABLE: Final = """
create temporary table if not exists merge_history_all (
    id text, upstream_tool_id bigint, was_primary boolean);
truncate merge_history_all
"""
_STAGE_SINGLE_HISTORY: Final = """
insert into merge_history_all (id, upstream_tool_id, was_primary)
select tool_id, upstream_tool_id, true from merge_single
"""
_SAVE_HISTORY_ALL: Final = "select merge_save_history()"  # migration 0029


class Writer:
    """Writes the merged tools slice after slice. After a large insert the catalogue's
    statistics are refreshed (the next statements, and the next merge, are planned on them):
    once after the first slice that inserts many rows, so the planner knows the rows' size,
    and once at the end. The id history of every slice is staged and saved once, at the end."""

    def __init__(self, conn: Connection, *, shared: set[str] | None = None) -> None:
        self.conn = conn
        self.shared = shared  # into an empty catalogue: the plain ids others may claim
        self.inserted = 0  # member rows inserted since the statistics were refreshed
        self.refreshed = False
        self.staged = False
        self.script: str | None = None  # statements kept to be sent (``send``)
        self.running: asyncio.Task[str] | None = None

    async def write(
        self,
        components: list[Component],
        versions: dict[int, list[VersionNode]],
        released: list[str],
        *,
        closed: bool = False,
    ) -> None:
        """Write *components* in place of the *released* tools (:meth:`prepare`, then
        :meth:`store`)."""
        await self.store(await self.prepare(components, versions, released, closed=closed))

    async def prepare(
        self,
        components: list[Component],
        versions: dict[int, list[VersionNode]],
        released: list[str],
        *,
        closed: bool = False,
    ) -> _Rows:
        """The rows of *components*, to replace the *released* tools. The statements sent
        before are waited for only if an id must be looked up in the catalogue: into an empty
        catalogue, the rows are mostly built while the server runs them. *closed* says that
        ``merge_affected`` holds the records of *components* and every member of the
        *released* tools, and nothing else (one slice of an incremental merge)."""
        ids, renames = await assign_ids(
            self.conn,
            components,
            released,
            shared=self.shared,
            settle=self.settle,
            closed=closed,
        )
        return _build(components, versions, ids, renames, released)

    async def store(self, rows: _Rows, *, defer: bool = False) -> None:
        """Write *rows* (:meth:`prepare`). With *defer*, the statements the server alone works
        on are kept for :meth:`send`; until :meth:`settle`, the connection may then run other
        statements first, that do not read what they write."""
        await self.settle()
        if not self.staged:
            await self.conn.execute(_HISTORY_ALL_TABLE)
            self.staged = True
        kept: list[str] | None = [] if defer else None
        self.inserted += await _store(self.conn, rows, deferred=kept)
        if kept:
            self.script = ";\n".join(kept)
        else:
            await self._settled()

    async def send(self) -> None:
        """Send the kept statements, to run in the server while Python works on something
        else; :meth:`settle` waits for them (nothing else may use the connection until then)."""
        if self.script is not None:
            self.running = asyncio.create_task(self.conn.execute(self.script))
            self.script = None
            await asyncio.sleep(0)  # the task sends them and waits for the server

    async def settle(self) -> None:
        """Wait for (or run) the kept statements."""
        if self.running is not None:
            running, self.running = self.running, None
            await running
        elif self.script is not None:
            script, self.script = self.script, None
            await self.conn.execute(script)
        else:
            return
        await self._settled()

    async def abandon(self) -> None:
        """Wait for the statements sent, whatever becomes of them (the transaction fails), so
        that the connection is free for the rollback; also when the merge was cancelled (the
        statements are waited for, not cancelled with it)."""
        if self.running is not None:
            running, self.running = self.running, None
            await asyncio.wait([running])
            if not running.cancelled():
                running.exception()  # retrieved: the merge's own exception is the one raised

    async def _settled(self) -> None:
        if not self.refreshed and self.inserted >= ANALYZE_AFTER:
            await self.analyze()
            self.refreshed = True

    async def analyze(self) -> None:
        """Refresh the statistics if many rows were inserted since they were refreshed."""
        if self.inserted >= ANALYZE_AFTER:
            await self.conn.execute(_ANALYZE_CATALOGUE)
            self.inserted = 0

    async def finish(self) -> None:
        """Save the staged id history; refresh the statistics."""
        await self.settle()
        if self.staged:
            await self.conn.execute(_SAVE_HISTORY_ALL)
            self.staged = False
        await self.analyze()


@dataclass(slots=True)
class _Rows:
    """The catalogue rows of merged tools (:func:`_build`)."""

    ids: list[str]  # each component's tool id
    renames: list[tuple[str, str]]  # of other tools, as assign_ids gives them
    released: list[str]  # the catalogue tools these replace
    # (record, tool id, its refused joins or None): a tool of one record (merge_single).
    single: list[tuple[int, str, list[dict[str, Any]] | None]] = field(default_factory=list)
    tools: list[tuple[str, str, int, list[dict[str, Any]]]] = field(default_factory=list)
    members: list[tuple[int, str, list[dict[str, Any]]]] = field(default_factory=list)
    versions: list[tuple[str, str, int, int, list[int], bool]] = field(default_factory=list)
    history: list[tuple[str, int, bool]] = field(default_factory=list)


def _build(
    components: list[Component],
    versions: dict[int, list[VersionNode]],
    ids: list[str],
    renames: list[tuple[str, str]],
    released: list[str],
) -> _Rows:
    """The rows of *components* under *ids* in place of the *released* tools, *versions*
    holding the versions of every member of a tool of several records."""
    rows = _Rows(ids, renames, released)
    nodes = {m.id: m for comp in components for m in comp.members}
    for comp, tool_id in zip(components, ids, strict=True):
        if len(comp.members) == 1:
            # Its tool, member, history and version rows are written in the server
            # (_SINGLE_*): only a refused join gives it more than its id to say.
            rows.single.append((comp.primary.id, tool_id, _refusals(comp, nodes) or None))
            continue
        member_versions = [v for m in comp.members for v in versions.get(m.id, ())]
        merged, conflicts = merge_versions(comp, member_versions)
        report: list[dict[str, Any]] = [
            {"kind": "version", "version": c.name, "keys": c.keys, "reason": c.reason}
            for c in conflicts
        ]
        rows.versions += [
            (tool_id, v.key, v.position, v.served.id, [s.id for s in v.sources], v.conflict)
            for v in merged
        ]
        report += _refusals(comp, nodes)
        rows.tools.append((tool_id, tool_id, comp.primary.id, report))
        for m in comp.members:
            joined = [
                _join_record(nodes[e.b if e.a == m.id else e.a], m, e.kind, e.value)
                for e in comp.joins
                if m.id in (e.a, e.b)
            ]
            rows.members.append((m.id, tool_id, joined))
            rows.history.append((tool_id, m.id, m is comp.primary))
    return rows


async def _store(
    conn: Connection,
    rows: _Rows,
    *,
    deferred: list[str] | None = None,
) -> int:
    """Write *rows* (their ids settled by :func:`assign_ids`) in place of the tools they
    release; return the member rows inserted into a catalogue that held none of these tools (0
    when rows were compared and replaced). The id history is only staged
    (``merge_history_all``, saved by ``_SAVE_HISTORY_ALL`` in ``Writer.finish``). When
    *deferred* is a list and the tools are new to the catalogue,
    the statements without parameters that follow the copies are appended to it instead of
    being run."""
    ids, renames, released = rows.ids, rows.renames, rows.released
    await conn.execute(_SINGLE_TABLE)
    await conn.copy_records_to_table(
        "merge_single", records=rows.single, columns=["upstream_tool_id", "tool_id", "conflicts"]
    )
    inserted = 0
    if released or renames:
        await _replace(
            conn,
            rows.tools,
            rows.members,
            rows.versions,
            ids=ids,
            released=released,
            renames=renames,
        )
    else:  # none of these tools is in the catalogue yet (a first merge, a new upstream)
        await _insert(conn, rows.tools, rows.members, rows.versions, deferred=deferred)
        inserted = len(rows.members) + len(rows.single)
    # The ids each tool had, so they keep resolving after its members change: staged.
    await conn.copy_records_to_table(
        "merge_history_all", records=rows.history, columns=["id", "upstream_tool_id", "was_primary"]
    )
    if deferred is not None and not (released or renames):
        deferred.append(_STAGE_SINGLE_HISTORY)
    else:
        await conn.execute(_STAGE_SINGLE_HISTORY)
    return inserted


_RENAME: Final = "update catalogue_tools set id = $2, sort_key = $2 where id = $1"


def _refusals(comp: Component, nodes: dict[int, Node]) -> list[dict[str, Any]]:
    """The joins refused to *comp*, as its report lists them."""
    return [
        {
            "kind": "join_refused",
            "a": nodes[e.a].qualified,
            "b": nodes[e.b].qualified,
            "evidence": e.kind,
            "value": e.value,
            "reason": e.reason,
        }
        for e in comp.refused
    ]


def _join_record(other: Node, node: Node, kind: str, value: str) -> dict[str, Any]:
    """One line of a member's ``joined_by``: the member it joined, by qualified id, the
    evidence, and the other evidence both hold (corroborating, or strong evidence that was
    not needed)."""
    record: dict[str, Any] = {"with": other.qualified, "evidence": kind, "value": value}
    also = sorted((node.keys & other.keys) - {(kind, value)})
    if kind == "operator":
        record["rule"] = "always"
    if also:
        record["also"] = [{"evidence": k, "value": v} for k, v in also]
    return record


# The tools of one record (merge_single): each is its record, joined by nothing (its conflicts
# are the joins refused to it, when there are any), and serves its record's versions as they
# are, under their keys, in the order merge_versions gives them (position, then key).
_SINGLE_TABLE: Final = """
create temporary table if not exists merge_single (
    upstream_tool_id bigint, tool_id text, conflicts jsonb);
truncate merge_single
"""
_SINGLE_TOOLS: Final = """
select tool_id, tool_id, upstream_tool_id, coalesce(conflicts, '[]') from merge_single
"""
_SINGLE_MEMBERS: Final = "select upstream_tool_id, tool_id, '[]'::jsonb from merge_single"
_INSERT_SINGLE: Final = (
    "insert into catalogue_tools (id, sort_key, primary_member_id, conflicts)"
    + _SINGLE_TOOLS
    + ";\ninsert into catalogue_members (upstream_tool_id, tool_id, joined_by)"
    + _SINGLE_MEMBERS
)
_STAGE_SINGLE: Final = (
    "insert into merge_new_tools (id, sort_key, primary_member_id, conflicts)"
    + _SINGLE_TOOLS
    + ";\ninsert into merge_new_members (upstream_tool_id, tool_id, joined_by)"
    + _SINGLE_MEMBERS
)
_SINGLE_VERSIONS: Final = """
select s.tool_id, v.key,
       (row_number() over (partition by v.upstream_tool_id
                           order by v.position, v.key collate "C"))::integer - 1,
       v.id, array[v.id], false
from merge_single s join upstream_versions v on v.upstream_tool_id = s.upstream_tool_id
"""
_INSERT_SINGLE_VERSIONS: Final = (
    "insert into catalogue_versions (tool_id, key, position, upstream_version_id, source_ids,"
    " conflict)" + _SINGLE_VERSIONS
)
_STAGE_SINGLE_VERSIONS: Final = (
    "insert into merge_new_versions (tool_id, key, position, upstream_version_id, source_ids,"
    " conflict)" + _SINGLE_VERSIONS
)
_TOOL_COLUMNS: Final = ["id", "sort_key", "primary_member_id", "conflicts"]
_MEMBER_COLUMNS: Final = ["upstream_tool_id", "tool_id", "joined_by"]
_VERSION_COLUMNS: Final = [
    "tool_id",
    "key",
    "position",
    "upstream_version_id",
    "source_ids",
    "conflict",
]


async def _insert(
    conn: Connection,
    tools: list[tuple[Any, ...]],
    members: list[tuple[Any, ...]],
    versions: list[tuple[Any, ...]],
    *,
    deferred: list[str] | None = None,
) -> None:
    """Write tools none of whose ids or members the catalogue holds yet. When *deferred* is
    given, their rows are only copied into temporary tables, and the statements that insert
    them (and those of ``merge_single``) are appended to it instead of run: the server
    updates the catalogue's indexes while Python works on the next slice."""
    if deferred is not None:
        await conn.execute(_STAGED_TABLES)
        await conn.copy_records_to_table("merge_staged_tools", records=tools)
        await conn.copy_records_to_table("merge_staged_members", records=members)
        await conn.copy_records_to_table("merge_staged_versions", records=versions)
        deferred += [_INSERT_STAGED, _INSERT_SINGLE, _INSERT_SINGLE_VERSIONS]
        return
    await conn.copy_records_to_table("catalogue_tools", records=tools, columns=_TOOL_COLUMNS)
    await conn.copy_records_to_table("catalogue_members", records=members, columns=_MEMBER_COLUMNS)
    await conn.copy_records_to_table(
        "catalogue_versions", records=versions, columns=_VERSION_COLUMNS
    )
    await conn.execute(_INSERT_SINGLE)
    await conn.execute(_INSERT_SINGLE_VERSIONS)


_ANALYZE_CATALOGUE: Final = "analyze catalogue_tools, catalogue_members, catalogue_versions"

# The rows of a slice's tools of several records, copied here (no index, no WAL) and inserted
# into the catalogue by _INSERT_STAGED while Python works on the next slice.
_STAGED_TABLES: Final = """
create temporary table if not exists merge_staged_tools (
    id text, sort_key text collate "C", primary_member_id bigint, conflicts jsonb);
create temporary table if not exists merge_staged_members (
    upstream_tool_id bigint, tool_id text, joined_by jsonb);
create temporary table if not exists merge_staged_versions (
    tool_id text, key text, position integer, upstream_version_id bigint, source_ids bigint[],
    conflict boolean);
truncate merge_staged_tools, merge_staged_members, merge_staged_versions
"""
_INSERT_STAGED: Final = """
insert into catalogue_tools (id, sort_key, primary_member_id, conflicts)
select id, sort_key, primary_member_id, conflicts from merge_staged_tools;
insert into catalogue_members (upstream_tool_id, tool_id, joined_by)
select upstream_tool_id, tool_id, joined_by from merge_staged_members;
insert into catalogue_versions (tool_id, key, position, upstream_version_id, source_ids, conflict)
select tool_id, key, position, upstream_version_id, source_ids, conflict
from merge_staged_versions
"""


# The merged rows are loaded into these, then only the catalogue rows that differ are written.
_REPLACE_TABLES: Final = """
create temporary table if not exists merge_new_tools (
    id text primary key, sort_key text collate "C", primary_member_id bigint,
    conflicts jsonb);
create temporary table if not exists merge_new_members (
    upstream_tool_id bigint primary key, tool_id text, joined_by jsonb);
create temporary table if not exists merge_new_versions (
    tool_id text, key text, position integer, upstream_version_id bigint, source_ids bigint[],
    conflict boolean, primary key (tool_id, key));
truncate merge_new_tools, merge_new_members, merge_new_versions
"""

# In order: the replaced tools the merge no longer has go (their members and versions with
# them); then, after the renames, each table's rows that the merged tools may replace are read
# once by their index, with their row addresses, and in the same statement the rows that differ
# are updated and the rows the merge no longer has deleted, both by address, and the new rows
# inserted. (Reading the old rows again for each of an update, an insert that skips existing
# rows and a delete cost three index probes per row; the merged rows' temporary tables are
# small and joined by hash.)
_DROP_RELEASED: Final = """
delete from catalogue_tools c where c.id = any($1::text[])
  and not exists (select 1 from merge_new_tools n where n.id = c.id)
"""
# The tools the merge writes: those of its ids the catalogue holds are updated where they
# differ, the others inserted. (sort_key is the id: an update never moves it.) Without
# renames, the replaced tools are read with them ($1 holds both) and those the merge no longer
# has are deleted here, in place of _DROP_RELEASED.
_WRITE_TOOLS: Final = """
with old as materialized (
    select c.ctid as tid, c.id, c.sort_key, c.primary_member_id, c.conflicts
    from catalogue_tools c where c.id = any($1::text[])),
dropped as (
    delete from catalogue_tools c using old o
    where c.ctid = o.tid and not exists (select 1 from merge_new_tools n where n.id = o.id)),
updated as (
    update catalogue_tools c
    set sort_key = n.sort_key, primary_member_id = n.primary_member_id, conflicts = n.conflicts
    from old o join merge_new_tools n on n.id = o.id
    where c.ctid = o.tid
      and (o.sort_key, o.primary_member_id, o.conflicts)
          is distinct from (n.sort_key, n.primary_member_id, n.conflicts))
insert into catalogue_tools (id, sort_key, primary_member_id, conflicts)
select n.id, n.sort_key, n.primary_member_id, n.conflicts from merge_new_tools n
where not exists (select 1 from old o where o.id = n.id)
"""
# The members of the tools the merge writes or replaces ($1): every merged record that is a
# member already is one of them (a replaced tool holds it), so the others are inserted (one
# held elsewhere all the same is moved, as an update would).
_WRITE_MEMBERS: Final = """
with old as materialized (
    select m.ctid as tid, m.upstream_tool_id, m.tool_id, m.joined_by
    from catalogue_members m where m.tool_id = any($1::text[])),
gone as (
    delete from catalogue_members m using old o
    where m.ctid = o.tid
      and not exists (select 1 from merge_new_members n
                      where n.upstream_tool_id = o.upstream_tool_id)),
updated as (
    update catalogue_members m set tool_id = n.tool_id, joined_by = n.joined_by
    from old o join merge_new_members n on n.upstream_tool_id = o.upstream_tool_id
    where m.ctid = o.tid and (o.tool_id, o.joined_by) is distinct from (n.tool_id, n.joined_by))
insert into catalogue_members (upstream_tool_id, tool_id, joined_by)
select n.upstream_tool_id, n.tool_id, n.joined_by from merge_new_members n
where not exists (select 1 from old o where o.upstream_tool_id = n.upstream_tool_id)
on conflict (upstream_tool_id) do update set tool_id = excluded.tool_id,
                                             joined_by = excluded.joined_by
"""
_WRITE_VERSIONS: Final = """
with old as materialized (
    select v.ctid as tid, v.tool_id, v.key, v.position, v.upstream_version_id, v.source_ids,
           v.conflict
    from catalogue_versions v where v.tool_id = any($1::text[])),
gone as (
    delete from catalogue_versions v using old o
    where v.ctid = o.tid
      and not exists (select 1 from merge_new_versions n
                      where n.tool_id = o.tool_id and n.key = o.key)),
updated as (
    update catalogue_versions v
    set position = n.position, upstream_version_id = n.upstream_version_id,
        source_ids = n.source_ids, conflict = n.conflict
    from old o join merge_new_versions n on n.tool_id = o.tool_id and n.key = o.key
    where v.ctid = o.tid
      and (o.position, o.upstream_version_id, o.source_ids, o.conflict)
          is distinct from (n.position, n.upstream_version_id, n.source_ids, n.conflict))
insert into catalogue_versions (tool_id, key, position, upstream_version_id, source_ids, conflict)
select n.tool_id, n.key, n.position, n.upstream_version_id, n.source_ids, n.conflict
from merge_new_versions n
where not exists (select 1 from old o where o.tool_id = n.tool_id and o.key = n.key)
"""


async def _replace(
    conn: Connection,
    tools: list[tuple[Any, ...]],
    members: list[tuple[Any, ...]],
    versions: list[tuple[Any, ...]],
    *,
    ids: list[str],
    released: list[str],
    renames: list[tuple[str, str]],
) -> None:
    """Make the catalogue hold the tools *ids*: *tools* (with their members and versions) and
    those of ``merge_single``, in place of the *released* tools, after renaming other tools as
    *renames* says, writing only the rows that differ from what is there."""
    await conn.execute(_REPLACE_TABLES)
    await conn.copy_records_to_table("merge_new_tools", records=tools, columns=_TOOL_COLUMNS)
    await conn.copy_records_to_table("merge_new_members", records=members, columns=_MEMBER_COLUMNS)
    await conn.copy_records_to_table(
        "merge_new_versions", records=versions, columns=_VERSION_COLUMNS
    )
    await conn.execute(_STAGE_SINGLE)
    await conn.execute(_STAGE_SINGLE_VERSIONS)
    if renames:  # the replaced tools go before the renames, which may take their ids
        await conn.execute(_DROP_RELEASED, released)
        for current, wanted in renames:
            await conn.execute(_RENAME, current, wanted)
        await conn.execute(_WRITE_TOOLS, ids)
    else:
        await conn.execute(_WRITE_TOOLS, sorted(set(ids) | set(released)))
    await conn.execute(_WRITE_MEMBERS, sorted(set(ids) | set(released)))
    await conn.execute(_WRITE_VERSIONS, ids)
