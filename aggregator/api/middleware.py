"""The middleware: answers from the response cache, TRS Error JSON for every failure (bad
input is a 400, a database that cannot be reached a 503 unless the last answer is at hand),
CORS preflight, ``nosniff``, one canonical log line per request."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final
from urllib.parse import unquote_to_bytes

import asyncpg
import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from aggregator.api.cache import CORS_HEADERS, RESPONSE_CACHE, Entry, cache_key, respond, send
from aggregator.api.reqlog import REQUEST_LOG, new_request_id
from aggregator.db.outage import is_unavailable, unavailable
from aggregator.errors import BadRequest, DatabaseUnavailable, NotFound
from aggregator.trs.render import error

log = structlog.get_logger()

_ERROR_HEADERS: Final = {"Content-Type": "application/json", **CORS_HEADERS}
#: Sent with every answer: browsers must not guess another type than the one we declare.
NOSNIFF: Final = ("X-Content-Type-Options", "nosniff")
#: Marks an answer served from the last generation while the database cannot be reached.
STALE_HEADER: Final = "X-Aggregator-Stale"
#: Seconds a client is asked to wait while the database cannot be reached.
RETRY_AFTER_S: Final = "5"
#: After the database failed a request, answers of the last generation are served without
#: trying it again for this long.
OUTAGE_RECHECK_S: Final = 1.0
_PREFLIGHT_MAX_AGE: Final = "86400"
CACHED_METHODS: Final = frozenset({"GET", "HEAD"})


async def with_final_status(
    request: web.Request, handler: Handler, record: Callable[[int], None]
) -> web.StreamResponse:
    """Call *handler*, then *record* the status finally answered (an HTTP exception's too; 500
    for anything else that escapes)."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as e:
        status = e.status
        raise
    else:
        return response
    finally:
        record(status)


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
        response.headers[NOSNIFF[0]] = NOSNIFF[1]
    except web.HTTPException as e:  # redirects pass through as exceptions
        status = e.status
        e.headers["X-Request-Id"] = request_id
        e.headers[NOSNIFF[0]] = NOSNIFF[1]
        raise
    else:
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


def bad_input(request: web.Request) -> str | None:
    """What makes the request line unreadable: a NUL byte or invalid UTF-8 anywhere in the
    path or query (percent-encoded or not); None when it is readable."""
    try:
        raw = unquote_to_bytes(request.raw_path.encode("utf-8", "surrogateescape"))
        text = raw.decode("utf-8")
    except (UnicodeError, ValueError):
        return "the path or query is not valid UTF-8"
    if "\x00" in text:
        return "the path or query contains a NUL byte"
    return None


async def _outage(
    request: web.Request, e: BaseException | None, entry: Entry | None = None
) -> web.StreamResponse:
    """While the database cannot be reached: the last known answer, marked, or a 503.

    For a moment after a failure (``OUTAGE_RECHECK_S``) the last known answers are served
    without trying the database first (*e* is None then).
    """
    cache = request.app[RESPONSE_CACHE]
    if e is not None:
        log.warning("database_unavailable", error=str(unavailable(e)), path=request.raw_path)
        cache.unavailable_until = time.monotonic() + OUTAGE_RECHECK_S
        if request.method in CACHED_METHODS:
            entry = cache.last(cache_key(request))
    if entry is not None:
        response = await send(request, entry)
        generation = cache.generation if cache.generation is not None else cache.last_generation
        response.headers[STALE_HEADER] = f"database unavailable; catalogue generation {generation}"
        return response
    response = error_response(503, "the catalogue database cannot be reached; try again shortly")
    response.headers["Retry-After"] = RETRY_AFTER_S
    return response


async def _trs_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Call *handler*, turning every error into ``{"code", "message"}`` JSON with the right
    status."""
    problem = bad_input(request)
    if problem is not None:
        return error_response(400, problem)
    cache = request.app[RESPONSE_CACHE]
    if cache.unavailable_until > time.monotonic() and request.method in CACHED_METHODS:
        entry = cache.last(cache_key(request))
        if entry is not None:
            return await _outage(request, None, entry)
    try:
        return await handler(request)
    except (NotFound, BadRequest) as e:
        return error_response(e.status, e.message)
    except DatabaseUnavailable as e:
        return await _outage(request, e)
    except (asyncpg.DataError, OverflowError, UnicodeError) as e:
        # A value from the request PostgreSQL cannot take (out of range, unencodable).
        log.warning("request_value_refused", error=str(e), path=request.raw_path)
        return error_response(400, "a value in the request is out of range or unreadable")
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
    except Exception as e:
        if is_unavailable(e):
            return await _outage(request, e)
        log.exception("request_failed", method=request.method, path=request.raw_path)
        return error_response(500, "internal server error")
