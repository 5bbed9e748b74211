"""Structured logging: JSON lines in services, a console renderer on a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

import orjson
import structlog
from structlog.typing import EventDict

from aggregator import redact
from aggregator.db.outage import is_unavailable

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
    global _json_sink  # noqa: PLW0603 - the one switch this function owns
    if json is None:
        json = not sys.stderr.isatty()
    _json_sink = sys.stderr.buffer if json and level <= logging.INFO else None
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    last: list[structlog.typing.Processor] = [_plain_event, _redact]
    renderer: structlog.typing.Processor
    if json:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
        logger_factory: Callable[..., Any] = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer()
        logger_factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, *last, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=logger_factory,
        cache_logger_on_first_use=cache,
    )
    # aiohttp, asyncpg and apscheduler log through the standard library.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _outage_without_traceback,
            structlog.processors.format_exc_info,
            *last,
            _stdlib_renderer(json=json),
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


def _dumps(value: Any, **_: Any) -> bytes:
    """JSON for a log record; what orjson cannot serialise natively is written as str()."""
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)


def _outage_without_traceback(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """A library's record of a lost database connection (asyncpg's pool retrying) says what
    happened in one line: a traceback of an outage tells an operator nothing more."""
    exc_info = event_dict.get("exc_info")
    if isinstance(exc_info, tuple) and len(exc_info) == 3 and is_unavailable(exc_info[1]):
        event_dict.pop("exc_info")
        event_dict["error"] = f"{type(exc_info[1]).__name__}: {exc_info[1]}"
    return event_dict


def _plain_event(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Libraries log objects as messages (asyncpg: a PostgresLogMessage): make them text."""
    event = event_dict.get("event")
    if event is not None and not isinstance(event, str):
        event_dict["event"] = str(event)
    return event_dict


def _redact(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Mask URL user-info and registered secrets in every string of the record."""
    return {
        k: redact.deep(v) if isinstance(v, str | dict | list | tuple) else v
        for k, v in event_dict.items()
    }


def _stdlib_renderer(*, json: bool) -> structlog.typing.Processor:
    if json:
        return structlog.processors.JSONRenderer(serializer=lambda v, **_: _dumps(v).decode())
    return structlog.dev.ConsoleRenderer()
