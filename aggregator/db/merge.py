"""Running the merge against the database: evidence, affected components, the catalogue rows.

After every publish, only the upstream tools in ``merge_queue`` (new, changed, or whose
liveness changed) and everything their evidence reaches are re-merged; the result is the same
as a full re-merge (tested), which ``full=True`` performs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog

from aggregator.db.generation import advance_generation, catalogue_generation
from aggregator.merge.content import carries_identity, information, normalised_sha256
from aggregator.merge.engine import (
    QUALIFIED_PREFIX,
    Component,
    Node,
    Rules,
    VersionNode,
    identifying_keys,
    merge,
    merge_versions,
    qualified_id,
)
from aggregator.merge.identity import CORROBORATING, Key, evidence

__all__ = ["QUALIFIED_PREFIX", "MergeStats", "qualified_id", "remerge", "save_merge_rules"]

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

log = structlog.get_logger()

# Changed tools from which the statistics of the tables a publish writes and the merge reads
# are refreshed inside the transaction (the planner must see a large change's rows).
ANALYZE_AFTER: Final = 500
# Records merged at once: a larger merge (a full one, a first publish) is cut into slices of
# whole components, each loaded, merged and written in turn, so that memory stays bounded.
SLICE_RECORDS: Final = 25_000
# Records whose evidence is recomputed at once.
EVIDENCE_BATCH: Final = 25_000


@dataclass(frozen=True, slots=True)
class MergeStats:
    """What one merge touched."""

    dirty: int
    nodes: int
    tools: int
    generation: int
    slices: int = 1


_RULES: Final = "select rule, a, b from merge_rules"
_DELETE_RULES: Final = "delete from merge_rules"
_QUALIFIED_TOOLS: Final = """
select '#upstream/' || u.name || '/' || t.external_id as qualified, t.id
from upstream_tools t join upstreams u on u.id = t.upstream_id
where '#upstream/' || u.name || '/' || t.external_id = any($1::text[])
"""
_MARK_DIRTY: Final = """
insert into merge_queue (upstream_tool_id) select unnest($1::bigint[]) on conflict do nothing
"""


async def save_merge_rules(
    conn: Connection, always: Iterable[Sequence[str]] = (), never: Iterable[Sequence[str]] = ()
) -> None:
    """Store the operator's rules (pairs of qualified ids); when they changed, mark the records
    they name, before and after, for re-merging."""
    rules = Rules.of(always, never)
    new = {("always", a, b) for a, b in rules.always} | {("never", a, b) for a, b in rules.never}
    old = {(r["rule"], r["a"], r["b"]) for r in await conn.fetch(_RULES)}
    if new == old:
        return
    await conn.execute(_DELETE_RULES)
    await conn.copy_records_to_table("merge_rules", records=sorted(new), columns=["rule", "a", "b"])
    named = sorted({q for _, a, b in old ^ new for q in (a, b)})
    ids = [r["id"] for r in await conn.fetch(_QUALIFIED_TOOLS, named)]
    await conn.execute(_MARK_DIRTY, ids)
    log.info("merge_rules_changed", always=len(rules.always), never=len(rules.never))


async def _load_rules(conn: Connection) -> tuple[Rules, dict[int, set[int]]]:
    """The stored rules, and the always-partners among the records by row id."""
    rows = await conn.fetch(_RULES)
    rules = Rules.of(
        [(r["a"], r["b"]) for r in rows if r["rule"] == "always"],
        [(r["a"], r["b"]) for r in rows if r["rule"] == "never"],
    )
    partners: dict[int, set[int]] = defaultdict(set)
    if rules.always:
        named = sorted({q for pair in rules.always for q in pair})
        by_name = {r["qualified"]: r["id"] for r in await conn.fetch(_QUALIFIED_TOOLS, named)}
        for a, b in rules.always:
            if a in by_name and b in by_name:
                partners[by_name[a]].add(by_name[b])
                partners[by_name[b]].add(by_name[a])
    return rules, partners


# The merge reads and writes a few thousand rows of tables of millions by their indexes; at the
# default cost of a random page the planner prefers scanning the whole tables. The merge's
# tables are read over and over in one transaction, so their pages are in memory: it plans
# with a random page costing about a sequential one, then puts the setting back. An
# incremental merge's statements also run without JIT compilation: they look up thousands of
# rows, and compiling cost 15-55 ms a statement at a million records for nothing measurable.
# Every statement is planned for its own parameters (plan_cache_mode): after five runs of a
# prepared statement PostgreSQL may switch to a generic plan, in which an array parameter is
# not a constant, so `x <> all($1)` over the 25,000 ids of a slice is tested element by
# element for each row instead of by hash (the plain-id claimants went from 0.1 s to 2.4 s a
# slice, 60 s more for a full merge of a million records).
_PLAN_SETTINGS: Final = """
select current_setting('random_page_cost'), current_setting('jit'),
       current_setting('plan_cache_mode')
"""
_SET_PLAN: Final = """
select set_config('random_page_cost', $1, true), set_config('jit', $2, true),
       set_config('plan_cache_mode', $3, true)
"""
MERGE_PAGE_COST: Final = "1.1"
MERGE_PLAN_CACHE: Final = "force_custom_plan"
_ALL_TOOLS: Final = "select id from upstream_tools"
_DIRTY_TOOLS: Final = "select upstream_tool_id as id from merge_queue"
_CATALOGUE_HELD: Final = "select exists (select 1 from catalogue_members)"
# The evidence's statistics are refreshed when the recomputed records are many and more than a
# tenth of what the statistics last counted (a first publish; not 1% of a large catalogue,
# which leaves them as they were).
_EVIDENCE_COUNTED: Final = """
select reltuples from pg_class where oid = 'tool_evidence'::regclass
"""
_ANALYZE_EVIDENCE: Final = "analyze tool_evidence"
_CLEAR_DIRTY: Final = "delete from merge_queue where upstream_tool_id = any($1::bigint[])"


async def remerge(
    conn: Connection,
    *,
    tombstone_after: int,
    max_per_upstream: int = 1,
    full: bool = False,
    slice_records: int | None = None,
) -> MergeStats:
    """Re-merge what changed (or everything, when *full*), rewrite the affected catalogue
    tools, and advance (and announce) the generation. Call inside the publishing transaction
    (``db.publish``). When nothing changed, the catalogue and its generation stay as they are,
    so caches stay warm.

    More than *slice_records* (default ``SLICE_RECORDS``) affected records are merged in
    slices of whole components (closed under shared evidence), one after the other in the
    same transaction: the result is the same, and memory holds one slice at a time."""
    lap = _Laps()
    dirty = [r["id"] for r in await conn.fetch(_ALL_TOOLS if full else _DIRTY_TOOLS)]
    if not dirty:
        generation = await catalogue_generation(conn)
        log.info("merge_skipped", reason="nothing changed", generation=generation)
        return MergeStats(0, 0, 0, generation)
    # A slice's records are held only by tools of the catalogue before the merge (the earlier
    # slices wrote other records): a full merge into an empty catalogue replaces nothing.
    replacing = not full or await conn.fetchval(_CATALOGUE_HELD)
    page_cost, jit, plan_cache = await conn.fetchrow(_PLAN_SETTINGS) or ("", "", "")
    await conn.execute(_SET_PLAN, MERGE_PAGE_COST, jit if full else "off", MERGE_PLAN_CACHE)
    rules, partners = await _load_rules(conn)
    await conn.execute(_CLOSURE_TABLES)
    await _refresh_evidence(conn, dirty, tombstone_after, keep_old=not full)
    if len(dirty) >= ANALYZE_AFTER and len(dirty) * 10 >= await conn.fetchval(_EVIDENCE_COUNTED):
        await conn.execute(_ANALYZE_EVIDENCE)
    await conn.execute(_CLEAR_DIRTY, dirty)
    lap("evidence")
    if full:
        affected = set(dirty)
    else:
        affected = await _closure(
            conn,
            set(dirty),
            max_per_upstream=max_per_upstream,
            tombstone_after=tombstone_after,
            partners=partners,
        )
    dirty_count = len(dirty)
    del dirty
    size = SLICE_RECORDS if slice_records is None else slice_records
    joinable: list[list[int]] = []
    slices = await _slices(
        conn, affected, partners, size, restricted=not full, joinable=joinable if full else None
    )
    lap("closure")
    if full and len(slices) > 1:
        nodes_seen, tools = await _merge_overlapped(
            conn,
            slices,
            joinable,
            rules=rules,
            tombstone_after=tombstone_after,
            max_per_upstream=max_per_upstream,
            replacing=bool(replacing),
            lap=lap,
        )
    else:
        nodes_seen, tools = await _merge_slices(
            conn,
            slices,
            rules=rules,
            tombstone_after=tombstone_after,
            max_per_upstream=max_per_upstream,
            replacing=bool(replacing),
            full=full,
            lap=lap,
        )
    await conn.execute(_SET_PLAN, page_cost, jit, plan_cache)
    lap("write")
    generation = await advance_generation(conn)
    lap("generation")
    stats = MergeStats(dirty_count, nodes_seen, tools, generation, len(slices))
    log.info(
        "merge_finished",
        dirty=stats.dirty,
        nodes=stats.nodes,
        tools=stats.tools,
        slices=stats.slices,
        generation=generation,
        full=full,
        seconds=lap.seconds,
    )
    return stats


async def _merge_slices(
    conn: Connection,
    slices: list[list[int]],
    *,
    rules: Rules,
    tombstone_after: int,
    max_per_upstream: int,
    replacing: bool,
    full: bool,
    lap: _Laps,
) -> tuple[int, int]:
    """Merge and write the *slices* one after the other; return the records merged and the
    tools written."""
    writer = _Writer(conn)
    nodes_seen = tools = 0
    for part in slices:
        nodes, identifying = await _load_nodes(conn, part, tombstone_after, judged=not full)
        if full:
            identifying = identifying_keys(nodes, max_per_upstream=max_per_upstream)
        lap("load_nodes")
        components = merge(nodes, identifying=identifying, rules=rules)
        del identifying
        lap("merge")
        # A tool of one record serves its versions as they are: they are written in the server.
        joined = [m.id for c in components if len(c.members) > 1 for m in c.members]
        versions = await _load_versions(conn, joined)
        lap("load_versions")
        # In one slice of an incremental merge, the closure saw the tools holding its records.
        old_ids = (
            await _tools_holding(conn, part, held=not full and len(slices) == 1)
            if replacing
            else []
        )
        await writer.write(components, versions, old_ids)
        nodes_seen += len(nodes)
        tools += len(components)
        del nodes, components, versions, old_ids
        lap("write")
    await writer.finish()
    return nodes_seen, tools


async def _merge_overlapped(
    conn: Connection,
    slices: list[list[int]],
    joinable: list[list[int]],
    *,
    rules: Rules,
    tombstone_after: int,
    max_per_upstream: int,
    replacing: bool,
    lap: _Laps,
) -> tuple[int, int]:
    """Merge and write the *slices* of a full merge, Python's work on one slice beside the
    server's on the previous one: the statements that only the server works on (the tools of
    one record, their versions, the id history) are sent, and the next slice is merged while
    they run. For that the next slice's records and versions are read before those statements
    (they do not touch what is read), and the versions read are those of every record that
    shares a joining key or rule with another (*joinable*), not only of those the merge joined.
    Return the records merged and the tools written."""
    writer = _Writer(conn)
    nodes_seen = tools = 0

    async def load(k: int) -> tuple[list[Any], dict[int, list[VersionNode]]]:
        records = await conn.fetch(_NODES_UNJUDGED, tombstone_after, slices[k])
        lap("load_nodes")
        versions = await _load_versions(conn, joinable[k])
        lap("load_versions")
        return records, versions

    try:
        following = await load(0)
        for k, part in enumerate(slices):
            records, versions = following
            nodes = _nodes_of(records)
            del records
            identifying = identifying_keys(nodes, max_per_upstream=max_per_upstream)
            components = merge(nodes, identifying=identifying, rules=rules)
            nodes_seen += len(nodes)
            tools += len(components)
            del nodes, identifying
            lap("merge")
            await writer.settle()
            released = await _tools_holding(conn, part, held=False) if replacing else []
            await writer.write(components, versions, released, defer=True)
            del components, versions
            lap("write")
            if k + 1 < len(slices):
                following = await load(k + 1)
            await writer.send()
    except Exception:
        await writer.abandon()
        raise
    await writer.settle()
    await writer.finish()
    lap("write")
    return nodes_seen, tools


class _Laps:
    """Seconds spent in each phase, for the log."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._last, 3)
        self._last = now


_DELETE_EVIDENCE: Final = "delete from tool_evidence where upstream_tool_id = any($1::bigint[])"
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


async def _refresh_evidence(
    conn: Connection, ids: list[int], tombstone_after: int, *, keep_old: bool
) -> None:
    """Recompute the evidence of tools *ids* (none for tools no longer live), a batch at a
    time; when *keep_old*, the joining keys they held before go to ``merge_old_keys``."""
    for start in range(0, len(ids), EVIDENCE_BATCH):
        batch = ids[start : start + EVIDENCE_BATCH]
        if keep_old:
            await conn.execute(_DELETE_EVIDENCE_KEEP, batch, sorted(CORROBORATING))
        else:
            await conn.execute(_DELETE_EVIDENCE, batch)
        tools = await conn.fetch(_LIVE_IDENTIFIERS, batch, tombstone_after)
        content = await _descriptor_content(conn, batch)
        rows = []
        for t in tools:
            doc = {"aliases": t["aliases"], "identifiers": t["identifiers"]}
            for kind, value in evidence(t["external_id"], doc, content.get(t["id"], ())):
                rows.append((t["id"], kind, value))
        if rows:
            await conn.copy_records_to_table(
                "tool_evidence", records=rows, columns=["upstream_tool_id", "kind", "value"]
            )


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


_CLOSURE_TABLES: Final = """
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


async def _closure(
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
# affected ones: the edges of the components the merge's slices must keep whole.
_EDGES: Final = """
select id, first from (
    select e.upstream_tool_id as id,
           min(e.upstream_tool_id) over (partition by e.kind, e.value) as first
    from tool_evidence e where e.kind <> all($1::text[])) as x
where id <> first
"""
_AFFECTED_EDGES: Final = """
select id, first from (
    select e.upstream_tool_id as id,
           min(e.upstream_tool_id) over (partition by e.kind, e.value) as first
    from tool_evidence e join merge_affected a on a.id = e.upstream_tool_id
    where e.kind <> all($1::text[])) as x
where id <> first
"""


async def _slices(
    conn: Connection,
    affected: set[int],
    partners: dict[int, set[int]],
    size: int,
    *,
    restricted: bool,
    joinable: list[list[int]] | None = None,
) -> list[list[int]]:
    """*affected* cut into slices of about *size* records, none splitting a component of
    records joined by a joining key (among the affected records when *restricted*, else among
    all) or an always rule: each slice merges alone as it would with the rest. When there are
    several slices and *joinable* is given, it receives, per slice, the records that share a
    component with another (the only ones the merge can put in a tool of several records)."""
    if len(affected) <= size:
        return [sorted(affected)]
    low, high = min(affected), max(affected)
    parent = array("q", range(high - low + 1))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        if low <= a <= high and low <= b <= high:
            ra, rb = find(a - low), find(b - low)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

    query = _AFFECTED_EDGES if restricted else _EDGES
    async for r in conn.cursor(query, sorted(CORROBORATING), prefetch=10_000):
        union(r[0], r[1])
    for a, others in partners.items():
        for b in others:
            if a in affected and b in affected:
                union(a, b)
    slices: list[list[int]] = []
    current: list[int] = []
    last = -1
    for i in sorted(affected, key=lambda i: find(i - low)):
        root = find(i - low)
        if root != last and len(current) >= size:
            slices.append(current)
            current = []
        current.append(i)
        last = root
    slices.append(current)
    if joinable is not None:
        # A record alone in its component (no joining key shared, no always rule) is a tool
        # of one record whatever the merge decides.
        for part in slices:
            sizes: dict[int, int] = defaultdict(int)
            for i in part:
                sizes[find(i - low)] += 1
            joinable.append([i for i in part if sizes[find(i - low)] > 1])
    return slices


_NODES: Final = """
select t.id, u.name, u.priority, t.external_id,
       coalesce(e.kinds, '{}') as kinds, coalesce(e.vals, '{}') as vals,
       coalesce(e.judged, '{}') as judged
from upstream_tools t
join upstreams u on u.id = t.upstream_id
cross join lateral (
    select array_agg(e.kind) as kinds, array_agg(e.value) as vals,
           array_agg(k.identifying is true) as judged
    from tool_evidence e left join merge_keys k on k.kind = e.kind and k.value = e.value
    where e.upstream_tool_id = t.id) as e
where t.id = any($2::bigint[]) and upstream_tool_live(t.missed_listings, $1)
"""
# The same without the closure's judgement (a full merge judges the keys of each slice itself).
_NODES_UNJUDGED: Final = """
select t.id, u.name, u.priority, t.external_id,
       coalesce(e.kinds, '{}') as kinds, coalesce(e.vals, '{}') as vals
from upstream_tools t
join upstreams u on u.id = t.upstream_id
left join (
    select e.upstream_tool_id, array_agg(e.kind) as kinds, array_agg(e.value) as vals
    from tool_evidence e where e.upstream_tool_id = any($2::bigint[])
    group by e.upstream_tool_id) as e on e.upstream_tool_id = t.id
where t.id = any($2::bigint[]) and upstream_tool_live(t.missed_listings, $1)
"""


async def _load_nodes(
    conn: Connection, ids: list[int], tombstone_after: int, *, judged: bool = True
) -> tuple[list[Node], set[Key]]:
    """The live records among *ids*, and (when *judged*) those of their keys ``merge_keys``
    judged identifying."""
    rows = await conn.fetch(_NODES if judged else _NODES_UNJUDGED, tombstone_after, ids)
    if not judged:
        return _nodes_of(rows), set()
    nodes = []
    identifying: set[Key] = set()
    for r in rows:
        keys = list(zip(r["kinds"], r["vals"], strict=True))
        nodes.append(Node(r["id"], r["name"], r["priority"], r["external_id"], frozenset(keys)))
        identifying.update(k for k, j in zip(keys, r["judged"], strict=True) if j)
    return nodes, identifying


def _nodes_of(rows: list[Any]) -> list[Node]:
    """The records of ``_NODES_UNJUDGED`` rows."""
    return [Node(r[0], r[1], r[2], r[3], frozenset(zip(r[4], r[5], strict=True))) for r in rows]


_VERSIONS: Final = """
select v.id, v.upstream_tool_id, v.key, coalesce(v.doc->>'name', v.key) as name, v.position,
       (select md5(string_agg(f.descriptor_type || '/' || f.path || '=' || f.sha256,
                              ',' order by f.descriptor_type, f.path))
        from upstream_files f
        where f.upstream_version_id = v.id and f.sha256 is not null
          and f.file_type in ('PRIMARY_DESCRIPTOR', 'SECONDARY_DESCRIPTOR')) as fingerprint
from upstream_versions v where v.upstream_tool_id = any($1::bigint[])
"""


async def _load_versions(conn: Connection, member_ids: list[int]) -> dict[int, list[VersionNode]]:
    rows = await conn.fetch(_VERSIONS, member_ids)
    out: dict[int, list[VersionNode]] = defaultdict(list)
    for r in rows:
        out[r["upstream_tool_id"]].append(
            VersionNode(
                r["id"], r["upstream_tool_id"], r["key"], r["name"], r["position"], r["fingerprint"]
            )
        )
    return out


_HELD: Final = "select distinct tool_id from merge_held"
_TOOLS_HOLDING: Final = """
select distinct m.tool_id from catalogue_members m where m.upstream_tool_id = any($1::bigint[])
"""


async def _tools_holding(conn: Connection, affected: list[int], *, held: bool) -> list[str]:
    """The ids of the catalogue tools holding any affected upstream tool: what the merge
    rewrites. When *held*, the affected records are all the closure's (one slice), and the
    closure already found those tools (``merge_held``)."""
    rows = await conn.fetch(_HELD) if held else await conn.fetch(_TOOLS_HOLDING, affected)
    return [r["tool_id"] for r in rows]


# The id history of every slice is staged and saved once at the end, in the order of its key:
# one pass over the history's index instead of one per slice (nothing in the merge reads the
# history).
_HISTORY_ALL_TABLE: Final = """
create temporary table if not exists merge_history_all (
    id text, upstream_tool_id bigint, was_primary boolean);
truncate merge_history_all
"""
_STAGE_SINGLE_HISTORY: Final = """
insert into merge_history_all (id, upstream_tool_id, was_primary)
select tool_id, upstream_tool_id, true from merge_single
"""
_SAVE_HISTORY_ALL: Final = """
insert into catalogue_id_history (id, upstream_tool_id, was_primary)
select id, upstream_tool_id, was_primary from merge_history_all
order by id, upstream_tool_id
on conflict (id, upstream_tool_id) do nothing;
truncate merge_history_all
"""


class _Writer:
    """Writes the merged tools slice after slice. After a large insert the catalogue's
    statistics are refreshed (the next statements, and the next merge, are planned on them):
    once after the first slice that inserts many rows, so the planner knows the rows' size,
    and once at the end. The id history of every slice is staged and saved once, at the end."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
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
        defer: bool = False,
    ) -> None:
        """Write *components* in place of the *released* tools. With *defer*, the statements
        the server alone works on are kept for :meth:`send`; until :meth:`settle`, the
        connection may then run other statements first, that do not read what they write."""
        await self.settle()
        ids, renames = await _assign_ids(self.conn, components, released)
        rows = _build(components, versions, ids, renames)
        if not self.staged:
            await self.conn.execute(_HISTORY_ALL_TABLE)
            self.staged = True
        kept: list[str] | None = [] if defer else None
        self.inserted += await _store(self.conn, rows, released, deferred=kept)
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
        """Wait for the statements sent, whatever becomes of them (the transaction fails)."""
        if self.running is not None:
            running, self.running = self.running, None
            with contextlib.suppress(Exception):
                await running

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
    renames: list[tuple[str, str]]  # of other tools, as _assign_ids gives them
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
) -> _Rows:
    """The rows of *components* under *ids*, *versions* holding the versions of every member
    of a tool of several records."""
    rows = _Rows(ids, renames)
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
    released: list[str],
    *,
    deferred: list[str] | None = None,
) -> int:
    """Write *rows* (their ids settled by :func:`_assign_ids`) in place of the *released*
    tools; return the member rows inserted into a catalogue that held none of these tools (0
    when rows were compared and replaced). The id history is only staged
    (``merge_history_all``, saved by ``_SAVE_HISTORY_ALL`` in ``_Writer.finish``). When
    *deferred* is a list and the tools are new to the catalogue,
    the statements without parameters that follow the copies are appended to it instead of
    being run."""
    ids, renames = rows.ids, rows.renames
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


# The catalogue tools whose primary has one of the plain ids $1, each record looked up by its
# external id and its tool by the primary's index (OFFSET 0 keeps that a lookup: the planner
# otherwise scans the catalogue). The tools replaced are left out by the caller: a filter
# `<> all($2)` here would compare every row with every replaced id once the statement runs on
# its generic plan, as a full merge's sixth slice does (1.6 s a slice at 200,000 records).
_CLAIMANTS: Final = """
select c.id, t.external_id, u.name, u.priority
from upstream_tools t
join upstreams u on u.id = t.upstream_id
cross join lateral (
    select c.id from catalogue_tools c where c.primary_member_id = t.id offset 0) as c
where t.external_id = any($1::text[])
"""
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


async def _assign_ids(
    conn: Connection, components: list[Component], released: list[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """Each component's id: its primary's upstream id, unless a better-ranked tool claims
    the same id (then the qualified id); and the renames (current id, new id) of tools
    elsewhere in the catalogue that lose or regain a plain id, losers first. The *released*
    tools are the ones the components replace."""
    claims: dict[str, list[tuple[tuple[int, str, str], int | None]]] = defaultdict(list)
    for i, comp in enumerate(components):
        p = comp.primary
        if not p.external_id.startswith(QUALIFIED_PREFIX):
            claims[p.external_id].append((p.order, i))
    contested = set(claims) | {r for r in released if not r.startswith(QUALIFIED_PREFIX)}
    replaced = set(released)
    others = await conn.fetch(_CLAIMANTS, list(contested))
    outside: dict[str, tuple[str, str]] = {}
    for r in others:
        if r["id"] in replaced:
            continue
        claims[r["external_id"]].append(((r["priority"], r["name"], r["external_id"]), None))
        outside[f"{r['priority']}\0{r['name']}\0{r['external_id']}"] = (r["id"], r["name"])
    ids = [qualified_id(c.primary.upstream, c.primary.external_id) for c in components]
    renames: list[tuple[str, str]] = []
    for plain, contenders in claims.items():
        contenders.sort(key=lambda c: c[0])
        for rank, (order, index) in enumerate(contenders):
            wanted = plain if rank == 0 else qualified_id(order[1], plain)
            if index is not None:
                ids[index] = wanted
                continue
            current, _ = outside[f"{order[0]}\0{order[1]}\0{order[2]}"]
            if current != wanted:
                renames.append((current, wanted))
    # Losers step aside to their qualified ids before winners take the plain ones.
    renames.sort(key=lambda r: not r[1].startswith(QUALIFIED_PREFIX))
    return ids, renames


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
    """Write tools none of whose ids or members the catalogue holds yet (those of
    ``merge_single`` by statements appended to *deferred*, when given, instead of run)."""
    await conn.copy_records_to_table("catalogue_tools", records=tools, columns=_TOOL_COLUMNS)
    await conn.copy_records_to_table("catalogue_members", records=members, columns=_MEMBER_COLUMNS)
    await conn.copy_records_to_table(
        "catalogue_versions", records=versions, columns=_VERSION_COLUMNS
    )
    if deferred is not None:
        deferred += [_INSERT_SINGLE, _INSERT_SINGLE_VERSIONS]
        return
    await conn.execute(_INSERT_SINGLE)
    await conn.execute(_INSERT_SINGLE_VERSIONS)


_ANALYZE_CATALOGUE: Final = "analyze catalogue_tools, catalogue_members, catalogue_versions"


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
