"""Crawling one upstream in one run: list it, tell changed tools from unchanged, fetch the
changed ones' versions and files, stage them, and publish if the listing completed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import asyncpg
import structlog

from aggregator.config import Config, UpstreamConfig
from aggregator.db.harvest_state import (
    fetch_known_tools,
    fetch_listing_pages,
    fetch_stored_files,
)
from aggregator.db.publish import publish_run, stage_tools
from aggregator.db.runs import RunCounts, storable
from aggregator.errors import AggregatorError, InvalidUpstreamData, UpstreamError
from aggregator.harvest.client import CircuitOpen, UpstreamClient
from aggregator.harvest.files import VersionFiles
from aggregator.harvest.hosts import FileHosts
from aggregator.harvest.listing import Listing
from aggregator.progress import Progress
from aggregator.trs.parse import Quirks, doc_hash, read_tool_classes, read_version, version_key
from aggregator.trs.staged import KnownTool, ListingPage, StagedTool, StagedVersion

log = structlog.get_logger()

# Staged tools are written in batches of this many, or sooner when their contents add up.
STAGE_BATCH: Final = 200
STAGE_BATCH_BYTES: Final = 8 * 1024 * 1024


class Stager:
    """Writes a run's staged tools in batches, so memory holds two batches, not the upstream.

    A full batch is written in the background while the crawl fills the next; the next full
    batch waits until the one before is written (back-pressure). A write that failed fails
    the next ``add`` or ``flush``.
    """

    def __init__(self, pool: asyncpg.Pool[Any], run_id: int) -> None:
        self.pool = pool
        self.run_id = run_id
        self._buffer: list[StagedTool] = []
        self._bytes = 0
        self._lock = asyncio.Lock()
        self._writing: asyncio.Task[None] | None = None

    def _full(self) -> bool:
        return len(self._buffer) >= STAGE_BATCH or self._bytes >= STAGE_BATCH_BYTES

    async def add(self, tool: StagedTool) -> None:
        """Stage *tool*; waits while the batch before a full one is still being written."""
        self._buffer.append(tool)
        self._bytes += sum(
            len(f.content) for v in tool.versions for f in v.files if f.content is not None
        )
        if self._full():
            async with self._lock:
                if self._full():  # another caller may have taken the batch meanwhile
                    await self._written()
                    batch, self._buffer, self._bytes = self._buffer, [], 0
                    self._writing = asyncio.create_task(self._write(batch))

    async def flush(self) -> None:
        """Write whatever is buffered, and wait until every batch is written."""
        async with self._lock:
            await self._written()
            batch, self._buffer, self._bytes = self._buffer, [], 0
            await self._write(batch)

    async def settle(self) -> None:
        """Wait for a batch still being written, ignoring its failure (for a run that already
        failed: nothing is written after it ends)."""
        task, self._writing = self._writing, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def _written(self) -> None:
        task, self._writing = self._writing, None
        if task is not None:
            await task

    async def _write(self, batch: list[StagedTool]) -> None:
        if batch:
            async with self.pool.acquire() as conn:
                await stage_tools(conn, self.run_id, batch)


class RunBudgetExhausted(AggregatorError):
    """The run's time budget ran out."""


@dataclass(slots=True)
class RunOutcome:
    """How one upstream's run ended.

    Attributes:
        upstream: The upstream's name.
        status: ``succeeded``, ``partial``, ``failed``, ``skipped`` (it did not start; *error*
            says why) or ``abandoned``.
        run_id: The run record, None when skipped.
        counts: What the run saw, fetched and changed.
        error: Why it failed (or what made it partial).
        generation: The catalogue generation it published, None when it published nothing.
        duration_s: How long it took.
        listing_complete: Whether every listing entry could be read (absent tools were then
            tombstoned).
        upstream_down: Whether the run stopped because requests kept failing.
    """

    upstream: str
    status: str = "failed"
    run_id: int | None = None
    counts: RunCounts = field(default_factory=RunCounts)
    error: str | None = None
    generation: int | None = None
    duration_s: float = 0.0
    listing_complete: bool = False
    upstream_down: bool = False


@dataclass
class Crawl:
    """The state of one run of *upstream* (row *upstream_id*), recorded as run *run_id*.

    Built by the runner with the run's collaborators; the rest is the run's own state.
    """

    pool: asyncpg.Pool[Any]
    client: UpstreamClient
    config: Config
    upstream: UpstreamConfig
    upstream_id: int
    run_id: int
    progress: Progress
    result: RunOutcome = field(init=False)
    counts: RunCounts = field(init=False)
    quirks: Quirks = field(init=False, default_factory=Quirks)
    stager: Stager = field(init=False)
    known: dict[str, KnownTool] = field(init=False, default_factory=dict)
    stored_pages: dict[str, ListingPage] = field(init=False, default_factory=dict)
    listing: Listing | None = field(init=False, default=None)
    detailed_ok: int = field(init=False, default=0)
    detail_failed: int = field(init=False, default=0)
    confirmed_unchanged: int = field(init=False, default=0)
    not_refreshed: int = field(init=False, default=0)
    deadline: float = field(init=False)
    file_hosts: FileHosts = field(init=False)

    def __post_init__(self) -> None:
        self.result = RunOutcome(self.upstream.name, run_id=self.run_id)
        self.counts = self.result.counts
        self.stager = Stager(self.pool, self.run_id)
        self.file_hosts = FileHosts(self.client.session, self.upstream, self.client)
        self.deadline = asyncio.get_running_loop().time() + self.upstream.run_budget_s

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
        c.file_hosts = {
            host: {**s, "last_error": s["last_error"] and storable(s["last_error"])}
            for host, s in self.file_hosts.summary().items()
        }
        self.progress.update(
            self.upstream.name,
            tools=c.tools_seen,
            versions=c.versions_seen,
            files=c.files_stored,
            requests=c.requests,
            bytes=c.bytes_fetched,
            errors=c.errors,
        )

    async def execute(self) -> RunOutcome:
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
        finally:
            await self.stager.settle()
        if self.client.tripped:
            r.upstream_down = True
            if r.error is None or not r.error.startswith("stopped after"):
                self.error(self.client.tripped)
        if r.error is not None:
            self.error(r.error)
            self.report()
            return r
        assert self.listing is not None
        r.listing_complete = self.listing.clean
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
        async with self.pool.acquire() as conn:
            r.generation = await publish_run(
                conn,
                self.run_id,
                self.upstream_id,
                listing_complete=r.listing_complete,
                tombstone_after=self.config.harvest.tombstone_after,
                counts=self.counts,
                max_per_upstream=self.config.merge.max_tools_per_upstream,
                service_info=service_info,
                tool_classes=tool_classes,
                pages=self.listing.pages,
            )
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
            self.known = await fetch_known_tools(
                conn, self.upstream_id, revalidate_after_s=self.config.harvest.revalidate_after_s
            )
            self.stored_pages = await fetch_listing_pages(conn, self.upstream_id)

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

    def _unchanged(self, tool_id: str, lhash: str) -> KnownTool | None:
        """What was published for *tool_id*, when its listing entry says nothing changed."""
        known = self.known.get(tool_id)
        if known is not None and known.fresh and known.listing_hash == lhash:
            return known
        return None

    async def _confirm(self, tool_id: str, known: KnownTool) -> None:
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
        self.listing = listing = Listing(
            self.client,
            self.upstream,
            self.stored_pages,
            unchanged=lambda t, h: self._unchanged(t, h) is not None,
            budget=lambda: self._budget("the listing finished", listing=True),
            quirks=self.quirks,
            error=self.error,
        )
        async for page in listing.tools():
            for listed in page:
                known = self._unchanged(listed.tool_id, listed.listing_hash)
                if known is not None:
                    self.counts.tools_seen += 1
                    self.confirmed_unchanged += 1
                    await self._confirm(listed.tool_id, known)
                elif listed.doc is not None:
                    await queue.put((listed.doc, listed.listing_hash if listed.trusted else None))
                if failures:
                    raise failures[0]
            self.report()

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
                raise TimeoutError  # noqa: TRY301 - handled below, with the budget running out
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
            return await fetch_stored_files(conn, self.upstream_id, tool_id)

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
                    functools.partial(_file_error, error, f"tool {tool_id} version {key}"),
                    previous.get(key),
                    self.file_hosts,
                )
                staged.files = await fetcher.fetch_all(vdoc["descriptor_type"])
                self.counts.files_stored += sum(f.content is not None for f in staged.files)
            versions.append(staged)
            self.counts.versions_seen += 1
        return versions


def _file_error(report: Callable[[str], None], where: str, message: str) -> None:
    report(f"{where}: {message}")


def _without_versions(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "versions"}
