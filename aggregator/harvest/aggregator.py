"""Harvesting another trs-aggregator (``kind = "aggregator"``): incrementally, through its
change feed, keeping where its records really come from, and never taking back our own.

The upstream's ``url`` is its TRS base (``https://b.example/ga4gh/trs/v2``); its change feed
and provenance records are read beside it, under ``/aggregator/v1``.

- The first run (and any run whose cursor has passed the upstream's retention) reads the
  whole tool list; later runs read the change feed from the cursor the last published run
  reached, fetch the tools it names, and confirm the others without a request.
- Each tool's primary record says where it comes from: a record of Dockstore's at B is
  stored with origin ``{"upstream": "dockstore", "via": ["<B's id>"]}`` (and a record B
  itself had from another aggregator keeps that one's chain after B's id).
- A tool all of whose records came through this aggregator (its id is in their chain) is
  not imported: two aggregators harvesting each other settle, with no duplicates and no
  growth. Harvesting oneself is refused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import structlog

from aggregator.db import changes as db_changes
from aggregator.errors import InvalidUpstreamData, UpstreamError, UpstreamHTTPError
from aggregator.harvest.crawl import Crawl, RunOutcome
from aggregator.harvest.listing import Listing
from aggregator.trs.parse import read_tool

log = structlog.get_logger()

TRS_SUFFIX = "/ga4gh/trs/v2"


@dataclass(slots=True)
class Remote:
    """What the other aggregator's feed said at the start of the run."""

    id: str
    head: int
    changed: set[str] | None  # None: read everything


def origin_of(url: str) -> str:
    """The other aggregator's origin (its TRS base without ``/ga4gh/trs/v2``)."""
    return url.rstrip("/").removesuffix(TRS_SUFFIX)


class AggregatorCrawl(Crawl):
    """A Crawl whose tool list comes from another aggregator's change feed."""

    remote: Remote | None = None

    async def execute(self) -> RunOutcome:
        """Run, and remember how far the feed was read once the run is published."""
        result = await super().execute()
        if result.generation is not None and result.listing_complete and self.remote:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    """insert into aggregator_cursors (upstream_id, remote_id, cursor)
                       values ($1, $2, $3)
                       on conflict (upstream_id) do update set remote_id = excluded.remote_id,
                           cursor = excluded.cursor, updated_at = now()""",
                    self.upstream_id,
                    self.remote.id,
                    self.remote.head,
                )
        return result

    async def _feed(self, since: str) -> tuple[str, int, set[str]] | None:
        """The other aggregator's id, head, and the tools named after cursor *since*; None
        when changes after it have passed the feed's retention."""
        origin = origin_of(self.upstream.url)
        ids: set[str] = set()
        cursor = since
        while True:
            try:
                got = await self.client.get_json(
                    f"{origin}/aggregator/v1/changes",
                    params={"since": cursor, "limit": "5000"},
                    ok_404=True,
                )
            except UpstreamHTTPError as e:
                if e.status == 410:
                    return None
                raise
            if got is None:
                raise InvalidUpstreamData(f"{origin} has no change feed: is it a trs-aggregator?")
            body = got[0]
            if not isinstance(body, dict) or not isinstance(body.get("changes"), list):
                raise InvalidUpstreamData(f"{origin}/aggregator/v1/changes is not a change feed")
            remote_id = str((body.get("aggregator") or {}).get("id") or "")
            for c in body["changes"]:
                if not isinstance(c, dict):
                    continue
                for key in ("id", "previous_id"):
                    if isinstance(c.get(key), str):
                        ids.add(c[key])
                into = c.get("into")
                for i in into if isinstance(into, list) else [into]:
                    if isinstance(i, str):
                        ids.add(i)
            cursor = str(body.get("cursor") or cursor)
            if not body.get("more"):
                return remote_id, int(body.get("head") or cursor), ids

    async def _crawl(self) -> None:
        # No /tools listing pages to keep; its cleanliness is that of the records read.
        self.listing = Listing(
            self.client,
            self.upstream,
            {},
            unchanged=lambda _t, _h: False,
            budget=lambda: self._budget("the listing finished", listing=True),
            quirks=self.quirks,
            error=self.error,
        )
        own = await db_changes.instance_id(self.pool)
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "select remote_id, cursor from aggregator_cursors where upstream_id = $1",
                self.upstream_id,
            )
        feed = await self._feed(str(row["cursor"])) if row else None
        if feed is not None and row is not None and feed[0] == row["remote_id"]:
            self.remote = Remote(feed[0], feed[1], feed[2])
        else:
            # Everything: the cursor of the newest change first, then the whole list.
            latest = await self._feed("latest")
            if latest is None:
                raise InvalidUpstreamData("the upstream's change feed has no latest cursor")
            self.remote = Remote(latest[0], latest[1], None)
        if not self.remote.id:
            raise InvalidUpstreamData(
                "the upstream's change feed does not say which aggregator it is"
            )
        if self.remote.id == own:
            raise InvalidUpstreamData(
                f"this upstream is this aggregator itself ({own}): refusing to harvest it"
            )
        if self.remote.changed is None:
            todo = await self._all_ids()
        else:
            todo = sorted(self.remote.changed)
            for tool_id, known in self.known.items():
                if tool_id not in self.remote.changed:
                    self.counts.tools_seen += 1
                    self.confirmed_unchanged += 1
                    await self._confirm(tool_id, known)
        log.info(
            "aggregator_feed_read",
            remote=self.remote.id,
            head=self.remote.head,
            incremental=self.remote.changed is not None,
            tools=len(todo),
        )
        semaphore = asyncio.Semaphore(self.upstream.concurrency)

        async def one(tool_id: str) -> None:
            async with semaphore:
                await self._import(tool_id, own)

        await asyncio.gather(*(one(t) for t in todo))

    async def _all_ids(self) -> list[str]:
        ids: list[str] = []
        offset = 0
        while True:
            got = await self.client.get_json(
                f"{self.upstream.url}/tools", params={"offset": str(offset), "limit": "1000"}
            )
            assert got is not None
            page = got[0]
            if not isinstance(page, list):
                raise InvalidUpstreamData("/tools did not answer a JSON array")
            ids += [t["id"] for t in page if isinstance(t, dict) and isinstance(t.get("id"), str)]
            if len(page) < 1000:
                return ids
            offset += len(page)

    async def _import(self, tool_id: str, own: str) -> None:
        """Fetch one tool of the other aggregator and stage it, unless it is ours."""
        origin = origin_of(self.upstream.url)
        try:
            got = await self.client.get_json(
                f"{self.upstream.url}/tools/{quote(tool_id, safe='')}", ok_404=True
            )
            if got is None:
                return  # gone: not staged, so tombstoned
            prov = await self.client.get_json(
                f"{origin}/aggregator/v1/tools/{quote(tool_id, safe='')}/provenance", ok_404=True
            )
        except UpstreamError as e:
            self.detail_failed += 1
            self.error(f"tool {tool_id}: {e}")
            known = self.known.get(tool_id)
            if known is not None:
                await self._confirm(tool_id, known)
            return
        members = (prov[0] or {}).get("members") if prov and isinstance(prov[0], dict) else None
        members = [m for m in members or [] if isinstance(m, dict)]
        chains = [self._chain(m) for m in members]
        if chains and all(own in via for _, via in chains):
            log.debug("aggregator_own_record_skipped", tool=tool_id)
            return
        primary = next(
            (c for m, c in zip(members, chains, strict=True) if m.get("primary")),
            chains[0] if chains else (self.upstream.name, []),
        )
        record = {
            "upstream": primary[0],
            "via": [self.remote.id if self.remote else "", *primary[1]],
        }
        async with self.pool.acquire() as conn:
            await conn.execute(
                """insert into aggregator_origins (upstream_id, external_id, origin)
                   values ($1, $2, $3)
                   on conflict (upstream_id, external_id) do update set origin = excluded.origin""",
                self.upstream_id,
                tool_id,
                record,
            )
        try:
            doc = read_tool(got[0], self.quirks)
        except InvalidUpstreamData as e:
            assert self.listing is not None
            self.listing.clean = False
            self.error(f"tool {tool_id}: {e}")
            return
        await self._harvest_tool(doc, None)

    @staticmethod
    def _chain(member: dict[str, Any]) -> tuple[str, list[str]]:
        """A member's original upstream and the aggregators it came through."""
        origin = member.get("origin")
        if isinstance(origin, dict) and isinstance(origin.get("via"), list):
            via = [v for v in origin["via"] if isinstance(v, str)]
            return str(origin.get("upstream") or member.get("upstream") or ""), via
        return str(member.get("upstream") or ""), []
