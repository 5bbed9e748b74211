"""Hostile clients: bad bytes in paths and queries answer 400 TRS JSON, every answer says
nosniff, index-mode redirects stay on the upstream's origin, and no secret is ever shown."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from aggregator.app import create_app
from aggregator.config import Config, DatabaseConfig, UpstreamConfig
from aggregator.demo.registry import make_registry_app
from tests.support import catalogue, cwl_tool, harvest

TRS = "/ga4gh/trs/v2"
V = f"{TRS}/tools/t/versions/1.0"


@pytest.fixture
async def api(
    db_dsn: str, pool: asyncpg.Pool[Any], aiohttp_server: Any, aiohttp_client: Any
) -> TestClient[Any, Any]:
    """The API over two harvested upstreams: ``mirror`` (tool t) and ``idx`` in index mode
    (tool x)."""
    mirror = await aiohttp_server(make_registry_app(catalogue([cwl_tool("t")])))
    idx = await aiohttp_server(make_registry_app(catalogue([cwl_tool("x")])))
    config = Config(
        database=DatabaseConfig(url=db_dsn),
        upstreams=(
            UpstreamConfig(name="mirror", url=str(mirror.make_url(TRS)), timeout_s=5),
            UpstreamConfig(name="idx", url=str(idx.make_url(TRS)), mode="index", timeout_s=5),
        ),
    )
    outcomes = await harvest(pool, config)
    assert {o.status for o in outcomes.values()} == {"succeeded"}
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    return client


async def get(client: TestClient[Any, Any], raw: str, **kw: Any) -> tuple[int, Any, bytes]:
    """GET *raw* exactly as written (percent-escapes sent as they are)."""
    url = URL(str(client.make_url("/")).rstrip("/") + raw, encoded=True)
    async with client.session.get(url, allow_redirects=False, **kw) as r:
        return r.status, r.headers, await r.read()


BAD = [
    f"{TRS}/tools/%00",
    f"{TRS}/tools/t%00x/versions",
    f"{TRS}/tools?name=%00",
    f"{TRS}/tools?alias=a%00b",
    f"{TRS}/tools/%FF",
    f"{TRS}/tools/t/versions/%C3%28",
    f"{TRS}/tools?organization=%ED%A0%80",
    f"{V}/CWL/descriptor/%00.cwl",
    f"{V}/CWL/descriptor/a%FF.cwl",
    f"{TRS}/tools?offset=99999999999999999999",
    f"{TRS}/tools?offset=9223372036854775808",
    "/aggregator/v1/upstreams/mirror/runs?before=99999999999999999999",
    "/aggregator/v1/upstreams/mirror/runs?before=9223372036854775808",
    "/aggregator/v1/upstreams/%00",
    "/aggregator/v1/tools/%00/provenance",
    "/strict-2.0.0/ga4gh/trs/v2/tools?description=%FE",
]


async def test_bad_bytes_and_out_of_range_integers_answer_400(
    api: TestClient[Any, Any],
) -> None:
    """NUL bytes, invalid UTF-8 and integers out of range anywhere in a path or query are a
    400 TRS Error, never a 500."""
    for raw in BAD:
        status, headers, body = await get(api, raw)
        assert status == 400, (raw, status, body)
        assert headers["Content-Type"].startswith("application/json"), raw
        error = orjson.loads(body)
        assert error["code"] == 400 and error["message"], raw
    # The API still answers normally afterwards.
    status, _, _ = await get(api, f"{TRS}/tools/t")
    assert status == 200


async def test_raw_bytes_in_the_request_line_answer_400(api: TestClient[Any, Any]) -> None:
    """Bytes that are not UTF-8, sent raw rather than percent-encoded, are a 400 too: aiohttp's
    HTTP parser refuses them before any application code runs (the service's own runner words
    that answer in TRS JSON: test_wire)."""
    assert api.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
    writer.write(b"GET " + TRS.encode() + b"/tools/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.split(b" ", 2)[1] == b"400", head


async def test_every_answer_says_nosniff(api: TestClient[Any, Any]) -> None:
    """200 (rendered and cached), 304, 307, 400, 404, 405 and preflights all carry
    X-Content-Type-Options: nosniff."""
    # The second comes from the response cache.
    answers = [await get(api, f"{TRS}/tools") for _ in range(2)]
    etag = answers[0][1]["ETag"]
    answers.append(await get(api, f"{TRS}/tools", headers={"If-None-Match": etag}))
    answers.append(await get(api, f"{TRS}/tools/x/versions/1.0/CWL/descriptor"))
    answers.append(await get(api, f"{TRS}/tools?offset=-1"))
    answers.append(await get(api, f"{TRS}/tools/nope"))
    answers.append(await get(api, "/aggregator/v1/upstreams"))
    answers.append(await get(api, f"{TRS}/service-info"))
    async with api.session.post(api.make_url(f"{TRS}/tools")) as r:
        answers.append((r.status, r.headers, b""))
    async with api.session.options(
        api.make_url(f"{TRS}/tools"), headers={"Access-Control-Request-Method": "GET"}
    ) as r:
        answers.append((r.status, r.headers, b""))
    assert sorted({a[0] for a in answers}) == [200, 204, 304, 307, 400, 404, 405]
    for status, headers, _ in answers:
        assert headers.get("X-Content-Type-Options") == "nosniff", status


async def test_index_mode_redirects_stay_on_the_upstream_origin(
    api: TestClient[Any, Any],
) -> None:
    """A crafted query cannot inject headers or send the redirect elsewhere: the Location is
    the upstream's own URL with the query as the client sent it."""
    base = f"{TRS}/tools/x/versions/1.0/CWL"
    upstream = (await (await api.get(f"{TRS}/tools/x")).json())["sources"][0]["upstream_url"]
    for tail in (
        "/descriptor?x=%0D%0ASet-Cookie:%20a=b",
        "/descriptor/..%2F..%2F..%2Fevil?y=1",
        "/files?format=zip&u=//evil.example/",
        "/descriptor/%2F%2Fevil.example%2Fx",
    ):
        status, headers, body = await get(api, base + tail)
        assert status == 307, (tail, status, body)
        location = headers["Location"]
        assert location.startswith(upstream.rsplit("/tools/", 1)[0] + "/tools/x/"), location
        assert "Set-Cookie" not in headers
        assert "\r" not in location and "\n" not in location


async def test_no_secret_is_shown(api: TestClient[Any, Any], pool: asyncpg.Pool[Any]) -> None:
    """URL user-info kept in the database from before (or quoted in run errors) is masked in
    /service-info, /aggregator/v1/upstreams and run error samples."""
    await pool.execute(
        "update upstreams set url = replace(url, 'http://', 'http://bob:hunter2@') "
        "where name = 'mirror'"
    )
    await pool.execute(
        "update harvest_runs set error = 'HTTP 500 from https://amy:pa55word@x.example/t', "
        """error_samples = '["next_page https://amy:pa55word@x.example/p refused"]'"""
    )
    for path in (
        f"{TRS}/service-info",
        "/aggregator/v1/upstreams",
        "/aggregator/v1/upstreams/mirror",
        "/aggregator/v1/upstreams/mirror/runs",
    ):
        status, _, body = await get(api, path)
        assert status == 200, path
        assert b"hunter2" not in body and b"pa55word" not in body, (path, body)
        assert b"***@" in body, path
