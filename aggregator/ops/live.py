"""A worker that follows the upstream list in the database: applied changes, pauses and
cancellations reach it without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
import structlog

from aggregator.config import Config, UpstreamConfig
from aggregator.db.operations import (
    CANCEL_CHANNEL,
    UPSTREAMS_CHANNEL,
    cancel_requested,
    upstreams_fingerprint,
)
from aggregator.db.pool import connect
from aggregator.db.runs import abandon_orphaned_runs
from aggregator.harvest.crawl import RunOutcome
from aggregator.harvest.runner import Harvester
from aggregator.harvest.scheduler import Worker
from aggregator.ops.upstreams import stored_upstreams

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

log = structlog.get_logger()


class CancellableHarvester(Harvester):
    """A Harvester whose running harvests can be cancelled by upstream name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.running: dict[str, asyncio.Task[RunOutcome]] = {}
        self.cancelling: set[str] = set()

    async def harvest(self, upstream: UpstreamConfig, **kwargs: Any) -> RunOutcome:
        """Harvest as Harvester does; a run cancelled by cancel() ends ``abandoned``."""
        task = asyncio.ensure_future(super().harvest(upstream, **kwargs))
        self.running[upstream.name] = task
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if upstream.name not in self.cancelling or (current and current.cancelling()):
                raise
            return RunOutcome(upstream.name, "abandoned", error="cancelled by an operator")
        finally:
            self.cancelling.discard(upstream.name)
            if self.running.get(upstream.name) is task:
                del self.running[upstream.name]

    def cancel(self, name: str) -> bool:
        """Cancel the running harvest of upstream *name*; False when none runs here."""
        task = self.running.get(name)
        if task is None or task.done():
            return False
        self.cancelling.add(name)
        task.cancel()
        log.info("harvest_cancelled", upstream=name)
        return True


class LiveWorker(Worker):
    """Harvests the upstreams the database holds (see ``upstreams apply``), rescheduling when
    they change, and cancels runs operators ask to cancel.

    Changes arrive by NOTIFY on UPSTREAMS_CHANNEL and CANCEL_CHANNEL, and by polling every
    *harvest.request_poll* in case a notification was missed.
    """

    def __init__(
        self, pool: asyncpg.Pool[Any], session: aiohttp.ClientSession, config: Config
    ) -> None:
        super().__init__(pool, session, config)
        self.harvester: CancellableHarvester = CancellableHarvester(pool, session, config)
        self._changed = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None
        self._fingerprint: Any = None

    async def start(self) -> None:
        """Load the upstreams from the database, schedule them, and follow changes."""
        self._use(await stored_upstreams(self.pool))
        self._fingerprint = await self._read_fingerprint()
        await super().start()
        self._follower = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        """Stop following, then stop as Worker does."""
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        await super().stop()

    def _use(self, upstreams: list[UpstreamConfig]) -> None:
        self.config = dataclasses.replace(self.config, upstreams=tuple(upstreams))
        self.harvester.config = self.config

    async def _read_fingerprint(self) -> Any:
        return await upstreams_fingerprint(self.pool)

    async def reload(self) -> None:
        """Reschedule after the upstream list in the database changed."""
        upstreams = await stored_upstreams(self.pool)
        old = {u.name: u for u in self.config.upstreams}
        new = {u.name: u for u in upstreams}
        self._use(upstreams)
        for name, u in old.items():
            if new.get(name) != u:
                for job_id in (name, f"{name}:catch-up"):
                    with contextlib.suppress(Exception):  # JobLookupError: not scheduled
                        self.scheduler.remove_job(job_id)
                if name not in new:
                    self.harvester.cancel(name)
        for name, u in new.items():
            if old.get(name) != u and u.enabled:
                self.schedule(u, catch_up=name not in old)
        log.info("upstreams_reloaded", upstreams=sorted(new))

    def _notified(self, *_: Any) -> None:
        super()._notified()
        self._changed.set()

    async def _follow(self) -> None:
        assert self.config.database.url is not None
        poll = self.config.harvest.request_poll_s
        conn: Connection | None = None
        try:
            while True:
                # Whatever fails (the database is away), the worker goes on and tries again.
                try:
                    if conn is None or conn.is_closed():
                        conn = await connect(self.config.database.url)
                        await conn.add_listener(UPSTREAMS_CHANNEL, self._notified)
                        await conn.add_listener(CANCEL_CHANNEL, self._notified)
                    fingerprint = await self._read_fingerprint()
                    if fingerprint != self._fingerprint:
                        self._fingerprint = fingerprint
                        await self.reload()
                    for name in await cancel_requested(self.pool):
                        self.harvester.cancel(name)
                    await abandon_orphaned_runs(self.pool)
                except Exception as e:  # noqa: BLE001 - logged; the next poll retries
                    log.warning("upstreams_unreadable", error=f"{type(e).__name__}: {e}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), poll)
                self._changed.clear()
        finally:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await conn.close()
