"""`serve` on several processes sharing one port, and the warm path in front of the app."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from aggregator.api.cache import LISTENER_NAME
from aggregator.api.reqlog import REQUEST_LOG, RequestLog
from aggregator.app import create_app
from aggregator.service import running_site
from tests.populated import NESTED, TRS, api_config, enc
from tests.support import eventually
from tests.test_api_cache import publish, rewrite_description

TIMEOUT = 60.0


class Service:
    """A ``trs-aggregator serve`` process tree: its supervisor, URL and log lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.url = ""
        self.listening = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                line = {"event": raw.decode(errors="replace")}
            self.lines.append(line)
            if line.get("event") == "api_listening":
                self.url = line["url"]
                self.listening.set()

    def children(self) -> list[int]:
        """The pids of the supervisor's child processes."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log lines of event *name*."""
        return [line for line in self.lines if line.get("event") == name]


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, dsn: str, workers: int) -> AsyncIterator[Service]:
    config = tmp_path / "aggregator.toml"
    config.write_text(f'[database]\nurl = "{dsn}"\n[server]\nhost = "127.0.0.1"\nport = 0\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aggregator",
        "serve",
        "--config",
        str(config),
        "--workers",
        str(workers),
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    service = Service(proc)
    try:
        waiting = asyncio.create_task(service.listening.wait())
        await asyncio.wait(
            {waiting, service.reader}, timeout=TIMEOUT, return_when="FIRST_COMPLETED"
        )
        waiting.cancel()
        assert service.listening.is_set(), f"never listened: {service.lines}"
        yield service
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        # processes that outlived it would hold its stderr open: never wait on them for ever
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(service.reader, TIMEOUT)


async def answers(url: str, n: int) -> list[tuple[str, str | None]]:
    """*n* answers for the nested tool, each on a new connection (so the kernel spreads them
    over the processes): (the process's request-id prefix, the tool's description)."""
    out = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(n):
            async with session.get(f"{url}{TRS}/tools/{enc(NESTED)}") as r:
                assert r.status == 200
                tool = await r.json()
                out.append((r.headers["X-Request-Id"].split("-")[0], tool.get("description")))
    return out


async def listeners(db: asyncpg.Connection[Any]) -> int:
    count: int = await db.fetchval(
        "select count(*) from pg_stat_activity "
        "where datname = current_database() and application_name = $1",
        LISTENER_NAME,
    )
    return count


async def test_processes_share_the_port_and_all_hear_of_a_publish(
    tmp_path: Path, populated_dsn: str
) -> None:
    """Two processes answer on one port, each with its own cache and catalogue listener;
    a publish reaches both; SIGTERM stops them all and frees the port."""
    db = await asyncpg.connect(populated_dsn)
    try:
        async with serve(tmp_path, populated_dsn, workers=2) as service:
            assert len(service.children()) == 2
            assert service.events("api_listening")[0]["processes"] == 2
            assert await listeners(db) == 2
            seen = await answers(service.url, 40)
            assert {prefix for prefix, _ in seen} == set(await _prefixes(service, 2))
            assert {description for _, description in seen} == {None}

            await rewrite_description(db, "announced to every process")
            await publish(db)

            async def all_fresh() -> bool:
                latest = await answers(service.url, 16)
                return len({p for p, _ in latest}) == 2 and {d for _, d in latest} == {
                    "announced to every process"
                }

            await eventually(all_fresh, timeout=TIMEOUT, what="every process serving the publish")

            service.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(service.proc.wait(), TIMEOUT) == 0

            async def closed() -> bool:
                return await listeners(db) == 0

            await eventually(closed, timeout=TIMEOUT, what="every listener closed")
            with pytest.raises(aiohttp.ClientConnectionError):
                await answers(service.url, 1)
    finally:
        await db.close()


async def _prefixes(service: Service, n: int) -> set[str]:
    """The request-id prefixes of *n* distinct processes, asking until that many answered."""
    found: set[str] = set()
    for _ in range(200):
        found |= {p for p, _ in await answers(service.url, 4)}
        if len(found) >= n:
            return found
    raise AssertionError(f"only {len(found)} processes answered")


async def test_api_processes_end_with_their_supervisor(tmp_path: Path, populated_dsn: str) -> None:
    """When the supervisor is killed outright (SIGKILL: no chance to stop them), its API
    processes end too rather than keep serving the port unsupervised."""
    async with serve(tmp_path, populated_dsn, workers=2) as service:
        children = service.children()
        assert len(children) == 2
        service.proc.kill()  # not waited for here: that also waits for its stderr to close

        async def all_gone() -> bool:
            return not [pid for pid in children if Path(f"/proc/{pid}").exists()]

        try:
            await eventually(all_gone, timeout=TIMEOUT, what="the API processes ending")
        finally:
            for pid in children:  # none is left behind, whatever happened
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def test_a_process_that_dies_stops_the_service(tmp_path: Path, populated_dsn: str) -> None:
    """When one API process dies on its own, the others are stopped and the service exits 1
    (for the process manager to restart it), rather than serve on with fewer processes."""
    async with serve(tmp_path, populated_dsn, workers=2) as service:
        first, second = service.children()
        os.kill(first, signal.SIGKILL)
        assert await asyncio.wait_for(service.proc.wait(), TIMEOUT) == 1
        exited = service.events("api_process_exited")
        assert [e["pid"] for e in exited] == [first]
        assert exited[0]["exit_code"] == -signal.SIGKILL
        with pytest.raises(ProcessLookupError):
            os.kill(second, 0)


async def test_warm_answers_skip_the_application(populated_dsn: str) -> None:
    """In front of the app, a warm answer is the cached one (body, headers, 304) with a request
    id and its log line, and never reaches the application's routing."""
    sink = io.BytesIO()
    app = create_app(api_config(populated_dsn))
    app[REQUEST_LOG] = RequestLog("all", sink=sink)
    routed: list[str] = []
    resolve = app.router.resolve

    async def counting(request: web.Request) -> Any:
        routed.append(request.path)
        return await resolve(request)

    app.router.resolve = counting  # type: ignore[method-assign]
    async with running_site(app, "127.0.0.1", 0) as url, aiohttp.ClientSession() as session:
        tool = f"{url}{TRS}/tools/{enc(NESTED)}"
        async with session.get(tool) as r:
            first, headers = await r.read(), r.headers
        assert len(routed) == 1
        counted = _requests_counted()
        async with session.get(tool) as r:
            assert r.status == 200 and await r.read() == first
            assert r.headers["ETag"] == headers["ETag"]
            assert r.headers["X-Request-Id"] != headers["X-Request-Id"]
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        async with session.get(tool, headers={"If-None-Match": headers["ETag"]}) as r:
            assert r.status == 304
        async with session.get(tool, headers={"X-Request-Id": "mine"}) as r:
            assert r.headers["X-Request-Id"] == "mine"
        assert len(routed) == 1, "warm answers never reached the router"
        assert _requests_counted() == counted + 3, "warm answers are counted in the metrics"
        async with session.get(f"{url}{TRS}/toolClasses") as r:
            assert r.status == 200  # not cached yet: routed
        assert len(routed) == 2
    lines = [orjson.loads(line) for line in sink.getvalue().splitlines()]
    assert [(x["status"], x["event"], x["level"]) for x in lines] == [
        (200, "request_finished", "info"),
        (200, "request_finished", "info"),
        (304, "request_finished", "info"),
        (200, "request_finished", "info"),
        (200, "request_finished", "info"),
    ]
    assert lines[3]["request_id"] == "mine"
    assert all(x["path"].endswith(enc(NESTED)) for x in lines[:4])


async def test_sampled_request_log_keeps_errors_and_counts_the_rest() -> None:
    """In ``errors`` mode a warm 200 is counted, not written; an error or a cold answer is
    written; the summary gives the counts by status."""
    sink = io.BytesIO()
    reqlog = RequestLog("errors", sink=sink)
    started = 0.0
    reqlog.finished("a", "GET", "/x", 200, started, warm=True)
    reqlog.finished("b", "GET", "/y", 200, started)
    reqlog.finished("c", "GET", "/z", 404, started, warm=True)
    reqlog.flush()
    written = [orjson.loads(line)["request_id"] for line in sink.getvalue().splitlines()]
    assert written == ["b", "c"]
    assert dict(reqlog.counts) == {200: 2, 404: 1}
    reqlog.summarize()
    assert not reqlog.counts


def _requests_counted() -> float:
    """Every request the metrics have counted in this process."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "trs_aggregator_http_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
    )
