"""Reading an upstream's /tools listing: every page, 304 replay of unchanged pages, and which
listing entries can be trusted to tell that a tool is unchanged."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

from yarl import URL

from aggregator.config import UpstreamConfig
from aggregator.errors import InvalidUpstreamData
from aggregator.harvest import records
from aggregator.harvest.client import UpstreamClient, Validators
from aggregator.trs.parse import Quirks, doc_hash, listed_tool_id, read_tool
from aggregator.trs.staged import ListingPage


def listing_hash(mode: str, raw: Any) -> str:
    """The hash of a tool's listing entry (and the mode it is harvested in)."""
    return doc_hash([mode, raw])


@dataclass(frozen=True, slots=True)
class ListedTool:
    """One tool as the listing names it.

    Attributes:
        tool_id: Its upstream id.
        listing_hash: The hash of its listing entry.
        doc: The entry as read (read_tool), or None when its page answered 304 (replayed).
        trusted: Whether an unchanged entry means an unchanged tool (see ``change_detection``).
    """

    tool_id: str
    listing_hash: str
    doc: dict[str, Any] | None
    trusted: bool


@dataclass(slots=True)
class Listing:
    """Every page of one upstream's /tools, following ``next_page``.

    A page stored by the last publish is asked for conditionally when a 304 would tell
    everything (*unchanged* holds for every tool on it); a 304 replays its tools. *budget*
    bounds each page request. Entries that cannot be read are reported to *error* and make the
    listing unclean (``clean``): it then tombstones nothing. ``pages`` are the pages read.
    """

    client: UpstreamClient
    upstream: UpstreamConfig
    stored: Mapping[str, ListingPage]
    unchanged: Callable[[str, str], bool]
    budget: Callable[[], AbstractAsyncContextManager[None]]
    quirks: Quirks
    error: Callable[[str], None]
    clean: bool = field(default=True, init=False)
    pages: list[ListingPage] = field(default_factory=list, init=False)

    async def tools(self) -> AsyncIterator[list[ListedTool]]:
        """The tools of each page in turn, each tool once."""
        seen: set[str] = set()
        async for items in self._pages():
            tools: list[ListedTool] = []
            for item in items:
                listed = self._read(item)
                if listed is None:
                    continue
                if listed.tool_id in seen:
                    self.quirks.add("a tool listed twice")
                    continue
                seen.add(listed.tool_id)
                tools.append(listed)
            yield tools

    def _read(self, entry: tuple[Any, str, bool]) -> ListedTool | None:
        item, lhash, replayed = entry
        if replayed:  # a page answered 304: *item* is the tool's id
            return ListedTool(item, lhash, None, trusted=False)
        try:
            doc = read_tool(item, self.quirks)
        except InvalidUpstreamData as e:
            self.clean = False
            self.error(f"listing: {e}")
            return None
        return ListedTool(doc["id"], lhash, doc, trusted=self._trusted(item))

    def _screened(self, entries: list[Any], *, plain: bool) -> list[Any]:
        """The listing entries that can be stored; each other one is reported and skipped
        (and the listing is then not complete: nothing is counted missing). *plain*: see
        ``records.screen``."""
        good, refused = records.screen(entries, plain=plain)
        for index, why in refused:
            self.clean = False
            self.error(f"listing: refused tool {records.label(entries[index], index)}: {why}")
        return good

    def _trusted(self, raw: Any) -> bool:
        """Whether an unchanged listing entry means an unchanged tool (see change_detection).

        ``auto`` trusts entries whose every version carries a ``meta_version`` (Dockstore's
        is the time of its last update): without one, files can change while the listing
        stays the same.
        """
        mode = self.upstream.change_detection
        if mode != "auto":
            return mode == "listing"
        if self.upstream.kind == "static":
            return True  # a static tree is published whole: an unchanged entry is unchanged
        versions = raw.get("versions") if isinstance(raw, Mapping) else None
        return (
            isinstance(versions, list)
            and bool(versions)
            and all(
                isinstance(v, Mapping) and v.get("meta_version") not in (None, "") for v in versions
            )
        )

    def _replayable(self, page: ListingPage) -> bool:
        """Whether a 304 for *page* would tell everything: all its tools are unchanged."""
        return all(
            self.unchanged(t, h) for t, h in zip(page.tool_ids, page.listing_hashes, strict=True)
        )

    async def _pages(self) -> AsyncIterator[list[tuple[Any, str, bool]]]:
        """Every page of /tools: (raw entry, its listing hash, False) for each tool, or (id,
        listing hash, True) for each tool of a page that answered 304."""
        url: str | None = f"{self.upstream.url}/tools"
        params: dict[str, str] | None = {"limit": str(self.upstream.page_size)}
        fetched: set[str] = set()
        ids_seen: set[str] = set()
        while url is not None:
            target = URL(url).update_query(params or {})
            signature = str(target.with_query(sorted(target.query.items())))
            if signature in fetched:
                raise InvalidUpstreamData(
                    f"next_page leads back to a page already fetched: {url}", url=url
                )
            fetched.add(signature)
            stored = self.stored.get(signature)
            # The last page is always fetched in full: a 304 cannot say that a page now
            # follows it (ETags cover bodies, not paging headers). A static tree has one page.
            conditional = (
                stored is not None
                and (stored.next_page is not None or self.upstream.kind == "static")
                and self._replayable(stored)
            )
            async with self.budget():
                response = await self.client.get(
                    url,
                    params=params,
                    validators=Validators(stored.etag, stored.last_modified)
                    if stored is not None and conditional
                    else None,
                )
            assert response is not None
            if response.not_modified and stored is not None:
                next_page = response.headers.get("next_page")
                page = (
                    stored
                    if not next_page
                    else dataclasses.replace(stored, next_page=urljoin(response.url, next_page))
                )
                items: list[tuple[Any, str, bool]] = [
                    (t, h, True)
                    for t, h in zip(stored.tool_ids, stored.listing_hashes, strict=True)
                ]
                ids = set(stored.tool_ids)
            else:
                body, plain = response.decoded()
                if not isinstance(body, list):
                    raise InvalidUpstreamData(
                        f"/tools did not answer a JSON array ({response.url})", url=response.url
                    )
                body = self._screened(body, plain=plain)
                hashes = [listing_hash(self.upstream.mode, t) for t in body]
                items = [(t, h, False) for t, h in zip(body, hashes, strict=True)]
                listed_ids = [listed_tool_id(t) or "" for t in body]
                ids = set(listed_ids)
                next_page = response.headers.get("next_page")
                page = ListingPage(
                    signature,
                    response.validators.etag,
                    response.validators.last_modified,
                    urljoin(response.url, next_page) if next_page else None,
                    listed_ids,
                    hashes,
                )
            if items and ids <= ids_seen:
                raise InvalidUpstreamData(
                    "a /tools page did not advance (every tool on it was "
                    f"already listed): {response.url}",
                    url=response.url,
                )
            ids_seen |= ids
            self.pages.append(page)
            yield items
            url, params = page.next_page, None
