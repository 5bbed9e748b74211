"""trs-aggregator worker as real processes: schedules, several workers, kill -9, harvest now."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer
from apscheduler.triggers.interval import IntervalTrigger

from aggregator.app import create_app
from aggregator.config import Config, DatabaseConfig, HarvestConfig, UpstreamConfig
from aggregator.db.locks import try_harvest_lock
from aggregator.db.runs import abandon_orphaned_runs, insert_run
from aggregator.db.upstreams import upsert_upstreams
from aggregator.demo.registry import REQUESTS, STATE, make_registry_app
from aggregator.harvest.runner import make_session
from aggregator.harvest.scheduler import trigger_for
from aggregator.ops.live import LiveWorker
from tests.support import catalogue, cwl_tool, eventually, harvest, upstream_toml

TRS = "/ga4gh/trs/v2"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def slow(delays: dict[str, float]) -> Any:
    """A registry middleware delaying requests whose path contains a key by its value."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        for needle, seconds in delays.items():
            if needle in request.path:
                await asyncio.sleep(seconds)
        return await handler(request)

    return middleware


def write_config(
    path: Path, dsn: str, servers: dict[str, TestServer], *, schedule: str, request_poll: str = "1s"
) -> Path:
    """A worker config: one upstream per registry on *schedule*, failing fast."""
    lines = [
        "[database]",
        f"url = {json.dumps(dsn)}",
        "pool_max = 6",
        "",
        "[harvest]",
        f"request_poll = {json.dumps(request_poll)}",
    ]
    for name, server in servers.items():
        lines += upstream_toml(name, server, schedule=schedule, page_size=2)
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.asynccontextmanager
async def process(
    tmp_path: Path, log_name: str, *args: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run ``python -m aggregator ARGS`` for the block; killed if still running after it."""
    env = {k: v for k, v in os.environ.items() if k != "AGGREGATOR_DATABASE_URL"}
    with (tmp_path / log_name).open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aggregator",
            *args,
            "--log-json",
            cwd=tmp_path,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def wait_until(check: Callable[[], Awaitable[Any]], what: str, log: Path) -> Any:
    """Poll *check* until it returns something truthy; on failure show the process's log."""
    return await eventually(
        check, timeout=60, what=what, detail=lambda: log.read_text() if log.exists() else ""
    )


async def runs_of(pool: asyncpg.Pool[Any]) -> list[asyncpg.Record]:
    """Every run record with its upstream's name, oldest first."""
    return await pool.fetch(
        """select u.name, r.* from harvest_runs r join upstreams u on u.id = r.upstream_id
           order by r.id"""
    )


async def test_two_workers_harvest_each_upstream_once_per_tick(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, tmp_path: Path
) -> None:
    """Two workers on one database: every 2s tick harvests each upstream exactly once, runs of
    one upstream never overlap, and SIGTERM stops both cleanly."""
    servers = {
        name: await aiohttp_server(
            make_registry_app(
                catalogue([cwl_tool(f"{name}-{i}") for i in range(3)]),
                page_size=2,
                middlewares=[slow({"/tools": 0.1})],
            )
        )
        for name in ("one", "two")
    }
    config = write_config(tmp_path / "agg.toml", db_dsn, servers, schedule="every 2s")
    async with (
        process(tmp_path, "w1.log", "worker", "--config", str(config)) as w1,
        process(tmp_path, "w2.log", "worker", "--config", str(config)) as w2,
    ):

        async def enough() -> bool:
            done = [r for r in await runs_of(pool) if r["status"] == "succeeded"]
            return all(sum(r["name"] == n for r in done) >= 3 for n in servers)

        await wait_until(enough, "three runs of each upstream", tmp_path / "w1.log")
        for w in (w1, w2):
            w.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(w1.wait(), 60) == 0, (tmp_path / "w1.log").read_text()
        assert await asyncio.wait_for(w2.wait(), 60) == 0, (tmp_path / "w2.log").read_text()
    runs = await runs_of(pool)
    assert {r["status"] for r in runs} <= {"succeeded", "abandoned"}
    workers = {f"{socket.gethostname()}:{w.pid}" for w in (w1, w2)}
    assert {r["worker"] for r in runs} <= workers, "a run not recorded by one of the two workers"
    for name, server in servers.items():
        mine = [r for r in runs if r["name"] == name]
        for earlier, later in itertools.pairwise(mine):
            assert earlier["finished_at"] <= later["started_at"], "two runs at once"
        # Each run belongs to the grid tick it started in (a tick may start a little late on a
        # loaded machine, never before its time less the workers' clock slack): no tick twice.
        trigger = trigger_for(UpstreamConfig(name=name, url="http://x", schedule="every 2s"))
        assert isinstance(trigger, IntervalTrigger)
        ticks = [(r["started_at"] - trigger.start_date) // trigger.interval for r in mine]
        assert len(set(ticks)) == len(ticks), f"{name} harvested twice in one tick: {ticks}"
        first_pages = [r for r in server.app[REQUESTS] if r.startswith(f"GET {TRS}/tools?limit=2 ")]
        assert len(first_pages) == len(mine)


async def test_kill_9_mid_harvest_loses_nothing(
    aiohttp_server: Any, aiohttp_client: Any, pool: asyncpg.Pool[Any], db_dsn: str, tmp_path: Path
) -> None:
    """A worker killed with SIGKILL mid-run: the API serves the last good snapshot, and the next
    worker marks that run abandoned, completes a run and publishes it."""
    delays: dict[str, float] = {}
    server = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool(f"t{i}", marker="old") for i in range(8)]),
            page_size=2,
            middlewares=[slow(delays)],
        )
    )
    upstreams = (
        UpstreamConfig(name="up", url=str(server.make_url(TRS)), page_size=2, concurrency=1),
    )
    in_process = Config(database=DatabaseConfig(url=db_dsn), upstreams=upstreams)
    assert (await harvest(pool, in_process))["up"].status == "succeeded"
    client = await aiohttp_client(create_app(in_process))

    async def served() -> list[str]:
        out = []
        for i in range(8):
            r = await client.get(f"{TRS}/tools/t{i}/versions/1.0/PLAIN_CWL/descriptor")
            assert r.status == 200
            out.append(await r.text())
        return out

    before = await served()
    server.app[STATE].catalogue = catalogue([cwl_tool(f"t{i}", marker="new") for i in range(8)])
    # The last tool hangs, so the run cannot finish before it is killed.
    delays["/tools/t7/versions"] = 60
    config = write_config(tmp_path / "agg.toml", db_dsn, {"up": server}, schedule="every 1h")
    await pool.execute("update upstreams set next_harvest_at = null")

    async with process(tmp_path, "killed.log", "worker", "--config", str(config)) as victim:

        async def mid_run() -> bool:
            fetched = [
                r
                for r in server.app[REQUESTS]
                if "/versions " in r and r.endswith("> 200") and "/tools/t7/" not in r
            ]
            running = await pool.fetchval(
                "select count(*) from harvest_runs where status = 'running'"
            )
            return running == 1 and len(fetched) >= 8 + 5

        await wait_until(mid_run, "a run half done", tmp_path / "killed.log")
        victim.kill()
        assert await victim.wait() == -signal.SIGKILL
    killed = (await runs_of(pool))[-1]
    assert killed["status"] == "running" and killed["trigger"] == "scheduled"
    assert await served() == before

    delays.clear()
    async with process(tmp_path, "next.log", "worker", "--config", str(config)) as worker:

        async def published() -> Any:
            runs = await runs_of(pool)
            return runs[-1]["status"] == "succeeded" and runs

        runs = await wait_until(published, "the next run", tmp_path / "next.log")
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 60) == 0
    assert [r["status"] for r in runs] == ["succeeded", "abandoned", "succeeded"]
    assert "stopped before the run ended" in runs[1]["error"]
    assert await pool.fetchval("select count(*) from staged_tools") == 0
    assert all("new" in text for text in await served())


async def test_harvest_now_reaches_a_running_worker(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, tmp_path: Path
) -> None:
    """``harvest --queue`` asks through the database; the running worker harvests at once,
    without a restart, and the request records the run that served it."""
    server = await aiohttp_server(make_registry_app(catalogue([cwl_tool("a")]), page_size=2))
    config = write_config(
        tmp_path / "agg.toml", db_dsn, {"up": server}, schedule="every 1h", request_poll="1h"
    )
    async with process(tmp_path, "worker.log", "worker", "--config", str(config)) as worker:

        async def first() -> bool:
            return [r["status"] for r in await runs_of(pool)] == ["succeeded"]

        await wait_until(first, "the catch-up run", tmp_path / "worker.log")
        server.app[STATE].catalogue = catalogue([cwl_tool("a"), cwl_tool("b")])
        async with process(
            tmp_path, "queue.log", "harvest", "--queue", "up", "--config", str(config)
        ) as queue:
            assert await asyncio.wait_for(queue.wait(), 30) == 0, (
                tmp_path / "queue.log"
            ).read_text()
        assert "up: harvest requested (request " in (tmp_path / "queue.log").read_text()

        # Polling is every hour and the schedule hourly: only the notification can start it.
        async def second() -> Any:
            runs = await runs_of(pool)
            return len(runs) == 2 and runs[1]["status"] == "succeeded" and runs

        runs = await wait_until(second, "the requested run", tmp_path / "worker.log")
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 60) == 0
    assert runs[1]["trigger"] == "requested" and runs[1]["tools_new"] == 1
    request = await pool.fetchrow("select * from harvest_requests")
    assert request["run_id"] == runs[1]["id"] and request["served_at"] is not None


async def test_a_worker_abandons_runs_whose_process_is_gone(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """A run left 'running' by a process that is gone is marked abandoned at the next poll of
    any worker, without waiting for its upstream's next run; a run whose process still holds
    the upstream's harvest lock is left alone until it lets go."""
    server = await aiohttp_server(make_registry_app(catalogue([cwl_tool("t")])))
    config = Config(
        database=DatabaseConfig(url=db_dsn),
        harvest=HarvestConfig(request_poll="1s"),
        upstreams=tuple(
            UpstreamConfig(name=n, url=str(server.make_url(TRS)), schedule="every 24h")
            for n in ("gone", "alive")
        ),
    )
    async with pool.acquire() as conn:
        ids = await upsert_upstreams(conn, config.upstreams)
        # Neither is harvested by the worker: only the sweep can touch their runs.
        await conn.execute("update upstreams set paused = true")
        orphan = await insert_run(conn, ids["gone"])

    async def status(run_id: int) -> str:
        return str(await pool.fetchval("select status from harvest_runs where id = $1", run_id))

    async with pool.acquire() as holder, try_harvest_lock(holder, ids["alive"]) as taken:
        assert taken
        live = await insert_run(holder, ids["alive"])
        async with make_session(config) as session:
            worker = LiveWorker(pool, session, config)
            await worker.start()
            try:
                await eventually(lambda: _is(status(orphan), "abandoned"))
                assert await status(live) == "running"
            finally:
                await worker.stop()
    error = await pool.fetchval("select error from harvest_runs where id = $1", orphan)
    assert "stopped before the run ended" in error
    # The holder has let go: the same sweep now finds that run orphaned too.
    assert await abandon_orphaned_runs(pool) == 1
    assert await status(live) == "abandoned"


async def _is(value: Awaitable[str], expected: str) -> bool:
    return await value == expected


async def test_a_harvest_lock_let_go_a_moment_later_is_taken_by_a_patient_run(
    pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """A process killed mid-run holds its harvest lock until the server notices, a moment
    later: a run that starts then waits for it (``patience_s``) instead of being skipped as
    already running; without patience, or while the lock stays held, it is not taken."""
    upstream_id = 4242
    holder = await asyncpg.connect(db_dsn)
    try:
        async with pool.acquire() as other:
            async with try_harvest_lock(holder, upstream_id) as held:
                assert held
                async with try_harvest_lock(other, upstream_id) as taken:
                    assert not taken
                async with try_harvest_lock(other, upstream_id, patience_s=0.3) as taken:
                    assert not taken  # still held after waiting
            async with try_harvest_lock(holder, upstream_id) as held:
                assert held

                async def let_go_soon() -> None:
                    await asyncio.sleep(0.2)
                    holder.terminate()  # as a dead client's session ends

                closing = asyncio.create_task(let_go_soon())
                async with try_harvest_lock(other, upstream_id, patience_s=5.0) as taken:
                    assert taken
                await closing
    finally:
        holder.terminate()


async def test_a_run_takes_over_from_a_process_that_died_a_moment_ago_not_from_a_live_one(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """While another session holds an upstream's harvest lock with a run recorded as running,
    a harvest waits a moment: when that session ends without finishing its run (a process
    killed mid-run, its connection closed a moment later), the harvest takes over and the
    dead run is abandoned (also when a worker's sweep abandoned it before the harvest looked);
    when the run was finished first, or another run was made meanwhile, the harvest is skipped
    as already running."""
    server = await aiohttp_server(make_registry_app(catalogue([cwl_tool("t")])))
    config = Config(
        database=DatabaseConfig(url=db_dsn),
        upstreams=(UpstreamConfig(name="up", url=str(server.make_url(TRS))),),
    )
    async with pool.acquire() as conn:
        upstream_id = (await upsert_upstreams(conn, config.upstreams))["up"]

    async def hold_then(
        end: Callable[[asyncpg.Connection[Any], int], Awaitable[None]], *, swept: bool = False
    ) -> Any:
        holder = await asyncpg.connect(db_dsn)
        try:
            async with try_harvest_lock(holder, upstream_id) as taken:
                assert taken
                run = await insert_run(holder, upstream_id)
                if swept:  # as a worker's sweep leaves it once the lock is let go
                    await holder.execute(
                        "update harvest_runs set status = 'abandoned' where id = $1", run
                    )

                async def later() -> None:
                    await asyncio.sleep(0.3)
                    await end(holder, run)

                ending = asyncio.create_task(later())
                outcome = (await harvest(pool, config))["up"]
                await ending
                return run, outcome
        finally:
            holder.terminate()

    async def dies(holder: asyncpg.Connection[Any], run: int) -> None:
        holder.terminate()

    async def finishes(holder: asyncpg.Connection[Any], run: int) -> None:
        await holder.execute(
            "update harvest_runs set status = 'succeeded', finished_at = now() where id = $1", run
        )
        await holder.execute("select pg_advisory_unlock_all()")

    dead, outcome = await hold_then(dies)
    assert outcome.status == "succeeded"
    assert await pool.fetchval("select status from harvest_runs where id = $1", dead) == (
        "abandoned"
    )
    _, outcome = await hold_then(finishes)
    assert (outcome.status, outcome.error) == ("skipped", "already running")

    # The dead run already abandoned by a sweep when the harvest looks: it takes over too.
    _, outcome = await hold_then(dies, swept=True)
    assert outcome.status == "succeeded"

    async def runs_anew(holder: asyncpg.Connection[Any], run: int) -> None:
        again = await insert_run(holder, upstream_id)
        await finishes(holder, again)

    # After an abandoned run, a live process ran the upstream meanwhile: skipped.
    _, outcome = await hold_then(runs_anew, swept=True)
    assert (outcome.status, outcome.error) == ("skipped", "already running")
