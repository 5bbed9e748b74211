"""Reads of the published catalogue for the TRS API: /tools filters, keyset pages, summaries.

Filters apply to merged tools: a tool matches when any of its members (upstream records), or
any version of a member, matches. The matching rules are documented with ``ToolQuery``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from aggregator.db.pool import Executor

_MEMBERS: Final = """exists (select 1 from catalogue_members m
    join upstream_tools t on t.id = m.upstream_tool_id
    where m.tool_id = c.id and ({}))"""
_VERSIONS: Final = """exists (select 1 from catalogue_members m
    join upstream_versions v on v.upstream_tool_id = m.upstream_tool_id
    where m.tool_id = c.id and ({}))"""


def _elements(expr: str, *, text: bool = False) -> str:
    """``jsonb_array_elements(expr)`` that yields nothing when *expr* is not an array."""
    fn = "jsonb_array_elements_text" if text else "jsonb_array_elements"
    return f"{fn}(case when jsonb_typeof({expr}) = 'array' then {expr} else '[]'::jsonb end)"


_ALIASES: Final = _elements("t.doc->'aliases'", text=True)
_TYPES: Final = _elements("v.doc->'descriptor_type'", text=True)
_IMAGES: Final = _elements("v.doc->'images'")
_AUTHORS: Final = _elements("v.doc->'author'", text=True)
_IMAGE_NAME: Final = r"lower(regexp_replace(i->>'image_name', '^.*/|[:@].*$', '', 'g'))"


def _member(condition: str) -> str:
    """*condition* on ``t``, any member (upstream tool) of catalogue tool ``c``."""
    return _MEMBERS.format(condition)


def _version(condition: str) -> str:
    """*condition* on ``v``, any version of any member of catalogue tool ``c``."""
    return _VERSIONS.format(condition)


# The condition of each text filter, with {v} for its argument (see ToolQuery).
_FILTERS: Final = {
    "id": "c.id = catalogue_resolve({v})",
    "alias": _member(f"exists (select 1 from {_ALIASES} a where lower(a) = lower({{v}}))"),
    "toolclass": _member("lower(t.doc->'toolclass'->>'name') = lower({v})"),
    "descriptor_type": _version(f"exists (select 1 from {_TYPES} d where upper(d) = upper({{v}}))"),
    "registry": _version(
        f"exists (select 1 from {_IMAGES} i where lower(i->>'registry_host') = lower({{v}}))"
    ),
    "organization": _member("lower(t.doc->>'organization') = lower({v})"),
    "name": "("
    + _member("lower(t.doc->>'name') = lower({v})")
    + " or "
    + _version(f"exists (select 1 from {_IMAGES} i where {_IMAGE_NAME} = lower({{v}}))")
    + ")",
    "toolname": _member("lower(t.doc->>'name') = lower({v})"),
    "description": _member("strpos(lower(t.doc->>'description'), lower({v})) > 0"),
    "author": _version(
        f"exists (select 1 from {_AUTHORS} a where strpos(lower(a), lower({{v}})) > 0)"
    ),
}
_IS_CHECKER: Final = _member(
    "t.doc->>'url' in (select x.doc->>'checker_url' from upstream_tools x "
    "where x.doc ? 'checker_url')"
)


@dataclass(frozen=True, slots=True)
class ToolQuery:
    """The /tools filters; ``None`` is "not filtered". Text comparisons ignore case.

    Attributes:
        id: A tool id, plain or qualified (``#upstream/<name>/<id>``): exact.
        alias: An alias of any member: equal.
        toolclass: The tool class name of any member: equal.
        descriptor_type: A descriptor type (``CWL`` …) listed by any version of any member.
        registry: The ``registry_host`` of any image of any version: equal.
        organization: The organization of any member: equal.
        name: The image name of any image of any version (its last path segment without tag
            or digest, e.g. ``bwa`` for ``quay.io/biocontainers/bwa:0.7``), or the tool name
            of any member: equal.
        toolname: The tool name of any member: equal.
        description: Contained in the description of any member.
        author: Contained in an author of any version of any member.
        checker: True: only checker workflows (tools whose upstream url is the
            ``checker_url`` of some tool); false: only the other tools.
    """

    id: str | None = None
    alias: str | None = None
    toolclass: str | None = None
    descriptor_type: str | None = None
    registry: str | None = None
    organization: str | None = None
    name: str | None = None
    toolname: str | None = None
    description: str | None = None
    author: str | None = None
    checker: bool | None = None

    def is_empty(self) -> bool:
        """Whether no filter is set."""
        return all(getattr(self, f.name) is None for f in fields(self))

    def statement(self, template: str, *, first_arg: int) -> tuple[str, list[Any]]:
        """*template* (a statement over ``catalogue_tools c`` with a ``{where}`` slot) with the
        conditions of these filters, and their arguments numbered from *first_arg*."""
        clauses, args = self._conditions(first_arg)
        where = "".join(" and " + c for c in clauses)
        return template.format(where=where), args

    def _conditions(self, first_arg: int) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "checker":
                clauses.append(_IS_CHECKER if value else f"not {_IS_CHECKER}")
                continue
            args.append(value)
            clauses.append(_FILTERS[f.name].format(v=f"${first_arg + len(args) - 1}::text"))
        return clauses, args


@dataclass(frozen=True, slots=True)
class PageIndex:
    """Where the pages of one query start: every *stride*-th sort key, and the total.

    Attributes:
        total: How many tools match.
        stride: Rows between two checkpoints.
        checkpoints: The sort keys of rows 0, stride, 2·stride, …
    """

    total: int
    stride: int
    checkpoints: tuple[str, ...]


# Templates: ToolQuery.statement fills {where} with its conditions (values are $n arguments).
_PAGE_INDEX: Final = """
select sort_key, total from (
    select c.sort_key, row_number() over (order by c.sort_key) - 1 as n,
           count(*) over () as total
    from catalogue_tools c where true{where}) as x
where n % $1 = 0 order by n
"""
_PAGE_IDS: Final = """
select c.id from catalogue_tools c
where c.sort_key >= $1{where}
order by c.sort_key limit $2 offset $3
"""


async def page_index(conn: Executor, query: ToolQuery, *, stride: int = 128) -> PageIndex:
    """Count the tools matching *query* and take a checkpoint every *stride* rows (one scan)."""
    statement, args = query.statement(_PAGE_INDEX, first_arg=2)
    rows = await conn.fetch(statement, stride, *args)
    total = int(rows[0]["total"]) if rows else 0
    return PageIndex(total, stride, tuple(r["sort_key"] for r in rows))


async def page_ids(
    conn: Executor, query: ToolQuery, index: PageIndex, *, offset: int, limit: int
) -> list[str]:
    """The ids of the tools at rows [offset, offset + limit) of *query*, in sort-key order.

    A keyset scan from the checkpoint at or before *offset*: it skips fewer than
    ``index.stride`` rows, so a deep page costs what the first one does.
    """
    if offset >= index.total or limit <= 0:
        return []
    checkpoint = index.checkpoints[offset // index.stride]
    statement, args = query.statement(_PAGE_IDS, first_arg=4)
    rows = await conn.fetch(statement, checkpoint, limit, offset % index.stride, *args)
    return [r["id"] for r in rows]


_TOOL_CLASSES: Final = """
select u.tool_classes,
       coalesce((select jsonb_agg(distinct t.doc->'toolclass')
                 from upstream_tools t
                 join catalogue_members m on m.upstream_tool_id = t.id
                 where t.upstream_id = u.id
                   and jsonb_typeof(t.doc->'toolclass') = 'object'),
                '[]'::jsonb) as used
from upstreams u order by u.priority, u.name
"""


async def tool_classes(conn: Executor) -> list[list[Any]]:
    """Tool classes per upstream, best priority first: those its /toolClasses declared, then
    those its tools in the catalogue use."""
    rows = await conn.fetch(_TOOL_CLASSES)
    out: list[list[Any]] = []
    for r in rows:
        declared = r["tool_classes"] if isinstance(r["tool_classes"], list) else []
        out.append([*declared, *r["used"]])
    return out


@dataclass(frozen=True, slots=True)
class UpstreamSummary:
    """One upstream as /service-info summarises it."""

    name: str
    url: str
    kind: str
    mode: str
    priority: int
    service_name: str | None
    tools: int
    last_confirmed: Any


_UPSTREAM_SUMMARIES: Final = """
select u.name, u.url, u.kind, u.mode, u.priority,
       u.service_info->>'name' as service_name,
       count(m.upstream_tool_id) as tools, max(t.last_confirmed) as last_confirmed
from upstreams u
left join upstream_tools t on t.upstream_id = u.id
left join catalogue_members m on m.upstream_tool_id = t.id
group by u.id order by u.priority, u.name
"""


async def upstream_summaries(conn: Executor) -> list[UpstreamSummary]:
    """Every configured upstream with the number of its records in the catalogue."""
    rows = await conn.fetch(_UPSTREAM_SUMMARIES)
    return [UpstreamSummary(**dict(r)) for r in rows]


_CATALOGUE_SUMMARY: Final = """
select (select count(*) from catalogue_tools) as tools, generation, published_at
from catalogue_state
"""


async def catalogue_summary(conn: Executor) -> tuple[int, int, Any]:
    """The catalogue's tool count, generation and publication time."""
    row = await conn.fetchrow(_CATALOGUE_SUMMARY)
    assert row is not None
    return int(row["tools"]), int(row["generation"]), row["published_at"]
