"""The middleware: answers from the response cache, TRS Error JSON for every failure, CORS
preflight, one canonical log line per request."""

from __future__ import annotations

import time
from typing import Final

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from aggregator.api.cache import CORS_HEADERS, cache_key, respond
from aggregator.api.reqlog import new_request_id
from aggregator.errors import BadRequest, NotFound
from aggregator.keys import REQUEST_LOG, RESPONSE_CACHE
from aggregator.trs.render import error

log = structlog.get_logger()

_ERROR_HEADERS: Final = {"Content-Type": "application/json", **CORS_HEADERS}
_PREFLIGHT_MAX_AGE: Final = "86400"
CACHED_METHODS: Final = frozenset({"GET", "HEAD"})


def error_response(status: int, message: str) -> web.Response:
    """A TRS Error JSON response."""
    return web.Response(
        status=status, body=orjson.dumps(error(status, message)), headers=_ERROR_HEADERS
    )


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve from the response cache or call the handler, turn every failure into TRS Error
    JSON, and log one line when the request ends.

    A cached answer depends only on the request line and two headers (``cache_key``), so it is
    found here, first, which keeps a warm GET close to the cost of the bare HTTP exchange.
    Otherwise the request id is bound for whatever the handler logs.
    """
    started = time.perf_counter()
    request_id = request.headers.get("X-Request-Id") or new_request_id()
    status = 500
    warm = False
    try:
        response: web.StreamResponse | None = None
        if request.method in CACHED_METHODS:
            entry = request.app[RESPONSE_CACHE].get(cache_key(request))
            if entry is not None:
                response = respond(request, entry)
                warm = response is not None
        if response is None:
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                response = await _trs_errors(request, handler)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        request.app[REQUEST_LOG].finished(
            request_id, request.method, request.raw_path, status, started, warm=warm
        )


def _preflight(request: web.Request, allowed: set[str]) -> web.Response:
    """Answer OPTIONS: a CORS preflight when it is one, else just the allowed methods."""
    methods = ", ".join(sorted(allowed | {"OPTIONS"}))
    headers = {"Allow": methods, **CORS_HEADERS}
    if request.headers.get("Access-Control-Request-Method"):
        headers["Access-Control-Allow-Methods"] = methods
        asked = request.headers.get("Access-Control-Request-Headers")
        if asked:
            headers["Access-Control-Allow-Headers"] = asked
        headers["Access-Control-Max-Age"] = _PREFLIGHT_MAX_AGE
    return web.Response(status=204, headers=headers)


async def _trs_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Call *handler*, turning every error into ``{"code", "message"}`` JSON with the right
    status."""
    try:
        return await handler(request)
    except (NotFound, BadRequest) as e:
        return error_response(e.status, e.message)
    except web.HTTPException as e:
        if e.status < 400:
            e.headers.update(CORS_HEADERS)
            raise
        if e.status == 405:
            allowed = set(getattr(e, "allowed_methods", ()) or ())
            if request.method == "OPTIONS" and "GET" in allowed:
                return _preflight(request, allowed)
            response = error_response(
                405,
                f"method {request.method} not allowed here"
                + (f"; allowed: {', '.join(sorted(allowed))}" if allowed else ""),
            )
            if allowed:
                response.headers["Allow"] = ", ".join(sorted(allowed))
            return response
        if e.status == 404:
            return error_response(404, f"no such resource: {request.path}")
        return error_response(e.status, e.reason)
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path_qs)
        return error_response(500, "internal server error")
