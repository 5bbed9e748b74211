"""Harvest from real in-process TRS registries into PostgreSQL and read it back over the API."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aggregator.app import create_app
from aggregator.config import Config
from aggregator.demo.registry import REQUESTS, STATE, make_registry_app
from tests.support import catalogue, caught_up, config_for, cwl_tool, harvest, with_priority

DOCKSTORE_ID = "#workflow/github.com/org/repo"
TRS = "/ga4gh/trs/v2"

Faults = dict[str, int]


def faulty(faults: Faults) -> Any:
    """A registry middleware answering faults[substring] for any path containing substring."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        for needle, status in faults.items():
            if needle in request.raw_path:
                return web.json_response({"code": status, "message": "injected"}, status=status)
        return await handler(request)

    return middleware


def enc(value: str) -> str:
    return quote(value, safe="")


@pytest.fixture
async def api(aiohttp_client: Any) -> Callable[[Config], Awaitable[TestClient[Any, Any]]]:
    async def make(config: Config) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
        return client

    return make


async def test_round_trip_serves_every_tool_version_and_file(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, api: Any
) -> None:
    """Every tool, version and file of the upstream comes back byte for byte from every endpoint."""
    tools = [
        cwl_tool(DOCKSTORE_ID, versions=("1.0", "main")),
        cwl_tool("quay.io/org/tool"),
        cwl_tool("plain"),
    ]
    upstream = await aiohttp_server(make_registry_app(catalogue(tools)))
    config = config_for(db_dsn, {"up": upstream})
    outcome = (await harvest(pool, config))["up"]
    assert outcome.status == "succeeded", outcome.counts.error_samples
    assert outcome.counts.tools_seen == 3 and outcome.counts.versions_seen == 4
    client = await api(config)

    info = await (await client.get(f"{TRS}/service-info")).json()
    assert info["type"] == {"group": "org.ga4gh", "artifact": "trs", "version": "2.0.1"}
    assert [c["name"] for c in await (await client.get(f"{TRS}/toolClasses")).json()] == [
        "Workflow"
    ]
    listed = await (await client.get(f"{TRS}/tools")).json()
    assert sorted(t["id"] for t in listed) == sorted(t["id"] for t in tools)

    for tool in tools:
        tid = enc(tool["id"])
        got = await (await client.get(f"{TRS}/tools/{tid}")).json()
        assert got["id"] == tool["id"]
        assert got["url"] == str(client.make_url(f"{TRS}/tools/{tid}"))
        assert [v["name"] for v in got["versions"]] == [v["name"] for v in tool["versions"]]
        versions = await (await client.get(f"{TRS}/tools/{tid}/versions")).json()
        assert versions == got["versions"]
        for version in tool["versions"]:
            vbase = f"{TRS}/tools/{tid}/versions/{enc(version['id'])}"
            assert (await (await client.get(vbase)).json())["id"] == version["id"]
            files = version["files"]["CWL"]
            primary = files[0]
            wrapper = await (await client.get(f"{vbase}/CWL/descriptor")).json()
            assert wrapper["content"] == primary["content"]
            assert wrapper["checksum"] == [{"checksum": sha(primary["content"]), "type": "sha-256"}]
            plain = await client.get(f"{vbase}/PLAIN_CWL/descriptor")
            assert plain.content_type == "text/plain"
            assert await plain.text() == primary["content"]
            for f in files[1:]:
                for form in (f["path"], enc(f["path"]), "%2F" + enc(f["path"])):
                    r = await client.get(f"{vbase}/CWL/descriptor/{form}")
                    assert r.status == 200, form
                    assert (await r.json())["content"] == f["content"]
            listing = await (await client.get(f"{vbase}/CWL/files")).json()
            expected = {(f["path"], f["file_type"], sha(f["content"])) for f in files}
            expected.add(
                ("Dockerfile", "CONTAINERFILE", sha(version["containerfile"][0]["content"]))
            )
            assert {
                (f["path"], f["file_type"], f["checksum"]["checksum"]) for f in listing
            } == expected
            tests = await (await client.get(f"{vbase}/CWL/tests")).json()
            assert [t["content"] for t in tests] == [files[3]["content"]]
            container = await (await client.get(f"{vbase}/containerfile")).json()
            assert [c["content"] for c in container] == [version["containerfile"][0]["content"]]
            r = await client.get(f"{vbase}/CWL/files", params={"format": "zip"})
            assert r.content_type == "application/zip"
            archive = zipfile.ZipFile(io.BytesIO(await r.read()))
            assert {
                name: hashlib.sha256(archive.read(name)).hexdigest() for name in archive.namelist()
            } == {p: s for p, _, s in expected}


async def test_failed_listing_changes_nothing_clients_see(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, api: Any
) -> None:
    """A run whose listing fails half way publishes nothing, and says why in its run record."""
    faults: Faults = {}
    tools = [cwl_tool(f"t{i:02d}", marker="old") for i in range(6)]
    upstream = await aiohttp_server(
        make_registry_app(catalogue(tools), page_size=2, middlewares=[faulty(faults)])
    )
    config = config_for(db_dsn, {"up": upstream}, page_size=2)
    assert (await harvest(pool, config))["up"].status == "succeeded"
    client = await api(config)
    before = await (await client.get(f"{TRS}/tools")).read()

    upstream.app[STATE].catalogue = catalogue(
        [cwl_tool(f"t{i:02d}", marker="new") for i in range(1, 6)]
    )
    faults["offset=4"] = 503
    outcome = (await harvest(pool, config))["up"]
    assert outcome.status == "failed"
    assert "503" in (outcome.error or "")
    assert await (await client.get(f"{TRS}/tools")).read() == before
    primary = await (await client.get(f"{TRS}/tools/t01/versions/1.0/PLAIN_CWL/descriptor")).text()
    assert "old" in primary
    run = await pool.fetchrow("select * from harvest_runs where id = $1", outcome.run_id)
    assert run["status"] == "failed" and not run["listing_complete"]
    assert "503" in run["error"] and run["finished_at"] is not None
    assert await pool.fetchval("select count(*) from staged_tools") == 0


async def test_tool_whose_files_fail_keeps_its_previous_content(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, api: Any
) -> None:
    """A tool whose files cannot be listed keeps what was published; the others update."""
    faults: Faults = {}
    upstream = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool("a", marker="old"), cwl_tool("b", marker="old")]),
            middlewares=[faulty(faults)],
        )
    )
    config = config_for(db_dsn, {"up": upstream})
    await harvest(pool, config)
    upstream.app[STATE].catalogue = catalogue(
        [cwl_tool("a", marker="new"), cwl_tool("b", marker="new")]
    )
    faults["/tools/b/versions/1.0/CWL/files"] = 500
    outcome = (await harvest(pool, config))["up"]
    assert outcome.status == "partial"
    assert any("tool b" in e for e in outcome.counts.error_samples)
    client = await api(config)
    a = await (await client.get(f"{TRS}/tools/a/versions/1.0/PLAIN_CWL/descriptor")).text()
    b = await (await client.get(f"{TRS}/tools/b/versions/1.0/PLAIN_CWL/descriptor")).text()
    assert "new" in a and "old" in b


async def test_paging_over_more_tools_than_one_page(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, api: Any
) -> None:
    """Dockstore-style page-number paging is followed upstream; our own paging headers walk all."""
    tools = [cwl_tool(f"#workflow/github.com/org/repo{i:02d}") for i in range(23)]
    upstream = await aiohttp_server(
        make_registry_app(catalogue(tools), page_size=5, offset_style="page")
    )
    config = config_for(db_dsn, {"up": upstream}, page_size=5)
    outcome = (await harvest(pool, config))["up"]
    assert outcome.counts.tools_seen == 23
    pages = [r for r in upstream.app[REQUESTS] if r.startswith(f"GET {TRS}/tools?")]
    assert len(pages) == 5 and all(r.endswith("> 200") for r in pages)

    client = await api(config)
    seen: list[str] = []
    url: str | None = str(client.make_url(f"{TRS}/tools?limit=10"))
    while url is not None:
        r = await client.session.get(url)
        assert r.headers["current_limit"] == "10"
        assert r.headers["last_page"].endswith("offset=20")
        seen += [t["id"] for t in await r.json()]
        url = r.headers.get("next_page")
    assert seen == sorted(t["id"] for t in tools)
    r = await client.get(f"{TRS}/tools", params={"offset": "100"})
    assert await r.json() == [] and "next_page" not in r.headers


async def test_missing_tool_is_tombstoned_then_removed_after_n_listings(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, api: Any
) -> None:
    """A tool absent from complete listings stays served until the Nth miss, then 404s."""
    upstream = await aiohttp_server(make_registry_app(catalogue([cwl_tool("a"), cwl_tool("b")])))
    config = config_for(db_dsn, {"up": upstream})
    config = Config(
        database=config.database,
        upstreams=config.upstreams,
        harvest=type(config.harvest)(tombstone_after=2),
    )
    await harvest(pool, config)
    client = await api(config)
    upstream.app[STATE].catalogue = catalogue([cwl_tool("a")])
    outcome = (await harvest(pool, config))["up"]
    assert outcome.counts.tools_tombstoned == 1
    await caught_up(client.server.app, pool)
    assert (await client.get(f"{TRS}/tools/b")).status == 200
    await harvest(pool, config)
    await caught_up(client.server.app, pool)
    r = await client.get(f"{TRS}/tools/b")
    assert r.status == 404 and (await r.json())["code"] == 404
    assert (
        await pool.fetchval("select missed_listings from upstream_tools where external_id = 'b'")
        == 2
    )
    upstream.app[STATE].catalogue = catalogue([cwl_tool("a"), cwl_tool("b")])
    await harvest(pool, config)
    await caught_up(client.server.app, pool)
    assert (await client.get(f"{TRS}/tools/b")).status == 200


async def test_colliding_ids_go_to_the_best_priority_and_stay_reachable_qualified(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, api: Any
) -> None:
    """Two upstreams with the same tool id: the plain id names the better-priority one."""
    one = await aiohttp_server(make_registry_app(catalogue([cwl_tool("x", marker="one")])))
    two = await aiohttp_server(make_registry_app(catalogue([cwl_tool("x", marker="two")])))
    config = with_priority(config_for(db_dsn, {"one": one, "two": two}), "two", 1)
    outcomes = await harvest(pool, config)
    assert {o.status for o in outcomes.values()} == {"succeeded"}
    client = await api(config)
    ids = sorted(t["id"] for t in await (await client.get(f"{TRS}/tools")).json())
    assert ids == ["#upstream/one/x", "x"]
    for tool_id, marker in (("x", "two"), ("#upstream/one/x", "one"), ("#upstream/two/x", "two")):
        r = await client.get(f"{TRS}/tools/{enc(tool_id)}/versions/1.0/PLAIN_CWL/descriptor")
        assert marker in await r.text(), tool_id


@pytest.mark.parametrize(
    ("next_query", "expected"),
    [
        ({"limit": "2"}, "already fetched"),
        ({"limit": "2", "offset": "0"}, "did not advance"),
    ],
)
async def test_next_page_loop_fails_the_run(
    aiohttp_server: Any,
    pool: asyncpg.Pool[Any],
    db_dsn: str,
    next_query: dict[str, str],
    expected: str,
) -> None:
    """An upstream whose next_page leads back to an earlier page fails instead of looping."""

    @web.middleware
    async def loop(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        if request.path.endswith("/tools"):
            response.headers["next_page"] = str(request.url.with_query(next_query))
        return response

    upstream = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool(f"t{i}") for i in range(5)]), page_size=2, middlewares=[loop]
        )
    )
    outcome = (await harvest(pool, config_for(db_dsn, {"up": upstream}, page_size=2)))["up"]
    assert outcome.status == "failed"
    assert expected in (outcome.error or "")
    assert await pool.fetchval("select count(*) from upstream_tools") == 0


async def test_one_upstream_failing_does_not_affect_another(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """A dead upstream fails its own run; the healthy one publishes."""
    good = await aiohttp_server(make_registry_app(catalogue([cwl_tool("g")])))
    bad = await aiohttp_server(
        make_registry_app(catalogue([cwl_tool("b")]), middlewares=[faulty({"/tools": 500})])
    )
    outcomes = await harvest(pool, config_for(db_dsn, {"good": good, "bad": bad}))
    assert outcomes["good"].status == "succeeded"
    assert outcomes["bad"].status == "failed"
    assert await pool.fetchval("select array_agg(id) from catalogue_tools") == ["g"]


async def test_api_errors_are_trs_error_json(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, api: Any
) -> None:
    """Bad parameters, unknown ids, types and routes answer {"code", "message"} JSON."""
    upstream = await aiohttp_server(make_registry_app(catalogue([cwl_tool("a")])))
    config = config_for(db_dsn, {"up": upstream})
    await harvest(pool, config)
    client = await api(config)
    cases = [
        (f"{TRS}/tools?limit=0", 400),
        (f"{TRS}/tools?limit=abc", 400),
        (f"{TRS}/tools?offset=-1", 400),
        (f"{TRS}/tools/nope", 404),
        (f"{TRS}/tools/a/versions/9.9", 404),
        (f"{TRS}/tools/a/versions/1.0/COBOL/files", 404),
        (f"{TRS}/tools/a/versions/1.0/CWL/descriptor/nope.cwl", 404),
        (f"{TRS}/tools/a/versions/1.0/CWL/files?format=tar", 400),
        ("/elsewhere", 404),
    ]
    for path, status in cases:
        r = await client.get(path)
        assert r.status == status, path
        assert r.content_type == "application/json", path
        body = await r.json()
        assert body["code"] == status and body["message"], path
    r = await client.post(f"{TRS}/tools")
    assert r.status == 405 and (await r.json())["code"] == 405
    r = await client.head(f"{TRS}/tools/a")
    assert r.status == 200


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
