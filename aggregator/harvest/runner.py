"""Running harvests: each upstream's crawl under its harvest lock, with its run recorded and
its health (circuit, next due time) kept."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import asyncpg
import structlog

from aggregator.config import Config, UpstreamConfig
from aggregator.db import runs as db_runs
from aggregator.db import upstreams as db_upstreams
from aggregator.db.locks import try_harvest_lock
from aggregator.db.merge import save_merge_rules
from aggregator.db.operations import save_conformance
from aggregator.db.outage import is_unavailable, unavailable
from aggregator.db.pool import connect
from aggregator.errors import ConfigError
from aggregator.harvest.aggregator import AggregatorCrawl
from aggregator.harvest.client import UpstreamClient
from aggregator.harvest.crawl import Crawl, RunOutcome
from aggregator.harvest.static import StaticTreeClient
from aggregator.ops.upstreams import stored_upstreams
from aggregator.progress import NoProgress, Progress
from aggregator.trs.conformance import run_conformance

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

log = structlog.get_logger()

#: Names this process in run records.
WORKER_ID: Final = f"{socket.gethostname()}:{os.getpid()}"
# How long a run waits for the harvest lock of a run that may have died a moment ago.
LOCK_PATIENCE_S: Final = 2.0


def make_session(config: Config) -> aiohttp.ClientSession:
    """The ClientSession harvests share (timeouts are set per request, per upstream)."""
    return aiohttp.ClientSession(
        headers={"User-Agent": config.harvest.user_agent},
        connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
    )


def _no_token(variable: str) -> str:
    return (
        f"environment variable {variable} (token_env) is not set in this process: not "
        "harvested without the upstream's credentials"
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
    """Harvest the upstreams called *names* (the configuration file's enabled ones when
    empty), concurrently, as the database holds them: an upstream changed through the admin
    API keeps that change while the file's entry is as it was, and one added through the API
    may be named. Raises ConfigError for a name the database does not hold.

    One upstream's failure never affects another's run.
    """
    async with pool.acquire() as conn:
        await db_upstreams.upsert_upstreams(conn, config.upstreams, keep_api_changes=True)
        await save_merge_rules(conn, config.merge.always, config.merge.never)
        stored = {u.name: u for u in await stored_upstreams(conn, removed=True)}
    for name in names:
        if name not in stored:
            known = ", ".join(sorted(stored)) or "none configured"
            raise ConfigError("upstreams", f"no upstream named {name!r} (known: {known})")
    chosen = (
        [stored[n] for n in names]
        if names
        else [s for u in config.upstreams if (s := stored.get(u.name, u)).enabled]
    )
    harvester = Harvester(pool, session, config, progress=progress, environ=environ)
    results = await asyncio.gather(*(harvester.harvest(u) for u in chosen), return_exceptions=True)
    return isolate(chosen, results)


def isolate(
    chosen: Sequence[UpstreamConfig], results: Sequence[RunOutcome | BaseException]
) -> list[RunOutcome]:
    """Outcomes of concurrent runs: a run that raised is ``failed`` with its error, and never
    takes the others with it. A database that cannot be reached is raised, once, after every
    run has ended (their records are cleaned up by the next run)."""
    outcomes: list[RunOutcome] = []
    down: BaseException | None = None
    for u, r in zip(chosen, results, strict=True):
        if isinstance(r, RunOutcome):
            outcomes.append(r)
        elif isinstance(r, Exception) and not is_unavailable(r):
            outcomes.append(RunOutcome(u.name, "failed", error=f"{type(r).__name__}: {r}"))
        elif isinstance(r, Exception):
            down = down or r
        else:
            raise r
    if down is not None:
        raise unavailable(down) from None
    return outcomes


def _next_tick(upstream: UpstreamConfig) -> dt.datetime | None:
    """When *upstream*'s schedule next fires after now."""
    from aggregator.harvest.scheduler import trigger_for  # noqa: PLC0415 - it imports us

    now = dt.datetime.now(dt.UTC)
    fire: dt.datetime | None = trigger_for(upstream).get_next_fire_time(
        None, now + dt.timedelta(microseconds=1)
    )
    return fire


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
        if trigger == "manual" and next_due is None:
            # This run stands for the schedule's current tick: a worker started right after
            # it (demo, run) waits for the next one instead of harvesting again.
            next_due = _next_tick(upstream)
        # A connection of its own: the session-level lock lives as long as it does, and a
        # process that dies mid-run releases it with its connection.
        lock_conn = await connect(self.config.database.url)
        try:
            upstream_id: int | None = await db_upstreams.fetch_upstream_id(lock_conn, upstream.name)
            if upstream_id is None:
                (upstream_id,) = (
                    await db_upstreams.upsert_upstreams(lock_conn, [upstream])
                ).values()
            locked = functools.partial(
                self._locked,
                lock_conn,
                upstream,
                upstream_id,
                trigger=trigger,
                next_due=next_due,
                slack_s=slack_s,
                started=started,
            )
            async with try_harvest_lock(lock_conn, upstream_id) as taken:
                if taken:
                    return await locked()
                unfinished = await db_runs.unfinished_run(lock_conn, upstream_id)
            if unfinished is not None:
                # A process killed mid-run holds its lock until the server notices that its
                # connection is gone, a moment later. Its run is then the upstream's latest,
                # still recorded as running, or already abandoned by a worker's sweep that
                # took the lock the moment it was let go: this run waits that moment and
                # takes over (a worker restarted at once). When another run began meanwhile,
                # or the run ended, a live process held the lock: this run is skipped.
                async with try_harvest_lock(
                    lock_conn, upstream_id, patience_s=LOCK_PATIENCE_S
                ) as taken:
                    if taken and await db_runs.unfinished_run(lock_conn, upstream_id) == unfinished:
                        return await locked()
            log.info(
                "harvest_skipped", upstream=upstream.name, trigger=trigger, reason="already running"
            )
            return RunOutcome(upstream.name, "skipped", error="already running")
        finally:
            await asyncio.shield(lock_conn.close())

    async def _locked(
        self,
        conn: Connection,
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
            kind = StaticTreeClient if upstream.kind == "static" else UpstreamClient
            client = kind(self.session, upstream, token=token)
            crawl = (AggregatorCrawl if upstream.kind == "aggregator" else Crawl)(
                self.pool, client, self.config, upstream, upstream_id, run_id, self.progress
            )
            try:
                if upstream.token_env and not token:
                    # Harvested without its credentials, a private registry would list only
                    # what it shows anyone, and the rest would be counted missing.
                    outcome = crawl.result
                    outcome.status, outcome.error = "failed", _no_token(upstream.token_env)
                    crawl.error(outcome.error)
                else:
                    outcome = await crawl.execute()
            except asyncio.CancelledError:
                await asyncio.shield(
                    db_runs.abandon_run(conn, run_id, "the worker stopped before the run ended")
                )
                log.info("harvest_finished", status="abandoned", reason="worker stopped")
                raise
            except Exception as e:
                if is_unavailable(e):
                    raise unavailable(e) from None
                # Whatever went wrong is this run's alone: it fails, recorded, and the others go on.
                log.exception("harvest_crashed", error=f"{type(e).__name__}: {e}")
                crawl.error(f"{type(e).__name__}: {e}")
                outcome = crawl.result
                outcome.status, outcome.error = "failed", f"{type(e).__name__}: {e}"
            finally:
                await client.close()
                await crawl.file_hosts.close()
            outcome.duration_s = time.monotonic() - started
            # One transaction: a run is never seen closed with its staged rows still there (a
            # worker stopped in between would leave them to nobody).
            async with conn.transaction():
                await db_runs.finish_run(
                    conn,
                    run_id,
                    status=outcome.status,
                    counts=outcome.counts,
                    listing_complete=outcome.listing_complete,
                    error=outcome.error,
                )
                await save_conformance(
                    conn, run_id, run_conformance(crawl.quirks.items, outcome.counts.error_kinds)
                )
                await db_runs.delete_staged(conn, [run_id])
            await db_upstreams.record_result(
                conn,
                upstream_id,
                failed=outcome.status == "failed" or outcome.upstream_down,
                policy=self.circuit,
                next_due=next_due,
            )
            if upstream.name in await db_upstreams.pending_requests(conn):
                # A request that came in during this run wants a run that starts after it.
                await db_upstreams.announce_request(conn, upstream.name)
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
