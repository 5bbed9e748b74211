"""Warm answers before aiohttp's routing and middleware, and before its HTTP machinery.

``FastRunner`` is the ``AppRunner`` the service runs the API with. Warm answers (those in the
response cache, whose key is the request line and two headers, ``cache.cache_key``) are
answered at the first of two places that can:

- **On the wire** (``WireHandler``): the connection's protocol looks at the bytes as they
  arrive. When the connection is idle and they are whole, plain ``GET`` requests (HTTP/1.1,
  an origin-form target of visible ASCII, no body, no revalidation, nothing unusual in any
  header) whose answers are all in the cache, it writes those answers straight to the socket:
  no request or response objects, no task. Anything else — a miss, a partial request, a
  header it does not expect, a request while another is being answered — goes to aiohttp's
  parser unchanged, and a connection that has once handed aiohttp bytes not ending at a
  request boundary stays with aiohttp.
- **In front of the application** (``front``): a GET or HEAD whose answer is cached (304s and
  gzip variants included) is answered by the low-level server's handler without resolving a
  route or entering the middleware.

Everything else goes to the application, whose middleware looks in the cache once more and
renders on a miss. The first time an answer goes through the application its route template
is noted on the cached entry, so warm answers are counted in the request metrics
(``ops.metrics``) under the same route; both warm paths log their ``request_finished`` line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler

from aggregator.api.cache import RESPONSE_CACHE, Entry, ResponseCache, cache_key, respond
from aggregator.api.middleware import CACHED_METHODS, NOSNIFF, error_response
from aggregator.api.negotiation import accept_wants_zip, encoding_allows_gzip
from aggregator.api.reqlog import REQUEST_LOG, RequestLog, new_request_id
from aggregator.ops import metrics

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

#: Larger reads go to aiohttp (a burst of pipelined requests, or a very long one).
_WIRE_MAX_READ: Final = 16 * 1024
#: Headers whose presence sends a request to aiohttp: a body, a protocol switch, a
#: revalidation or anything else the cached answer does not already account for.
_WIRE_REFUSED: Final = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"if-none-match",
        b"if-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
        b"range",
        b"te",
        b"http2-settings",
    }
)
_TARGET: Final = re.compile(rb"/[\x21-\x7e]*")
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE: Final = re.compile(rb"[\x20-\x7e\t]*")
_REQUEST_ID: Final = re.compile(rb"[\x21-\x7e]{1,200}")
_BOUNDARY: Final = b"\r\n\r\n"
_BODY_HINTS: Final = (b"content-length", b"transfer-encoding")
#: What of the parser's own message a refused request's answer quotes.
_ERROR_MESSAGE_MAX: Final = 300


class Warm:
    """What both warm paths share: the response cache, the request log and the metrics'
    counters for warm answers."""

    def __init__(self, cache: ResponseCache, reqlog: RequestLog) -> None:
        self.cache = cache
        self.reqlog = reqlog
        self._counters: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def count(self, route: str, method: str, status: int, seconds: float) -> None:
        """What metrics.observe counts for a request the application answers."""
        children = self._counters.get((route, method, status))
        if children is None:
            children = self._counters[(route, method, status)] = (
                metrics.REQUESTS.labels(route, method, str(status)),
                metrics.LATENCY.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)
        metrics.CACHE_HITS.inc()


def front(warm: Warm, handle: Handler) -> Handler:
    """A request handler answering warm cache hits and passing the rest to *handle* (the
    application's own)."""
    cache = warm.cache
    reqlog = warm.reqlog

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.method in CACHED_METHODS:
            started = time.perf_counter()
            key = cache_key(request)
            entry = cache.get(key)
            if entry is not None and entry.route is not None:
                response = respond(request, entry)
                if response is not None:
                    request_id = request.headers.get("X-Request-Id") or new_request_id()
                    response.headers["X-Request-Id"] = request_id
                    response.headers[NOSNIFF[0]] = NOSNIFF[1]
                    reqlog.finished(
                        request_id,
                        request.method,
                        request.raw_path,
                        response.status,
                        started,
                        warm=True,
                    )
                    warm.count(
                        entry.route, request.method, response.status, time.perf_counter() - started
                    )
                    return response
            answer = await handle(request)
            entry = cache.get(key)
            if entry is not None and entry.route is None:  # learn its route once
                match_info = getattr(request, "match_info", None)
                resource = match_info.route.resource if match_info is not None else None
                entry.route = resource.canonical if resource is not None else "unmatched"
            return answer
        return await handle(request)

    return handler


class _Answer:
    """A warm answer found on the wire, to be written."""

    __slots__ = ("entry", "request_id", "route", "target")

    def __init__(self, entry: Entry, route: str, request_id: str, target: str) -> None:
        self.entry = entry
        self.route = route
        self.request_id = request_id
        self.target = target


def wire_head(entry: Entry) -> bytes:
    """The status line and every header aiohttp would send with *entry* but the per-request
    ones (Date, X-Request-Id and the end of the header block), made once per entry; empty
    when a header could not be sent as it is (aiohttp refuses it with an error)."""
    head = entry.wire_head
    if head is None:
        lines = [f"HTTP/1.1 {entry.status} {HTTPStatus(entry.status).phrase}"]
        lines += [f"{name}: {value}" for name, value in entry.headers.items()]
        lines += [f"Content-Length: {len(entry.body)}", f"Server: {SERVER_SOFTWARE}"]
        lines += [f"{NOSNIFF[0]}: {NOSNIFF[1]}", ""]
        safe = not any("\r" in line or "\n" in line for line in lines)
        head = entry.wire_head = "\r\n".join(lines).encode() if safe else b""
    return head


class _HttpDate:
    """The Date header's value, made once a second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.value = formatdate(second, usegmt=True).encode("ascii")
            cls.second = second
        return cls.value


def parse_warm(warm: Warm, head: bytes) -> _Answer | None:
    """The warm answer to one request's header block (*head*, without the blank line), or
    None when aiohttp must see the request."""
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    target, _, version = rest.partition(b" ")
    if method != b"GET" or version != b"HTTP/1.1" or not _TARGET.fullmatch(target):
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return None
        name = name.lower()
        value = value.strip(b" \t")
        if name in headers or name in _WIRE_REFUSED or not _VALUE.fullmatch(value):
            return None
        headers[name] = value
    host = headers.get(b"host")
    connection = headers.get(b"connection", b"keep-alive")
    if not host or b" " in host or connection.lower() != b"keep-alive":
        return None
    path = target.decode("ascii")
    accept = headers.get(b"accept", b"").decode("ascii")
    entry = warm.cache.get(("http", host.decode("ascii"), path, accept_wants_zip(accept)))
    if entry is None or entry.route is None:
        return None
    route = entry.route
    if entry.compressible and encoding_allows_gzip(
        headers.get(b"accept-encoding", b"").decode("ascii")
    ):
        if entry.gzipped is None:
            return None  # the application makes it
        entry = entry.gzipped
    if not wire_head(entry):
        return None
    given = headers.get(b"x-request-id")
    if given is None:
        request_id = new_request_id()
    elif _REQUEST_ID.fullmatch(given):
        request_id = given.decode("ascii")
    else:
        return None
    return _Answer(entry, route, request_id, path)


class WireHandler(RequestHandler):
    """aiohttp's connection protocol, answering whole warm GETs from the bytes that arrive."""

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._warm: Warm = manager.warm  # type: ignore[attr-defined]
        # Whether every byte handed to aiohttp so far ended at a request boundary, so that
        # its parser holds nothing and the next bytes begin a request.
        self._at_boundary = True

    def data_received(self, data: bytes) -> None:
        """Answer *data* here if it is whole warm GETs; else hand it to aiohttp's parser."""
        if self._at_boundary and data:
            if self._idle() and self._answer(data):
                return
            lowered = data.lower()
            self._at_boundary = data.endswith(_BOUNDARY) and not any(
                hint in lowered for hint in _BODY_HINTS
            )
        super().data_received(data)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The answer to a request aiohttp's parser refused (or that failed outside the
        application), as TRS Error JSON rather than text/plain."""
        super().handle_error(request, status, exc, message)  # logs; raises if too late
        if status == HTTPStatus.INTERNAL_SERVER_ERROR:
            text = "Internal Server Error"
        else:
            text = f"The request cannot be read: {message or HTTPStatus(status).phrase}"
        answer = error_response(status, text[:_ERROR_MESSAGE_MAX])
        answer.headers[NOSNIFF[0]] = NOSNIFF[1]
        answer.force_close()  # as aiohttp does: the connection's state is unknown
        return answer

    def _idle(self) -> bool:
        """No request in progress or queued, nothing closing or switched."""
        waiter = self._waiter
        return (
            waiter is not None
            and not waiter.done()
            and not self._messages
            and not self._close
            and not self._force_close
            and not self._upgraded
            and self._payload_parser is None
            and self.transport is not None
            and not self.transport.is_closing()
            and self.transport.get_write_buffer_size() == 0
        )

    def _answer(self, data: bytes) -> bool:
        """Write the answers to every request in *data* if all are warm; False (and nothing
        written) otherwise."""
        if len(data) > _WIRE_MAX_READ or not data.endswith(_BOUNDARY):
            return False
        started = time.perf_counter()
        answers = []
        for head in data[: -len(_BOUNDARY)].split(_BOUNDARY):
            answer = parse_warm(self._warm, head)
            if answer is None:
                return False
            answers.append(answer)
        date = _HttpDate.now()
        chunks: list[bytes] = []
        for answer in answers:
            entry = answer.entry
            chunks += (
                wire_head(entry),
                b"Date: " + date + b"\r\nX-Request-Id: " + answer.request_id.encode() + b"\r\n\r\n",
                entry.body,
            )
        assert self.transport is not None  # _idle() said so
        self.transport.writelines(chunks)
        self._request_count += len(answers)
        self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        reqlog, warm = self._warm.reqlog, self._warm
        for answer in answers:
            status = answer.entry.status
            reqlog.finished(answer.request_id, "GET", answer.target, status, started, warm=True)
            warm.count(answer.route, "GET", status, time.perf_counter() - started)
        return True


class _WireServer(web.Server):
    """aiohttp's low-level server, whose connections answer warm GETs on the wire."""

    warm: Warm

    def __call__(self) -> RequestHandler:
        return WireHandler(self, loop=self._loop, **self._kwargs)


class FastRunner(web.AppRunner):
    """An AppRunner answering warm cache hits on the wire and in front of the application
    (an application without a response cache is run as AppRunner runs it)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app has started: its cache exists
        if RESPONSE_CACHE in self.app and REQUEST_LOG in self.app:
            warm = Warm(self.app[RESPONSE_CACHE], self.app[REQUEST_LOG])
            server.request_handler = front(warm, server.request_handler)
            server.__class__ = _WireServer  # the same server, making WireHandler connections
            server.warm = warm  # type: ignore[attr-defined]
        return server
