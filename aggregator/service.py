"""The long-running pieces the commands are made of: migrate, harvest, serve, worker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

from aggregator.api.fastpath import FastRunner
from aggregator.app import create_app
from aggregator.config import Config
from aggregator.db.merge import save_merge_rules
from aggregator.db.migrate import migrate, missing_migrations
from aggregator.db.pool import connect, create_pool
from aggregator.db.publish import remerge_catalogue
from aggregator.db.upstreams import request_harvest, upsert_upstreams
from aggregator.errors import ConfigError, MigrationError
from aggregator.harvest.crawl import RunOutcome
from aggregator.harvest.runner import WORKER_ID, harvest_upstreams, make_session
from aggregator.ops.live import LiveWorker
from aggregator.progress import NoProgress, TerminalProgress

log = structlog.get_logger()


async def cmd_migrate(config: Config) -> int:
    """Apply pending migrations and say what was done."""
    assert config.database.url is not None
    applied = await migrate(config.database.url)
    print(
        f"applied {len(applied)} migration(s)"
        + (": " + ", ".join(applied) if applied else "; the schema is up to date")
    )
    return 0


async def cmd_merge(config: Config, *, full: bool) -> int:
    """Re-merge now: what is marked changed (a priority change marks an upstream's tools), or
    everything with *full*; then tell the API processes of the new generation."""
    assert config.database.url is not None
    conn = await connect(config.database.url)
    try:
        await upsert_upstreams(conn, config.upstreams, keep_api_changes=True)
        await save_merge_rules(conn, config.merge.always, config.merge.never)
        stats = await remerge_catalogue(
            conn,
            tombstone_after=config.harvest.tombstone_after,
            max_per_upstream=config.merge.max_tools_per_upstream,
            full=full,
        )
    finally:
        await conn.close()
    print(
        f"merged {stats.nodes} upstream records ({stats.dirty} changed) into {stats.tools} "
        f"tools; catalogue generation {stats.generation}"
    )
    return 0


async def check_schema(pool: asyncpg.Pool[Any]) -> None:
    """Refuse to start on a database the migrations have not (all) been applied to."""
    missing = await missing_migrations(pool)
    if missing:
        raise MigrationError(
            f"the database lacks migrations {', '.join(missing)}; run "
            "'trs-aggregator migrate' first"
        )


async def cmd_harvest(config: Config, names: Sequence[str]) -> int:
    """Harvest now, with a progress line on a terminal; 1 if any upstream failed."""
    for name in names:
        config.upstream(name)
    if not names and not config.upstreams:
        raise ConfigError("upstreams", "no upstreams configured")
    progress = TerminalProgress() if sys.stderr.isatty() else NoProgress()
    pool = await create_pool(config.database)
    try:
        await check_schema(pool)
        async with make_session(config) as session:
            outcomes = await harvest_upstreams(pool, session, config, names, progress=progress)
    finally:
        await pool.close()
    print_outcomes(outcomes)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


async def cmd_request_harvest(config: Config, names: Sequence[str]) -> int:
    """Ask running workers to harvest *names* (every enabled upstream when empty) now."""
    chosen = (
        [config.upstream(n).name for n in names]
        if names
        else [u.name for u in config.upstreams if u.enabled]
    )
    if not chosen:
        raise ConfigError("upstreams", "no upstreams configured")
    pool = await create_pool(config.database)
    try:
        await check_schema(pool)
        async with pool.acquire() as conn:
            await upsert_upstreams(conn, config.upstreams, keep_api_changes=True)
            ids = await request_harvest(conn, chosen, requested_by=f"cli:{WORKER_ID}")
    finally:
        await pool.close()
    for name, request_id in ids.items():
        print(f"{name}: harvest requested (request {request_id}); a running worker will start it")
    return 0


def print_outcomes(outcomes: Sequence[RunOutcome]) -> None:
    """A summary line per upstream on stdout."""
    for o in outcomes:
        c = o.counts
        if o.status == "skipped":
            print(f"{o.upstream}: skipped ({o.error})")
            continue
        line = (
            f"{o.upstream}: {o.status}"
            + (f" (run {o.run_id})" if o.run_id else "")
            + f": {c.tools_seen} tools ({c.tools_new} new, {c.tools_changed} changed, "
            f"{c.tools_unchanged} unchanged, {c.tools_tombstoned} missing), "
            f"{c.versions_seen} versions, {c.files_stored} files, {c.requests} requests, "
            f"{c.errors} errors, {o.duration_s:.1f}s"
        )
        print(line)
        if o.error:
            print(f"  error: {o.error}")
        for sample in c.error_samples[:5]:
            if sample != o.error:
                print(f"  - {sample}")


@contextlib.asynccontextmanager
async def running_site(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """Serve *app* on host:port until the block ends; yield the base URL."""
    runner = FastRunner(app, access_log=None)  # warm answers in front of the app
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    try:
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


STOP_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM})


def hold_stop_signals() -> None:
    """Keep SIGINT and SIGTERM pending until their handlers are in place (release_stop_signals),
    so a signal that comes early stops the process cleanly instead of killing it outright."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def release_stop_signals() -> None:
    """Deliver SIGINT and SIGTERM again, pending ones included."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


async def wait_for_signal() -> None:
    """Return on SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    release_stop_signals()
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def serve_forever(
    config: Config, *, api: bool, worker: bool, on_ready: Callable[[str], None] | None = None
) -> int:
    """Run the API and/or the scheduler until SIGINT or SIGTERM."""
    pool = await create_pool(config.database)
    try:
        await check_schema(pool)
        async with contextlib.AsyncExitStack() as stack:
            if worker:
                session = await stack.enter_async_context(make_session(config))
                async with pool.acquire() as conn:
                    await upsert_upstreams(conn, config.upstreams, keep_api_changes=True)
                    await save_merge_rules(conn, config.merge.always, config.merge.never)
                harvest_worker = LiveWorker(pool, session, config)
                await harvest_worker.start()
                stack.push_async_callback(harvest_worker.stop)
            if api:
                url = await stack.enter_async_context(
                    running_site(create_app(config), config.server.host, config.server.port)
                )
                log.info("api_listening", url=url)
                if on_ready is not None:
                    on_ready(url)
            await wait_for_signal()
    finally:
        await pool.close()
    return 0
