"""Middlewares: one canonical log line per request, and TRS Error JSON for every failure."""

from __future__ import annotations

import time
import uuid
from typing import Final

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from aggregator.errors import BadRequest, NotFound
from aggregator.trs.render import error

log = structlog.get_logger()

_REASONS: Final = {404: "not found", 405: "method not allowed"}


def error_response(status: int, message: str) -> web.Response:
    """A TRS Error JSON response."""
    return web.Response(status=status, body=orjson.dumps(error(status, message)),
                        content_type="application/json")


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id and log one line when the request ends."""
    started = time.perf_counter()
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    status = 500
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
            status = response.status
            response.headers["X-Request-Id"] = request_id
            return response
        finally:
            log.info("request_finished", method=request.method, path=request.path_qs,
                     status=status, duration_ms=round((time.perf_counter() - started) * 1000, 2))


@web.middleware
async def trs_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into ``{"code", "message"}`` JSON with the right status."""
    try:
        return await handler(request)
    except (NotFound, BadRequest) as e:
        return error_response(e.status, e.message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        if e.content_type == "application/json":
            raise
        message = _REASONS.get(e.status) or e.reason
        if e.status == 405:
            allowed = sorted(getattr(e, "allowed_methods", ()) or ())
            response = error_response(405, f"method {request.method} not allowed"
                                      + (f"; allowed: {', '.join(allowed)}" if allowed else ""))
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
            return response
        if e.status == 404:
            message = f"no such resource: {request.path}"
        return error_response(e.status, message)
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path_qs)
        return error_response(500, "internal server error")
