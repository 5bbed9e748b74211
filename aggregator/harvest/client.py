"""The HTTP client of one upstream: timeouts, size and rate limits, retries, redirects, breaker."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson
import structlog
from aiolimiter import AsyncLimiter
from multidict import CIMultiDictProxy

from aggregator.config import UpstreamConfig
from aggregator.errors import (
    InvalidUpstreamData,
    UpstreamHTTPError,
    UpstreamUnavailable,
)

log = structlog.get_logger()

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
MAX_REDIRECTS: Final = 5
_CHUNK: Final = 64 * 1024


class CircuitOpen(UpstreamUnavailable):
    """The upstream failed too many requests in a row; this run sends it no more."""


class _SlowBody(Exception):
    """A body arrived slower than the minimum rate."""


@dataclass(slots=True)
class Traffic:
    """What one run sent and received."""

    requests: int = 0
    bytes: int = 0
    not_modified: int = 0


@dataclass(frozen=True, slots=True)
class Validators:
    """What a conditional request sends: the ETag and Last-Modified of the stored answer."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        """If-None-Match and If-Modified-Since for these validators."""
        out = {}
        if self.etag:
            out["If-None-Match"] = self.etag
        if self.last_modified:
            out["If-Modified-Since"] = self.last_modified
        return out


@dataclass(frozen=True, slots=True)
class Response:
    """A finished upstream response (status 304 has an empty body)."""

    url: str
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def not_modified(self) -> bool:
        """Whether the upstream answered 304 to a conditional request."""
        return self.status == 304

    @property
    def validators(self) -> Validators:
        """The ETag and Last-Modified to send next time."""
        return Validators(self.headers.get("ETag"), self.headers.get("Last-Modified"))

    def json(self) -> Any:
        """Decode the body as JSON; raise InvalidUpstreamData when it is not."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as e:
            raise InvalidUpstreamData(
                f"malformed JSON from {self.url}: {e}", url=self.url
            ) from None


@dataclass(slots=True)
class UpstreamClient:
    """Talks to one upstream through a shared ClientSession, within that upstream's limits.

    Requests wait for a free slot (*concurrency*), then for the rate limit and any
    ``Retry-After`` pause the upstream asked for; timeouts, connection failures, 429 and 5xx
    are retried with exponential backoff and full jitter. After *abort_after_failures*
    requests in a row failed even with their retries, every further request fails at once
    with CircuitOpen.

    Attributes:
        session: The aiohttp session (owned by the caller).
        upstream: Limits and credentials come from here.
        token: A bearer token, if the upstream needs one.
        traffic: Requests, bytes and 304 answers are counted here.
        tripped: Why the breaker stopped this client, once it has.
    """

    session: aiohttp.ClientSession
    upstream: UpstreamConfig
    token: str | None = None
    traffic: Traffic = field(default_factory=Traffic)
    tripped: str | None = None
    _semaphore: asyncio.Semaphore = field(init=False)
    _limiter: AsyncLimiter | None = field(init=False)
    _not_before: float = 0.0
    _failures_in_a_row: int = 0
    _redirect_hosts: frozenset[str] = field(init=False)
    _timeout: aiohttp.ClientTimeout = field(init=False)

    def __post_init__(self) -> None:
        self._semaphore = asyncio.Semaphore(self.upstream.concurrency)
        # A bucket of one request that empties at the rate limit: requests evenly spaced.
        rate = self.upstream.rate_limit
        self._limiter = AsyncLimiter(1, 1.0 / rate) if rate > 0 else None
        self._redirect_hosts = frozenset(h.lower() for h in self.upstream.redirect_hosts)
        self._timeout = aiohttp.ClientTimeout(
            total=self.upstream.timeout_s,
            sock_connect=self.upstream.connect_timeout_s,
            sock_read=self.upstream.timeout_s,
        )

    async def get(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        accept: str = "application/json",
        ok_404: bool = False,
        validators: Validators | None = None,
    ) -> Response | None:
        """GET *url*, retrying timeouts, 429 and 5xx; None for a 404 when *ok_404*.

        With *validators* the request is conditional and may answer 304. Raises
        UpstreamUnavailable when retries are exhausted (CircuitOpen once the breaker has
        tripped), UpstreamHTTPError for any other non-2xx answer or a refused redirect, and
        InvalidUpstreamData for a body over the size limit.
        """
        if self.tripped:
            raise CircuitOpen(self.tripped, url=url)
        attempt = 0
        while True:
            try:
                response = await self._get_once(
                    url, params=params, accept=accept, validators=validators
                )
            except (
                TimeoutError,
                aiohttp.ClientConnectionError,
                aiohttp.ClientPayloadError,
                _SlowBody,
            ) as e:
                problem = self._describe(e)
                delay = None
            else:
                if response.status < 300 or response.not_modified:
                    self._failures_in_a_row = 0
                    return response
                if response.status == 404 and ok_404:
                    self._failures_in_a_row = 0
                    return None
                if response.status not in RETRY_STATUSES:
                    self._failures_in_a_row = 0
                    raise UpstreamHTTPError(
                        f"HTTP {response.status} from {response.url}",
                        url=response.url,
                        status=response.status,
                    )
                problem = f"HTTP {response.status}"
                delay = _retry_after(response.headers)
                if delay is not None:
                    if delay > self.upstream.max_retry_after_s:
                        self._failed(
                            f"HTTP {response.status} asking to retry after "
                            f"{delay:.0f}s, longer than the "
                            f"{self.upstream.max_retry_after_s:g}s we wait"
                        )
                        raise UpstreamUnavailable(
                            f"HTTP {response.status} from {url} asking to retry after "
                            f"{delay:.0f}s (Retry-After), longer than the "
                            f"{self.upstream.max_retry_after_s:g}s we wait",
                            url=url,
                            status=response.status,
                        )
                    # The pause applies to every request to this upstream, not just this one.
                    self._not_before = max(self._not_before, time.monotonic() + delay)
                    problem += f" (Retry-After {delay:g}s)"
            if attempt >= self.upstream.retries:
                message = f"{problem} from {url} after {attempt + 1} attempts"
                self._failed(message)
                raise UpstreamUnavailable(message, url=url)
            if delay is None:
                delay = random.uniform(0, self.upstream.backoff_s * 2**attempt)  # noqa: S311 - jitter
            attempt += 1
            log.info(
                "upstream_request_retried",
                url=url,
                problem=problem,
                attempt=attempt,
                delay_s=round(delay, 3),
            )
            await asyncio.sleep(delay)
            if self.tripped:
                raise CircuitOpen(self.tripped, url=url)

    async def get_json(
        self, url: str, *, params: Mapping[str, str] | None = None, ok_404: bool = False
    ) -> tuple[Any, Response] | None:
        """GET *url* and decode JSON; None for a tolerated 404."""
        response = await self.get(url, params=params, ok_404=ok_404)
        return None if response is None else (response.json(), response)

    def _failed(self, message: str) -> None:
        """Count a request that failed for good; trip the breaker after too many in a row."""
        self._failures_in_a_row += 1
        limit = self.upstream.abort_after_failures
        if limit and self._failures_in_a_row >= limit and not self.tripped:
            self.tripped = (
                f"stopped after {self._failures_in_a_row} requests in a row "
                f"failed; the last: {message}"
            )
            log.warning("upstream_circuit_tripped", reason=self.tripped)

    async def _wait_turn(self) -> None:
        """Wait out any Retry-After pause, then for the next slot of the rate limit."""
        pause = self._not_before - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        if self._limiter is not None:
            await self._limiter.acquire()

    def _redirect_allowed(self, origin: str, target: str) -> bool:
        parts = urlsplit(target)
        if parts.netloc == origin:
            return True
        host = (parts.hostname or "").lower()
        return host in self._redirect_hosts or parts.netloc.lower() in self._redirect_hosts

    async def _get_once(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None,
        accept: str,
        validators: Validators | None,
    ) -> Response:
        headers = {"Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if validators is not None:
            headers.update(validators.headers())
        origin: str | None = None
        async with self._semaphore:
            for _ in range(MAX_REDIRECTS + 1):
                await self._wait_turn()
                self.traffic.requests += 1
                async with self.session.get(
                    url,
                    params=params,
                    headers=headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                ) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        target = urljoin(str(resp.url), resp.headers["Location"])
                        origin = origin or urlsplit(url).netloc
                        if not self._redirect_allowed(origin, target):
                            raise UpstreamHTTPError(
                                f"redirect from {resp.url} to another host ({target}) refused",
                                url=str(resp.url),
                                status=resp.status,
                            )
                        url, params = target, None
                        continue
                    if resp.status == 304:
                        self.traffic.not_modified += 1
                        return Response(str(resp.url), 304, resp.headers, b"")
                    body = await self._read_body(resp)
                    return Response(str(resp.url), resp.status, resp.headers, body)
        raise UpstreamHTTPError(f"more than {MAX_REDIRECTS} redirects from {url}", url=url)

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self.upstream.max_body_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise InvalidUpstreamData(
                f"body of {resp.content_length} bytes from {resp.url} is over the limit of {limit}",
                url=str(resp.url),
            )
        min_rate = self.upstream.min_bytes_per_s
        if (
            resp.content_length is not None
            and resp.content_length <= min_rate * self.upstream.min_rate_after_s
        ):
            # Small enough to be complete before its rate would be checked: read it at once.
            body = await resp.read()
            self.traffic.bytes += len(body)
            return body
        chunks: list[bytes] = []
        size = 0
        started = time.monotonic()
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise InvalidUpstreamData(
                    f"body from {resp.url} is over the limit of {limit} bytes", url=str(resp.url)
                )
            chunks.append(chunk)
            elapsed = time.monotonic() - started
            if min_rate and elapsed > self.upstream.min_rate_after_s and size / elapsed < min_rate:
                raise _SlowBody(
                    f"body arriving at {size / elapsed:.0f} bytes/s, below the "
                    f"minimum of {min_rate} bytes/s"
                )
        self.traffic.bytes += size
        return b"".join(chunks)

    def _describe(self, e: BaseException) -> str:
        """Say what went wrong with a request in words an operator recognises."""
        u = self.upstream
        if isinstance(e, aiohttp.ConnectionTimeoutError):
            return f"connect timeout ({u.connect_timeout_s:g}s)"
        if isinstance(e, aiohttp.SocketTimeoutError):
            return f"read timeout (no data for {u.timeout_s:g}s)"
        if isinstance(e, TimeoutError):
            return f"timeout ({u.timeout_s:g}s for the whole request)"
        if isinstance(e, _SlowBody):
            return f"too slow: {e}"
        if isinstance(e, aiohttp.ClientPayloadError):
            return f"connection broken while reading the body ({_first_line(e)})"
        if isinstance(e, aiohttp.ServerDisconnectedError):
            return "connection closed by the server before it answered"
        if isinstance(e, aiohttp.ClientConnectorError):
            return f"cannot connect: {e.os_error.strerror or e.os_error}"
        if isinstance(e, aiohttp.ClientOSError) and e.errno == errno.ECONNRESET:
            return "connection reset by the server"
        return f"{type(e).__name__}: {_first_line(e)}".rstrip(": ")


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP date)."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
    return max(0.0, seconds)
