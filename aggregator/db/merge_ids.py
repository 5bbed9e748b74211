"""Tool ids: each merged tool takes its primary record's upstream id, unless a better-ranked
tool claims the same id; other tools of the catalogue lose or regain a plain id with it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from aggregator.merge.engine import QUALIFIED_PREFIX, Component, qualified_id

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

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
# The same, the records of the merge left out before their tools are looked up, when they are
# those of merge_affected, which then holds every member of the tools replaced (the closure's
# one slice): the tools the others hold are not replaced, and the ones they hold are.
_NOT_AFFECTED: Final = "  and not exists (select 1 from merge_affected a where a.id = t.id)\n"
_CLAIMANTS_OUTSIDE: Final = _CLAIMANTS + _NOT_AFFECTED


# The plain ids that two live records or more hold.
_SHARED_IDS: Final = """
select external_id from upstream_tools
where upstream_tool_live(missed_listings, $1)
group by external_id having count(*) > 1
"""


async def shared_ids(conn: Connection, tombstone_after: int) -> set[str]:
    """The plain ids that two live records or more hold: in a merge into an empty catalogue,
    the only ones a tool can find claimed by another (one written by an earlier slice)."""
    return {r["external_id"] for r in await conn.fetch(_SHARED_IDS, tombstone_after)}


async def assign_ids(
    conn: Connection,
    components: list[Component],
    released: list[str],
    *,
    shared: set[str] | None = None,
    settle: Callable[[], Awaitable[None]] | None = None,
    closed: bool = False,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Each component's id: its primary's upstream id, unless a better-ranked tool claims
    the same id (then the qualified id); and the renames (current id, new id) of tools
    elsewhere in the catalogue that lose or regain a plain id, losers first. The *released*
    tools are the ones the components replace. When the catalogue held nothing before this
    merge, *shared* (:func:`shared_ids`) names the only ids the catalogue may hold a claimant
    of: the others are not looked up. *settle*, when given, is awaited before a look-up (the
    connection may still run statements sent before). When *closed*, ``merge_affected`` holds
    the components' records and every member of the released tools, and nothing else."""
    claims: dict[str, list[tuple[tuple[int, str, str], int | None]]] = defaultdict(list)
    for i, comp in enumerate(components):
        p = comp.primary
        if not p.external_id.startswith(QUALIFIED_PREFIX):
            claims[p.external_id].append((p.order, i))
    contested = set(claims) | {r for r in released if not r.startswith(QUALIFIED_PREFIX)}
    if shared is not None:
        contested &= shared
    replaced = set(released)
    others = []
    if contested:
        if settle is not None:
            await settle()
        others = await conn.fetch(_CLAIMANTS_OUTSIDE if closed else _CLAIMANTS, list(contested))
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
