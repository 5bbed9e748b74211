"""A lean keep-alive HTTP/1.1 client for requests to an upstream's own origin.

A harvest makes hundreds of thousands of small GET requests to one origin, and aiohttp's
general client spends most of a request's CPU on what those do not need (cookies, proxies,
tracing, streaming readers, middlewares). Here one asyncio Protocol per connection feeds
httptools' parser (llhttp, Node.js's HTTP parser) and collects the whole answer: the body
decompressed (gzip, deflate) and refused once it exceeds the size limit *as it is
decompressed*, within a deadline for the whole request. HTTPS origins are reached through
asyncio's TLS transport, with the system's trusted certificates. Idle connections are kept for the
next request; one that a server closed meanwhile is replaced once, transparently.

Exceptions are aiohttp's where the meaning is the same, so that the client handles answers
from this path and from aiohttp's (other hosts, TLS) alike::

    TimeoutError                         the request took longer than its timeout
    aiohttp.ClientConnectionError
    ├── aiohttp.ConnectionTimeoutError   connecting took longer than the connect timeout
    ├── CannotConnect                    the connection could not be made (``os_error``;
    │                                    a certificate that does not verify, too)
    ├── aiohttp.ServerDisconnectedError  the server closed the connection before answering
    └── aiohttp.ClientOSError            the server reset the connection before answering
    aiohttp.ClientPayloadError           the body broke off, or cannot be decompressed
    MalformedAnswer                      not an HTTP/1.x answer this client reads (a header
                                         over the limit, garbage, a protocol switch)
    SlowBody                             the body arrives below the minimum rate
    InvalidUpstreamData                  the body is over the size limit
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ssl
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, cast

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from aggregator.errors import InvalidUpstreamData

#: The longest header name or value read (aiohttp's limit too).
MAX_FIELD: Final = 8190
#: The most bytes read before the end of an answer's headers.
MAX_HEAD: Final = 64 * 1024


class CannotConnect(aiohttp.ClientConnectionError):
    """The connection could not be made; *os_error* says why."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class MalformedAnswer(aiohttp.ClientError):
    """The server's answer is not HTTP/1.x as this client reads it."""


class SlowBody(Exception):
    """A body arrived slower than the minimum rate."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may take.

    Attributes:
        timeout_s: The whole request, from connecting to the last byte of the body.
        connect_timeout_s: Making a new connection.
        max_body_bytes: The body, counted decompressed.
        min_bytes_per_s: The slowest a body may arrive once it has taken *min_rate_after_s*
            (0: no minimum).
        min_rate_after_s: See *min_bytes_per_s*.
    """

    timeout_s: float
    connect_timeout_s: float
    max_body_bytes: int
    min_bytes_per_s: int = 0
    min_rate_after_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete answer: status, headers and the decompressed body."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection; it reads one answer at a time, for the request ``send`` wrote."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.open = False
        #: False once the connection may not carry another request.
        self.reusable = True
        self.received = 0
        self._waiter: asyncio.Future[Answer] | None = None
        self._limits: Limits | None = None
        self._url = ""
        self._status = 0
        self._fields: list[tuple[str, str]] = []
        self._headers: CIMultiDictProxy[str] | None = None
        self._until_close = False
        self._interim = False
        self._decoder: zlib._Decompress | None = None
        self._encoding = ""
        self._chunks: list[bytes] = []
        self._size = 0
        self._body_started = 0.0
        self._error: BaseException | None = None
        self.complete = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        if self.transport is None:
            # uvloop's transports are asyncio.Transport in all but name.
            self.transport = cast("asyncio.Transport", transport)
            self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        """Finish an answer whose body ends with the connection, or fail the one awaited."""
        self.open = False
        self.reusable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers is not None and self._until_close:
            try:
                self._finish()
            except Exception as e:  # noqa: BLE001 - the waiter carries it to the request
                self._fail(e)
        elif self._headers is not None:
            self._fail(
                aiohttp.ClientPayloadError(
                    "Response payload is not completed: "
                    + (f"{type(exc).__name__}: {exc}" if exc else "the connection was closed")
                )
            )
        elif isinstance(exc, ConnectionResetError):
            self._fail(aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"))
        elif exc is not None:
            self._fail(aiohttp.ClientOSError(getattr(exc, "errno", None) or 0, str(exc)))
        else:
            self._fail(aiohttp.ServerDisconnectedError())

    def data_received(self, data: bytes) -> None:
        """Feed the parser; anything arriving when no answer is awaited spoils the
        connection."""
        if self._waiter is None or self.complete:
            self._spoil()
            return
        self.received += len(data)
        if self._headers is None and self.received > MAX_HEAD:
            self._fail(MalformedAnswer(f"more than {MAX_HEAD} bytes before the body"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(MalformedAnswer("the server switched protocols"))
        except httptools.HttpParserError as e:
            if self.complete:
                # Bytes after the answer (a second answer nobody asked for, garbage): the
                # answer stands, the connection is not used again.
                self._spoil()
            else:
                self._fail(self._error or MalformedAnswer(f"not an HTTP/1.x answer: {e}"))

    def eof_received(self) -> bool:
        """Let the transport close; ``connection_lost`` finishes the answer."""
        self.reusable = False
        return False

    # httptools callbacks

    def on_message_begin(self) -> None:
        """Refuse a second answer on the heels of the one awaited."""
        if self.complete:
            self._raise(MalformedAnswer("an answer nobody asked for"))

    def on_header(self, name: bytes, value: bytes) -> None:
        """Keep one header, within the field limit."""
        if len(name) > MAX_FIELD or len(value) > MAX_FIELD:
            self._raise(
                MalformedAnswer(
                    f"a header ({name[:64].decode('latin-1')}) longer than {MAX_FIELD} bytes"
                )
            )
        self._fields.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        """Check the declared length against the limit; prepare decompression."""
        status = self._parser.get_status_code()
        if status < 200:
            # 100 Continue, 103 Early Hints …: the real answer follows.
            self._interim = True
            self._fields = []
            return
        self._status = status
        headers = CIMultiDictProxy(CIMultiDict(self._fields))
        self._headers = headers
        assert self._limits is not None
        length = headers.get("Content-Length")
        limit = self._limits.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            self._raise(
                InvalidUpstreamData(
                    f"body of {length} bytes from {self._url} is over the limit of {limit}",
                    url=self._url,
                )
            )
        # Without a length and not chunked, the body ends when the connection does.
        chunked = headers.get("Transfer-Encoding", "").rstrip().lower().endswith("chunked")
        self._until_close = length is None and not chunked and status not in (204, 304)
        encoding = headers.get("Content-Encoding")
        if encoding is not None:
            encoding = encoding.strip().lower()
            if encoding in ("gzip", "x-gzip", "deflate"):
                self._encoding = encoding
        if self._limits.min_bytes_per_s:
            self._body_started = time.monotonic()

    def on_body(self, chunk: bytes) -> None:
        """Decompress and keep a piece of the body; refuse it once over the limit or too
        slow."""
        assert self._limits is not None
        limits = self._limits
        if self._encoding:
            decoder = self._decoder
            if decoder is None:
                if self._encoding != "deflate":
                    wbits = 16 + zlib.MAX_WBITS
                elif chunk[0] & 0x0F == 8:
                    wbits = zlib.MAX_WBITS
                else:
                    # Some servers send raw deflate for "deflate"; the zlib header tells.
                    wbits = -zlib.MAX_WBITS
                decoder = self._decoder = zlib.decompressobj(wbits)
            try:
                chunk = decoder.decompress(chunk, limits.max_body_bytes - self._size + 1)
            except zlib.error as e:
                self._raise(aiohttp.ClientPayloadError(f"cannot decode content: {e}"))
        self._size += len(chunk)
        if self._size > limits.max_body_bytes:
            self._raise(
                InvalidUpstreamData(
                    f"body from {self._url} is over the limit of {limits.max_body_bytes} bytes",
                    url=self._url,
                )
            )
        self._chunks.append(chunk)
        if limits.min_bytes_per_s:
            elapsed = time.monotonic() - self._body_started
            if elapsed > limits.min_rate_after_s and self._size / elapsed < limits.min_bytes_per_s:
                self._raise(
                    SlowBody(
                        f"body arriving at {self._size / elapsed:.0f} bytes/s, below the "
                        f"minimum of {limits.min_bytes_per_s} bytes/s"
                    )
                )

    def on_message_complete(self) -> None:
        """Hand the answer over (an interim 1xx answer is skipped)."""
        if self._interim:
            self._interim = False
            return
        if self.complete:
            return
        self.reusable = self.reusable and self._parser.should_keep_alive()
        self._finish()

    # the request side

    def send(
        self, request: bytes, waiter: asyncio.Future[Answer], limits: Limits, url: str
    ) -> None:
        """Write *request*; its answer (or failure) resolves *waiter*."""
        self._waiter = waiter
        self._limits = limits
        self._url = url
        self._status = 0
        self._fields = []
        self._headers = None
        self._until_close = self._interim = self.complete = False
        self._decoder = None
        self._encoding = ""
        self._chunks = []
        self._size = 0
        self._error = None
        self.received = 0
        assert self.transport is not None
        self.transport.write(request)

    def rest(self) -> None:
        """Wait idle for the next request: any byte arriving meanwhile spoils the
        connection."""
        self._waiter = None
        self.complete = False

    def time_out(self) -> None:
        """The request's deadline passed: fail it and drop the connection."""
        self._fail(TimeoutError())

    def close(self) -> None:
        """Close the connection (now, without waiting for buffered writes)."""
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _finish(self) -> None:
        body = b"".join(self._chunks)
        if self._decoder is not None:
            assert self._limits is not None
            try:
                rest = self._decoder.flush()
            except zlib.error as e:
                raise aiohttp.ClientPayloadError(f"cannot decode content: {e}") from None
            if rest:
                body += rest
                if len(body) > self._limits.max_body_bytes:
                    raise InvalidUpstreamData(
                        f"body from {self._url} is over the limit of "
                        f"{self._limits.max_body_bytes} bytes",
                        url=self._url,
                    )
        self.complete = True
        self._chunks = []
        waiter = self._waiter
        assert waiter is not None
        assert self._headers is not None
        if not waiter.done():
            waiter.set_result(Answer(self._status, self._headers, body))

    def _raise(self, error: BaseException) -> None:
        """Fail from inside a parser callback: the parser stops, ``data_received`` fails the
        request with *error*."""
        self._error = error
        raise error

    def _fail(self, error: BaseException) -> None:
        self.reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def _spoil(self) -> None:
        self.reusable = False
        self.close()


@functools.cache
def default_tls() -> ssl.SSLContext:
    """The TLS context of HTTPS origins: the system's trusted certificates, host names
    checked (made once: loading the certificates blocks)."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


class OriginClient:
    """Keep-alive connections to one origin (*host*, *port*; over TLS with *tls*), at most
    *max_idle* kept idle between requests.

    *headers* are sent with every request (``Host`` and ``Accept-Encoding`` are added).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        host_header: str,
        headers: Mapping[str, str],
        max_idle: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.tls = tls
        self.max_idle = max_idle
        fixed = {"Host": host_header, **headers, "Accept-Encoding": "gzip, deflate"}
        self._fixed = "".join(f"{k}: {_checked(v)}\r\n" for k, v in fixed.items()).encode()
        self._idle: list[_Connection] = []
        self._closed = False

    async def get(
        self, target: str, headers: Mapping[str, str], limits: Limits, *, url: str
    ) -> Answer:
        """GET *target* (the path and query, already encoded) with *headers* besides the
        fixed ones; *url* names the request in errors."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.timeout_s
        request = (
            f"GET {target} HTTP/1.1\r\n".encode()
            + self._fixed
            + "".join(f"{k}: {_checked(v)}\r\n" for k, v in headers.items()).encode()
            + b"\r\n"
        )
        while True:
            conn, reused = await self._connection(loop, deadline, limits)
            waiter: asyncio.Future[Answer] = loop.create_future()
            timer = loop.call_at(deadline, conn.time_out)
            try:
                conn.send(request, waiter, limits, url)
                return await waiter
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if reused and conn.received == 0:
                    # A kept connection the server had closed meanwhile: once more, anew.
                    continue
                raise
            finally:
                timer.cancel()
                self._release(conn)

    def close(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def _connection(
        self, loop: asyncio.AbstractEventLoop, deadline: float, limits: Limits
    ) -> tuple[_Connection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if conn.open and conn.reusable:
                return conn, True
            conn.close()
        remaining = deadline - loop.time()
        bound = min(limits.connect_timeout_s, remaining)
        try:
            async with asyncio.timeout(bound):
                transport, conn = await loop.create_connection(
                    lambda: _Connection(loop),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host.rstrip(".") if self.tls else None,
                )
        except TimeoutError:
            if bound < limits.connect_timeout_s:
                raise
            raise aiohttp.ConnectionTimeoutError(
                f"connection to {self.host}:{self.port} timed out"
            ) from None
        except OSError as e:
            raise CannotConnect(e) from None
        # uvloop calls connection_made soon after, not before, returning the transport.
        conn.connection_made(transport)
        return conn, False

    def _release(self, conn: _Connection) -> None:
        if (
            conn.complete
            and conn.reusable
            and conn.open
            and not self._closed
            and len(self._idle) < self.max_idle
        ):
            conn.rest()
            self._idle.append(conn)
        else:
            conn.close()


def _checked(value: str) -> str:
    """*value*, refused when it would end the header line."""
    if "\r" in value or "\n" in value:
        raise ValueError("Newline or carriage return character detected in a header value")
    return value
