"""The HTTP client of one upstream: timeouts, size limits, retries with backoff, redirects."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson
import structlog
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
MAX_RETRY_AFTER_S: Final = 60.0
_CHUNK: Final = 64 * 1024


@dataclass(slots=True)
class Traffic:
    """What one run sent and received."""

    requests: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class Response:
    """A finished upstream response."""

    url: str
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        """Decode the body as JSON; raise InvalidUpstreamData when it is not."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as e:
            raise InvalidUpstreamData(f"malformed JSON: {e}", url=self.url) from None


@dataclass(slots=True)
class UpstreamClient:
    """Talks to one upstream through a shared ClientSession, within that upstream's limits.

    Attributes:
        session: The aiohttp session (owned by the caller).
        upstream: Limits and credentials come from here.
        traffic: Requests and bytes are counted here.
        backoff_base_s: First retry delay; doubles on each attempt, with full jitter.
    """

    session: aiohttp.ClientSession
    upstream: UpstreamConfig
    token: str | None = None
    traffic: Traffic = field(default_factory=Traffic)
    backoff_base_s: float = 0.5
    _semaphore: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._semaphore = asyncio.Semaphore(self.upstream.concurrency)

    async def get(self, url: str, *, params: Mapping[str, str] | None = None,
                  accept: str = "application/json", ok_404: bool = False) -> Response | None:
        """GET *url*, retrying timeouts, 429 and 5xx; None for a 404 when *ok_404*.

        Raises UpstreamUnavailable when retries are exhausted, UpstreamHTTPError for any other
        non-2xx answer, InvalidUpstreamData for a body over the size limit.
        """
        attempt = 0
        while True:
            try:
                response = await self._get_once(url, params=params, accept=accept)
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
                problem = f"{type(e).__name__}: {e}".rstrip(": ")
                delay = None
            else:
                if response.status < 300:
                    return response
                if response.status == 404 and ok_404:
                    return None
                if response.status not in RETRY_STATUSES:
                    raise UpstreamHTTPError(f"HTTP {response.status} from {response.url}",
                                            url=response.url, status=response.status)
                problem = f"HTTP {response.status}"
                delay = _retry_after(response.headers)
            if attempt >= self.upstream.retries:
                raise UpstreamUnavailable(f"{problem} from {url} after {attempt + 1} attempts",
                                          url=url)
            if delay is None:
                delay = random.uniform(0, self.backoff_base_s * 2**attempt)  # noqa: S311
            attempt += 1
            log.info("upstream_request_retried", url=url, problem=problem, attempt=attempt,
                     delay_s=round(delay, 3))
            await asyncio.sleep(delay)

    async def get_json(self, url: str, *, params: Mapping[str, str] | None = None,
                       ok_404: bool = False) -> tuple[Any, Response] | None:
        """GET *url* and decode JSON; None for a tolerated 404."""
        response = await self.get(url, params=params, ok_404=ok_404)
        return None if response is None else (response.json(), response)

    async def _get_once(self, url: str, *, params: Mapping[str, str] | None,
                        accept: str) -> Response:
        headers = {"Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = aiohttp.ClientTimeout(total=self.upstream.timeout_s,
                                        sock_connect=self.upstream.connect_timeout_s,
                                        sock_read=self.upstream.timeout_s)
        origin = urlsplit(url).netloc
        async with self._semaphore:
            for _ in range(MAX_REDIRECTS + 1):
                self.traffic.requests += 1
                async with self.session.get(url, params=params, headers=headers,
                                            timeout=timeout, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        target = urljoin(str(resp.url), resp.headers["Location"])
                        if urlsplit(target).netloc != origin:
                            raise UpstreamHTTPError(
                                f"redirect from {resp.url} to another host ({target}) refused",
                                url=str(resp.url), status=resp.status)
                        url, params = target, None
                        continue
                    body = await self._read_body(resp)
                    return Response(str(resp.url), resp.status, resp.headers, body)
        raise UpstreamHTTPError(f"more than {MAX_REDIRECTS} redirects from {url}", url=url)

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self.upstream.max_body_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise InvalidUpstreamData(
                f"body of {resp.content_length} bytes is over the limit of {limit}",
                url=str(resp.url))
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise InvalidUpstreamData(f"body is over the limit of {limit} bytes",
                                          url=str(resp.url))
            chunks.append(chunk)
        self.traffic.bytes += size
        return b"".join(chunks)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP date), bounded."""
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
    return max(0.0, min(seconds, MAX_RETRY_AFTER_S))
