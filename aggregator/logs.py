"""Structured logging: JSON lines in services, a console renderer on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import BinaryIO

import orjson
import structlog

#: Where JSON lines go when configure_logging chose JSON at level INFO or below, else None.
_json_sink: BinaryIO | None = None


def json_sink() -> BinaryIO | None:
    """The binary stream JSON log lines are written to, when the configuration logs INFO lines
    as JSON; hot paths may write lines of the same shape there themselves."""
    return _json_sink


def configure_logging(
    *, json: bool | None = None, level: int = logging.INFO, cache: bool = True
) -> None:
    """Configure structlog and route the standard library's loggers through it.

    *json* defaults to "stderr is not a terminal". Call once, from the CLI; never at import.
    """
    global _json_sink
    if json is None:
        json = not sys.stderr.isatty()
    _json_sink = sys.stderr.buffer if json and level <= logging.INFO else None
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if json:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        logger_factory: object = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer()
        logger_factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=logger_factory,
        cache_logger_on_first_use=cache,
    )
    # aiohttp, asyncpg and apscheduler log through the standard library.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _stdlib_renderer(json),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.INFO))
    # One canonical line per request comes from our own middleware.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def _stdlib_renderer(json: bool) -> structlog.typing.Processor:
    if json:
        return structlog.processors.JSONRenderer(serializer=lambda v, **_: orjson.dumps(v).decode())
    return structlog.dev.ConsoleRenderer()
