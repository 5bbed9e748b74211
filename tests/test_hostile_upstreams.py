"""Hostile upstreams against real servers: credentials stay on the upstream's origin, nothing is
fetched from where it should not be, and one bad record or crash sinks only itself.

The upstream listens on 127.0.0.1; 127.0.0.2 stands for "another host", and ``localhost`` for a
name that resolves to a private address.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aggregator.config import Config, DatabaseConfig, UpstreamConfig
from aggregator.demo.registry import make_registry_app
from aggregator.harvest.crawl import RunOutcome
from aggregator.harvest.runner import harvest_upstreams, make_session
from tests.hostile import (
    RECORDER,
    TOKEN,
    Handler,
    Recorder,
    body_rewritten,
    ends_with,
    other_host,
    redirect_to,
    with_header,
)
from tests.support import catalogue, cwl_tool

TRS = "/ga4gh/trs/v2"
ENV = {"HOSTILE_TOKEN": TOKEN}


async def registry(aiohttp_server: Any, tools: Sequence[dict[str, Any]], **kw: Any) -> TestServer:
    """A registry on 127.0.0.1 serving *tools*, recording requests (``app[RECORDER]``)."""
    recorder = Recorder()
    app = make_registry_app(catalogue(tools), middlewares=[recorder.middleware()], **kw)
    app[RECORDER] = recorder
    server: TestServer = await aiohttp_server(app)
    return server


def upstream(name: str, server: TestServer, **options: Any) -> UpstreamConfig:
    """A quick upstream config for *server*, with a bearer token from HOSTILE_TOKEN."""
    return UpstreamConfig(
        name=name,
        url=str(server.make_url(TRS)),
        **{"retries": 0, "timeout_s": 5, "token_env": "HOSTILE_TOKEN", **options},
    )


async def harvest(
    pool: asyncpg.Pool[Any], dsn: str, *upstreams: UpstreamConfig
) -> dict[str, RunOutcome]:
    """Harvest *upstreams* together, with the token in the environment."""
    config = Config(database=DatabaseConfig(url=dsn, pool_max=6), upstreams=upstreams)
    async with make_session(config) as session:
        outcomes = await harvest_upstreams(pool, session, config, environ=ENV)
    return {o.upstream: o for o in outcomes}


def errors(outcome: RunOutcome) -> str:
    """A run's error and error samples in one string."""
    return " | ".join([outcome.error or "", *outcome.counts.error_samples])


def bearer() -> str:
    return f"Bearer {TOKEN}"


async def test_token_is_not_sent_where_a_redirect_leads(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """A redirect to another host (allowed by redirect_hosts) is followed without the token."""
    tool = cwl_tool("t")
    primary = {"content": tool["versions"][0]["files"]["CWL"][0]["content"]}
    elsewhere = await aiohttp_server(
        other_host({f"{TRS}/tools/t/versions/1.0/CWL/descriptor": primary}), host="127.0.0.2"
    )
    up = await registry(aiohttp_server, [tool])
    up.app[RECORDER].rules.append(
        (
            ends_with("/t/versions/1.0/CWL/descriptor"),
            redirect_to(f"http://127.0.0.2:{elsewhere.port}"),
        )
    )
    out = await harvest(pool, db_dsn, upstream("up", up, redirect_hosts=("127.0.0.2",)))
    assert out["up"].status == "succeeded", errors(out["up"])
    assert elsewhere.app[RECORDER].seen, "the redirect was not followed"
    assert elsewhere.app[RECORDER].authorizations() == {None}
    assert up.app[RECORDER].authorizations() == {bearer()}


async def test_next_page_on_another_origin_is_refused(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """A listing whose next_page leaves the upstream's origin fails the run, names the page,
    and nothing is requested there; another upstream harvested alongside is not affected."""
    elsewhere = await aiohttp_server(other_host({f"{TRS}/tools": []}), host="127.0.0.2")
    leave = f"http://127.0.0.2:{elsewhere.port}{TRS}/tools?offset=1&limit=1"
    up = await registry(aiohttp_server, [cwl_tool("a"), cwl_tool("b")], page_size=1)
    up.app[RECORDER].rules.append((ends_with("/tools"), with_header("next_page", leave)))
    fine = await registry(aiohttp_server, [cwl_tool("f")])
    out = await harvest(pool, db_dsn, upstream("up", up), upstream("fine", fine))
    assert out["up"].status == "failed"
    assert "leaves the upstream's origin" in errors(out["up"]) and leave in errors(out["up"])
    assert elsewhere.app[RECORDER].seen == []
    assert out["fine"].status == "succeeded"


def with_remote_files(tool: dict[str, Any], urls: Sequence[str]) -> dict[str, Any]:
    """*tool* with one more secondary file per URL (absolute paths, as Yevis trees have)."""
    files = tool["versions"][0]["files"]["CWL"]
    for url in urls:
        files.append({"path": url, "file_type": "SECONDARY_DESCRIPTOR", "content": f"# {url}\n"})
    return tool


async def remote_rows(pool: asyncpg.Pool[Any]) -> dict[str, str | None]:
    """Stored files at absolute URLs: their sha256 (None when not fetched)."""
    rows = await pool.fetch(
        "select url, sha256 from upstream_files where url like 'http://%/lib/%'"
    )
    return {r["url"]: r["sha256"] for r in rows}


@pytest.fixture
async def file_hosts(aiohttp_server: Any) -> tuple[TestServer, TestServer, list[str]]:
    """Two file servers, on 127.0.0.2 and on 127.0.0.1 reached as ``localhost``; the URLs of
    the file each serves."""
    urls: list[str] = []
    servers = []
    for host, name in (("127.0.0.2", "127.0.0.2"), ("127.0.0.1", "localhost")):
        server = await aiohttp_server(other_host({}), host=host)
        url = f"http://{name}:{server.port}/lib/f.cwl"
        urls.append(url)
        servers.append(server)
    for server, url in zip(servers, urls, strict=True):
        server.app[RECORDER].rules.append((ends_with("/lib/f.cwl"), _text(f"# {url}\n".encode())))
    return servers[0], servers[1], urls


def _text(body: bytes) -> Any:
    async def rewrite(request: web.Request, handler: Handler) -> web.StreamResponse:
        return web.Response(body=body, content_type="text/plain")

    return rewrite


async def test_files_on_private_addresses_are_refused(
    aiohttp_server: Any,
    pool: asyncpg.Pool[Any],
    db_dsn: str,
    file_hosts: tuple[TestServer, TestServer, list[str]],
) -> None:
    """Files at another loopback address, or at a name resolving to one, are refused for that
    file alone and never requested; the rest of the tool is published."""
    other, local, urls = file_hosts
    up = await registry(aiohttp_server, [with_remote_files(cwl_tool("t"), urls)])
    out = await harvest(pool, db_dsn, upstream("up", up))
    assert out["up"].status == "partial"
    assert "127.0.0.2 is not a public address" in errors(out["up"])
    assert "localhost resolves to no public address" in errors(out["up"])
    assert other.app[RECORDER].seen == [] and local.app[RECORDER].seen == []
    assert await remote_rows(pool) == dict.fromkeys(urls)
    published = await pool.fetchval(
        "select count(*) from upstream_files where sha256 is not null and url not like '%/lib/%'"
    )
    assert published == 5


async def test_files_on_allowed_hosts_are_fetched_without_credentials(
    aiohttp_server: Any,
    pool: asyncpg.Pool[Any],
    db_dsn: str,
    file_hosts: tuple[TestServer, TestServer, list[str]],
) -> None:
    """With the hosts in file_hosts, files on them are fetched, and never with the token."""
    other, local, urls = file_hosts
    up = await registry(aiohttp_server, [with_remote_files(cwl_tool("t"), urls)])
    out = await harvest(pool, db_dsn, upstream("up", up, file_hosts=("127.0.0.2", "localhost")))
    assert out["up"].status == "succeeded", errors(out["up"])
    assert all(await remote_rows(pool)), await remote_rows(pool)
    assert other.app[RECORDER].authorizations() == {None}
    assert local.app[RECORDER].authorizations() == {None}
    assert up.app[RECORDER].authorizations() == {bearer()}


async def test_policy_refuses_other_schemes_origins_and_private_literals() -> None:
    """The decision function: http(s) only, API requests on the origin, credentials only
    there, private literals only when listed; a name resolving privately is refused at
    resolution."""
    from aggregator.harvest.egress import EgressPolicy, PublicResolver, Refused, RefusedAddress

    policy = EgressPolicy("https://reg.example:8443/ga4gh/trs/v2", file_hosts=("10.1.0.0/16",))
    for url in ("file:///etc/passwd", "gopher://reg.example/", "ftp://x/y", "//x/y"):
        with pytest.raises(Refused):
            policy.decide(url, "file")
    assert policy.decide("https://reg.example:8443/x").credentials
    with pytest.raises(Refused):
        policy.decide("https://reg.example/x")  # another port: another origin
    with pytest.raises(Refused):
        policy.decide("https://user:pw@reg.example:8443/x")
    assert not policy.decide("https://zenodo.org/x", "file").credentials
    # The origin with its default port, written either way; nothing else that starts alike.
    default = EgressPolicy("https://reg.example/ga4gh/trs/v2")
    assert default.decide("https://reg.example/x").credentials
    assert default.decide("https://REG.example:443/x").credentials
    for url in (
        "https://reg.example.evil.test/x",
        "https://reg.example@evil.test/x",
        "https://reg.example:443@evil.test/x",
        "https://reg.example:4430/x",
        "http://reg.example/x",
    ):
        with pytest.raises(Refused):
            default.decide(url)
    for private in (
        "http://169.254.169.254/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://224.0.0.1/",
        "http://192.168.1.1/",
        "http://0.0.0.0/",
    ):
        with pytest.raises(Refused):
            policy.decide(private, "file")
    assert not policy.decide("http://10.1.2.3/x", "file").credentials
    with pytest.raises(RefusedAddress):
        await PublicResolver(policy).resolve("localhost", 80)


def tamper(body: bytes) -> bytes:
    """Make four listed tools unstorable, each in its own way."""
    for tool_id, change in (
        (b"n1", b'"description":"tool \\u0000 n1"'),
        (b"u1", b'"description":"tool \xff u1"'),
        (b"i1", b'"description":"tool i1","x-size":1e400'),
        (b"d1", b'"description":"tool d1","x-deep":' + b"[" * 100 + b"]" * 100),
    ):
        body = body.replace(b'"description":"tool ' + tool_id + b'"', change)
    return body


async def test_bad_records_fail_alone(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """A NUL character, invalid UTF-8, a number out of range and nesting too deep each refuse
    only their own tool, reported by id, as does an answer that cannot be parsed (a header too
    long); the rest of the upstream is published and nothing is counted missing."""
    ids = ["g1", "n1", "u1", "i1", "d1", "h1", "g2"]
    up = await registry(aiohttp_server, [cwl_tool(i) for i in ids], page_size=10)
    up.app[RECORDER].rules.append((ends_with("/tools"), body_rewritten(tamper)))
    up.app[RECORDER].rules.append((ends_with("/h1/versions"), with_header("X-Junk", "j" * 9000)))
    fine = await registry(aiohttp_server, [cwl_tool("f")])
    out = await harvest(pool, db_dsn, upstream("up", up), upstream("fine", fine))
    assert out["up"].status == "partial", errors(out["up"])
    assert out["fine"].status == "succeeded"
    said = errors(out["up"])
    for expected in (
        "'n1': a NUL character",
        "'u1': a string that is not valid UTF-8",
        "'i1': a number out of range",
        "'d1': nesting deeper than 64 levels",
        "tool h1: malformed answer: a header (X-Junk) longer than 8190 bytes",
    ):
        assert expected in said, said
    stored = await pool.fetch(
        "select t.external_id from upstream_tools t join upstreams u on u.id = t.upstream_id "
        "where u.name = 'up' order by 1"
    )
    assert [r["external_id"] for r in stored] == ["g1", "g2"]


async def test_an_unexpected_exception_fails_only_its_own_run(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """Any exception in one upstream's run (here a next_page no URL parser accepts) ends that
    run failed with the error recorded; the other upstream's run publishes."""
    up = await registry(aiohttp_server, [cwl_tool("a"), cwl_tool("b")], page_size=1)
    up.app[RECORDER].rules.append((ends_with("/tools"), with_header("next_page", "http://[x")))
    fine = await registry(aiohttp_server, [cwl_tool("f")])
    out = await harvest(pool, db_dsn, upstream("up", up), upstream("fine", fine))
    assert out["fine"].status == "succeeded"
    assert out["up"].status == "failed" and "ValueError" in (out["up"].error or "")
    row = await pool.fetchrow(
        "select r.status, r.error from harvest_runs r join upstreams u on u.id = r.upstream_id "
        "where u.name = 'up'"
    )
    assert row is not None and row["status"] == "failed" and "ValueError" in row["error"]


def bomb(size: int, *, streamed: bool) -> Any:
    """Answer a FileWrapper of *size* bytes, gzip-compressed to a few KiB."""
    body = gzip.compress(b'{"content":"' + b"#" * size + b'"}', 9)

    async def rewrite(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        if not streamed:
            return web.Response(body=body, headers=headers)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        for i in range(0, len(body), 1024):
            await response.write(body[i : i + 1024])
        await response.write_eof()
        return response

    return rewrite


async def test_compression_bombs_are_cut_at_the_limit(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """max_body_bytes bounds the decompressed size, with and without Content-Length."""
    up = await registry(aiohttp_server, [cwl_tool("a"), cwl_tool("b"), cwl_tool("c")])
    rules = up.app[RECORDER].rules
    rules.append((ends_with("/a/versions/1.0/CWL/descriptor"), bomb(5_000_000, streamed=False)))
    rules.append((ends_with("/b/versions/1.0/CWL/descriptor"), bomb(5_000_000, streamed=True)))
    out = await harvest(pool, db_dsn, upstream("up", up, max_body_bytes=65536))
    said = errors(out["up"])
    assert out["up"].status == "partial", said
    assert said.count("over the limit of 65536") == 2, said
    largest = await pool.fetchval("select max(length(content)) from file_contents")
    assert largest < 65536


async def test_run_errors_quoting_unstorable_text_are_recorded(pool: asyncpg.Pool[Any]) -> None:
    """An error message quoting a NUL character or a lone surrogate from an upstream is stored
    escaped: recording the run never fails on it."""
    from aggregator.db.runs import RunCounts, finish_run, insert_run
    from aggregator.db.upstreams import upsert_upstreams

    counts = RunCounts()
    counts.error("tool 'a\x00b': refused")
    counts.error("path '\udcff.cwl' refused")
    async with pool.acquire() as conn:
        (upstream_id,) = (
            await upsert_upstreams(conn, [UpstreamConfig(name="u", url="https://u.example/")])
        ).values()
        run_id = await insert_run(conn, upstream_id)
        await finish_run(
            conn, run_id, status="failed", counts=counts, listing_complete=False, error="x\x00y"
        )
    row = await pool.fetchrow("select error, error_samples from harvest_runs")
    assert row is not None
    assert row["error"] == "x\\x00y"
    assert row["error_samples"] == ["tool 'a\\x00b': refused", "path '\\udcff.cwl' refused"]


async def test_a_token_missing_from_the_environment_stops_the_run_before_any_request(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """An upstream whose token_env variable this process lacks (set when it was configured,
    gone now) is not harvested without credentials: the run fails saying so, no request
    reaches the registry, and what was published stays live."""
    up = await registry(aiohttp_server, [cwl_tool("private-one"), cwl_tool("private-two")])
    out = await harvest(pool, db_dsn, upstream("up", up))
    assert out["up"].status == "succeeded", errors(out["up"])
    up.app[RECORDER].seen.clear()

    config = Config(
        database=DatabaseConfig(url=db_dsn, pool_max=6), upstreams=(upstream("up", up),)
    )
    async with make_session(config) as session:
        (outcome,) = await harvest_upstreams(pool, session, config, environ={})
    assert outcome.status == "failed"
    assert "HOSTILE_TOKEN" in (outcome.error or "") and "not set" in (outcome.error or "")
    assert up.app[RECORDER].seen == []
    live = await pool.fetch(
        "select external_id from upstream_tools where tombstoned_at is null order by 1"
    )
    assert [r["external_id"] for r in live] == ["private-one", "private-two"]
    run = await pool.fetchrow("select status, error from harvest_runs order by id desc limit 1")
    assert run is not None and run["status"] == "failed" and "HOSTILE_TOKEN" in run["error"]
