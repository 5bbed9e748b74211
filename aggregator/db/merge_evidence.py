"""The merge's evidence and closure: the joining keys each record holds, and every record
whose merge can change after some records changed."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

import structlog

from aggregator.merge.content import carries_identity, information, normalised_sha256
from aggregator.merge.identity import CORROBORATING, evidence

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

log = structlog.get_logger()

# Records whose evidence is recomputed at once.
EVIDENCE_BATCH: Final = 25_000


_DELETE_EVIDENCE: Final = "delete from tool_evidence where upstream_tool_id = any($1::bigint[])"
# A full merge recomputes every record's evidence: the table is emptied at once, without
# leaving a dead row per old key (only merges, under the catalogue's lock, read it). Loading
# it without its indexes and building them after cost as much as loading it through them
# (at 1,000,000 records, 9.5 s of statements against 9.7 s).
_EMPTY_ALL_EVIDENCE: Final = "truncate tool_evidence"
# The keys the records held before, kept for the closure (the tools sharing any of them).
_DELETE_EVIDENCE_KEEP: Final = """
with gone as (
    delete from tool_evidence where upstream_tool_id = any($1::bigint[]) returning kind, value)
insert into merge_old_keys (kind, value)
select distinct kind, value from gone where kind <> all($2::text[])
on conflict do nothing
"""
_LIVE_IDENTIFIERS: Final = """
select t.id, t.external_id, t.doc->'aliases' as aliases, t.doc->'identifiers' as identifiers
from upstream_tools t
where t.id = any($1::bigint[]) and upstream_tool_live(t.missed_listings, $2)
"""
# The primary descriptors of some tools: the content only where its normalised checksum and
# information have not been computed yet.
_PRIMARY_DESCRIPTORS: Final = """
select v.upstream_tool_id as id, f.path, fc.sha256, fc.normalised_sha256, fc.information,
       case when fc.normalised_sha256 is null then fc.content end as content
from upstream_versions v
join upstream_files f on f.upstream_version_id = v.id
join file_contents fc on fc.sha256 = f.sha256
where v.upstream_tool_id = any($1::bigint[]) and f.file_type = 'PRIMARY_DESCRIPTOR'
"""
_SAVE_NORMALISED: Final = """
update file_contents fc set normalised_sha256 = x.n, information = x.i
from unnest($1::text[], $2::text[], $3::int[]) as x(sha256, n, i)
where fc.sha256 = x.sha256
"""


async def refresh_evidence(
    conn: Connection, ids: list[int], tombstone_after: int, *, keep_old: bool, every: bool = False
) -> None:
    """Recompute the evidence of tools *ids* (none for tools no longer live), a batch at a
    time; when *keep_old*, the joining keys they held before go to ``merge_old_keys``. When
    *every*, *ids* are all the upstream tools (a full merge): the old evidence goes at once.

    Each batch's rows are computed as ``COPY`` takes them (:func:`_evidence_rows`): the server
    stores one part while Python computes the next."""
    if every:
        await conn.execute(_EMPTY_ALL_EVIDENCE)
    for start in range(0, len(ids), EVIDENCE_BATCH):
        batch = ids[start : start + EVIDENCE_BATCH]
        if keep_old:
            await conn.execute(_DELETE_EVIDENCE_KEEP, batch, sorted(CORROBORATING))
        elif not every:
            await conn.execute(_DELETE_EVIDENCE, batch)
        tools = await conn.fetch(_LIVE_IDENTIFIERS, batch, tombstone_after)
        content = await _descriptor_content(conn, batch)
        if tools:
            await conn.copy_records_to_table(
                "tool_evidence",
                records=_evidence_rows(tools, content),
                columns=["upstream_tool_id", "kind", "value"],
            )


# Records whose evidence is computed between two turns of the event loop, in which the rows
# already encoded (asyncpg sends them 512 KB at a time) reach the server.
_EVIDENCE_TURN: Final = 2_000


async def _evidence_rows(
    tools: list[Any], content: dict[int, set[str]]
) -> AsyncIterator[tuple[int, str, str]]:
    """The evidence rows of *tools* (``_LIVE_IDENTIFIERS`` rows), yielding to the event loop
    every ``_EVIDENCE_TURN`` records so that what is ready goes to the server meanwhile."""
    for n, t in enumerate(tools, 1):
        doc = {"aliases": t["aliases"], "identifiers": t["identifiers"]}
        tool_id = t["id"]
        for kind, value in evidence(t["external_id"], doc, content.get(tool_id, ())):
            yield (tool_id, kind, value)
        if n % _EVIDENCE_TURN == 0:
            await asyncio.sleep(0)


async def _descriptor_content(conn: Connection, ids: list[int]) -> dict[int, set[str]]:
    """The normalised checksums of the identity-carrying primary descriptors of tools *ids*.

    A file's normalised checksum and information are computed once, the first time it is read
    here, and kept beside its bytes.
    """
    rows = await conn.fetch(_PRIMARY_DESCRIPTORS, ids)
    computed: dict[str, tuple[str, int]] = {}
    for r in rows:
        if r["normalised_sha256"] is None and r["sha256"] not in computed:
            data = bytes(r["content"])
            computed[r["sha256"]] = (normalised_sha256(data), information(data))
    if computed:
        await conn.execute(
            _SAVE_NORMALISED,
            list(computed),
            [n for n, _ in computed.values()],
            [i for _, i in computed.values()],
        )
    out: dict[int, set[str]] = defaultdict(set)
    for r in rows:
        norm, info = computed.get(r["sha256"]) or (r["normalised_sha256"], r["information"])
        if carries_identity(r["path"], info):
            out[r["id"]].add(norm)
    return out


CLOSURE_TABLES: Final = """
create temporary table if not exists merge_affected (id bigint primary key);
create temporary table if not exists merge_frontier (id bigint primary key);
create temporary table if not exists merge_keys (kind text, value text, identifying boolean,
                                                 primary key (kind, value));
create temporary table if not exists merge_old_keys (kind text, value text,
                                                     primary key (kind, value));
create temporary table if not exists merge_held (tool_id text);
truncate merge_affected, merge_frontier, merge_keys, merge_old_keys, merge_held
"""

# One step of the closure, all in the server: the frontier's keys not yet judged are judged
# (identifying when no upstream has more than $2 live holders and, for a repository root,
# no holder names a workflow path in that repository; corroborating kinds $3 never), then the
# holders of its identifying keys and the members of the catalogue tools holding it join the
# affected set (those tools are kept in merge_held); the newly affected are returned (the next
# frontier). A key's holders are looked up once, by the index on (kind, value) (OFFSET 0 keeps
# the lookup a nested loop: the planner otherwise hashes the whole evidence table).
_CLOSURE_STEP: Final = """
with fresh as (
    select distinct e.kind, e.value
    from merge_frontier f join tool_evidence e on e.upstream_tool_id = f.id
    where e.kind <> all($3::text[])
      and not exists (select 1 from merge_keys k where k.kind = e.kind and k.value = e.value)),
holders as materialized (
    select fr.kind, fr.value, h.upstream_tool_id as id
    from fresh fr cross join lateral (
        select e.upstream_tool_id from tool_evidence e
        where e.kind = fr.kind and e.value = fr.value offset 0) as h),
judged as (
    insert into merge_keys (kind, value, identifying)
    select x.kind, x.value, max(x.c) <= $2 and not bool_or(x.pathed)
    from (select h.kind, h.value, t.upstream_id, count(*) as c,
                 bool_or(h.kind = 'repo' and strpos(h.value, '#') = 0 and exists (
                     select 1 from tool_evidence p
                     where p.upstream_tool_id = h.id and p.kind = 'repo'
                       and starts_with(p.value, h.value || '#'))) as pathed
          from holders h
          join upstream_tools t on t.id = h.id and upstream_tool_live(t.missed_listings, $1)
          group by h.kind, h.value, t.upstream_id) as x
    group by x.kind, x.value
    returning kind, value, identifying),
held as materialized (
    select distinct m.tool_id
    from merge_frontier f join catalogue_members m on m.upstream_tool_id = f.id),
kept as (insert into merge_held (tool_id) select tool_id from held),
reached as (
    select h.id from judged j join holders h on h.kind = j.kind and h.value = j.value
    where j.identifying
    union
    select m.upstream_tool_id
    from held h cross join lateral (
        select m.upstream_tool_id from catalogue_members m where m.tool_id = h.tool_id offset 0)
        as m),
added as (
    insert into merge_affected (id)
    select r.id from reached r where not exists (select 1 from merge_affected a where a.id = r.id)
    on conflict do nothing returning id)
select coalesce(array_agg(id), '{}') from added
"""
# The tools sharing any joining key the seeds (in merge_frontier) hold or held.
_SEED_HOLDERS: Final = """
select coalesce(array_agg(distinct h.upstream_tool_id), '{}')
from (select kind, value from merge_old_keys
      union
      select s.kind, s.value from merge_frontier f
      join tool_evidence s on s.upstream_tool_id = f.id
      where s.kind <> all($1::text[])) as k
cross join lateral (
    select e.upstream_tool_id from tool_evidence e
    where e.kind = k.kind and e.value = k.value offset 0) as h
"""
_TRUNCATE_FRONTIER: Final = "truncate merge_frontier"


async def closure(
    conn: Connection,
    seeds: set[int],
    *,
    max_per_upstream: int,
    tombstone_after: int,
    partners: dict[int, set[int]],
) -> set[int]:
    """Every upstream tool whose merge can change; its keys are judged in ``merge_keys``.

    The seeds, the tools sharing any joining key the seeds hold or held (``merge_old_keys``),
    every member of a catalogue tool holding one of them, the operator's always-partners, and
    so on through identifying keys until nothing is added.
    """
    await conn.copy_records_to_table("merge_frontier", records=[(i,) for i in seeds])
    frontier = seeds | set(await conn.fetchval(_SEED_HOLDERS, sorted(CORROBORATING)))
    affected: set[int] = set()
    stored: set[int] = set()  # already in merge_affected
    while frontier:
        frontier |= {p for i in frontier for p in partners.get(i, ())} - affected
        await conn.copy_records_to_table(
            "merge_affected", records=[(i,) for i in frontier - stored]
        )
        affected |= frontier
        await conn.execute(_TRUNCATE_FRONTIER)
        await conn.copy_records_to_table("merge_frontier", records=[(i,) for i in frontier])
        frontier = set(
            await conn.fetchval(
                _CLOSURE_STEP, tombstone_after, max_per_upstream, sorted(CORROBORATING)
            )
        )
        stored |= affected | frontier
    return affected


# Pairs (record, first holder of a joining key it holds) over all records, or over the
