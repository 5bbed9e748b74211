"""The change feed against real harvests: every kind of change, replay from the start equals
the catalogue (property-tested over random harvest sequences), event streams that follow
publishes with heartbeats and Last-Event-ID, and 410 past retention."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any, Self

import aiohttp
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.app import create_app
from aggregator.config import ChangesConfig, Config, HarvestConfig
from aggregator.db import changes as db_changes
from aggregator.db.pool import create_pool
from aggregator.demo.registry import STATE, make_registry_app
from tests.conftest import database_copy, run_sync
from tests.support import catalogue, config_for, cwl_tool, harvest, with_priority

FEED = "/aggregator/v1/changes"


def replay(state: dict[str, str], changes: Sequence[dict[str, Any]]) -> None:
    """Apply feed entries to *state* (tool id -> digest) the way a mirror would."""
    for c in changes:
        if c["kind"] in ("removed", "merged", "split"):
            state.pop(c["id"], None)
        if c["kind"] == "id_changed":
            state.pop(c["previous_id"], None)
        if c["kind"] in ("added", "changed", "id_changed"):
            state[c["id"]] = c["digest"]


class Registries:
    """Two in-process TRS registries, "a" (on 127.0.0.1) and "b" (on 127.0.0.2)."""

    def __init__(self) -> None:
        self.apps = {"a": make_registry_app(catalogue([])), "b": make_registry_app(catalogue([]))}
        self.servers = {
            "a": TestServer(self.apps["a"], host="127.0.0.1"),
            "b": TestServer(self.apps["b"], host="127.0.0.2"),
        }

    async def __aenter__(self) -> Self:
        for s in self.servers.values():
            await s.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for s in self.servers.values():
            await s.close()

    def publish(self, name: str, tools: Sequence[dict[str, Any]]) -> None:
        """Serve *tools* from registry *name* from now on."""
        self.apps[name][STATE].catalogue = catalogue(tools)

    def config(self, dsn: str, **changes: Any) -> Config:
        """A config harvesting both registries into *dsn* ("a" first in priority)."""
        config = config_for(dsn, self.servers)
        config = with_priority(config, "a", 1)
        return dataclasses.replace(
            config,
            harvest=HarvestConfig(tombstone_after=1, revalidate_after="0s"),
            changes=ChangesConfig(**changes),
        )


#: A UUID alias two upstreams give one tool: strong evidence that they are the same tool.
SHARED = "6f1c2a9e-3b7d-4e21-9a55-0c8d1f2e3a4b"


async def feed(session: aiohttp.ClientSession, origin: str, since: str = "0") -> dict[str, Any]:
    """Every change after *since*, following pages."""
    out: dict[str, Any] = {"changes": []}
    while True:
        async with session.get(f"{origin}{FEED}", params={"since": since, "limit": "3"}) as r:
            body = await r.json()
            assert r.status == 200, body
        out["changes"] += body["changes"]
        out["aggregator"] = body["aggregator"]
        since = body["cursor"]
        if not body["more"]:
            out["cursor"] = since
            return out


async def test_every_kind_of_change(db_dsn: str) -> None:
    async with Registries() as regs, aiohttp.ClientSession() as session:
        config = regs.config(db_dsn)
        pool = await create_pool(db_dsn)
        server = TestServer(create_app(config), host="127.0.0.1")
        await server.start_server()
        origin = str(server.make_url("")).rstrip("/")
        state: dict[str, str] = {}
        cursor = "0"

        async def step() -> list[dict[str, Any]]:
            nonlocal cursor
            outcomes = await harvest(pool, config)
            assert all(o.status == "succeeded" for o in outcomes.values()), outcomes
            got = await feed(session, origin, cursor)
            cursor = got["cursor"]
            replay(state, got["changes"])
            async with pool.acquire() as conn:
                assert state == await db_changes.snapshot_digests(conn)
            return [
                {k: v for k, v in c.items() if k in ("kind", "id", "parts", "into", "previous_id")}
                for c in got["changes"]
            ]

        try:
            regs.publish("a", [cwl_tool("t1", aliases=[SHARED]), cwl_tool("t2")])
            regs.publish("b", [cwl_tool("u1", marker="b")])
            assert sorted(await step(), key=lambda c: c["id"]) == [
                {"kind": "added", "id": "t1"},
                {"kind": "added", "id": "t2"},
                {"kind": "added", "id": "u1"},
            ]
            # Nothing changed upstream: nothing in the feed.
            assert await step() == []
            # A description, and a file's content.
            t1 = cwl_tool("t1", aliases=[SHARED])
            t1["description"] = "now described"
            regs.publish("a", [t1, cwl_tool("t2", marker="new")])
            assert sorted(await step(), key=lambda c: c["id"]) == [
                {"kind": "changed", "id": "t1", "parts": ["metadata"]},
                {"kind": "changed", "id": "t2", "parts": ["files"]},
            ]
            # b's tool takes t1's UUID alias (strong evidence): merged into t1.
            regs.publish("b", [cwl_tool("u1", marker="b", aliases=[SHARED])])
            changes = await step()
            assert {"kind": "merged", "id": "u1", "into": "t1"} in changes
            assert any(c["kind"] == "changed" and c["id"] == "t1" for c in changes)
            assert "sources" in next(c for c in changes if c["id"] == "t1")["parts"]
            # ...and lets go of it: t1 splits into t1 and u1.
            regs.publish("b", [cwl_tool("u1", marker="b")])
            changes = await step()
            assert {"kind": "split", "id": "t1", "into": ["t1", "u1"]} in changes
            assert {"kind": "added", "id": "u1"} in changes
            # b (first in priority now) publishes its own "t2": a's tool is renamed.
            regs.publish("b", [cwl_tool("u1", marker="b"), cwl_tool("t2", marker="bb")])
            config = with_priority(config, "b", 0)
            changes = await step()
            assert {"kind": "id_changed", "id": "#upstream/a/t2", "previous_id": "t2"} in changes
            # a drops t1 (tombstone_after = 1): removed.
            regs.publish("a", [cwl_tool("t2", marker="new")])
            changes = await step()
            assert changes == [{"kind": "removed", "id": "t1"}]
            # Reading from the start gives the catalogue too.
            fresh: dict[str, str] = {}
            replay(fresh, (await feed(session, origin))["changes"])
            assert fresh == state
            async with pool.acquire() as conn:
                ids = {r["id"] for r in await conn.fetch("select id from catalogue_tools")}
            assert set(fresh) == ids == {"t2", "#upstream/a/t2", "u1"}
        finally:
            await server.close()
            await pool.close()


TOOL_NAMES = ("t1", "t2", "t3")
#: Aliases that are evidence a merge accepts on their own (plain words are not).
UUIDS = ("0c5a4a0e-7f0c-4d3a-9d4e-1b2c3d4e5f61", "9e8d7c6b-5a49-4382-b1c0-d9e8f7a6b5c4")
upstream_state = st.dictionaries(
    st.sampled_from(TOOL_NAMES),
    st.tuples(st.sampled_from(("", "x")), st.sampled_from((None, *UUIDS))),
    max_size=3,
)
harvest_sequence = st.lists(
    st.tuples(upstream_state, upstream_state, st.booleans()), min_size=1, max_size=4
)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=harvest_sequence)
def test_replaying_the_feed_gives_the_catalogue(
    pg_admin_dsn: str, template_db: str, steps: list[Any]
) -> None:
    """Random harvest sequences over two upstreams sharing tool ids (renames), aliases
    (merges and splits), content changes and disappearances (removals)."""

    def tools(spec: dict[str, tuple[str, str | None]], tag: str) -> list[dict[str, Any]]:
        return [
            cwl_tool(name, marker=tag + marker, aliases=[alias] if alias else [])
            for name, (marker, alias) in sorted(spec.items())
        ]

    async def run() -> None:
        async with (
            database_copy(pg_admin_dsn, template_db) as dsn,
            Registries() as regs,
            aiohttp.ClientSession() as session,
        ):
            pool = await create_pool(dsn)
            server = TestServer(create_app(regs.config(dsn)), host="127.0.0.1")
            await server.start_server()
            origin = str(server.make_url("")).rstrip("/")
            try:
                state: dict[str, str] = {}
                cursor = "0"
                for a, b, b_first in steps:
                    regs.publish("a", tools(a, "a"))
                    regs.publish("b", tools(b, "b"))
                    config = regs.config(dsn)
                    if b_first:
                        config = with_priority(config, "b", 0)
                    await harvest(pool, config)
                    got = await feed(session, origin, cursor)
                    cursor = got["cursor"]
                    replay(state, got["changes"])
                    async with pool.acquire() as conn:
                        assert state == await db_changes.snapshot_digests(conn)
                        ids = {r["id"] for r in await conn.fetch("select id from catalogue_tools")}
                    assert set(state) == ids
                fresh: dict[str, str] = {}
                replay(fresh, (await feed(session, origin))["changes"])
                assert fresh == state
            finally:
                await server.close()
                await pool.close()

    run_sync(run())


async def read_events(
    response: aiohttp.ClientResponse, count: int, *, timeout: float = 60
) -> list[dict[str, str]]:
    """The next *count* events (comments are returned as {"comment": ...})."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}

    async def go() -> None:
        nonlocal current
        while len(events) < count:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith(":"):
                events.append({"comment": line[1:].strip()})
            elif line == "":
                if current:
                    events.append(current)
                    current = {}
            else:
                key, _, value = line.partition(": ")
                current[key] = value

    await asyncio.wait_for(go(), timeout)
    return events


async def next_changes(response: aiohttp.ClientResponse, count: int) -> list[dict[str, str]]:
    """The next *count* change events, skipping comments and the retry line."""
    out: list[dict[str, str]] = []
    while len(out) < count:
        out += [e for e in await read_events(response, 1) if "event" in e]
    return out


async def test_event_stream_follows_publishes(db_dsn: str) -> None:
    async with Registries() as regs, aiohttp.ClientSession() as session:
        config = regs.config(db_dsn, heartbeat="0.2s")
        pool = await create_pool(db_dsn)
        server = TestServer(create_app(config), host="127.0.0.1")
        await server.start_server()
        url = server.make_url(FEED)
        try:
            regs.publish("a", [cwl_tool("t1"), cwl_tool("t2")])
            await harvest(pool, config)
            stream = await session.get(url, headers={"Accept": "text/event-stream"})
            assert stream.status == 200
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            first = await next_changes(stream, 2)
            assert [(e["event"], e["id"]) for e in first] == [("added", "1"), ("added", "2")]
            # Idle: heartbeats.
            beats = await read_events(stream, 2)
            assert all(e.get("comment") == "heartbeat" for e in beats)
            # A publish arrives on the open stream.
            regs.publish("a", [cwl_tool("t1", marker="x"), cwl_tool("t2")])
            await harvest(pool, config)
            (event,) = await next_changes(stream, 1)
            assert event["event"] == "changed" and event["id"] == "3"
            assert '"id":"t1"' in event["data"]
            stream.close()
            # Resuming after the first change gives the rest.
            resumed = await session.get(
                url, headers={"Accept": "text/event-stream", "Last-Event-ID": "1"}
            )
            events = await next_changes(resumed, 2)
            assert [e["id"] for e in events] == ["2", "3"]
            resumed.close()
        finally:
            await server.close()
            await pool.close()


async def test_cursor_past_retention_answers_410(db_dsn: str) -> None:
    async with Registries() as regs, aiohttp.ClientSession() as session:
        config = regs.config(db_dsn, retention="1d")
        pool = await create_pool(db_dsn)
        server = TestServer(create_app(config), host="127.0.0.1")
        await server.start_server()
        try:
            regs.publish("a", [cwl_tool("t1"), cwl_tool("t2")])
            await harvest(pool, config)
            regs.publish("a", [cwl_tool("t1", marker="y"), cwl_tool("t2")])
            await harvest(pool, config)
            async with pool.acquire() as conn:
                await conn.execute(
                    "update catalogue_changes set at = at - interval '2 days' where seq <= 2"
                )
            for since in ("0", "1"):
                async with session.get(server.make_url(FEED), params={"since": since}) as r:
                    body = await r.json()
                    assert r.status == 410, body
                    assert body["code"] == 410 and body["cursor"] == "3"
                    assert body["resync"].endswith("/ga4gh/trs/v2/tools")
            async with session.get(server.make_url(FEED), params={"since": "2"}) as r:
                body = await r.json()
                assert r.status == 200
                assert [c["cursor"] for c in body["changes"]] == ["3"]
            # The API pruned what passed retention; pruned changes stay gone for old cursors.
            async with pool.acquire() as conn:
                assert await conn.fetchval("select min(seq) from catalogue_changes") == 3
                assert await conn.fetchval("select through from catalogue_changes_pruned") == 2
                assert await db_changes.prune(conn, 86400) == 0
            async with session.get(server.make_url(FEED), params={"since": "1"}) as r:
                assert r.status == 410
            # A cursor from another feed (ahead of this one), and nonsense.
            async with session.get(server.make_url(FEED), params={"since": "99"}) as r:
                assert r.status == 410
            for bad in ({"since": "x"}, {"since": "-1"}, {"limit": "0"}):
                async with session.get(server.make_url(FEED), params=bad) as r:
                    assert r.status == 400
                    assert (await r.json())["code"] == 400
        finally:
            await server.close()
            await pool.close()
