"""Reads of the web console: ranked catalogue search with facet counts, and run history.

The search ranks exact matches first: the tool an id names (``catalogue_resolve``), then tools
any of whose members is named exactly the query, then exact aliases, name prefixes, names
containing it, and last the tools that only mention every word somewhere (id, name,
organisation, description, aliases). ``search`` is the one function the console calls, so a
full-text index can replace the query without touching the pages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import asyncpg

    Conn = asyncpg.Connection[Any] | asyncpg.Pool[Any]

#: Most values listed per facet (the chosen one is always listed).
FACET_VALUES: Final = 12

_TYPES: Final = (
    "jsonb_array_elements_text(case when jsonb_typeof(v.doc->'descriptor_type') = 'array' "
    "then v.doc->'descriptor_type' else '[]'::jsonb end)"
)

# One row per catalogue tool matching the words ($2) or named exactly by $1, with what the
# facets and the ranking need. $1 is the whole query (or null), $2 its lower-cased words.
_MATCHED: Final = f"""
with resolved as (select catalogue_resolve($1) as id),
tools as (
    select c.id, c.sort_key,
           coalesce(p.doc->>'name', '') as name,
           nullif(p.doc->>'organization', '') as org,
           nullif(p.doc->'toolclass'->>'name', '') as toolclass,
           s.upstreams, s.exact_name, s.exact_alias, s.name_prefix, s.name_contains,
           s.haystack,
           coalesce((select array_agg(distinct upper(d) order by upper(d))
                     from catalogue_versions cv
                     join upstream_versions v on v.id = cv.upstream_version_id
                     cross join lateral {_TYPES} d
                     where cv.tool_id = c.id), '{{}}') as types
    from catalogue_tools c
    join upstream_tools p on p.id = c.primary_member_id
    cross join lateral (
        select array_agg(distinct u.name order by u.name) as upstreams,
               coalesce(bool_or(lower(x.doc->>'name') = lower($1)), false) as exact_name,
               coalesce(bool_or(exists (
                   select 1 from jsonb_array_elements_text(
                       case when jsonb_typeof(x.doc->'aliases') = 'array'
                            then x.doc->'aliases' else '[]'::jsonb end) a
                   where lower(a) = lower($1))), false) as exact_alias,
               coalesce(bool_or(starts_with(lower(x.doc->>'name'), lower($1))), false)
                   as name_prefix,
               coalesce(bool_or(strpos(lower(x.doc->>'name'), lower($1)) > 0), false)
                   as name_contains,
               lower(string_agg(concat_ws(' ', x.external_id, x.doc->>'name',
                                          x.doc->>'organization', x.doc->>'description',
                                          x.doc->>'aliases'), ' ')) as haystack
        from catalogue_members m
        join upstream_tools x on x.id = m.upstream_tool_id
        join upstreams u on u.id = x.upstream_id
        where m.tool_id = c.id
    ) s
),
matched as (
    select t.*,
           case when t.id = (select id from resolved) then 0
                when t.exact_name then 1
                when t.exact_alias then 2
                when t.name_prefix then 3
                when t.name_contains then 4
                else 5 end as rank
    from tools t
    where ($1::text is null
           or t.id = (select id from resolved)
           or not exists (select 1 from unnest($2::text[]) w where strpos(t.haystack, w) = 0))
      and ($3::text is null or $3 = any(t.upstreams))
      and ($4::text is null or $4 = any(t.types))
      and ($5::text is null or lower(t.toolclass) = lower($5))
      and ($6::text is null or lower(t.org) = lower($6))
      and (not $7::boolean or cardinality(t.upstreams) >= 2)
      and ($8::text is null or t.upstreams = array[$8])
)
"""

_PAGE: Final = (
    _MATCHED
    + """
select id, name, org, toolclass, upstreams, types, rank, count(*) over () as total
from matched
order by rank, sort_key
limit $9 offset $10
"""
)

_FACETS: Final = (
    _MATCHED
    + """
select facet, value, n from (
    select facet, value, n,
           row_number() over (partition by facet order by n desc, value) as place
    from (
        select 'upstream' as facet, u as value, count(*) as n
        from matched, unnest(upstreams) u group by u
        union all
        select 'type', d, count(*) from matched, unnest(types) d group by d
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
    ) f
) ranked
where place <= $9 or value = any($10::text[])
order by facet, n desc, value
"""
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

    def args(self) -> list[Any]:
        """The query arguments $1-$8."""
        text = self.text.strip() if self.text else None
        words = [w for w in (text or "").lower().split() if w]
        return [
            text or None,
            words,
            self.upstream,
            self.descriptor_type.upper() if self.descriptor_type else None,
            self.toolclass,
            self.organization,
            self.multi,
            self.only,
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
    """The tools matching *query*, best first, rows [offset, offset + limit), with facets."""
    args = query.args()
    rows = await conn.fetch(_PAGE, *args, limit, offset)
    total = int(rows[0]["total"]) if rows else 0
    if not rows and offset:
        total = int(await conn.fetchval(_MATCHED + "select count(*) from matched", *args))
    chosen = [v for v in (query.upstream, query.descriptor_type, query.toolclass) if v]
    chosen += [v for v in (query.organization, query.only) if v]
    facets: dict[str, list[tuple[str, int]]] = {}
    for r in await conn.fetch(_FACETS, *args, FACET_VALUES, chosen):
        facets.setdefault(r["facet"], []).append((r["value"], int(r["n"])))
    hits = [
        Hit(
            r["id"],
            r["name"],
            r["org"],
            r["toolclass"],
            list(r["upstreams"] or []),
            list(r["types"] or []),
            r["rank"] <= 1,
        )
        for r in rows
    ]
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
