"""The canonical ``request_finished`` line of each request, cheap enough for warm answers.

When the service logs JSON at level INFO (``logs.json_sink()``), lines are rendered here with
orjson in the shape structlog gives every other event (the same keys, ``level`` and an ISO
``timestamp``, secrets masked as ``logs`` masks them) and written in batches: at most every
``FLUSH_S`` seconds or ``FLUSH_BYTES`` bytes, and when the application stops. Otherwise (a
console, level WARNING, tests) they go through structlog like any other event.

``server.request_log`` chooses what is logged: ``all`` (every request), ``sample`` (errors,
answers not served from memory, and a sample of warm answers) or ``errors`` (errors and
answers not served from memory); the last two add a ``requests_summary`` line with the counts
by status every ``SUMMARY_S`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import BinaryIO, Final

import orjson
import structlog
from aiohttp import web

from aggregator import redact
from aggregator.config import ServerConfig
from aggregator.logs import json_sink

log = structlog.get_logger()

FLUSH_S: Final = 0.1
FLUSH_BYTES: Final = 64 * 1024
SUMMARY_S: Final = 60.0


class _Ids:
    """Request ids: unique per process by a counter, across processes by a random prefix
    (drawn again in every forked process)."""

    prefix = os.urandom(4).hex() + "-"
    counter = itertools.count(1)

    @classmethod
    def reseed(cls) -> None:
        cls.prefix = os.urandom(4).hex() + "-"
        cls.counter = itertools.count(1)


os.register_at_fork(after_in_child=_Ids.reseed)


def new_request_id() -> str:
    """A request id for a request that came without one."""
    return f"{_Ids.prefix}{next(_Ids.counter):x}"


def _timestamp(now: float, _cache: dict[int, str] = {}) -> str:  # noqa: B006 - per-second memo
    second = int(now)
    prefix = _cache.get(second)
    if prefix is None:
        _cache.clear()
        prefix = _cache[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{prefix}.{int((now - second) * 1_000_000):06d}Z"


class RequestLog:
    """Writes (or samples, or counts) the ``request_finished`` line of every request."""

    def __init__(
        self, mode: str = "all", sample: float = 0.01, sink: BinaryIO | None = None
    ) -> None:
        self.mode = mode
        self.sample = sample if mode == "sample" else 0.0
        self.sink = sink
        self.counts: Counter[int] = Counter()
        self._buffer: list[bytes] = []
        self._size = 0
        self._flush_handle: asyncio.TimerHandle | None = None

    def finished(
        self,
        request_id: str,
        method: str,
        path: str,
        status: int,
        started: float,
        *,
        warm: bool = False,
    ) -> None:
        """Record one request; *warm* when it was answered from memory."""
        if self.mode != "all":
            self.counts[status] += 1
            if warm and status < 400 and (not self.sample or random.random() >= self.sample):  # noqa: S311
                return
        duration_ms = round((time.perf_counter() - started) * 1000, 2)
        if self.sink is None:
            log.info(
                "request_finished",
                request_id=request_id,
                method=method,
                path=path,
                status=status,
                duration_ms=duration_ms,
            )
            return
        line = orjson.dumps(
            {
                "request_id": redact.text(request_id),
                "method": method,
                "path": redact.text(path),
                "status": status,
                "duration_ms": duration_ms,
                "event": "request_finished",
                "level": "info",
                "timestamp": _timestamp(time.time()),
            }
        )
        self._buffer.append(line + b"\n")
        self._size += len(line) + 1
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Write what is buffered."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._buffer or self.sink is None:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        with contextlib.suppress(OSError, ValueError):
            self.sink.write(data)
            self.sink.flush()

    def summarize(self) -> None:
        """Log the counts by status since the last summary (when not logging every request)."""
        if not self.counts:
            return
        counts = {str(status): n for status, n in sorted(self.counts.items())}
        self.counts.clear()
        log.info("requests_summary", total=sum(counts.values()), by_status=counts)


REQUEST_LOG: Final = web.AppKey("request_log", RequestLog)


def request_log_for(server: ServerConfig) -> RequestLog:
    """The request log *server* asks for, writing where the logging configuration says."""
    return RequestLog(server.request_log, server.request_log_sample, json_sink())


async def request_log_ctx(app: web.Application) -> AsyncIterator[None]:
    """Flush the request log when the app stops; summarize it every minute when sampling."""
    reqlog = app[REQUEST_LOG]
    task: asyncio.Task[None] | None = None
    if reqlog.mode != "all":

        async def summaries() -> None:
            while True:
                await asyncio.sleep(SUMMARY_S)
                reqlog.summarize()

        task = asyncio.create_task(summaries(), name="request-log-summaries")
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        reqlog.summarize()
    reqlog.flush()
