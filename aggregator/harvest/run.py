"""One run of one upstream: list, tell changed tools from unchanged, fetch, stage, publish."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, urljoin

import aiohttp
import asyncpg
import structlog
from yarl import URL

from aggregator.config import Config, UpstreamConfig
from aggregator.db.publish import StagedTool, StagedVersion, publish_run, stage_tools
from aggregator.db.runs import RunCounts
from aggregator.db.upstreams import save_service_info
from aggregator.errors import AggregatorError, InvalidUpstreamData, UpstreamError
from aggregator.harvest import records
from aggregator.harvest.client import CircuitOpen, UpstreamClient, Validators
from aggregator.harvest.files import VersionFiles
from aggregator.harvest.hosts import FileHosts
from aggregator.progress import Progress
from aggregator.trs.parse import (
    Quirks,
    doc_hash,
    read_tool,
    read_tool_classes,
    read_version,
    version_key,
)

log = structlog.get_logger()

# pg_advisory_xact_lock(MERGE_LOCK): one publish (and so one merge) at a time.
MERGE_LOCK: Final = 0x7472_736D_6572_6765  # "trsmerge"
# Staged tools are written in batches of this many, or sooner when their contents add up.
STAGE_BATCH: Final = 200
STAGE_BATCH_BYTES: Final = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Known:
    """What was published for one tool: enough to tell whether its listing entry changed."""

    doc_hash: str
    listing_hash: str | None
    fresh: bool  # details fetched within harvest.revalidate_after


@dataclass(frozen=True, slots=True)
class Page:
    """One listing page as read: its validators, next page, and the tools on it."""

    url: str
    validators: Validators
    next_page: str | None
    tool_ids: list[str]
    listing_hashes: list[str]


class Stager:
    """Writes a run's staged tools in batches, so memory holds one batch, not the upstream."""

    def __init__(self, pool: asyncpg.Pool[Any], run_id: int) -> None:
        self.pool = pool
        self.run_id = run_id
        self._buffer: list[StagedTool] = []
        self._bytes = 0
        self._lock = asyncio.Lock()

    async def add(self, tool: StagedTool) -> None:
        """Stage *tool*; waits while a full batch is written (back-pressure)."""
        self._buffer.append(tool)
        self._bytes += sum(
            len(f.content) for v in tool.versions for f in v.files if f.content is not None
        )
        if len(self._buffer) >= STAGE_BATCH or self._bytes >= STAGE_BATCH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Write whatever is buffered."""
        async with self._lock:
            batch, self._buffer, self._bytes = self._buffer, [], 0
            if batch:
                async with self.pool.acquire() as conn:
                    await stage_tools(conn, self.run_id, batch)


class RunBudgetExhausted(AggregatorError):
    """The run's time budget ran out."""


def listing_hash(mode: str, raw: Any) -> str:
    """The hash of a tool's listing entry (and the mode it is harvested in)."""
    return doc_hash([mode, raw])


@dataclass(slots=True)
class RunResult:
    """How a run ended, before its record is closed."""

    status: str = "failed"  # succeeded | partial | failed
    error: str | None = None
    generation: int | None = None
    listing_complete: bool = False
    upstream_down: bool = False  # the run stopped because requests kept failing
    counts: RunCounts = field(default_factory=RunCounts)


class HarvestRun:
    """The state of one run of *upstream* (row *upstream_id*), recorded as run *run_id*."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        client: UpstreamClient,
        config: Config,
        upstream: UpstreamConfig,
        upstream_id: int,
        run_id: int,
        progress: Progress,
    ) -> None:
        self.pool = pool
        self.client = client
        self.config = config
        self.upstream = upstream
        self.upstream_id = upstream_id
        self.run_id = run_id
        self.progress = progress
        self.result = RunResult()
        self.counts = self.result.counts
        self.quirks = Quirks()
        self.stager = Stager(pool, run_id)
        self.file_hosts = FileHosts(client.session, upstream, client)
        self.known: dict[str, Known] = {}
        self.stored_pages: dict[str, Page] = {}
        self.pages: list[Page] = []
        self.listing_clean = True  # every listing entry could be read
        self.detailed_ok = 0
        self.detail_failed = 0
        self.confirmed_unchanged = 0
        self.not_refreshed = 0
        self.deadline = asyncio.get_running_loop().time() + upstream.run_budget_s

    def error(self, message: str) -> None:
        """Record an error of this run."""
        self.counts.error(message)
        log.warning("harvest_error_recorded", error=message)

    def report(self) -> None:
        """Copy the traffic counters and show progress."""
        c = self.counts
        c.requests = self.client.traffic.requests
        c.bytes_fetched = self.client.traffic.bytes
        c.not_modified = self.client.traffic.not_modified
        c.file_hosts = self.file_hosts.summary()
        self.progress.update(
            self.upstream.name,
            tools=c.tools_seen,
            versions=c.versions_seen,
            files=c.files_stored,
            requests=c.requests,
            bytes=c.bytes_fetched,
            errors=c.errors,
        )

    async def execute(self) -> RunResult:
        """List, fetch and stage; publish in one transaction if the listing completed."""
        r = self.result
        try:
            await self._load_state()
            async with self._budget("the listing finished"):
                service_info, tool_classes = await self._fetch_service_info()
            await self._crawl()
            await self.stager.flush()
        except (AggregatorError, aiohttp.ClientError, asyncpg.PostgresError, OSError) as e:
            r.error = str(e) or type(e).__name__
        if self.client.tripped:
            r.upstream_down = True
            if r.error is None or not r.error.startswith("stopped after"):
                self.error(self.client.tripped)
        if r.error is not None:
            self.error(r.error)
            self.report()
            return r
        r.listing_complete = self.listing_clean
        if self.not_refreshed:
            self.error(
                f"time budget of {self.upstream.run_budget_s:g}s ran out: "
                f"{self.not_refreshed} tools were not refreshed and keep what was "
                "published"
            )
        if (
            self.counts.tools_seen
            and self.detail_failed
            and not self.detailed_ok
            and not self.confirmed_unchanged
        ):
            r.error = self.client.tripped or "no tool could be fetched in full"
            self.report()
            return r
        self.report()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("select pg_advisory_xact_lock($1)", MERGE_LOCK)
            # Fresh statistics, or the publish may plan nested loops over a big run's rows.
            await conn.execute("analyze staged_tools")
            await save_service_info(conn, self.upstream_id, service_info, tool_classes)
            r.generation = await publish_run(
                conn,
                self.run_id,
                self.upstream_id,
                listing_complete=r.listing_complete,
                tombstone_after=self.config.harvest.tombstone_after,
                counts=self.counts,
                max_per_upstream=self.config.merge.max_tools_per_upstream,
            )
            await self._save_pages(conn)
        for quirk in self.quirks.items:
            log.info("upstream_quirk_seen", quirk=quirk)
        r.status = "partial" if self.counts.errors else "succeeded"
        if self.client.tripped:
            r.error = self.client.tripped
        return r

    @contextlib.asynccontextmanager
    async def _budget(self, before: str, *, listing: bool = False) -> AsyncIterator[None]:
        """Raise RunBudgetExhausted if the block is still running when the budget runs out.

        The *listing* may take twice the budget: once it is out, details are no longer fetched
        and the listing goes on alone (a run publishes nothing without its listing).
        """
        deadline = self.deadline + (self.upstream.run_budget_s if listing else 0.0)
        try:
            async with asyncio.timeout_at(deadline):
                yield
        except TimeoutError:
            if asyncio.get_running_loop().time() < deadline:
                raise
            raise RunBudgetExhausted(
                f"time budget of {self.upstream.run_budget_s:g}s ran out before {before}"
            ) from None

    async def _load_state(self) -> None:
        """What was published for this upstream: each tool's hashes, the listing's pages."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """select external_id, doc_hash, listing_hash,
                          coalesce(details_fetched_at > now() - make_interval(secs => $2),
                                   false) as fresh
                   from upstream_tools where upstream_id = $1""",
                self.upstream_id,
                self.config.harvest.revalidate_after_s,
            )
            self.known = {
                r["external_id"]: Known(r["doc_hash"], r["listing_hash"], r["fresh"]) for r in rows
            }
            pages = await conn.fetch(
                "select * from listing_pages where upstream_id = $1", self.upstream_id
            )
            self.stored_pages = {
                p["url"]: Page(
                    p["url"],
                    Validators(p["etag"], p["last_modified"]),
                    p["next_page"],
                    list(p["tool_ids"]),
                    list(p["listing_hashes"]),
                )
                for p in pages
            }

    async def _save_pages(self, conn: asyncpg.Connection[Any]) -> None:
        await conn.execute("delete from listing_pages where upstream_id = $1", self.upstream_id)
        records = [
            (
                self.upstream_id,
                p.url,
                p.validators.etag,
                p.validators.last_modified,
                p.next_page,
                p.tool_ids,
                p.listing_hashes,
            )
            for p in self.pages
            if p.validators.etag or p.validators.last_modified
        ]
        if records:
            await conn.copy_records_to_table(
                "listing_pages",
                records=records,
                columns=[
                    "upstream_id",
                    "url",
                    "etag",
                    "last_modified",
                    "next_page",
                    "tool_ids",
                    "listing_hashes",
                ],
            )

    async def _fetch_service_info(self) -> tuple[Any, list[dict[str, Any]] | None]:
        base = self.upstream.url
        try:
            got = await self.client.get_json(f"{base}/service-info", ok_404=True)
        except InvalidUpstreamData as e:  # a record like any other: it fails only itself
            self.error(f"service-info: {e}")
            got = None
        service_info = got[0] if got and isinstance(got[0], dict) else None
        if got is None:
            self.quirks.add("no /service-info")
        got = await self.client.get_json(f"{base}/toolClasses", ok_404=True)
        tool_classes = read_tool_classes(got[0]) if got else None
        return service_info, tool_classes

    def _unchanged(self, tool_id: str, lhash: str) -> Known | None:
        """What was published for *tool_id*, when its listing entry says nothing changed."""
        known = self.known.get(tool_id)
        if known is not None and known.fresh and known.listing_hash == lhash:
            return known
        return None

    async def _confirm(self, tool_id: str, known: Known) -> None:
        """Stage *tool_id* as listed but not fetched: publishing keeps what it has."""
        await self.stager.add(StagedTool(tool_id, {}, known.doc_hash, detailed=False))

    async def _crawl(self) -> None:
        """List every page of /tools while workers fetch each changed tool's details."""
        queue: asyncio.Queue[tuple[dict[str, Any], str | None]] = asyncio.Queue(
            maxsize=self.upstream.concurrency * 4
        )
        failures: list[BaseException] = []

        async def worker() -> None:
            while True:
                doc, lhash = await queue.get()
                try:
                    if not failures:
                        await self._harvest_tool(doc, lhash)
                except Exception as e:  # noqa: BLE001 - re-raised below, after the queue drains
                    failures.append(e)
                finally:
                    queue.task_done()

        workers = [asyncio.create_task(worker()) for _ in range(self.upstream.concurrency)]
        try:
            await self._list(queue, failures)
            await queue.join()
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if failures:
            raise failures[0]

    async def _list(
        self, queue: asyncio.Queue[tuple[dict[str, Any], str | None]], failures: list[BaseException]
    ) -> None:
        """Read every listing page; confirm unchanged tools, queue the others for workers."""
        seen: set[str] = set()
        async for page in self._pages():
            for item in page:
                if isinstance(item, tuple):  # a page answered 304: replayed
                    tool_id, lhash = item
                    doc = None
                else:
                    lhash = listing_hash(self.upstream.mode, item)
                    try:
                        doc = read_tool(item, self.quirks)
                    except InvalidUpstreamData as e:
                        self.listing_clean = False
                        self.error(f"listing: {e}")
                        continue
                    tool_id = doc["id"]
                if tool_id in seen:
                    self.quirks.add("a tool listed twice")
                    continue
                seen.add(tool_id)
                known = self._unchanged(tool_id, lhash)
                if known is not None:
                    self.counts.tools_seen += 1
                    self.confirmed_unchanged += 1
                    await self._confirm(tool_id, known)
                elif doc is not None:
                    await queue.put((doc, lhash if self._trusted(item) else None))
                if failures:
                    raise failures[0]
            self.report()

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
        return bool(versions) and all(
            isinstance(v, Mapping) and v.get("meta_version") not in (None, "") for v in versions
        )

    def _replayable(self, page: Page) -> bool:
        """Whether a 304 for *page* would tell everything: all its tools are unchanged."""
        return all(
            self._unchanged(t, h) is not None
            for t, h in zip(page.tool_ids, page.listing_hashes, strict=True)
        )

    async def _pages(self) -> AsyncIterator[list[Any]]:
        """Every page of /tools: raw entries, or (id, listing hash) pairs of a 304 page."""
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
            stored = self.stored_pages.get(signature)
            # The last page is always fetched in full: a 304 cannot say that a page now
            # follows it (ETags cover bodies, not paging headers).
            conditional = (
                stored is not None
                and (stored.next_page is not None or self.upstream.kind == "static")
                and self._replayable(stored)
            )
            async with self._budget("the listing finished", listing=True):
                response = await self.client.get(
                    url, params=params, validators=stored.validators if conditional else None
                )
            assert response is not None
            if response.not_modified and stored is not None:
                next_page = response.headers.get("next_page")
                page: Page = (
                    stored
                    if not next_page
                    else dataclasses.replace(stored, next_page=urljoin(response.url, next_page))
                )
                items: list[Any] = list(zip(stored.tool_ids, stored.listing_hashes, strict=True))
                ids = set(stored.tool_ids)
            else:
                body = response.json()
                if not isinstance(body, list):
                    raise InvalidUpstreamData(
                        f"/tools did not answer a JSON array ({response.url})", url=response.url
                    )
                body = self._screened(body)
                items = body
                ids = {_listed_id(t) for t in body}
                next_page = response.headers.get("next_page")
                page = Page(
                    signature,
                    response.validators,
                    urljoin(response.url, next_page) if next_page else None,
                    [_listed_id(t) for t in body],
                    [listing_hash(self.upstream.mode, t) for t in body],
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

    def _screened(self, entries: list[Any]) -> list[Any]:
        """The listing entries that can be stored; each other one is reported and skipped
        (and the listing is then not complete: nothing is counted missing)."""
        good, refused = records.screen(entries)
        for index, why in refused:
            self.listing_clean = False
            self.error(f"listing: refused tool {records.label(entries[index], index)}: {why}")
        return good

    async def _harvest_tool(self, doc: dict[str, Any], lhash: str | None) -> None:
        """Fetch one tool's versions and files and stage them.

        *lhash* is its listing entry's hash when that entry tells changes (None: fetch the
        details again next run too).
        """
        tool_id: str = doc["id"]
        self.counts.tools_seen += 1
        known = self.known.get(tool_id)
        loop = asyncio.get_running_loop()
        problems: list[str] = []
        try:
            if loop.time() >= self.deadline:
                raise TimeoutError
            async with asyncio.timeout_at(self.deadline):
                versions = await self._fetch_versions(tool_id, doc, problems)
        except TimeoutError:
            self.not_refreshed += 1
            if known is not None:
                await self._confirm(tool_id, known)
            return
        except UpstreamError as e:
            self.detail_failed += 1
            if not isinstance(e, CircuitOpen):
                self.error(f"tool {tool_id}: {e}")
            if known is not None:
                await self._confirm(tool_id, known)
            self.report()
            return
        tool_doc = _without_versions(doc)
        digest = doc_hash(
            [
                tool_doc,
                [
                    (
                        v.key,
                        v.doc,
                        [(f.descriptor_type, f.path, f.file_type, f.sha256) for f in v.files],
                    )
                    for v in versions
                ],
            ]
        )
        await self.stager.add(
            StagedTool(
                tool_id,
                tool_doc,
                digest,
                detailed=True,
                listing_hash=None if problems else lhash,
                versions=versions,
            )
        )
        self.detailed_ok += 1
        self.counts.tools_fetched += 1
        self.report()

    async def _previous_files(self, tool_id: str) -> dict[str, dict[tuple[str, str], str]]:
        """The sha256 published for each file of *tool_id*, by version key."""
        if tool_id not in self.known or self.upstream.mode != "mirror":
            return {}
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """select v.key, f.descriptor_type, f.path, f.sha256
                   from upstream_files f
                   join upstream_versions v on v.id = f.upstream_version_id
                   join upstream_tools t on t.id = v.upstream_tool_id
                   where t.upstream_id = $1 and t.external_id = $2 and f.sha256 is not null""",
                self.upstream_id,
                tool_id,
            )
        out: dict[str, dict[tuple[str, str], str]] = {}
        for r in rows:
            out.setdefault(r["key"], {})[(r["descriptor_type"], r["path"])] = r["sha256"]
        return out

    async def _fetch_versions(
        self, tool_id: str, doc: dict[str, Any], problems: list[str]
    ) -> list[StagedVersion]:
        """The versions of *tool_id* and, in mirror mode, their files; errors about single
        files are recorded and appended to *problems*."""

        def error(message: str) -> None:
            problems.append(message)
            self.error(message)

        tool_url = f"{self.upstream.url}/tools/{quote(tool_id, safe='')}"
        raw_versions: list[dict[str, Any]] = doc["versions"]
        if self.upstream.mode == "mirror" or not raw_versions:
            got = await self.client.get_json(f"{tool_url}/versions", ok_404=True)
            if got is not None:
                if not isinstance(got[0], list):
                    raise InvalidUpstreamData(
                        f"/versions did not answer a JSON array ({got[1].url})", url=got[1].url
                    )
                listed = {version_key(v): v for v in raw_versions}
                raw_versions = [read_version(v, tool_id, self.quirks) for v in got[0]]
                for v in raw_versions:
                    # A pre-release string Tool.author is only in the listing's tool.
                    author = listed.get(version_key(v), {}).get("author")
                    if author is None and isinstance(doc.get("author"), str):
                        author = [doc["author"]]
                    if "author" not in v and author is not None:
                        v["author"] = author
        previous = await self._previous_files(tool_id)
        versions: list[StagedVersion] = []
        keys: set[str] = set()
        for position, vdoc in enumerate(raw_versions):
            key = version_key(vdoc)
            if key in keys:
                error(f"tool {tool_id}: two versions named {key!r}; kept the first")
                continue
            keys.add(key)
            staged = StagedVersion(key, vdoc["id"], position, vdoc)
            if self.upstream.mode == "mirror":
                version_url = f"{tool_url}/versions/{quote(key, safe='')}"
                fetcher = VersionFiles(
                    self.client,
                    version_url,
                    lambda m, k=key: error(f"tool {tool_id} version {k}: {m}"),
                    previous.get(key),
                    self.file_hosts,
                )
                staged.files = await fetcher.fetch_all(vdoc["descriptor_type"])
                self.counts.files_stored += sum(f.content is not None for f in staged.files)
            versions.append(staged)
            self.counts.versions_seen += 1
        return versions


def _listed_id(raw: Any) -> str:
    """A listing entry's id as read_tool reads it; '' when it has none."""
    tool_id = raw.get("id") if isinstance(raw, Mapping) else None
    if isinstance(tool_id, int) and not isinstance(tool_id, bool):
        return str(tool_id)
    return tool_id if isinstance(tool_id, str) and tool_id.strip() else ""


def _without_versions(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "versions"}
