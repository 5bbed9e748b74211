"""Running the merge against the database: evidence, affected components, the catalogue rows.

This module runs the merge's phases in order; ``merge_evidence`` holds the evidence and the
closure, ``merge_read`` the slices and what each reads, ``merge_write`` the catalogue's rows.
After every publish, only the upstream tools in ``merge_queue`` (new, changed, or whose
liveness changed) and everything their evidence reaches are re-merged; the result is the same
as a full re-merge (tested), which ``full=True`` performs.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import structlog

from aggregator.db.generation import advance_generation, catalogue_generation
from aggregator.db.merge_evidence import CLOSURE_TABLES, closure, refresh_evidence
from aggregator.db.merge_ids import shared_ids
from aggregator.db.merge_read import (
    NODES_UNJUDGED,
    cut_slices,
    load_nodes,
    load_versions,
    nodes_of,
    tools_holding,
)
from aggregator.db.merge_write import ANALYZE_AFTER, Writer
from aggregator.merge.engine import (
    QUALIFIED_PREFIX,
    Rules,
    VersionNode,
    identifying_keys,
    merge,
    qualified_id,
)

__all__ = [
    "ANALYZE_AFTER",
    "QUALIFIED_PREFIX",
    "MergeStats",
    "qualified_id",
    "remerge",
    "save_merge_rules",
]

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

log = structlog.get_logger()

# Records merged at once: a larger merge (a full one, a first publish) is cut into slices of
# whole components, each loaded, merged and written in turn, so that memory stays bounded.
SLICE_RECORDS: Final = 25_000


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
# A merge into an empty catalogue writes every tool afresh: the catalogue's touch triggers
# record nothing meanwhile, and the capture at the generation bump describes every tool
# (migration 0029; it puts the setting back, as does the merge after the bump).
_CAPTURE_ALL: Final = "select set_config('aggregator.capture_all', $1, true)"


async def remerge(
    conn: Connection,
    *,
    tombstone_after: int,
    max_per_upstream: int = 1,
    full: bool = False,
    slice_records: int | None = None,
) -> MergeStats:
    """Re-merge what changed (or everything, when *full* or when the catalogue is empty),
    rewrite the affected catalogue tools, and advance (and announce) the generation. Call
    inside the publishing transaction (``db.publish``). When nothing changed, the catalogue and
    its generation stay as they are, so caches stay warm.

    More than *slice_records* (default ``SLICE_RECORDS``) affected records are merged in
    slices of whole components (closed under shared evidence), one after the other in the
    same transaction: the result is the same, and memory holds one slice at a time.

    The cyclic garbage collector is paused meanwhile (:func:`collector_paused`)."""
    with collector_paused():
        return await _remerge(
            conn,
            tombstone_after=tombstone_after,
            max_per_upstream=max_per_upstream,
            full=full,
            slice_records=slice_records,
        )


@dataclass(slots=True)
class _Pause:
    """The merges of this process running with the collector paused, and whether it ran
    before the first."""

    depth: int = 0
    resume: bool = False


_PAUSE: Final = _Pause()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector inside the block (when blocks nest, or two
    merges of one process overlap, it resumes as the last ends, if it ran before the first).

    A merge builds millions of short-lived containers (rows, records, keys, catalogue rows)
    and holds a slice's worth of them alive; every collection of the oldest generation walks
    all of them, and CPython starts one each time the objects that survived the younger
    collections grow by a quarter: 48 of them took 7.0 s of the 11.5 s of Python in a full
    merge of 200,000 records. What the merge builds holds no reference cycles (reference
    counting frees it), so the collector has nothing to find there; the cycles the rest of
    the process makes meanwhile are collected once it resumes.
    """
    if _PAUSE.depth == 0:
        _PAUSE.resume = gc.isenabled()
        gc.disable()
    _PAUSE.depth += 1
    try:
        yield
    finally:
        _PAUSE.depth -= 1
        if _PAUSE.depth == 0 and _PAUSE.resume:
            gc.enable()


async def _remerge(
    conn: Connection,
    *,
    tombstone_after: int,
    max_per_upstream: int,
    full: bool,
    slice_records: int | None,
) -> MergeStats:
    """:func:`remerge`, with the collector paused."""
    lap = _Laps()
    dirty = [r["id"] for r in await conn.fetch(_ALL_TOOLS if full else _DIRTY_TOOLS)]
    if not dirty:
        generation = await catalogue_generation(conn)
        log.info("merge_skipped", reason="nothing changed", generation=generation)
        return MergeStats(0, 0, 0, generation)
    held = await conn.fetchval(_CATALOGUE_HELD)
    if not full and not held:
        # Into an empty catalogue (a first publish) every record is merged: the full merge's
        # path does it with its evidence loaded at once, its slices written beside Python and
        # no touches recorded, where the incremental path would follow every record's keys.
        full = True
        dirty = [r["id"] for r in await conn.fetch(_ALL_TOOLS)]
    # A slice's records are held only by tools of the catalogue before the merge (the earlier
    # slices wrote other records): a full merge into an empty catalogue replaces nothing.
    replacing = not full or held
    page_cost, jit, plan_cache = await conn.fetchrow(_PLAN_SETTINGS) or ("", "", "")
    await conn.execute(_SET_PLAN, MERGE_PAGE_COST, jit if full else "off", MERGE_PLAN_CACHE)
    rules, partners = await _load_rules(conn)
    await conn.execute(CLOSURE_TABLES)
    await refresh_evidence(conn, dirty, tombstone_after, keep_old=not full, every=full)
    if len(dirty) >= ANALYZE_AFTER and len(dirty) * 10 >= await conn.fetchval(_EVIDENCE_COUNTED):
        await conn.execute(_ANALYZE_EVIDENCE)
    await conn.execute(_CLEAR_DIRTY, dirty)
    lap("evidence")
    if full:
        affected = set(dirty)
    else:
        affected = await closure(
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
    slices = await cut_slices(
        conn, affected, partners, size, restricted=not full, joinable=joinable if full else None
    )
    lap("closure")
    if not replacing:
        await conn.execute(_CAPTURE_ALL, "on")
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
    if not replacing:
        await conn.execute(_CAPTURE_ALL, "off")
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
    writer = Writer(conn)
    nodes_seen = tools = 0
    # In one slice of an incremental merge, the slice is the closure, which found the tools
    # holding its records.
    closed = not full and len(slices) == 1
    for part in slices:
        nodes, identifying = await load_nodes(conn, part, tombstone_after, judged=not full)
        if full:
            identifying = identifying_keys(nodes, max_per_upstream=max_per_upstream)
        lap("load_nodes")
        components = merge(nodes, identifying=identifying, rules=rules)
        del identifying
        lap("merge")
        # A tool of one record serves its versions as they are: they are written in the server.
        joined = [m.id for c in components if len(c.members) > 1 for m in c.members]
        versions = await load_versions(conn, joined)
        lap("load_versions")
        old_ids = await tools_holding(conn, part, held=closed) if replacing else []
        await writer.write(components, versions, old_ids, closed=closed)
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
    # Into an empty catalogue, a tool's plain id can only be claimed by a tool of an earlier
    # slice whose primary holds the same id: ids that one live record holds are not looked up.
    writer = Writer(conn, shared=None if replacing else await shared_ids(conn, tombstone_after))
    nodes_seen = tools = 0

    async def load(k: int) -> tuple[list[Any], dict[int, list[VersionNode]]]:
        records = await conn.fetch(NODES_UNJUDGED, tombstone_after, slices[k])
        lap("load_nodes")
        versions = await load_versions(conn, joinable[k])
        lap("load_versions")
        return records, versions

    try:
        following = await load(0)
        for k, part in enumerate(slices):
            records, versions = following
            nodes = nodes_of(records)
            del records
            identifying = identifying_keys(nodes, max_per_upstream=max_per_upstream)
            components = merge(nodes, identifying=identifying, rules=rules)
            nodes_seen += len(nodes)
            tools += len(components)
            del nodes, identifying
            released: list[str] = []
            if replacing:
                await writer.settle()
                released = await tools_holding(conn, part, held=False)
            rows = await writer.prepare(components, versions, released)
            del components, versions
            lap("merge")
            await writer.store(rows, defer=True)
            del rows
            lap("write")
            if k + 1 < len(slices):
                following = await load(k + 1)
            await writer.send()
    except BaseException:  # also when cancelled: the statements sent must end first
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
