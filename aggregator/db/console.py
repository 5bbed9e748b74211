"""Reads of the web console: ranked catalogue search with facet counts, and run history.

The search reads the full-text index of the catalogue (``search_docs``, kept by the database at
every generation, as ``/aggregator/v1/search`` does): a tool matches when the query names it
(``catalogue_resolve``: merged id, a member's native id, an alias), when its words match as the
API's search reads them (plain words, English, typos corrected), or when every word begins a
word of its names, ids or aliases (so a half-typed name finds it). Exact matches rank first: the
tool the query names, then the tool named exactly the query, then tools with a name, alias or id
that is exactly the query, then names starting with it, names containing it, and last the
others by full-text rank.

A search without words (the home page, filters alone) reads no text and no search rows for its
counts: its total and facets are sums over ``search_facet_groups`` (the catalogue's tools
counted by every value a facet shows or a filter reads, kept exact at every publish by
migration 0025), or without filters from ``search_facet_values`` (the tools per value of each
facet, migration 0028), and its page is read from an index in sort-key order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from aggregator.db.search import TYPO_SIMILARITY, corrected, sanitise

if TYPE_CHECKING:
    import asyncpg

    Conn = asyncpg.Connection[Any] | asyncpg.Pool[Any]

#: Most values listed per facet (the chosen one is always listed).
FACET_VALUES: Final = 12

# Words as the prefix query reads them: letters and digits only, so nothing in them is
# tsquery syntax.
_PREFIX_WORD: Final = re.compile(r"[^\W_]+")

# One row per catalogue tool matching the query, with what the facets and the ranking need.
# $1 the query text (null: every tool), $2 it with typos corrected, $3 the prefix query
# ("w1:* & w2:*", or null), $4-$8 the filters, $9 "in two or more registries" only. {found}
# is the ids of the tools the text finds (through the indexes).
_MATCHED_OF: Final = """
with t as (select websearch_to_tsquery('simple', $1) || websearch_to_tsquery('english', $1)
                  || websearch_to_tsquery('simple', $2)
                  || coalesce(to_tsquery('simple', $3), ''::tsquery) as query),
resolved as (select catalogue_resolve($1) as id),
matched as materialized (
    select d.tool_id as id, d.sort_key, d.name, nullif(d.organization, '') as org,
           nullif(d.toolclass, '') as toolclass, d.upstreams, d.descriptor_types as types,
           case when $1::text is null then 5
                when d.tool_id = (select id from resolved) then 0
                when lower(d.name) = lower($1) then 1
                when strpos(' ' || lower(d.names) || ' ', ' ' || lower($1) || ' ') > 0 then 2
                when starts_with(lower(d.name), lower($1)) then 3
                when strpos(lower(d.names), lower($1)) > 0 then 4
                else 5 end as rank,
           case when $1::text is null then 0 else ts_rank(d.document, t.query) end as score
    from ({found}) as f
    join search_docs d on d.tool_id = f.tool_id
    cross join t
    where ($4::text is null or d.upstreams @> array[$4::text])
      and ($5::text is null or d.descriptor_types @> array[$5::text])
      and ($6::text is null or lower(d.toolclass) = lower($6))
      and ($7::text is null or lower(d.organization) = lower($7))
      and ($8::text is null or d.upstreams = array[$8::text])
      and (not $9::boolean or cardinality(d.upstreams) >= 2)
)
"""
_FOUND_BY_TEXT: Final = """
select d.tool_id from search_docs d, t where d.document @@ t.query
union select id from resolved where id is not null"""

# The page of hits $10 long from $11, with the total and the facet counts of every match
# ($12 values per facet, and the chosen values $13 always), in one statement.
_PAGE: Final = """,
counts as (
    select facet, value, n,
           row_number() over (partition by facet order by n desc, value) as place
    from (
        select 'upstream' as facet, u as value, count(*) as n
        from matched, unnest(upstreams) u group by u
        union all
        select 'type', d, count(*) from matched, unnest(types) d where d is not null group by d
        union all
        select 'toolclass', toolclass, count(*) from matched
        where toolclass is not null group by toolclass
        union all
        select 'org', org, count(*) from matched where org is not null group by org
        union all
        select 'multi', 'yes', count(*) from matched where cardinality(upstreams) >= 2
        union all
        select 'only', upstreams[1], count(*) from matched
        where cardinality(upstreams) = 1 group by upstreams[1]
    ) f),
page as (
    select id, name, org, toolclass, upstreams, types, rank, score, sort_key from matched
    order by rank, score desc, sort_key
    limit $10 offset $11)
select (select count(*) from matched) as total,
       (select coalesce(jsonb_agg(jsonb_build_array(facet, value, n)
                                  order by facet, n desc, value), '[]')
        from counts where place <= $12 or value = any($13::text[])) as facets,
       page.*
from (select) as one left join page on true
order by page.rank, page.score desc, page.sort_key
"""

# The search's settings, for the rest of the (read-only) transaction the page renders in: the
# typo threshold, and no JIT compilation (as db.search).
_SETTINGS: Final = (
    f"set local pg_trgm.similarity_threshold = {TYPO_SIMILARITY}; set local jit = off"
)


@dataclass(frozen=True, slots=True)
class Search:
    """What the console's search asks for; ``None`` is "not filtered".

    Attributes:
        text: The words typed, as typed.
        upstream: Tools with a member from this upstream.
        descriptor_type: Tools with a version of this descriptor type (``CWL`` …).
        toolclass: Tools of this class (case ignored).
        organization: Tools of this organisation (case ignored).
        multi: Only tools published in two or more registries.
        only: Only tools published in this registry and no other.
    """

    text: str | None = None
    upstream: str | None = None
    descriptor_type: str | None = None
    toolclass: str | None = None
    organization: str | None = None
    multi: bool = False
    only: str | None = None

    @property
    def chosen(self) -> list[str]:
        """The values the filters choose (each facet lists its chosen value)."""
        chosen = (self.upstream, self.descriptor_type, self.toolclass, self.organization, self.only)
        return [v for v in chosen if v]

    async def args(self, conn: Any) -> list[Any]:
        """The query arguments $1-$9 (the typo correction asks the database)."""
        text = sanitise(self.text or "") or None
        words = _PREFIX_WORD.findall(text.lower()) if text else []
        return [
            text,
            await corrected(conn, text) if text else None,
            " & ".join(f"{w}:*" for w in words) or None,
            self.upstream,
            self.descriptor_type.upper() if self.descriptor_type else None,
            self.toolclass,
            self.organization,
            self.only,
            self.multi,
        ]


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result."""

    id: str
    name: str
    organization: str | None
    toolclass: str | None
    upstreams: list[str]
    descriptor_types: list[str]
    exact: bool

    @classmethod
    def of(cls, row: Any, *, exact: bool) -> Hit:
        """The hit of a search row (id, name, org, toolclass, upstreams, types)."""
        return cls(
            row["id"],
            row["name"],
            row["org"],
            row["toolclass"],
            list(row["upstreams"] or []),
            list(row["types"] or []),
            exact,
        )


@dataclass(slots=True)
class SearchPage:
    """One page of results, the total, and the facet counts of all the matches.

    Attributes:
        facets: Per facet (``upstream``, ``type``, ``toolclass``, ``org``, ``multi``,
            ``only``), its values with their counts, most frequent first.
    """

    hits: list[Hit]
    total: int
    facets: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


async def search(conn: Conn, query: Search, *, offset: int, limit: int) -> SearchPage:
    """The tools matching *query*, best first, rows [offset, offset + limit), with facets.

    *conn* is a connection inside a transaction: the search's settings last until its end.
    """
    await conn.execute(_SETTINGS)
    if not sanitise(query.text or ""):
        return await _browse(conn, query, offset=offset, limit=limit)
    args = await query.args(conn)
    matched = _MATCHED_OF.format(found=_FOUND_BY_TEXT)
    rows = await conn.fetch(matched + _PAGE, *args, limit, offset, FACET_VALUES, query.chosen)
    facets: dict[str, list[tuple[str, int]]] = {}
    for facet, value, n in rows[0]["facets"]:
        facets.setdefault(facet, []).append((value, int(n)))
    hits = [Hit.of(r, exact=r["rank"] <= 1) for r in rows if r["id"] is not None]
    return SearchPage(hits, int(rows[0]["total"]), facets)


# The counts of a search without words: per facet, its values with the tools of each, from the
# groups of search_facet_groups that pass the filters ({where}); $1 values per facet, and the
# chosen values $2 always.
_GROUP_COUNTS: Final = """
with g as materialized (
    select d.upstreams, d.descriptor_types as types, nullif(d.toolclass, '') as toolclass,
           nullif(d.organization, '') as org, d.tools
    from search_facet_groups d where {where}),
counts as (
    select facet, value, n,
           row_number() over (partition by facet order by n desc, value) as place
    from (
        select 'upstream' as facet, u as value, sum(tools) as n
        from g, unnest(upstreams) u group by u
        union all
        select 'type', t, sum(tools) from g, unnest(types) t where t is not null group by t
        union all
        select 'toolclass', toolclass, sum(tools) from g
        where toolclass is not null group by toolclass
        union all
        select 'org', org, sum(tools) from g where org is not null group by org
        union all
        select 'multi', 'yes', coalesce(sum(tools), 0) from g where cardinality(upstreams) >= 2
        union all
        select 'only', upstreams[1], sum(tools) from g
        where cardinality(upstreams) = 1 group by upstreams[1]
    ) f)
select (select coalesce(sum(tools), 0) from g) as total,
       (select coalesce(jsonb_agg(jsonb_build_array(facet, value, n)
                                  order by facet, n desc, value), '[]')
        from counts where place <= $1 or value = any($2::text[])) as facets
"""
# The counts of the home page (no words, no filters): read from search_facet_values, a few
# rows per facet value, as _GROUP_COUNTS would sum them over every group; $1 values per facet.
_VALUE_COUNTS: Final = """
with counts as (
    select f.name as facet, v.value, v.tools as n,
           row_number() over (partition by v.facet order by v.tools desc, v.value) as place
    from search_facet_values v
    join (values ('upstreams', 'upstream'), ('descriptor_types', 'type'),
                 ('toolclass', 'toolclass'), ('organization', 'org'), ('only', 'only'))
         as f (facet, name) on f.facet = v.facet
    union all
    select 'multi', 'yes',
           coalesce((select tools from search_facet_values
                     where facet = 'multi' and value = 'yes'), 0), 1)
select coalesce((select tools from search_facet_values where facet = 'total' and value = ''),
                0) as total,
       (select coalesce(jsonb_agg(jsonb_build_array(facet, value, n)
                                  order by facet, n desc, value), '[]')
        from counts where place <= $1) as facets
"""
# The page of a search without words: sort-key order, rows [$1 + 1, $1 + $2].
_BROWSE_PAGE: Final = """
select d.tool_id as id, d.name, nullif(d.organization, '') as org,
       nullif(d.toolclass, '') as toolclass, d.upstreams, d.descriptor_types as types
from search_docs d where {where}
order by d.sort_key offset $1 limit $2
"""


def _filters(query: Search, args: list[Any]) -> str:
    """The filters of *query* on ``d`` (search rows, or their groups: the same columns);
    their values are appended to *args*."""

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    clauses = []
    if query.upstream:
        clauses.append(f"d.upstreams @> array[{arg(query.upstream)}::text]")
    if query.descriptor_type:
        clauses.append(f"d.descriptor_types @> array[{arg(query.descriptor_type.upper())}::text]")
    if query.toolclass:
        clauses.append(f"lower(d.toolclass) = lower({arg(query.toolclass)}::text)")
    if query.organization:
        clauses.append(f"lower(d.organization) = lower({arg(query.organization)}::text)")
    if query.only:
        clauses.append(f"d.upstreams = array[{arg(query.only)}::text]")
    if query.multi:
        clauses.append("cardinality(d.upstreams) >= 2")
    return " and ".join(clauses) or "true"


async def _browse(conn: Conn, query: Search, *, offset: int, limit: int) -> SearchPage:
    """A search without words: the counts from the facet groups, the page from the index."""
    args: list[Any] = [FACET_VALUES, query.chosen]
    where = _filters(query, args)
    if where == "true":
        counted = await conn.fetchrow(_VALUE_COUNTS, FACET_VALUES)
    else:
        counted = await conn.fetchrow(_GROUP_COUNTS.format(where=where), *args)
    assert counted is not None  # aggregates: one row
    facets: dict[str, list[tuple[str, int]]] = {}
    for facet, value, n in counted["facets"]:
        facets.setdefault(facet, []).append((value, int(n)))
    total = int(counted["total"])
    if offset >= total:
        return SearchPage([], total, facets)
    args = [offset, limit]
    rows = await conn.fetch(_BROWSE_PAGE.format(where=_filters(query, args)), *args)
    hits = [Hit.of(r, exact=False) for r in rows]
    return SearchPage(hits, total, facets)


async def catalogue_upstream_names(conn: Conn) -> list[str]:
    """Every upstream's name, best priority first."""
    return [r["name"] for r in await conn.fetch("select name from upstreams order by priority")]


async def fetch_run(conn: Conn, upstream_id: int, run_id: int) -> asyncpg.Record | None:
    """Run *run_id* of upstream *upstream_id*, if it is one of its runs."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "select * from harvest_runs where id = $1 and upstream_id = $2", run_id, upstream_id
    )
    return row


async def run_series(conn: Conn, upstream_id: int, *, limit: int) -> list[asyncpg.Record]:
    """The last *limit* finished runs of *upstream_id*, oldest first, for the history chart."""
    return await conn.fetch(
        """select * from (
               select id, status, started_at,
                      extract(epoch from finished_at - started_at)::float8 as duration_s,
                      tools_seen, errors
               from harvest_runs
               where upstream_id = $1 and finished_at is not null
               order by id desc limit $2) r
           order by id""",
        upstream_id,
        limit,
    )


async def run_status_counts(conn: Conn, upstream_id: int) -> dict[str, int]:
    """How many runs of *upstream_id* ended in each status."""
    rows = await conn.fetch(
        "select status, count(*) as n from harvest_runs where upstream_id = $1 group by status",
        upstream_id,
    )
    return {r["status"]: int(r["n"]) for r in rows}
