"""The worker: an apscheduler job per upstream, harvesting on its schedule."""

from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp
import asyncpg
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from aggregator.config import Config, UpstreamConfig
from aggregator.harvest.harvester import Harvester

log = structlog.get_logger()


def trigger_for(upstream: UpstreamConfig) -> IntervalTrigger | CronTrigger:
    """The apscheduler trigger of *upstream*'s schedule."""
    seconds = upstream.interval_seconds()
    if seconds is not None:
        return IntervalTrigger(seconds=seconds, jitter=min(60, seconds // 10) or None)
    return CronTrigger.from_crontab(upstream.schedule, timezone=dt.UTC)


async def start_scheduler(pool: asyncpg.Pool[Any], session: aiohttp.ClientSession,
                          config: Config) -> AsyncIOScheduler:
    """Start one job per enabled upstream; an upstream never harvested runs at once.

    Jobs coalesce missed runs and never overlap; across processes, the harvest lock keeps one
    run of an upstream at a time.
    """
    harvester = Harvester(pool, session, config)
    scheduler = AsyncIOScheduler(timezone=dt.UTC)
    never = {r["name"] for r in await pool.fetch(
        """select u.name from upstreams u where not exists (
               select 1 from harvest_runs r
               where r.upstream_id = u.id and r.status in ('succeeded', 'partial'))""")}
    for upstream in config.upstreams:
        if not upstream.enabled:
            continue
        scheduler.add_job(
            harvester.harvest, trigger_for(upstream), args=[upstream], id=upstream.name,
            name=f"harvest {upstream.name}", coalesce=True, max_instances=1,
            misfire_grace_time=None,
            next_run_time=dt.datetime.now(dt.UTC) if upstream.name in never else None)
        if upstream.name not in never:
            job = scheduler.get_job(upstream.name)
            job.modify(next_run_time=trigger_for(upstream).get_next_fire_time(
                None, dt.datetime.now(dt.UTC)))
    scheduler.start()
    for job in scheduler.get_jobs():
        log.info("harvest_scheduled", upstream=job.id, next_run=str(job.next_run_time))
    return scheduler
