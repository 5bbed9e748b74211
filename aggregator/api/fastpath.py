"""Warm answers before aiohttp's routing and middleware.

``FastRunner`` is the ``AppRunner`` the service runs the API with. Its low-level server calls a
handler in front of the application: a GET or HEAD whose answer is in the response cache (the
key is the request line and two headers, ``cache.cache_key``) is answered there, with its
request id and log line, without resolving a route or entering the middleware. Everything
else (misses, other methods, 304s and gzip variants not made yet) goes to the application as
before, whose middleware looks in the cache once more and renders on a miss. The first time
an answer goes through the application its route template is noted on the cached entry, so
the warm answers are counted in the request metrics (``ops.metrics``) under the same route.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from aggregator.api.cache import RESPONSE_CACHE, cache_key, respond
from aggregator.api.middleware import CACHED_METHODS, NOSNIFF
from aggregator.api.reqlog import REQUEST_LOG, new_request_id
from aggregator.ops import metrics

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def front(app: web.Application, handle: Handler) -> Handler:
    """A request handler answering warm cache hits of *app* itself and passing the rest to
    *handle* (the application's own)."""
    cache = app[RESPONSE_CACHE]
    reqlog = app[REQUEST_LOG]
    counters: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def count(route: str, method: str, status: int, seconds: float) -> None:
        """What metrics.observe counts for a request the application answers."""
        children = counters.get((route, method, status))
        if children is None:
            children = counters[(route, method, status)] = (
                metrics.REQUESTS.labels(route, method, str(status)),
                metrics.LATENCY.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)
        metrics.CACHE_HITS.inc()

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
                    count(
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


class FastRunner(web.AppRunner):
    """An AppRunner whose server answers warm cache hits in front of the application (an
    application without a response cache is run as AppRunner runs it)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app has started: its cache exists
        if RESPONSE_CACHE in self.app and REQUEST_LOG in self.app:
            server.request_handler = front(self.app, server.request_handler)
        return server
