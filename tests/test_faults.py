"""Upstream faults against real in-process registries: each is contained, named, and loses nothing.

Every scenario harvests two upstreams, ``good`` and ``bad``, then changes both and harvests
them again while ``bad`` misbehaves. It then checks that ``good`` published its change, that
clients are still served what they saw from ``bad`` before, that ``bad``'s run record names
the fault, and that none of ``bad``'s records were lost or tombstoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from aggregator.app import create_app
from aggregator.config import Config, DatabaseConfig, HarvestConfig, UpstreamConfig
from aggregator.demo.registry import STATE, make_registry_app
from tests.support import catalogue, cwl_tool, harvest

TRS = "/ga4gh/trs/v2"
BAD_TOOLS = ("b0", "b1", "b2")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Fault = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


@dataclass
class Injector:
    """Faults armed at run time: the first rule whose predicate matches a request answers it."""

    rules: list[tuple[Callable[[web.Request], bool], Fault]] = field(default_factory=list)
    seen: list[tuple[float, str, str]] = field(default_factory=list)

    def middleware(self) -> Any:
        """The registry middleware applying the rules and timing each request."""

        @web.middleware
        async def inject(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.seen.append((time.monotonic(), request.host, request.path_qs))
            for matches, fault in self.rules:
                if matches(request):
                    return await fault(request, handler)
            return await handler(request)

        return inject


def path_is(suffix: str) -> Callable[[web.Request], bool]:
    """Match requests whose (decoded) path ends with *suffix*."""
    return lambda r: r.path.endswith(suffix)


def listing_page(offset: str | None = None) -> Callable[[web.Request], bool]:
    """Match /tools listing requests, or only the one at *offset*."""
    return lambda r: (
        r.path.endswith("/tools") and (offset is None or r.query.get("offset") == offset)
    )


def status(code: int, headers: dict[str, str] | None = None) -> Fault:
    """Answer *code* (TRS Error JSON)."""

    async def fault(request: web.Request, handler: Handler) -> web.StreamResponse:
        return web.json_response(
            {"code": code, "message": "injected"}, status=code, headers=headers
        )

    return fault


def hang(seconds: float) -> Fault:
    """Answer only after *seconds*."""

    async def fault(request: web.Request, handler: Handler) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await handler(request)

    return fault


async def _body(request: web.Request, handler: Handler) -> bytes:
    response = await handler(request)
    assert isinstance(response, web.Response) and response.body is not None
    return bytes(response.body)  # type: ignore[arg-type]


async def reset_mid_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Send the headers and half the body, then reset the connection (RST)."""
    body = await _body(request, handler)
    response = web.StreamResponse(
        headers={"Content-Type": "application/json", "Content-Length": str(len(body))}
    )
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return response


async def malformed(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Cut the JSON short."""
    body = await _body(request, handler)
    return web.Response(body=body[: len(body) // 2], content_type="application/json")


def trickle(bytes_per_tick: int, tick_s: float) -> Fault:
    """Send the body *bytes_per_tick* at a time, one tick apart."""

    async def fault(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await _body(request, handler)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for i in range(0, len(body), bytes_per_tick):
            await response.write(body[i : i + bytes_per_tick])
            await asyncio.sleep(tick_s)
        await response.write_eof()
        return response

    return fault


def chunked_oversize(size: int) -> Fault:
    """Stream *size* bytes without a Content-Length."""

    async def fault(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(size // 1024):
            await response.write(b" " * 1024)
        await response.write_eof()
        return response

    return fault


def next_page_to_first(request_rule: Callable[[web.Request], bool]) -> Fault:
    """Answer normally but point next_page back at the first page."""

    async def fault(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers["next_page"] = str(request.url.with_query({"limit": "2"}))
        return response

    return fault


def redirect_to_host(host: str) -> Fault:
    """Redirect (302) to the same path on *host* (only requests not already there)."""

    async def fault(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.url.host == host:
            return await handler(request)
        raise web.HTTPFound(str(request.url.with_host(host)))

    return fault


def mangle_listing(change: Callable[[list[dict[str, Any]]], None]) -> Fault:
    """Answer the listing page after *change* has been applied to its tools."""

    async def fault(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        assert isinstance(response, web.Response) and response.body is not None
        tools = orjson.loads(response.body)  # type: ignore[arg-type]
        change(tools)
        return web.Response(
            body=orjson.dumps(tools),
            content_type="application/json",
            headers={
                k: v
                for k, v in response.headers.items()
                if k in ("next_page", "last_page", "self_link")
            },
        )

    return fault


def unreadable(tool_ids: dict[str, str]) -> Callable[[list[dict[str, Any]]], None]:
    """Drop the id of listed tools mapped to "id", make versions a string for "versions"."""

    def change(tools: list[dict[str, Any]]) -> None:
        for t in tools:
            how = tool_ids.get(t.get("id", ""))
            if how == "id":
                del t["id"]
            elif how == "versions":
                t["versions"] = "1.0"

    return change


async def wrong_checksum(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A FileWrapper whose declared sha-256 is not that of its content."""
    wrapper = orjson.loads(await _body(request, handler))
    wrapper["checksum"] = [
        {"type": "sha-256", "checksum": hashlib.sha256(b"something else").hexdigest()}
    ]
    return web.json_response(body=orjson.dumps(wrapper))


@dataclass
class World:
    """Two registries, their config, and the API over the database they are harvested into."""

    good: TestServer
    bad: TestServer
    injector: Injector
    config: Config
    pool: asyncpg.Pool[Any]
    client: TestClient[Any, Any]

    def with_bad(self, **changes: Any) -> Config:
        """The config with upstream ``bad`` changed."""
        ups = tuple(
            dataclasses.replace(u, **changes) if u.name == "bad" else u
            for u in self.config.upstreams
        )
        return dataclasses.replace(self.config, upstreams=ups)

    async def descriptor(self, tool_id: str) -> str:
        """The primary descriptor clients get for *tool_id* version 1.0."""
        r = await self.client.get(
            f"{TRS}/tools/{quote(tool_id, safe='')}/versions/1.0/PLAIN_CWL/descriptor"
        )
        assert r.status == 200, (tool_id, await r.text())
        return await r.text()

    async def bad_run(self) -> asyncpg.Record:
        """The latest run record of ``bad``."""
        row = await self.pool.fetchrow(
            """select r.* from harvest_runs r join upstreams u on u.id = r.upstream_id
               where u.name = 'bad' order by r.id desc limit 1"""
        )
        assert row is not None
        return row


def upstream(name: str, server: TestServer, **options: Any) -> UpstreamConfig:
    """A fast-retrying upstream config for *server*; timeouts generous enough for a loaded
    machine (the tests of timeouts set their own)."""
    defaults: dict[str, Any] = {
        "retries": 1,
        "backoff_s": 0.01,
        "timeout_s": 10,
        "connect_timeout_s": 5,
        "page_size": 2,
        "max_body_bytes": 8192,
    }
    return UpstreamConfig(name=name, url=str(server.make_url(TRS)), **{**defaults, **options})


@pytest.fixture
async def world(
    db_dsn: str, pool: asyncpg.Pool[Any], aiohttp_server: Any, aiohttp_client: Any
) -> World:
    """Both upstreams harvested once with content marked "old"."""
    injector = Injector()
    good = await aiohttp_server(
        make_registry_app(catalogue([cwl_tool("g0", marker="old")]), page_size=2)
    )
    bad = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool(t, marker="old") for t in BAD_TOOLS]),
            page_size=2,
            middlewares=[injector.middleware()],
        )
    )
    config = Config(
        database=DatabaseConfig(url=db_dsn, pool_max=6),
        harvest=HarvestConfig(tombstone_after=1),
        upstreams=(upstream("good", good), upstream("bad", bad)),
    )
    outcomes = await harvest(pool, config)
    assert {o.status for o in outcomes.values()} == {"succeeded"}
    client = await aiohttp_client(create_app(config))
    w = World(good, bad, injector, config, pool, client)
    for t in BAD_TOOLS:
        assert "old" in await w.descriptor(t)
    return w


async def rerun(
    w: World, config: Config | None = None, *, bad_catalogue: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Change both upstreams to "new" content and harvest them together."""
    w.injector.seen.clear()
    w.good.app[STATE].catalogue = catalogue([cwl_tool("g0", marker="new")])
    w.bad.app[STATE].catalogue = bad_catalogue or catalogue(
        [cwl_tool(t, marker="new") for t in BAD_TOOLS]
    )
    return await harvest(w.pool, config or w.config)


async def check_contained(
    w: World, outcomes: dict[str, Any], *, status: str, fault: str, kept_old: tuple[str, ...]
) -> None:
    """The four properties every fault must keep."""
    assert outcomes["good"].status == "succeeded"
    assert "new" in await w.descriptor("g0"), "the good upstream's run was affected"
    assert outcomes["bad"].status == status, outcomes["bad"].counts.error_samples
    run = await w.bad_run()
    named = " | ".join([run["error"] or "", *run["error_samples"]])
    assert fault in named, named
    for t in BAD_TOOLS:
        expected = "old" if t in kept_old else "new"
        assert expected in await w.descriptor(t), t
    lost = await w.pool.fetch(
        """select t.external_id from upstream_tools t join upstreams u on u.id = t.upstream_id
           where u.name = 'bad' and (t.missed_listings > 0 or t.tombstoned_at is not null)"""
    )
    assert lost == []
    files = await w.pool.fetchval(
        """select count(*) from upstream_files f
           join upstream_versions v on v.id = f.upstream_version_id
           join upstream_tools t on t.id = v.upstream_tool_id
           join upstreams u on u.id = t.upstream_id
           where u.name = 'bad' and f.sha256 is not null"""
    )
    assert files == 5 * len(BAD_TOOLS)


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A TRS base URL on a port whose accept queue is full: connecting to it hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    yield f"http://127.0.0.1:{port}{TRS}"
    for s in [*fillers, listener]:
        s.close()


async def test_connect_timeout(world: World, blackhole: str) -> None:
    """An upstream that no longer accepts connections fails its run on a connect timeout."""
    outcomes = await rerun(world, world.with_bad(url=blackhole, connect_timeout_s=0.5))
    await check_contained(
        world, outcomes, status="failed", fault="connect timeout", kept_old=BAD_TOOLS
    )


async def test_read_timeout(world: World) -> None:
    """A tool whose versions never arrive in time keeps what was published; the others update."""
    world.injector.rules.append((path_is("/tools/b0/versions"), hang(60)))
    outcomes = await rerun(world, world.with_bad(timeout_s=3))
    await check_contained(world, outcomes, status="partial", fault="timeout", kept_old=("b0",))


async def test_connection_reset_mid_body(world: World) -> None:
    """A listing page cut off by a connection reset fails the run and publishes nothing."""
    world.injector.rules.append((listing_page("2"), reset_mid_body))
    outcomes = await rerun(world)
    await check_contained(
        world,
        outcomes,
        status="failed",
        fault="connection broken while reading the body",
        kept_old=BAD_TOOLS,
    )
    pages = [p for _, _, p in world.injector.seen if "offset=2" in p]
    assert len(pages) == 2, "the reset is retried once (retries = 1)"


async def test_server_errors(world: World) -> None:
    """A descriptor answering 503 on every attempt keeps its tool's published content."""
    world.injector.rules.append((path_is("/tools/b0/versions/1.0/CWL/descriptor"), status(503)))
    outcomes = await rerun(world)
    await check_contained(world, outcomes, status="partial", fault="HTTP 503", kept_old=("b0",))


async def test_retry_after_is_honoured(world: World) -> None:
    """A 429 with Retry-After pauses every request to that upstream for that long, then retries."""
    answered: list[bool] = []

    async def once(request: web.Request, handler: Handler) -> web.StreamResponse:
        if answered:
            return await handler(request)
        answered.append(True)
        return await status(429, {"Retry-After": "2"})(request, handler)

    world.injector.rules.append((path_is("/tools/b0/versions"), once))
    outcomes = await rerun(world, world.with_bad(concurrency=2))
    assert outcomes["bad"].status == "succeeded"
    assert "new" in await world.descriptor("b0")
    limited = next(t for t, _, p in world.injector.seen if p.endswith("/tools/b0/versions"))
    # Requests already on their way when the 429 came aside (they may land a little later on a
    # loaded machine), none came during the pause, which starts once the 429 has arrived.
    during = [t - limited for t, _, _ in world.injector.seen if limited + 0.5 < t < limited + 2]
    assert during == [], "requests went on during the pause"
    assert max(t for t, _, _ in world.injector.seen) >= limited + 2


async def test_retry_after_beyond_the_bound_is_not_waited_for(world: World) -> None:
    """A Retry-After longer than max_retry_after_s fails that request at once, not after an hour."""
    world.injector.rules.append(
        (path_is("/tools/b0/versions"), status(429, {"Retry-After": "3600"}))
    )
    started = time.monotonic()
    outcomes = await rerun(world, world.with_bad(max_retry_after_s=2))
    assert time.monotonic() - started < 60, "waited for the Retry-After"
    await check_contained(
        world,
        outcomes,
        status="partial",
        fault="asking to retry after 3600s (Retry-After)",
        kept_old=("b0",),
    )


async def test_malformed_json(world: World) -> None:
    """A listing page that is not JSON fails the run and names the page."""
    world.injector.rules.append((listing_page(), malformed))
    outcomes = await rerun(world)
    await check_contained(
        world, outcomes, status="failed", fault="malformed JSON", kept_old=BAD_TOOLS
    )


async def test_json_of_the_wrong_shape(world: World) -> None:
    """Listing entries without an id or with non-array versions are reported; nothing is
    tombstoned by that listing, and the unreadable tools keep what was published."""
    world.injector.rules.append(
        (listing_page(), mangle_listing(unreadable({"b0": "id", "b1": "versions"})))
    )
    outcomes = await rerun(world)
    await check_contained(
        world, outcomes, status="partial", fault="a tool has no id", kept_old=("b0", "b1")
    )
    run = await world.bad_run()
    assert "'versions' must be an array" in " ".join(run["error_samples"])
    assert not run["listing_complete"]


async def test_pre_release_names_are_read(
    db_dsn: str, pool: asyncpg.Pool[Any], aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """An upstream using the pre-release 2.0.0 names (toolname, immutable, string author) is
    served with their 2.0.1 names."""
    tool = cwl_tool("old-server-tool")
    tool["toolname"] = tool.pop("name")
    tool["author"] = "Ada Lovelace"
    for v in tool["versions"]:
        v["immutable"] = v.pop("is_production")
        del v["author"]
    server = await aiohttp_server(make_registry_app(catalogue([tool])))
    config = Config(
        database=DatabaseConfig(url=db_dsn), upstreams=(upstream("old", server, timeout_s=5),)
    )
    assert (await harvest(pool, config))["old"].status == "succeeded"
    client = await aiohttp_client(create_app(config))
    got = await (await client.get(f"{TRS}/tools/old-server-tool")).json()
    assert got["name"] == "old-server-tool"
    assert got["versions"][0]["is_production"] is True
    assert got["versions"][0]["author"] == ["Ada Lovelace"]


async def test_body_over_the_size_limit(world: World) -> None:
    """A descriptor larger than max_body_bytes is refused; the tool keeps its published one."""
    tools = [cwl_tool(t, marker="new") for t in BAD_TOOLS]
    tools[0]["versions"][0]["files"]["CWL"][0]["content"] += "#" * 9000
    outcomes = await rerun(world, bad_catalogue=catalogue(tools))
    await check_contained(
        world, outcomes, status="partial", fault="over the limit of 8192", kept_old=("b0",)
    )


async def test_chunked_body_over_the_size_limit(world: World) -> None:
    """A listing page streamed without Content-Length is cut off at the limit; the run fails."""
    world.injector.rules.append((listing_page(), chunked_oversize(64 * 1024)))
    outcomes = await rerun(world)
    await check_contained(
        world, outcomes, status="failed", fault="over the limit of 8192 bytes", kept_old=BAD_TOOLS
    )


async def test_trickle_slower_than_the_minimum_rate(world: World) -> None:
    """A body trickling in below min_bytes_per_s is abandoned long before the request timeout."""
    world.injector.rules.append((path_is("/tools/b0/versions"), trickle(20, 0.05)))
    started = time.monotonic()
    outcomes = await rerun(
        world, world.with_bad(timeout_s=120, min_bytes_per_s=2000, min_rate_after_s=0.2)
    )
    assert time.monotonic() - started < 60, "waited for the request timeout"
    await check_contained(
        world, outcomes, status="partial", fault="below the minimum of 2000", kept_old=("b0",)
    )


async def test_next_page_loop(world: World) -> None:
    """A next_page leading back to the first page fails the run instead of looping."""
    world.injector.rules.append((listing_page("2"), next_page_to_first(listing_page())))
    outcomes = await rerun(world)
    await check_contained(
        world, outcomes, status="failed", fault="already fetched", kept_old=BAD_TOOLS
    )


async def test_redirect_to_another_host_is_refused(world: World) -> None:
    """A descriptor redirected to another host is not followed; the tool keeps its content."""
    world.injector.rules.append(
        (path_is("/tools/b0/versions/1.0/CWL/descriptor"), redirect_to_host("localhost"))
    )
    outcomes = await rerun(world)
    await check_contained(
        world, outcomes, status="partial", fault="to another host", kept_old=("b0",)
    )


async def test_redirect_to_an_allowed_host_is_followed(world: World) -> None:
    """With the host in redirect_hosts, the redirect is followed and the content updated."""
    world.injector.rules.append(
        (path_is("/tools/b0/versions/1.0/CWL/descriptor"), redirect_to_host("localhost"))
    )
    outcomes = await rerun(world, world.with_bad(redirect_hosts=("localhost",)))
    assert outcomes["bad"].status == "succeeded", outcomes["bad"].counts.error_samples
    assert "new" in await world.descriptor("b0")
    assert any(host.startswith("localhost") for _, host, _ in world.injector.seen)


async def test_checksum_that_does_not_match(world: World) -> None:
    """Content failing its declared checksum does not replace what was published and verified."""
    world.injector.rules.append((path_is("/tools/b0/versions/1.0/CWL/descriptor"), wrong_checksum))
    outcomes = await rerun(world)
    await check_contained(
        world, outcomes, status="partial", fault="checksum mismatch", kept_old=("b0",)
    )
    status_ = await world.pool.fetchval(
        """select f.checksum_status from upstream_files f
           join upstream_versions v on v.id = f.upstream_version_id
           join upstream_tools t on t.id = v.upstream_tool_id
           where t.external_id = 'b0' and f.file_type = 'PRIMARY_DESCRIPTOR'"""
    )
    assert status_ == "verified"


async def test_first_harvest_stores_mismatching_content_as_mismatch(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """With nothing published before, mismatching content is kept but never marked verified."""
    injector = Injector([(path_is("/CWL/descriptor"), wrong_checksum)])
    server = await aiohttp_server(
        make_registry_app(catalogue([cwl_tool("m")]), middlewares=[injector.middleware()])
    )
    config = Config(
        database=DatabaseConfig(url=db_dsn), upstreams=(upstream("m", server, timeout_s=5),)
    )
    outcome = (await harvest(pool, config))["m"]
    assert outcome.status == "partial"
    assert (
        await pool.fetchval(
            "select checksum_status from upstream_files where file_type = 'PRIMARY_DESCRIPTOR'"
        )
        == "mismatch"
    )


async def test_tool_vanishing_from_a_partial_listing_is_not_tombstoned(world: World) -> None:
    """A tool missing from a listing that had an unreadable entry is not counted as missing;
    the next complete listing tombstones it and the run record counts it."""
    world.injector.rules.append((listing_page(), mangle_listing(unreadable({"b0": "id"}))))
    outcomes = await rerun(
        world,
        bad_catalogue=catalogue(  # b2 vanishes
            [cwl_tool(t, marker="new") for t in BAD_TOOLS[:2]]
        ),
    )
    assert outcomes["bad"].status == "partial"
    assert outcomes["bad"].counts.tools_tombstoned == 0
    assert "new" not in await world.descriptor("b2")
    world.injector.rules.clear()
    outcome = (await harvest(world.pool, world.config))["bad"]
    assert outcome.status == "succeeded" and outcome.counts.tools_tombstoned == 1
    run = await world.bad_run()
    assert run["tools_tombstoned"] == 1 and run["listing_complete"]
    r = await world.client.get(f"{TRS}/tools/b2")
    assert r.status == 404  # tombstone_after = 1 in this world
