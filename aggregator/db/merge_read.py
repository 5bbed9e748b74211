"""What the merge reads: the slices of whole components it merges one after the other, the
records and versions of a slice, and the catalogue tools its records are held by."""

from __future__ import annotations

from array import array
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Final

import structlog

from aggregator.merge.engine import (
    Node,
    VersionNode,
)
from aggregator.merge.identity import CORROBORATING, Key

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

log = structlog.get_logger()


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


async def cut_slices(
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
NODES_UNJUDGED: Final = """
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


async def load_nodes(
    conn: Connection, ids: list[int], tombstone_after: int, *, judged: bool = True
) -> tuple[list[Node], set[Key]]:
    """The live records among *ids*, and (when *judged*) those of their keys ``merge_keys``
    judged identifying."""
    rows = await conn.fetch(_NODES if judged else NODES_UNJUDGED, tombstone_after, ids)
    if not judged:
        return nodes_of(rows), set()
    nodes = []
    identifying: set[Key] = set()
    for r in rows:
        keys = list(zip(r["kinds"], r["vals"], strict=True))
        nodes.append(Node(r["id"], r["name"], r["priority"], r["external_id"], frozenset(keys)))
        identifying.update(k for k, j in zip(keys, r["judged"], strict=True) if j)
    return nodes, identifying


def nodes_of(rows: list[Any]) -> list[Node]:
    """The records of ``NODES_UNJUDGED`` rows."""
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


async def load_versions(conn: Connection, member_ids: list[int]) -> dict[int, list[VersionNode]]:
    """The versions of the records *member_ids*, by record, with their descriptors'
    fingerprints (what ``merge_versions`` compares)."""
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


async def tools_holding(conn: Connection, affected: list[int], *, held: bool) -> list[str]:
    """The ids of the catalogue tools holding any affected upstream tool: what the merge
    rewrites. When *held*, the affected records are all the closure's (one slice), and the
    closure already found those tools (``merge_held``)."""
    rows = await conn.fetch(_HELD) if held else await conn.fetch(_TOOLS_HOLDING, affected)
    return [r["tool_id"] for r in rows]


# The id history of every slice is staged and saved once at the end, in the order of its key:
