"""Full-text search over the merged catalogue (the ``search_docs`` index of migration 0010).

The index is maintained by the database itself at every publish; this module only reads it.
Names, aliases and ids weigh most, then organisation and authors, then descriptions; a name
within a typo or two of the query (``pg_trgm`` word similarity) matches too.
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


# The text query: the websearch form (quotes, OR, -word) read both as plain words (names and
# ids) and as English (descriptions), and a trigram match on names for typos.
_MATCH: Final = "(d.document @@ t.query or {q} <% d.names)"
_SCORE: Final = (
    "round((ts_rank(d.document, t.query) + 0.5 * word_similarity({q}, d.names))::numeric, 6)"
)
# The text query once: the websearch form (quotes, OR, -word) read both as plain words (names
# and ids) and as English (descriptions).
_TSQUERY: Final = """(select websearch_to_tsquery('simple', {q}) || websearch_to_tsquery('english', {q})
                      as query) as t"""
_HEADLINE: Final = "StartSel=<mark>, StopSel=</mark>, MaxFragments=2, MaxWords=20, MinWords=5"


async def search(
    pool: Conn,
    query: SearchQuery,
    *,
    limit: int,
    after: tuple[float, str] | None = None,
    facets: bool = True,
) -> SearchResult:
    """The page of *limit* hits after *after* (score, id) of *query*, best first (ties by
    id), with the total and, when *facets*, the counts of each filter value among all hits."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(f"set local pg_trgm.word_similarity_threshold = {TYPO_SIMILARITY}")
        return await _search(conn, query, limit=limit, after=after, facets=facets)


async def _search(
    conn: Any,
    query: SearchQuery,
    *,
    limit: int,
    after: tuple[float, str] | None,
    facets: bool,
) -> SearchResult:
    args: list[Any] = []
    text = sanitise(query.text)
    clauses = query.where(args)
    if text:
        args.append(text)
        q = f"${len(args)}"
        clauses.append(_MATCH.format(q=q))
        score = _SCORE.format(q=q)
        source = f"search_docs d cross join {_TSQUERY.format(q=q)}"
    else:
        q = "null::text"
        score = "0::numeric"
        source = "search_docs d"
    where = " and ".join(clauses) or "true"
    matches = (
        "select d.tool_id, d.name, d.organization, d.description, d.toolclass, d.upstreams, "
        f"d.descriptor_types, d.toolclasses, d.organizations, d.has_checker, {score} as score "
        f"from {source} where {where}"
    )
    page_args = list(args)
    keyset = ""
    if after is not None:
        page_args += [after[0], after[1]]
        n = len(page_args)
        keyset = (
            f"where (score < round(${n - 1}::float8::numeric, 6) or "
            f"(score = round(${n - 1}::float8::numeric, 6) and tool_id > ${n}))"
        )
    page_args.append(limit + 1)
    rows = await conn.fetch(
        f"""select m.tool_id, m.score, m.name, m.organization, m.toolclass, m.upstreams,
                   m.descriptor_types, m.has_checker,
                   case when {q} is null then null else ts_headline('english', m.description,
                       websearch_to_tsquery('english', {q}), '{_HEADLINE}') end as hl_description,
                   case when {q} is null then null else ts_headline('simple', m.name,
                       websearch_to_tsquery('simple', {q}), '{_HEADLINE}') end as hl_name
            from (select * from ({matches}) as x {keyset}
                  order by score desc, tool_id limit ${len(page_args)}) as m
            order by m.score desc, m.tool_id""",
        *page_args,
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
    ]
    result = SearchResult(total=0, hits=hits)
    if len(rows) > limit and hits:
        result.next_after = (hits[-1].score, hits[-1].id)
    counts = await conn.fetch(
        f"""with m as ({matches})
            select 'total' as facet, null as value, count(*) as n from m
            {_FACET_SQL if facets else ""}""",
        *args,
    )
    for r in counts:
        if r["facet"] == "total":
            result.total = int(r["n"])
        else:
            result.facets.setdefault(r["facet"], {})[r["value"]] = int(r["n"])
    if facets:
        for name in FACETS:
            result.facets.setdefault(name, {})
    return result


_FACET_SQL: Final = """
union all select 'upstream', u, count(*) from m, unnest(m.upstreams) u group by u
union all select 'descriptor_type', t, count(*) from m, unnest(m.descriptor_types) t group by t
union all select 'toolclass', k, count(*) from m, unnest(m.toolclasses) k group by k
union all select 'organization', o, count(*) from m, unnest(m.organizations) o group by o
union all select 'has_checker', m.has_checker::text, count(*) from m group by m.has_checker
"""
