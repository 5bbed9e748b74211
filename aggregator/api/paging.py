"""Paging of /tools: ``limit`` and ``offset``, the five TRS paging headers and RFC 8288 Link."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from multidict import MultiMapping
from yarl import URL

from aggregator.errors import BadRequest

_T = TypeVar("_T")

DEFAULT_LIMIT: Final = 1000
#: The largest integer a parameter may hold (PostgreSQL's bigint): offsets, run ids.
MAX_BIGINT: Final = 2**63 - 1
#: Larger limits are served as this many (``current_limit`` says so), as Dockstore does.
MAX_LIMIT: Final = 1000


@dataclass(frozen=True, slots=True)
class Page:
    """A requested page: *offset* rows skipped, at most *limit* returned."""

    limit: int
    offset: int


def parse_page(query: Mapping[str, str]) -> Page:
    """Read ``limit`` (1 or more; above MAX_LIMIT means MAX_LIMIT) and ``offset`` (a row index,
    0 or more); raise BadRequest naming the parameter when either is not such a number."""
    limit = query_int(query, "limit", DEFAULT_LIMIT, low=1)
    offset = query_int(query, "offset", 0, low=0, high=MAX_BIGINT)
    return Page(limit=min(limit, MAX_LIMIT), offset=offset)


def query_int(
    query: Mapping[str, str], name: str, default: _T, *, low: int, high: int | None = None
) -> int | _T:
    """The integer query parameter *name* (*default* when absent or empty); raise BadRequest
    naming it when it is not an integer in [*low*, *high*]."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {raw!r}") from None
    if value < low:
        raise BadRequest(f"{name} must be at least {low}, not {value}")
    if high is not None and value > high:
        raise BadRequest(f"{name} must be at most {high}")
    return value


def last_offset(page: Page, total: int) -> int:
    """The offset of the last page, on the grid of pages that starts at *page*'s offset."""
    if total == 0:
        return 0
    if page.offset < total:
        return page.offset + (total - 1 - page.offset) // page.limit * page.limit
    return (total - 1) // page.limit * page.limit


def paging_headers(
    tools_url: str, query: MultiMapping[str], page: Page, total: int
) -> dict[str, str]:
    """``self_link``, ``next_page`` (absent on the last page), ``last_page``,
    ``current_offset``, ``current_limit`` and ``Link``, every link keeping the request's
    other parameters (its filters).

    *tools_url* is the absolute URL of ``/tools`` under the base path the request came in on.
    """
    base = URL(tools_url, encoded=True)

    def at(offset: int) -> str:
        # The request's parameters in their order, offset and limit replaced where they were.
        values = {"offset": str(offset), "limit": str(page.limit)}
        items: list[tuple[str, str]] = []
        for k, v in query.items():
            if k not in values:
                items.append((k, v))
            elif all(k != done for done, _ in items):
                items.append((k, values[k]))
        items += [(k, v) for k, v in values.items() if all(k != done for done, _ in items)]
        return str(base.with_query(items))

    last = last_offset(page, total)
    links = {"self": at(page.offset), "first": at(0), "last": at(last)}
    headers = {
        "self_link": links["self"],
        "last_page": links["last"],
        "current_offset": str(page.offset),
        "current_limit": str(page.limit),
    }
    if page.offset + page.limit < total:
        headers["next_page"] = links["next"] = at(page.offset + page.limit)
    if 0 < page.offset <= total:
        links["prev"] = at(max(0, page.offset - page.limit))
    headers["Link"] = ", ".join(f'<{url}>; rel="{rel}"' for rel, url in links.items())
    return headers
