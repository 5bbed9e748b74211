"""One harvest run of one upstream: list, fetch, stage, then publish atomically or not at all."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final
from urllib.parse import quote, urljoin

import aiohttp
import asyncpg
import structlog
from yarl import URL

from aggregator.config import Config, UpstreamConfig
from aggregator.db import runs as db_runs
from aggregator.db.publish import StagedVersion, publish_run, stage_tool
from aggregator.db.runs import RunCounts
from aggregator.db.upstreams import save_service_info, upsert_upstreams
from aggregator.errors import AggregatorError, InvalidUpstreamData, UpstreamError
from aggregator.harvest.client import UpstreamClient
from aggregator.harvest.files import VersionFiles
from aggregator.progress import NoProgress, Progress
from aggregator.trs.parse import (
    Quirks,
    doc_hash,
    read_tool,
    read_tool_classes,
    read_version,
    version_key,
)

log = structlog.get_logger()

# pg_try_advisory_lock(HARVEST_LOCK, upstream id): one run of an upstream at a time.
HARVEST_LOCK: Final = 0x7472_7368  # "trsh"


@dataclass(slots=True)
class RunOutcome:
    """How one upstream's run ended."""

    upstream: str
    status: str  # succeeded | partial | failed | skipped
    run_id: int | None = None
    counts: RunCounts = field(default_factory=RunCounts)
    error: str | None = None
    generation: int | None = None
    duration_s: float = 0.0


def make_session(config: Config) -> aiohttp.ClientSession:
    """The ClientSession harvests share (timeouts are set per request, per upstream)."""
    return aiohttp.ClientSession(
        headers={"User-Agent": config.harvest.user_agent},
        connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
    )


async def harvest_upstreams(pool: asyncpg.Pool[Any], session: aiohttp.ClientSession,
                            config: Config, names: Sequence[str] = (), *,
                            progress: Progress | None = None,
                            environ: Mapping[str, str] = os.environ) -> list[RunOutcome]:
    """Harvest the upstreams called *names* (all enabled ones when empty), concurrently.

    One upstream's failure never affects another's run.
    """
    chosen = [config.upstream(n) for n in names] if names else [
        u for u in config.upstreams if u.enabled]
    async with pool.acquire() as conn:
        await upsert_upstreams(conn, config.upstreams)
    harvester = Harvester(pool, session, config, progress=progress, environ=environ)
    return list(await asyncio.gather(*(harvester.harvest(u) for u in chosen)))


class Harvester:
    """Runs harvests against one database with one HTTP session."""

    def __init__(self, pool: asyncpg.Pool[Any], session: aiohttp.ClientSession, config: Config,
                 *, progress: Progress | None = None,
                 environ: Mapping[str, str] = os.environ) -> None:
        self.pool = pool
        self.session = session
        self.config = config
        self.progress = progress or NoProgress()
        self.environ = environ

    async def harvest(self, upstream: UpstreamConfig) -> RunOutcome:
        """Harvest *upstream* once, unless another process is harvesting it right now."""
        started = time.monotonic()
        async with self.pool.acquire() as lock_conn:
            upstream_id: int = await lock_conn.fetchval(
                "select id from upstreams where name = $1", upstream.name)
            if upstream_id is None:
                (upstream_id,) = (await upsert_upstreams(lock_conn, [upstream])).values()
            locked = await lock_conn.fetchval(
                "select pg_try_advisory_lock($1, $2)", HARVEST_LOCK, upstream_id)
            if not locked:
                log.info("harvest_skipped", upstream=upstream.name, reason="already running")
                return RunOutcome(upstream.name, "skipped")
            try:
                await db_runs.abandon_stale_runs(lock_conn, upstream_id)
                run_id = await db_runs.insert_run(lock_conn, upstream_id)
                with structlog.contextvars.bound_contextvars(upstream=upstream.name,
                                                             run_id=run_id):
                    log.info("harvest_started", url=upstream.url, mode=upstream.mode)
                    run = _Run(self, upstream, upstream_id, run_id)
                    outcome = await run.execute()
                    outcome.duration_s = time.monotonic() - started
                    await db_runs.finish_run(
                        lock_conn, run_id, status=outcome.status, counts=outcome.counts,
                        listing_complete=run.listing_complete, error=outcome.error)
                    await db_runs.delete_staged(lock_conn, [run_id])
                    log.info("harvest_finished", status=outcome.status,
                             duration_ms=round(outcome.duration_s * 1000),
                             generation=outcome.generation, error=outcome.error,
                             **{k: v for k, v in asdict(outcome.counts).items()
                                if k != "error_samples"})
                    self.progress.done(upstream.name, outcome.status)
                    return outcome
            finally:
                await lock_conn.execute("select pg_advisory_unlock($1, $2)",
                                        HARVEST_LOCK, upstream_id)


class _Run:
    """The state of one run."""

    def __init__(self, harvester: Harvester, upstream: UpstreamConfig, upstream_id: int,
                 run_id: int) -> None:
        self.h = harvester
        self.upstream = upstream
        self.upstream_id = upstream_id
        self.run_id = run_id
        self.counts = RunCounts()
        self.quirks = Quirks()
        self.listing_complete = False
        token = harvester.environ.get(upstream.token_env) if upstream.token_env else None
        self.client = UpstreamClient(harvester.session, upstream, token=token)
        self.known: dict[str, str] = {}
        self.detailed_ok = 0
        self.detail_failed = 0

    def error(self, message: str) -> None:
        self.counts.error(message)
        log.warning("harvest_error_recorded", error=message)

    def report(self) -> None:
        self.counts.requests = self.client.traffic.requests
        self.counts.bytes_fetched = self.client.traffic.bytes
        self.h.progress.update(
            self.upstream.name, tools=self.counts.tools_seen, versions=self.counts.versions_seen,
            files=self.counts.files_stored, requests=self.counts.requests,
            bytes=self.counts.bytes_fetched, errors=self.counts.errors)

    async def execute(self) -> RunOutcome:
        outcome = RunOutcome(self.upstream.name, "failed", run_id=self.run_id, counts=self.counts)
        try:
            async with self.h.pool.acquire() as conn:
                rows = await conn.fetch(
                    "select external_id, doc_hash from upstream_tools where upstream_id = $1",
                    self.upstream_id)
            self.known = {r["external_id"]: r["doc_hash"] for r in rows}
            service_info, tool_classes = await self._fetch_service_info()
            await self._crawl()
            self.listing_complete = True
        except (AggregatorError, aiohttp.ClientError, asyncpg.PostgresError, OSError) as e:
            outcome.error = str(e) or type(e).__name__
            self.error(outcome.error)
            self.report()
            return outcome
        if self.counts.tools_seen and not self.detailed_ok and self.detail_failed:
            outcome.error = "no tool could be fetched in full"
            self.report()
            return outcome
        self.report()
        async with self.h.pool.acquire() as conn:
            async with conn.transaction():
                await save_service_info(conn, self.upstream_id, service_info, tool_classes)
                outcome.generation = await publish_run(
                    conn, self.run_id, self.upstream_id, listing_complete=True,
                    tombstone_after=self.h.config.harvest.tombstone_after, counts=self.counts)
        for quirk in self.quirks.items:
            log.info("upstream_quirk_seen", quirk=quirk)
        outcome.status = "partial" if self.counts.errors else "succeeded"
        return outcome

    async def _fetch_service_info(self) -> tuple[Any, list[dict[str, Any]] | None]:
        base = self.upstream.url
        got = await self.client.get_json(f"{base}/service-info", ok_404=True)
        service_info = got[0] if got and isinstance(got[0], dict) else None
        if got is None:
            self.quirks.add("no /service-info")
        got = await self.client.get_json(f"{base}/toolClasses", ok_404=True)
        tool_classes = read_tool_classes(got[0]) if got else None
        return service_info, tool_classes

    async def _crawl(self) -> None:
        """List every page of /tools while workers fetch each tool's details."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.upstream.concurrency * 4)
        seen: set[str] = set()
        failures: list[Exception] = []

        async def worker() -> None:
            while True:
                raw = await queue.get()
                try:
                    if not failures:
                        await self._harvest_tool(raw)
                except Exception as e:  # noqa: BLE001 - re-raised below, after the queue drains
                    failures.append(e)
                finally:
                    queue.task_done()

        workers = [asyncio.create_task(worker()) for _ in range(self.upstream.concurrency)]
        try:
            async for page in self._pages():
                for raw in page:
                    try:
                        tool_id = read_tool(raw, self.quirks)["id"]
                    except InvalidUpstreamData as e:
                        self.error(f"listing: {e}")
                        continue
                    if tool_id in seen:
                        self.quirks.add("a tool listed twice")
                        continue
                    seen.add(tool_id)
                    await queue.put(raw)
            await queue.join()
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if failures:
            raise failures[0]

    async def _pages(self) -> AsyncIterator[list[Any]]:
        url: str | None = f"{self.upstream.url}/tools"
        params: dict[str, str] | None = {"limit": str(self.upstream.page_size)}
        fetched: set[str] = set()
        ids_seen: set[str] = set()
        while url is not None:
            target = URL(url).update_query(params or {})
            signature = str(target.with_query(sorted(target.query.items())))
            if signature in fetched:
                raise InvalidUpstreamData(f"next_page leads back to a page already fetched: {url}",
                                          url=url)
            fetched.add(signature)
            got = await self.client.get_json(url, params=params)
            assert got is not None
            body, response = got
            if not isinstance(body, list):
                raise InvalidUpstreamData("/tools did not answer a JSON array", url=response.url)
            ids = {str(t.get("id")) for t in body if isinstance(t, dict)}
            if body and ids <= ids_seen:
                raise InvalidUpstreamData("a /tools page did not advance (every tool on it was "
                                          "already listed)", url=response.url)
            ids_seen |= ids
            yield body
            next_page = response.headers.get("next_page")
            url = urljoin(response.url, next_page) if next_page else None
            params = None

    async def _harvest_tool(self, raw: Any) -> None:
        doc = read_tool(raw, self.quirks)
        tool_id: str = doc["id"]
        self.counts.tools_seen += 1
        tool_url = f"{self.upstream.url}/tools/{quote(tool_id, safe='')}"
        try:
            versions = await self._fetch_versions(tool_url, doc)
        except UpstreamError as e:
            self.detail_failed += 1
            self.error(f"tool {tool_id}: {e}")
            if tool_id in self.known:
                async with self.h.pool.acquire() as conn:
                    await stage_tool(conn, self.run_id, tool_id, _without_versions(doc),
                                     self.known[tool_id], detailed=False)
            self.report()
            return
        tool_doc = _without_versions(doc)
        digest = doc_hash([tool_doc, [(v.key, v.doc, [(f.descriptor_type, f.path, f.file_type,
                                                         f.sha256) for f in v.files])
                                      for v in versions]])
        async with self.h.pool.acquire() as conn:
            await stage_tool(conn, self.run_id, tool_id, tool_doc, digest, detailed=True,
                             versions=versions)
        self.detailed_ok += 1
        self.report()

    async def _fetch_versions(self, tool_url: str, doc: dict[str, Any]) -> list[StagedVersion]:
        raw_versions: list[dict[str, Any]] = doc["versions"]
        if self.upstream.mode == "mirror" or not raw_versions:
            got = await self.client.get_json(f"{tool_url}/versions", ok_404=True)
            if got is not None:
                if not isinstance(got[0], list):
                    raise InvalidUpstreamData("/versions did not answer a JSON array",
                                              url=got[1].url)
                raw_versions = [read_version(v, doc["id"], self.quirks) for v in got[0]]
        versions: list[StagedVersion] = []
        keys: set[str] = set()
        for position, vdoc in enumerate(raw_versions):
            key = version_key(vdoc)
            if key in keys:
                self.error(f"tool {doc['id']}: two versions named {key!r}; kept the first")
                continue
            keys.add(key)
            staged = StagedVersion(key, vdoc["id"], position, vdoc)
            if self.upstream.mode == "mirror":
                version_url = f"{tool_url}/versions/{quote(key, safe='')}"
                fetcher = VersionFiles(self.client, version_url,
                                       lambda m, k=key: self.error(f"tool {doc['id']} "
                                                                   f"version {k}: {m}"))
                staged.files = await fetcher.fetch_all(vdoc["descriptor_type"])
                self.counts.files_stored += sum(f.content is not None for f in staged.files)
            versions.append(staged)
            self.counts.versions_seen += 1
        return versions


def _without_versions(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "versions"}
