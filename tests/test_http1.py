"""The lean HTTP/1.1 client against real servers on loopback that answer byte by byte as each
test scripts them: framing, decompression, limits, broken and hostile answers, keep-alive.

Every test runs on asyncio's own event loop and on uvloop (the harvest's); TLS uses a
certificate made with the openssl command."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import subprocess
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import uvloop

from aggregator.config import UpstreamConfig
from aggregator.errors import InvalidUpstreamData
from aggregator.harvest.client import UpstreamClient
from aggregator.harvest.http1 import (
    Answer,
    CannotConnect,
    Limits,
    MalformedAnswer,
    OriginClient,
    SlowBody,
    default_tls,
)

LIMITS = Limits(timeout_s=10, connect_timeout_s=5, max_body_bytes=65536)
Script = Callable[[asyncio.StreamWriter, int], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    """Run a test's coroutine to the end on the event loop the parameter names."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as r:
            r.run(coro)

    return runner


@dataclass
class Server:
    """A loopback server that reads each request's head and answers it with *script*, called
    with the writer and the request's number (0, 1, …) on its connection; over TLS with the
    *served* context, which the client's *trusted* context verifies."""

    script: Script
    served: ssl.SSLContext | None = None
    trusted: ssl.SSLContext | None = None
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def __aenter__(self) -> OriginClient:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.served)
        port = self.server.sockets[0].getsockname()[1]
        self.client = OriginClient(
            "127.0.0.1",
            port,
            host_header=f"127.0.0.1:{port}",
            headers={"User-Agent": "test-agent"},
            max_idle=4,
            tls=self.trusted,
        )
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        self.client.close()
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                await self.script(writer, n)
                n += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    """An answer with Content-Length and *headers*."""
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def always(data: bytes) -> Script:
    """Answer every request with *data*."""

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(data)
        await writer.drain()

    return script


async def get(client: OriginClient, path: str = "/x", limits: Limits = LIMITS) -> Answer:
    return await client.get(path, {"Accept": "application/json"}, limits, url=f"test:{path}")


def test_answers_reuse_one_connection(run: Any) -> None:
    """Answers with Content-Length come back whole, over one kept connection, with the fixed
    headers sent on every request."""

    async def go() -> None:
        server = Server(always(answer(b'{"a": 1}', 'ETag: "e1"', "X-Two: 1", "X-Two: 2")))
        async with server as client:
            for _ in range(3):
                got = await get(client)
                assert (got.status, got.body) == (200, b'{"a": 1}')
                assert got.headers["etag"] == '"e1"' and got.headers.getall("X-Two") == ["1", "2"]
        assert server.connections == 1 and len(server.requests) == 3
        head = server.requests[0].decode()
        assert head.startswith("GET /x HTTP/1.1\r\n")
        for line in ("Host: 127.0.0.1:", "User-Agent: test-agent", "Accept-Encoding: gzip"):
            assert f"\r\n{line}" in head
        assert "\r\nAccept: application/json\r\n" in head

    run(go())


def test_chunked_body_in_pieces(run: Any) -> None:
    """A chunked body written in several pieces, split inside chunk sizes, is joined."""

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"lo\r\n1")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"0\r\n, chunked world!\r\n0\r\n\r\n")
        await writer.drain()

    async def go() -> None:
        server = Server(script)
        async with server as client:
            assert (await get(client)).body == b"hello, chunked world!"
            assert (await get(client)).body == b"hello, chunked world!"
        assert server.connections == 1

    run(go())


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b, wbits=-zlib.MAX_WBITS)),  # raw, as some send
        ("identity", lambda b: b),
        ("br", lambda b: b),  # not one it reads: the bytes as they came
    ],
)
def test_content_encodings(run: Any, encoding: str, compress: Callable[[bytes], bytes]) -> None:
    """gzip and deflate (with or without zlib's header) are decompressed; others passed on."""
    plain = b"cwlVersion: v1.2\n" * 500

    async def go() -> None:
        async with Server(always(answer(compress(plain), f"Content-Encoding: {encoding}"))) as c:
            assert (await get(c)).body == plain

    run(go())


@pytest.mark.parametrize("chunked", [False, True])
def test_compression_bomb_is_cut_at_the_limit(run: Any, chunked: bool) -> None:
    """A gzip body that inflates past max_body_bytes is refused, with or without a length."""
    bomb = gzip.compress(b"#" * 5_000_000, 9)

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        if not chunked:
            writer.write(answer(bomb, "Content-Encoding: gzip"))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n")
            writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(bomb), 1024):
                piece = bomb[i : i + 1024]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def go() -> None:
        async with Server(script) as client:
            with pytest.raises(InvalidUpstreamData, match="over the limit of 65536"):
                await get(client)

    run(go())


def test_declared_length_over_the_limit_is_refused_before_the_body(run: Any) -> None:
    """A Content-Length over the limit is refused at the headers; the body is never sent."""

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
        await writer.drain()

    async def go() -> None:
        async with Server(script) as client:
            with pytest.raises(InvalidUpstreamData, match="body of 10000000 bytes"):
                await get(client)

    run(go())


def test_body_ending_with_the_connection(run: Any) -> None:
    """An answer without length or chunking ends when the server closes; the next request
    takes a new connection."""

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async def go() -> None:
        server = Server(script)
        async with server as client:
            assert (await get(client)).body == b"all of it"
            assert (await get(client)).body == b"all of it"
        assert server.connections == 2

    run(go())


def test_connection_closed_mid_body(run: Any) -> None:
    """A body cut short by the server closing is a broken payload, not an answer."""

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part")
        await writer.drain()
        writer.close()

    async def go() -> None:
        async with Server(script) as client:
            with pytest.raises(aiohttp.ClientPayloadError, match="not completed"):
                await get(client)

    run(go())


def test_connection_closed_before_any_answer(run: Any) -> None:
    """A new connection closed without an answer: the server disconnected."""

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.close()

    async def go() -> None:
        async with Server(script) as client:
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await get(client)

    run(go())


def test_kept_connection_closed_by_the_server_is_replaced(run: Any) -> None:
    """A kept connection the server closed after its answer (without saying so) is replaced
    by a new one, and the request succeeds."""

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(answer(b"ok"))
        await writer.drain()
        writer.close()

    async def go() -> None:
        server = Server(script)
        async with server as client:
            for _ in range(3):
                assert (await get(client)).body == b"ok"
        assert server.connections == 3

    run(go())


def test_connection_close_header_is_honoured(run: Any) -> None:
    """An answer saying Connection: close is the connection's last."""

    async def go() -> None:
        server = Server(always(answer(b"ok", "Connection: close")))
        async with server as client:
            assert (await get(client)).body == b"ok"
            assert (await get(client)).body == b"ok"
        assert server.connections == 2

    run(go())


def test_header_too_long(run: Any) -> None:
    """A header value over 8190 bytes is a malformed answer."""

    async def go() -> None:
        async with Server(always(answer(b"{}", "X-Junk: " + "j" * 9000))) as client:
            with pytest.raises(MalformedAnswer, match=r"header \(X-Junk\) longer than 8190"):
                await get(client)

    run(go())


def test_endless_headers(run: Any) -> None:
    """Headers that never end are refused once they exceed 64 KiB."""

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(5000):
            writer.write(f"X-{i}: {'v' * 30}\r\n".encode())
        await writer.drain()

    async def go() -> None:
        async with Server(script) as client:
            with pytest.raises(MalformedAnswer, match="before the body"):
                await get(client)

    run(go())


@pytest.mark.parametrize(
    "extra", [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil", b"\x00garbage\xff"]
)
def test_bytes_after_the_answer_spoil_the_connection(run: Any, extra: bytes) -> None:
    """An unasked second answer or garbage after an answer: the answer stands, and the
    connection is not used again."""

    async def go() -> None:
        server = Server(always(answer(b"mine") + extra))
        async with server as client:
            assert (await get(client)).body == b"mine"
            assert (await get(client)).body == b"mine"
        assert server.connections == 2

    run(go())


def test_not_http(run: Any) -> None:
    """Garbage instead of an answer is a malformed answer."""

    async def go() -> None:
        async with Server(always(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as client:
            with pytest.raises(MalformedAnswer, match=r"not an HTTP/1\.x answer"):
                await get(client)

    run(go())


def test_interim_answers_are_skipped(run: Any) -> None:
    """100 Continue and 103 Early Hints before the answer are passed over."""
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"

    async def go() -> None:
        async with Server(always(interim + answer(b"final"))) as client:
            got = await get(client)
            assert (got.status, got.body) == (200, b"final") and "Link" not in got.headers

    run(go())


def test_protocol_switch_is_refused(run: Any) -> None:
    """A 101 nobody asked for is a malformed answer."""
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )

    async def go() -> None:
        async with Server(always(switch)) as client:
            with pytest.raises(MalformedAnswer, match="switched protocols"):
                await get(client)

    run(go())


def test_not_modified_and_redirect_answers(run: Any) -> None:
    """304 has no body even with a length; a redirect comes back as it is, Location and all;
    the connection carries on."""

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        if n == 0:
            writer.write(b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\nContent-Length: 9\r\n\r\n')
        else:
            writer.write(answer(b"", "Location: /y", status="302 Found"))
        await writer.drain()

    async def go() -> None:
        server = Server(script)
        async with server as client:
            first = await get(client)
            assert (first.status, first.body) == (304, b"")
            second = await get(client)
            assert second.status == 302 and second.headers["Location"] == "/y"
        assert server.connections == 1

    run(go())


def test_server_that_never_answers_times_out(run: Any) -> None:
    """No answer within timeout_s: TimeoutError, and the connection is dropped."""

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        await asyncio.sleep(30)

    async def go() -> None:
        async with Server(script) as client:
            with pytest.raises(TimeoutError):
                await get(client, limits=Limits(0.3, 5, 65536))

    run(go())


def test_trickling_body_below_the_minimum_rate(run: Any) -> None:
    """A body arriving below min_bytes_per_s is abandoned once min_rate_after_s has passed."""

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.02)

    async def go() -> None:
        limits = Limits(60, 5, 65536, min_bytes_per_s=1000, min_rate_after_s=0.1)
        async with Server(script) as client:
            with pytest.raises(SlowBody, match="below the minimum of 1000 bytes/s"):
                await get(client, limits=limits)

    run(go())


def test_nothing_listening(run: Any) -> None:
    """A port nobody listens on: CannotConnect, with the system's reason."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go() -> None:
        client = OriginClient(
            "127.0.0.1", port, host_header=f"127.0.0.1:{port}", headers={}, max_idle=1
        )
        with pytest.raises(CannotConnect) as caught:
            await get(client)
        assert caught.value.os_error.errno is not None

    run(go())


def test_header_values_cannot_end_the_line(run: Any) -> None:
    """A header value with CR or LF (a stored ETag, a token) is refused, never sent."""

    async def go() -> None:
        server = Server(always(answer(b"ok")))
        async with server as client:
            with pytest.raises(ValueError, match="Newline"):
                await client.get("/x", {"If-None-Match": '"a"\r\nX-Evil: 1'}, LIMITS, url="x")
        assert server.requests == []

    run(go())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (files), made with openssl."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_origin(run: Any, certificate: tuple[str, str]) -> None:
    """Over TLS, answers come back whole over one kept connection; a certificate the client
    does not trust is refused before any request is sent."""
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def go() -> None:
        trusted = ssl.create_default_context(cafile=cert)
        server = Server(always(answer(b"secret")), served=served, trusted=trusted)
        async with server as client:
            for _ in range(3):
                assert (await get(client)).body == b"secret"
        assert server.connections == 1 and len(server.requests) == 3
        untrusted = Server(always(answer(b"secret")), served=served, trusted=default_tls())
        async with untrusted as client:
            with pytest.raises(CannotConnect, match="certificate verify failed"):
                await get(client)
        assert untrusted.requests == []

    run(go())


def test_upstream_client_over_tls(run: Any, certificate: tuple[str, str]) -> None:
    """An HTTPS upstream's own origin is read through this client: the token goes with the
    request, the answer is counted."""
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def go() -> None:
        server = Server(always(answer(b'{"id": "t"}')), served=served)
        async with server, aiohttp.ClientSession() as session:
            assert server.server is not None
            port = server.server.sockets[0].getsockname()[1]
            upstream = UpstreamConfig(name="tls", url=f"https://127.0.0.1:{port}/ga4gh/trs/v2")
            client = UpstreamClient(
                session, upstream, "tok", tls=ssl.create_default_context(cafile=cert)
            )
            got = await client.get_json(f"{upstream.url}/tools/t")
            await client.close()
        assert got is not None and got[0] == {"id": "t"}
        assert client.traffic.requests == 1 and client.traffic.bytes == 11
        assert "\r\nAuthorization: Bearer tok\r\n" in server.requests[0].decode()

    run(go())
