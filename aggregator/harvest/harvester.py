"""Harvest runs: one upstream at a time under its advisory lock, recorded, health kept."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import aiohttp
import asyncpg
import structlog

from aggregator.config import Config, UpstreamConfig
from aggregator.db import runs as db_runs
from aggregator.db import upstreams as db_upstreams
from aggregator.db.merge import save_merge_rules
from aggregator.db.pool import connect
from aggregator.db.runs import RunCounts
from aggregator.harvest.client import UpstreamClient
from aggregator.harvest.run import HarvestRun
from aggregator.progress import NoProgress, Progress

log = structlog.get_logger()

# pg_try_advisory_lock(HARVEST_LOCK, upstream id): one run of an upstream at a time.
HARVEST_LOCK: Final = 0x7472_7368  # "trsh"
#: Names this process in run records.
WORKER_ID: Final = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(slots=True)
class RunOutcome:
    """How one upstream's run ended (``skipped``: it did not start, *error* says why)."""

    upstream: str
    status: str  # succeeded | partial | failed | skipped | abandoned
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


async def harvest_upstreams(
    pool: asyncpg.Pool[Any],
    session: aiohttp.ClientSession,
    config: Config,
    names: Sequence[str] = (),
    *,
    progress: Progress | None = None,
    environ: Mapping[str, str] = os.environ,
) -> list[RunOutcome]:
    """Harvest the upstreams called *names* (all enabled ones when empty), concurrently.

    One upstream's failure never affects another's run.
    """
    chosen = (
        [config.upstream(n) for n in names] if names else [u for u in config.upstreams if u.enabled]
    )
    async with pool.acquire() as conn:
        await db_upstreams.upsert_upstreams(conn, config.upstreams)
        await save_merge_rules(conn, config.merge.always, config.merge.never)
    harvester = Harvester(pool, session, config, progress=progress, environ=environ)
    return list(await asyncio.gather(*(harvester.harvest(u) for u in chosen)))


class Harvester:
    """Runs harvests against one database with one HTTP session."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        session: aiohttp.ClientSession,
        config: Config,
        *,
        progress: Progress | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.pool = pool
        self.session = session
        self.config = config
        self.progress = progress or NoProgress()
        self.environ = environ
        h = config.harvest
        self.circuit = db_upstreams.CircuitPolicy(
            h.circuit_failures, h.circuit_open_for_s, h.circuit_open_max_s
        )

    async def harvest(
        self,
        upstream: UpstreamConfig,
        *,
        trigger: str = "manual",
        next_due: dt.datetime | None = None,
        slack_s: float = 0.0,
    ) -> RunOutcome:
        """Harvest *upstream* once, unless another process is harvesting it right now.

        *trigger* ``scheduled`` also skips an upstream whose circuit is open or that another
        worker already harvested this tick (see db.upstreams.skip_reason), and then makes it
        due again at *next_due*; ``requested`` runs only while a request is pending.
        """
        started = time.monotonic()
        assert self.config.database.url is not None
        # A connection of its own: the session-level lock lives as long as it does, and a
        # process that dies mid-run releases it with its connection.
        lock_conn = await connect(self.config.database.url)
        try:
            upstream_id: int | None = await db_upstreams.fetch_upstream_id(lock_conn, upstream.name)
            if upstream_id is None:
                (upstream_id,) = (
                    await db_upstreams.upsert_upstreams(lock_conn, [upstream])
                ).values()
            if not await lock_conn.fetchval(
                "select pg_try_advisory_lock($1, $2)", HARVEST_LOCK, upstream_id
            ):
                log.info(
                    "harvest_skipped",
                    upstream=upstream.name,
                    trigger=trigger,
                    reason="already running",
                )
                return RunOutcome(upstream.name, "skipped", error="already running")
            try:
                return await self._locked(
                    lock_conn,
                    upstream,
                    upstream_id,
                    trigger=trigger,
                    next_due=next_due,
                    slack_s=slack_s,
                    started=started,
                )
            finally:
                await asyncio.shield(
                    lock_conn.execute(
                        "select pg_advisory_unlock($1, $2)", HARVEST_LOCK, upstream_id
                    )
                )
        finally:
            await asyncio.shield(lock_conn.close())

    async def _locked(
        self,
        conn: asyncpg.Connection[Any],
        upstream: UpstreamConfig,
        upstream_id: int,
        *,
        trigger: str,
        next_due: dt.datetime | None,
        slack_s: float,
        started: float,
    ) -> RunOutcome:
        reason = await db_upstreams.skip_reason(conn, upstream_id, trigger, slack_s=slack_s)
        if reason is not None:
            log.info("harvest_skipped", upstream=upstream.name, trigger=trigger, reason=reason)
            return RunOutcome(upstream.name, "skipped", error=reason)
        await db_runs.abandon_stale_runs(conn, upstream_id)
        run_id = await db_runs.insert_run(conn, upstream_id, trigger=trigger, worker=WORKER_ID)
        with structlog.contextvars.bound_contextvars(upstream=upstream.name, run_id=run_id):
            log.info("harvest_started", url=upstream.url, mode=upstream.mode, trigger=trigger)
            token = self.environ.get(upstream.token_env) if upstream.token_env else None
            client = UpstreamClient(self.session, upstream, token=token)
            run = HarvestRun(
                self.pool, client, self.config, upstream, upstream_id, run_id, self.progress
            )
            try:
                result = await run.execute()
            except asyncio.CancelledError:
                await asyncio.shield(
                    db_runs.abandon_run(conn, run_id, "the worker stopped before the run ended")
                )
                log.info("harvest_finished", status="abandoned", reason="worker stopped")
                raise
            outcome = RunOutcome(
                upstream.name,
                result.status,
                run_id,
                result.counts,
                result.error,
                result.generation,
                time.monotonic() - started,
            )
            await db_runs.finish_run(
                conn,
                run_id,
                status=outcome.status,
                counts=outcome.counts,
                listing_complete=result.listing_complete,
                error=outcome.error,
            )
            await db_runs.delete_staged(conn, [run_id])
            await db_upstreams.record_result(
                conn,
                upstream_id,
                failed=result.status == "failed" or result.upstream_down,
                policy=self.circuit,
                next_due=next_due,
            )
            if upstream.name in await db_upstreams.pending_requests(conn):
                # A request that came in during this run wants a run that starts after it.
                await conn.execute(
                    "select pg_notify($1, $2)", db_upstreams.HARVEST_REQUEST_CHANNEL, upstream.name
                )
            log.info(
                "harvest_finished",
                status=outcome.status,
                duration_ms=round(outcome.duration_s * 1000),
                generation=outcome.generation,
                error=outcome.error,
                **{k: v for k, v in asdict(outcome.counts).items() if k != "error_samples"},
            )
            self.progress.done(upstream.name, outcome.status)
            return outcome
