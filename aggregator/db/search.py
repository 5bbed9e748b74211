"""Full-text search over the merged catalogue (the ``search_docs`` index of migration 0010).

The index is maintained by the database itself at every publish; this module only reads it.
Names, aliases and ids weigh most, then organisation and authors, then descriptions; a name
within a typo or two of the query (``pg_trgm`` word similarity) matches too. A search without
text (filters alone) reads its total and its facet counts, always exact, from
``search_facet_groups`` (migration 0025), or without filters either from
``search_facet_values`` (migration 0028), and its page in id order from the primary key.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import asyncpg

    Conn = asyncpg.Pool[Any]


#: Longest query text read; the rest is ignored.
MAX_QUERY_CHARS: Final = 200
#: How much of a query word must match a name, in shared trigrams, to count as a typo of it.
TYPO_SIMILARITY: Final = 0.4
#: Facets of a search with text are counted over every hit up to this many hits; past it,
#: over a sample of about this many (chosen by a hash of the tool id, so independent of order
#: and of every filter), scaled to the total, and the answer says they are estimates. Those of
#: a search without text are exact at any size.
FACET_EXACT_LIMIT: Final = 1000
FACETS: Final = ("upstream", "descriptor_type", "toolclass", "organization", "has_checker")

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]+")


def sanitise(text: str) -> str:
    """User text as the query parser may read it: NFC, no control characters (PostgreSQL
    refuses NUL), no unpaired surrogates, whitespace collapsed, at most MAX_QUERY_CHARS."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    return " ".join(text.split())[:MAX_QUERY_CHARS].strip()


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """One search: text (may be empty: everything, by id) and filters (None: any)."""

    text: str = ""
    upstream: str | None = None
    descriptor_type: str | None = None
    toolclass: str | None = None
    organization: str | None = None
    has_checker: bool | None = None

    def where(self, args: list[Any]) -> list[str]:
        """The filter conditions on ``search_docs d``; their values are appended to *args*."""

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        clauses = []
        if self.upstream is not None:
            clauses.append(f"d.upstreams @> array[{arg(self.upstream)}::text]")
        if self.descriptor_type is not None:
            clauses.append(f"d.descriptor_types @> array[upper({arg(self.descriptor_type)})]")
        if self.toolclass is not None:
            clauses.append(
                f"exists (select 1 from unnest(d.toolclasses) k "
                f"where lower(k) = lower({arg(self.toolclass)}))"
            )
        if self.organization is not None:
            clauses.append(f"d.organizations @> array[lower({arg(self.organization)})]")
        if self.has_checker is not None:
            clauses.append(f"d.has_checker = {arg(self.has_checker)}::boolean")
        return clauses


@dataclass(frozen=True, slots=True)
class Hit:
    """One matching tool."""

    id: str
    score: float
    name: str
    organization: str
    toolclass: str | None
    upstreams: list[str]
    descriptor_types: list[str]
    has_checker: bool
    highlights: dict[str, str]


@dataclass(slots=True)
class SearchResult:
    """A page of hits, the total, the facet counts, and where the next page starts."""

    total: int
    hits: list[Hit]
    facets: dict[str, dict[str, int]] = field(default_factory=dict)
    next_after: tuple[float, str] | None = None
    #: Whether the facet counts are estimates from a sample of the hits (see FACET_EXACT_LIMIT).
    facets_estimated: bool = False


_HEADLINE: Final = "StartSel=<mark>, StopSel=</mark>, MaxFragments=2, MaxWords=20, MinWords=5"
_WORD: Final = re.compile(r"[^\W_]{3,}")

# The counts of each filter value among the hits counted (s: all hits, or a sample of them),
# as one JSON object (a null in a list of values, as an upstream may send, is no value).
_FACETS: Final = """jsonb_build_object(
    'upstream', (select coalesce(jsonb_object_agg(k, n), '{}') from
                 (select u as k, count(*) as n from s, unnest(s.upstreams) u
                  where u is not null group by u) x),
    'descriptor_type', (select coalesce(jsonb_object_agg(k, n), '{}') from
                 (select t as k, count(*) as n from s, unnest(s.descriptor_types) t
                  where t is not null group by t) x),
    'toolclass', (select coalesce(jsonb_object_agg(k, n), '{}') from
                 (select c as k, count(*) as n from s, unnest(s.toolclasses) c
                  where c is not null group by c) x),
    'organization', (select coalesce(jsonb_object_agg(k, n), '{}') from
                 (select o as k, count(*) as n from s, unnest(s.organizations) o
                  where o is not null group by o) x),
    'has_checker', (select coalesce(jsonb_object_agg(k, n), '{}') from
                 (select s.has_checker::text as k, count(*) as n from s group by 1) x))"""

# The hits whose facets are counted: all of them up to $limit, else those whose id hashes below
# the share $limit / total of the 2^20 buckets.
_SAMPLE: Final = """s as (select m.* from m, n
             where n.total <= {limit}
                or (hashtext(m.tool_id)::bigint & 1048575) < 1048576 * {limit} / n.total)"""

# A search's transaction: the typo threshold, and no JIT compilation (a search over thousands
# of hits is planned at a cost that turns it on, and compiling takes longer than the search).
_SETTINGS: Final = (
    f"set local pg_trgm.similarity_threshold = {TYPO_SIMILARITY}; set local jit = off"
)


async def search(
    pool: Conn,
    query: SearchQuery,
    *,
    limit: int,
    after: tuple[float, str] | None = None,
    facets: bool = True,
    facet_exact_limit: int = FACET_EXACT_LIMIT,
) -> SearchResult:
    """The page of *limit* hits after *after* (score, id) of *query*, best first (ties by
    id), with the total and, when *facets*, the counts of each filter value among the hits:
    exact up to *facet_exact_limit* hits, estimated from a sample of about that many above."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(_SETTINGS)
        return await _search(
            conn, query, limit=limit, after=after, facets=facets, sample=facet_exact_limit
        )


_CORRECTIONS: Final = """
select q.w, (select l.word from search_lexicon l where l.word % q.w
             order by similarity(l.word, q.w) desc, l.word limit 1) as fix
from unnest($1::text[]) as q(w)
where not exists (select 1 from search_lexicon l where l.word = q.w)
"""
_INDEX_ONLY: Final = "set local enable_seqscan = off"
# Back to the configured value (server, database or role), not "on": an operator may have set
# it otherwise.
_SCANS_AGAIN: Final = "set local enable_seqscan to default"


async def corrected(conn: Any, text: str) -> str:
    """*text* with each word that is no name word of the catalogue replaced by the most
    similar one that is (unchanged when there is none). Runs inside the caller's transaction."""
    # The lexicon holds words with a letter; a number (``104`` of ``lab-104``) is never a
    # typo of one, and would share trigrams with thousands of ids.
    words = sorted({w.lower() for w in _WORD.findall(text) if any(c.isalpha() for c in w)})
    if not words:
        return text
    # The planner prices the trigram index above reading the whole word list (96 ms for 60,000
    # words, against 2 ms through the index): the index is asked for, for this statement only.
    await conn.execute(_INDEX_ONLY)
    rows = await conn.fetch(_CORRECTIONS, words)
    await conn.execute(_SCANS_AGAIN)
    fixes = {r["w"]: r["fix"] for r in rows if r["fix"]}
    if not fixes:
        return text
    return _WORD.sub(lambda m: fixes.get(m.group(0).lower(), m.group(0)), text)


# A search without text: its total and, when {facets}, the counts of each filter value, summed
# over the groups of search_facet_groups that pass the filters ({where}).
_GROUP_TOTALS: Final = """
with g as materialized (select * from search_facet_groups d where {where})
select (select coalesce(sum(tools), 0) from g) as total, {facets} as facets"""
_GROUP_FACETS: Final = """jsonb_build_object(
    'upstream', (select coalesce(jsonb_object_agg(k, n), '{}') from
                 (select u as k, sum(tools) as n from g, unnest(g.upstreams) u
                  where u is not null group by u) x),
    'descriptor_type', (select coalesce(jsonb_object_agg(k, n), '{}') from
                 (select t as k, sum(tools) as n from g, unnest(g.descriptor_types) t
                  where t is not null group by t) x),
    'toolclass', (select coalesce(jsonb_object_agg(k, n), '{}') from
                 (select c as k, sum(tools) as n from g, unnest(g.toolclasses) c
                  where c is not null group by c) x),
    'organization', (select coalesce(jsonb_object_agg(k, n), '{}') from
                 (select o as k, sum(tools) as n from g, unnest(g.organizations) o
                  where o is not null group by o) x),
    'has_checker', (select coalesce(jsonb_object_agg(k, n), '{}') from
                 (select g.has_checker::text as k, sum(tools) as n from g group by 1) x))"""
# A search without text and without filters: its total and facet counts read from
# search_facet_values (the tools per value of each facet), as _GROUP_FACETS would sum them.
_VALUE_TOTALS: Final = """
select coalesce((select tools from search_facet_values where facet = 'total' and value = ''),
                0) as total, {facets} as facets"""
_VALUE_FACETS: Final = """(
    select jsonb_build_object(
        'upstream', coalesce(jsonb_object_agg(value, tools)
                             filter (where facet = 'upstreams'), '{}'),
        'descriptor_type', coalesce(jsonb_object_agg(value, tools)
                                    filter (where facet = 'descriptor_types'), '{}'),
        'toolclass', coalesce(jsonb_object_agg(value, tools)
                              filter (where facet = 'toolclasses'), '{}'),
        'organization', coalesce(jsonb_object_agg(value, tools)
                                 filter (where facet = 'organizations'), '{}'),
        'has_checker', coalesce(jsonb_object_agg(value, tools)
                                filter (where facet = 'has_checker'), '{}'))
    from search_facet_values
    where facet in ('upstreams', 'descriptor_types', 'toolclasses', 'organizations',
                    'has_checker'))"""
# Its page: every hit scores 0, so the order is the tools' ids.
_BROWSE_PAGE: Final = """
select d.tool_id, d.name, d.organization, d.toolclass, d.upstreams, d.descriptor_types,
       d.has_checker
from search_docs d where {where} order by d.tool_id limit {limit}"""


async def _browse(
    conn: Any,
    query: SearchQuery,
    *,
    limit: int,
    after: tuple[float, str] | None,
    facets: bool,
) -> SearchResult:
    args: list[Any] = []
    where = " and ".join(query.where(args)) or "true"
    # Without filters, from the tools per value; else summed over the groups passing them.
    counts, by = (_VALUE_TOTALS, _VALUE_FACETS) if not args else (_GROUP_TOTALS, _GROUP_FACETS)
    counted = await conn.fetchrow(
        counts.format(where=where, facets=by if facets else "null::jsonb"), *args
    )
    result = SearchResult(total=int(counted["total"]), hits=[])
    if facets:
        found = counted["facets"]
        result.facets = {name: {str(k): int(v) for k, v in found[name].items()} for name in FACETS}
    if after is not None:
        # As the keyset of a search with text reads it, every score being 0.
        args += [after[0], after[1]]
        n = len(args)
        where += (
            f" and (0 < round(${n - 1}::float8::numeric, 6) or "
            f"(0 = round(${n - 1}::float8::numeric, 6) and d.tool_id > ${n}))"
        )
    args.append(limit + 1)
    if result.total:
        rows = await conn.fetch(_BROWSE_PAGE.format(where=where, limit=f"${len(args)}"), *args)
        result.hits = [
            Hit(
                r["tool_id"],
                0.0,
                r["name"],
                r["organization"],
                r["toolclass"],
                list(r["upstreams"]),
                list(r["descriptor_types"]),
                r["has_checker"],
                {},
            )
            for r in rows[:limit]
        ]
        if len(rows) > limit and result.hits:
            result.next_after = (0.0, result.hits[-1].id)
    return result


async def _search(
    conn: Any,
    query: SearchQuery,
    *,
    limit: int,
    after: tuple[float, str] | None,
    facets: bool,
    sample: int,
) -> SearchResult:
    args: list[Any] = []
    text = sanitise(query.text)
    if not text:
        return await _browse(conn, query, limit=limit, after=after, facets=facets)
    clauses = query.where(args)
    fixed = await corrected(conn, text)
    args += [text, fixed]
    q, c = f"${len(args) - 1}", f"${len(args)}"
    # The websearch form (quotes, or, -word) read as plain words (names and ids) and as
    # English (descriptions), and again with typos in name words corrected.
    tsquery = f"websearch_to_tsquery('simple', {q}) || websearch_to_tsquery('english', {q})" + (
        f" || websearch_to_tsquery('simple', {c})" if fixed != text else ""
    )
    source = f"search_docs d cross join (select {tsquery} as query) as t"
    clauses.append("d.document @@ t.query")
    score = "round(ts_rank(d.document, t.query)::numeric, 6)"
    headline = f"""ts_headline('english', p.description,
                       websearch_to_tsquery('english', {q})
                       || websearch_to_tsquery('english', {c}), '{_HEADLINE}')
                   as hl_description,
                   ts_headline('simple', p.name, websearch_to_tsquery('simple', {q})
                       || websearch_to_tsquery('simple', {c}), '{_HEADLINE}') as hl_name"""
    where = " and ".join(clauses) or "true"
    keyset = ""
    if after is not None:
        args += [after[0], after[1]]
        n = len(args)
        keyset = (
            f"where (score < round(${n - 1}::float8::numeric, 6) or "
            f"(score = round(${n - 1}::float8::numeric, 6) and tool_id > ${n}))"
        )
    args.append(max(1, sample))
    counted_hits = _SAMPLE.format(limit=f"${len(args)}::bigint")
    args.append(limit + 1)
    rows = await conn.fetch(
        f"""with m as materialized (
                select d.tool_id, d.name, d.organization, d.toolclass,
                       d.upstreams, d.descriptor_types, d.toolclasses, d.organizations,
                       d.has_checker, {score} as score
                from {source} where {where}),
            n as (select count(*) as total from m),
            {counted_hits},
            p as (select x.*, d.description
                  from (select * from m {keyset} order by score desc, tool_id
                        limit ${len(args)}) as x
                  join search_docs d on d.tool_id = x.tool_id)
            select f.total, f.counted, f.facets, p.tool_id, p.score, p.name, p.organization,
                   p.toolclass, p.upstreams, p.descriptor_types, p.has_checker, {headline}
            from (select (select total from n) as total,
                         {"(select count(*) from s)" if facets else "0::bigint"} as counted,
                         {_FACETS if facets else "null::jsonb"} as facets) as f
            left join p on true
            order by p.score desc, p.tool_id""",
        *args,
    )
    hits = [
        Hit(
            r["tool_id"],
            float(r["score"]),
            r["name"],
            r["organization"],
            r["toolclass"],
            list(r["upstreams"]),
            list(r["descriptor_types"]),
            r["has_checker"],
            {
                k: v
                for k, v in (("name", r["hl_name"]), ("description", r["hl_description"]))
                if v and "<mark>" in v
            },
        )
        for r in rows[:limit]
        if r["tool_id"] is not None
    ]
    result = SearchResult(total=int(rows[0]["total"]) if rows else 0, hits=hits)
    if len(rows) > limit and hits:
        result.next_after = (hits[-1].score, hits[-1].id)
    if facets and rows:
        found = rows[0]["facets"] or {}
        counted = int(rows[0]["counted"])
        result.facets_estimated = counted < result.total
        # Estimates: the sample's counts scaled to the total (never above it).
        scale = result.total / counted if result.facets_estimated and counted else 1.0
        result.facets = {
            name: {
                str(k): min(result.total, round(int(v) * scale))
                for k, v in (found.get(name) or {}).items()
            }
            for name in FACETS
        }
    return result
