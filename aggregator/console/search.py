"""The home page: search the catalogue, ranked, with facets and pages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from aggregator.api.paging import query_int
from aggregator.console.render import Page, serve_page
from aggregator.db import console as db_console
from aggregator.errors import BadRequest

PER_PAGE: Final = 20
#: The deepest result reachable by paging: past it, narrow the search.
MAX_RESULTS: Final = 1000
#: search parameter -> Search field
FILTERS: Final = {
    "upstream": "upstream",
    "type": "descriptor_type",
    "class": "toolclass",
    "org": "organization",
    "only": "only",
}
_FACET_PARAM: Final = {
    "upstream": "upstream",
    "type": "type",
    "toolclass": "class",
    "org": "org",
    "only": "only",
}
_FACET_TITLE: Final = {
    "upstream": "Published in",
    "type": "Descriptor type",
    "toolclass": "Tool class",
    "org": "Organisation",
    "only": "Only in",
}


# -- home: search ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FacetValue:
    """One value of a facet, its count, and the URL that toggles it."""

    value: str
    count: int
    href: str
    chosen: bool


@dataclass(slots=True)
class Facet:
    """A facet with its values."""

    title: str
    values: list[FacetValue] = field(default_factory=list)


def _href(params: Mapping[str, str], **change: str | None) -> str:
    merged = {k: v for k, v in params.items() if v and k != "page"}
    for k, v in change.items():
        if v:
            merged[k] = v
        else:
            merged.pop(k, None)
    return "/" + (f"?{urlencode(merged)}" if merged else "")


def _facets(params: dict[str, str], counts: dict[str, list[tuple[str, int]]]) -> list[Facet]:
    out: list[Facet] = []
    for name, param in _FACET_PARAM.items():
        facet = Facet(_FACET_TITLE[name])
        for value, n in counts.get(name, []):
            chosen = params.get(param) == value
            facet.values.append(
                FacetValue(value, n, _href(params, **{param: None if chosen else value}), chosen)
            )
        if facet.values:
            out.append(facet)
        if name == "upstream":
            multi = dict(counts.get("multi", [])).get("yes", 0)
            chosen = params.get("multi") == "1"
            if multi or chosen:
                out.append(
                    Facet(
                        "Coverage",
                        [
                            FacetValue(
                                "in 2 or more registries",
                                multi,
                                _href(params, multi=None if chosen else "1"),
                                chosen,
                            )
                        ],
                    )
                )
    return out


async def home(request: web.Request) -> web.Response:
    """GET /: search box, ranked results labelled with their sources, facets, pages."""
    q = request.query
    params = {k: q.get(k, "").strip() for k in ("q", "multi", "page", *FILTERS)}

    async def build(conn: Any) -> Page:
        page = query_int(q, "page", 1, low=1)
        if (page - 1) * PER_PAGE >= MAX_RESULTS:
            raise BadRequest(
                f"results past the first {MAX_RESULTS} are not paged; narrow the search"
            )
        search = db_console.Search(
            text=params["q"] or None,
            multi=params["multi"] == "1",
            **{f: params[p] or None for p, f in FILTERS.items()},
        )
        found = await db_console.search(conn, search, offset=(page - 1) * PER_PAGE, limit=PER_PAGE)
        last = max(1, -(-min(found.total, MAX_RESULTS) // PER_PAGE))
        window = range(max(1, page - 3), min(last, page + 3) + 1)
        filters = [(p, params[p]) for p in (*FILTERS, "multi") if params[p]]
        return Page(
            "home.html",
            {
                "title": f"Search: {params['q']}" if params["q"] else "Catalogue",
                "params": params,
                "found": found,
                "page": page,
                "last_page": last,
                "pages": [(n, _href(params, page=str(n))) for n in window],
                "prev_href": _href(params, page=str(page - 1)) if page > 1 else None,
                "next_href": _href(params, page=str(page + 1)) if page < last else None,
                "capped": found.total > MAX_RESULTS,
                "facets": _facets(params, found.facets),
                "filters": filters,
                "clear_href": _href({"q": params["q"]}),
                "first": (page - 1) * PER_PAGE + 1,
                "max_results": MAX_RESULTS,
            },
        )

    return await serve_page(request, build)
