"""The worker: an apscheduler job per upstream, and "harvest now" requests from the database."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import zlib
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import asyncpg
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from aggregator.config import Config, UpstreamConfig
from aggregator.db import upstreams as db_upstreams
from aggregator.db.outage import is_unavailable, unavailable
from aggregator.db.pool import connect
from aggregator.harvest.runner import Harvester

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

log = structlog.get_logger()

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# How long a worker waits for running harvests to mark themselves abandoned when it stops.
_STOP_TIMEOUT_S: Final = 10.0


def trigger_for(upstream: UpstreamConfig) -> IntervalTrigger | CronTrigger:
    """The apscheduler trigger of *upstream*'s schedule.

    Interval ticks fall on a grid every worker computes alike (offset within the interval by
    the upstream's name, so upstreams do not all start at once): the workers' ticks coincide,
    and the first to take the upstream's lock harvests that tick.
    """
    seconds = upstream.interval_seconds()
    if seconds is not None:
        offset = zlib.crc32(upstream.name.encode()) % seconds
        return IntervalTrigger(
            seconds=seconds, timezone=dt.UTC, start_date=_EPOCH + dt.timedelta(seconds=offset)
        )
    return CronTrigger.from_crontab(upstream.schedule, timezone=dt.UTC)


def _slack_s(trigger: IntervalTrigger | CronTrigger, now: dt.datetime) -> float:
    """How early a tick may come against the due time another worker set (clock skew)."""
    first: dt.datetime | None = trigger.get_next_fire_time(None, now)
    if first is None:
        return 0.0
    second: dt.datetime | None = trigger.get_next_fire_time(
        first, first + dt.timedelta(microseconds=1)
    )
    if second is None:
        return 0.0
    return min(5.0, (second - first).total_seconds() / 4)


class Worker:
    """Harvests every enabled upstream on its schedule and whenever someone asks.

    Scheduled jobs coalesce missed runs and never overlap in this process; across processes
    the upstream's advisory lock and its due time (upstreams.next_harvest_at) make each tick
    harvest an upstream once. "Harvest now" requests arrive by NOTIFY on
    HARVEST_REQUEST_CHANNEL, and by polling every *harvest.request_poll* in case a
    notification was missed.
    """

    def __init__(
        self, pool: asyncpg.Pool[Any], session: aiohttp.ClientSession, config: Config
    ) -> None:
        self.pool = pool
        self.config = config
        self.harvester = Harvester(pool, session, config)
        self.scheduler = AsyncIOScheduler(timezone=dt.UTC)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._requested_running: set[str] = set()
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Schedule every enabled upstream and start listening for requests.

        An upstream that is due (never harvested, or its due time has passed while no worker
        ran) is harvested at once.
        """
        due = await db_upstreams.due_now(self.pool)
        for upstream in self.config.upstreams:
            if upstream.enabled:
                self.schedule(upstream, catch_up=due.get(upstream.name, True))
        self.scheduler.start()
        for job in self.scheduler.get_jobs():
            log.info("harvest_scheduled", job=job.id, next_run=str(job.next_run_time))
        self._listener = asyncio.create_task(self._listen())

    def schedule(self, upstream: UpstreamConfig, *, catch_up: bool) -> None:
        """(Re)schedule *upstream*'s harvests; with *catch_up*, also harvest it at once."""
        self.scheduler.add_job(
            self._scheduled,
            trigger_for(upstream),
            args=[upstream],
            id=upstream.name,
            name=f"harvest {upstream.name}",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
            replace_existing=True,
        )
        if catch_up:
            self.scheduler.add_job(
                self._scheduled,
                DateTrigger(dt.datetime.now(dt.UTC)),
                args=[upstream],
                id=f"{upstream.name}:catch-up",
                name=f"catch up {upstream.name}",
                misfire_grace_time=None,
                replace_existing=True,
            )

    async def stop(self) -> None:
        """Stop scheduling; cancel running harvests, which record themselves abandoned."""
        self.scheduler.shutdown(wait=False)
        if self._listener is not None:
            self._listener.cancel()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        pending = [*tasks, *([self._listener] if self._listener else [])]
        if pending:
            await asyncio.wait(pending, timeout=_STOP_TIMEOUT_S)

    async def _scheduled(self, upstream: UpstreamConfig) -> None:
        trigger = trigger_for(upstream)
        now = dt.datetime.now(dt.UTC)
        next_due = trigger.get_next_fire_time(None, now + dt.timedelta(microseconds=1))
        await self._track(
            self.harvester.harvest(
                upstream, trigger="scheduled", next_due=next_due, slack_s=_slack_s(trigger, now)
            )
        )

    async def _requested(self, upstream: UpstreamConfig) -> None:
        self._requested_running.add(upstream.name)
        try:
            await self._track(self.harvester.harvest(upstream, trigger="requested"))
        finally:
            self._requested_running.discard(upstream.name)

    async def _track(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        try:
            await task
        except Exception as e:  # one upstream's crash never stops the worker
            if is_unavailable(e):
                log.error("harvest_failed", error=str(unavailable(e)))  # noqa: TRY400 - an outage
            else:
                log.exception("harvest_crashed")
        finally:
            self._tasks.discard(task)

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        """Serve "harvest now" requests until cancelled."""
        poll = self.config.harvest.request_poll_s
        conn: Connection | None = None
        try:
            while True:
                if conn is None or conn.is_closed():
                    conn = await self._subscribe()
                await self._serve_requests()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), poll)
                self._wake.clear()
        finally:
            if conn is not None and not conn.is_closed():
                await conn.close()

    async def _subscribe(self) -> Connection | None:
        assert self.config.database.url is not None
        try:
            conn = await connect(self.config.database.url)
            await conn.add_listener(db_upstreams.HARVEST_REQUEST_CHANNEL, self._notified)
        except (OSError, asyncpg.PostgresError) as e:
            log.warning("harvest_requests_unsubscribed", error=str(e))
            return None
        return conn

    async def _serve_requests(self) -> None:
        try:
            names = await db_upstreams.pending_requests(self.pool)
        except (OSError, asyncpg.PostgresError) as e:
            log.warning("harvest_requests_unreadable", error=str(e))
            return
        configured = {u.name: u for u in self.config.upstreams}
        for name in names:
            upstream = configured.get(name)
            if upstream is None or name in self._requested_running:
                continue
            log.info("harvest_requested", upstream=name)
            self._requested_running.add(name)
            asyncio.create_task(self._requested(upstream))  # noqa: RUF006 - tracked in _tasks
