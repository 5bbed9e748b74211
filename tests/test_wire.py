"""Warm answers written on the wire (``api.fastpath.WireHandler``), spoken to in raw HTTP/1.1:
the same bytes as aiohttp's path, in order when pipelined, and aiohttp's own handling of
anything the wire path does not take."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from aggregator.api import fastpath
from aggregator.api.reqlog import REQUEST_LOG, RequestLog
from aggregator.app import create_app
from aggregator.service import running_site
from tests.populated import BWA, NESTED, TRS, api_config, enc

TIMEOUT = 30.0


@dataclass
class Reply:
    """One response as read off the connection."""

    status: int
    headers: dict[str, str]
    body: bytes


class Conn:
    """One keep-alive connection speaking raw HTTP/1.1."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        """Write *data* as it is."""
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> Reply:
        """Read the next response (its body by Content-Length)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                assert name.lower() not in headers, f"{name} sent twice"
                headers[name.lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT)
        return Reply(status, headers, body)

    async def closed(self) -> bool:
        """Whether the server closes the connection (nothing more comes)."""
        return await asyncio.wait_for(self.reader.read(), TIMEOUT) == b""


def get(host: str, path: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *extra, "", ""]
    return "\r\n".join(lines).encode()


@dataclass
class Site:
    """The API served with the wire path, and what it has logged and answered in front."""

    url: str
    host: str
    log: io.BytesIO
    front_answers: list[int]
    conns: list[Conn]

    async def connect(self) -> Conn:
        """A new connection, closed when the test ends."""
        host, port = self.host.split(":")
        conn = Conn(*await asyncio.open_connection(host, int(port)))
        self.conns.append(conn)
        return conn

    def logged(self) -> list[dict[str, Any]]:
        """The request log's lines so far."""
        return [orjson.loads(line) for line in self.log.getvalue().splitlines()]


@pytest.fixture
async def site(populated_dsn: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Site]:
    app = create_app(api_config(populated_dsn))
    sink = io.BytesIO()
    app[REQUEST_LOG] = RequestLog("all", sink=sink)
    front_answers: list[int] = []
    respond = fastpath.respond

    def counting(request: Any, entry: Any) -> Any:
        response = respond(request, entry)
        if response is not None:
            front_answers.append(response.status)
        return response

    monkeypatch.setattr(fastpath, "respond", counting)  # counts the answers made in front
    async with running_site(app, "127.0.0.1", 0) as url:
        site = Site(url, url.removeprefix("http://"), sink, front_answers, [])
        yield site
        for conn in site.conns:
            conn.writer.close()
            with contextlib.suppress(ConnectionError):
                await conn.writer.wait_closed()


def _without_per_request(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in ("date", "x-request-id")}


async def test_a_warm_answer_on_the_wire_is_the_one_aiohttp_sends(site: Site) -> None:
    conn = await site.connect()
    path = f"{TRS}/tools/{enc(NESTED)}"
    await conn.send(get(site.host, path))
    first = await conn.reply()  # rendered by the application
    assert first.status == 200
    await conn.send(get(site.host, path))
    warm = await conn.reply()
    assert (warm.status, warm.body) == (first.status, first.body)
    assert _without_per_request(warm.headers) == _without_per_request(first.headers)
    assert warm.headers["x-request-id"] != first.headers["x-request-id"]
    assert warm.headers["x-content-type-options"] == "nosniff"
    assert warm.headers["date"].endswith(" GMT")
    assert not site.front_answers, "answered on the wire, not by the handler in front"
    # the request log has its line and keeps a request id the client gave
    await conn.send(get(site.host, path, "X-Request-Id: client-7"))
    mine = await conn.reply()
    assert mine.headers["x-request-id"] == "client-7"
    await asyncio.sleep(0.3)  # the log is flushed in batches
    logged = site.logged()
    assert [(x["request_id"], x["status"]) for x in logged[-2:]] == [
        (warm.headers["x-request-id"], 200),
        ("client-7", 200),
    ]
    assert logged[-1]["path"] == path


async def test_pipelined_requests_are_answered_in_order(site: Site) -> None:
    conn = await site.connect()
    warm_path, other = f"{TRS}/tools/{enc(NESTED)}", f"{TRS}/tools/{enc(BWA)}"
    await conn.send(get(site.host, warm_path))
    expected = (await conn.reply()).body
    # a warm answer and a miss in one write: nothing is answered out of order
    await conn.send(get(site.host, warm_path) + get(site.host, other) + get(site.host, warm_path))
    replies = [await conn.reply() for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 200]
    assert replies[0].body == expected == replies[2].body
    assert orjson.loads(replies[1].body)["id"] == BWA
    answered_in_front = len(site.front_answers)
    # both warm now: two answers from one write, both on the wire
    await conn.send(get(site.host, warm_path) + get(site.host, other))
    a, b = await conn.reply(), await conn.reply()
    assert (a.body, orjson.loads(b.body)["id"]) == (expected, BWA)
    assert len(site.front_answers) == answered_in_front


async def test_what_the_wire_does_not_take_goes_to_aiohttp(site: Site) -> None:
    path = f"{TRS}/tools/{enc(NESTED)}"
    conn = await site.connect()
    await conn.send(get(site.host, path))
    etag = (await conn.reply()).headers["etag"]
    # a revalidation: 304 from the handler in front
    await conn.send(get(site.host, path, f"If-None-Match: {etag}"))
    assert (await conn.reply()).status == 304
    assert len(site.front_answers) == 1
    # a request split over two writes is answered once it is whole, by aiohttp
    data = get(site.host, path)
    await conn.send(data[:20])
    await asyncio.sleep(0.05)
    await conn.send(data[20:])
    assert (await conn.reply()).status == 200
    assert len(site.front_answers) == 2
    # a body on a GET: aiohttp reads it
    await conn.send(get(site.host, path, "Content-Length: 4")[:-2] + b"\r\nabcd")
    assert (await conn.reply()).status == 200
    # a header aiohttp refuses is refused, not answered from the cache
    bad = await site.connect()
    await bad.send(get(site.host, path, "Bad Header: x"))
    assert (await bad.reply()).status == 400
    # a client asking to close gets its answer, then the connection closes
    closing = await site.connect()
    await closing.send(get(site.host, path, "Connection: close"))
    assert (await closing.reply()).status == 200
    assert await closing.closed()


async def test_gzip_variant_on_the_wire(site: Site) -> None:
    conn = await site.connect()
    path = f"{TRS}/tools?limit=50"
    await conn.send(get(site.host, path))
    plain = await conn.reply()
    assert len(plain.body) >= 1024, "the answer must be large enough to be compressed"
    await conn.send(get(site.host, path, "Accept-Encoding: gzip"))
    made = await conn.reply()  # the application makes the gzip variant
    await conn.send(get(site.host, path, "Accept-Encoding: gzip, deflate"))
    warm = await conn.reply()
    assert warm.headers["content-encoding"] == "gzip" == made.headers["content-encoding"]
    assert gzip.decompress(warm.body) == plain.body
    assert warm.headers["etag"] == made.headers["etag"] != plain.headers["etag"]
    assert len(site.front_answers) == 0


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"GET " + TRS.encode() + b"/tools/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", id="raw"
        ),
        pytest.param(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", id="long-line"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", id="long-header"
        ),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n", id="bad-name"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", id="tls-hello"),
    ],
)
async def test_requests_the_parser_refuses_get_trs_json(site: Site, request_bytes: bytes) -> None:
    """What aiohttp's HTTP parser refuses before any application code runs is answered 400 in
    TRS Error JSON, and the connection is closed."""
    conn = await site.connect()
    await conn.send(request_bytes)
    reply = await conn.reply()
    assert reply.status == 400, reply
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.headers["x-content-type-options"] == "nosniff"
    error = orjson.loads(reply.body)
    assert error["code"] == 400 and error["message"].startswith("The request cannot be read")
    assert await conn.closed()
    # the service answers the next client as ever
    fresh = await site.connect()
    await fresh.send(get(site.host, f"{TRS}/tools/{enc(NESTED)}"))
    assert (await fresh.reply()).status == 200
