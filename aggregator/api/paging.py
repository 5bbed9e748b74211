"""Paging of /tools: parsing limit and offset, and the five TRS paging headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from yarl import URL

from aggregator.errors import BadRequest

DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 1000


@dataclass(frozen=True, slots=True)
class Page:
    """A requested page: *offset* rows skipped, at most *limit* returned."""

    limit: int
    offset: int


def parse_page(query: Mapping[str, str]) -> Page:
    """Read ``limit`` and ``offset``; raise BadRequest naming the parameter when invalid."""
    return Page(limit=_int(query, "limit", DEFAULT_LIMIT, low=1, high=MAX_LIMIT),
                offset=_int(query, "offset", 0, low=0, high=None))


def _int(query: Mapping[str, str], name: str, default: int, *, low: int,
         high: int | None) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {raw!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"{name} must be {bound}, not {value}")
    return value


def paging_headers(url: URL, page: Page, total: int) -> dict[str, str]:
    """``self_link``, ``next_page`` (absent on the last page), ``last_page``,
    ``current_offset`` and ``current_limit``, all keeping the request's other parameters."""

    def at(offset: int) -> str:
        return str(url.update_query(offset=str(offset), limit=str(page.limit)))

    if total == 0:
        last = 0
    elif page.offset < total:
        last = page.offset + (total - 1 - page.offset) // page.limit * page.limit
    else:
        last = (total - 1) // page.limit * page.limit
    headers = {
        "self_link": at(page.offset),
        "last_page": at(last),
        "current_offset": str(page.offset),
        "current_limit": str(page.limit),
    }
    if page.offset + page.limit < total:
        headers["next_page"] = at(page.offset + page.limit)
    return headers
