"""The HTTP client of one upstream: timeouts, size and rate limits, retries, redirects, breaker,
and where requests may go (``egress``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import random
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from ipaddress import ip_address
from typing import Any, Final
from urllib.parse import urljoin

import aiohttp
import orjson
import structlog
from aiolimiter import AsyncLimiter
from multidict import CIMultiDictProxy
from yarl import URL

from aggregator.config import UpstreamConfig
from aggregator.errors import (
    InvalidUpstreamData,
    UpstreamHTTPError,
    UpstreamUnavailable,
)
from aggregator.harvest import records
from aggregator.harvest.egress import (
    Decision,
    EgressPolicy,
    PublicResolver,
    Purpose,
    Refused,
    RefusedAddress,
)
from aggregator.harvest.http1 import (
    CannotConnect,
    Limits,
    MalformedAnswer,
    OriginClient,
    SlowBody,
    default_tls,
)

log = structlog.get_logger()

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS: Final = 5
_CHUNK: Final = 64 * 1024


class CircuitOpen(UpstreamUnavailable):
    """The upstream failed too many requests in a row; this run sends it no more."""


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
        """Decode the body as JSON; raise InvalidUpstreamData when it is not.

        Records that cannot be stored (see ``records``) are not refused here: a listing
        screens its entries one by one.
        """
        return self.decoded()[0]

    def decoded(self) -> tuple[Any, bool]:
        """``json``, and whether nothing but nesting can make a record in it unstorable (the
        body was read strictly and is ``records.plain_text``)."""
        try:
            value, strict = records.decode(self.body)
        except orjson.JSONDecodeError as e:
            raise InvalidUpstreamData(
                f"malformed JSON from {self.url}: {e}", url=self.url
            ) from None
        return value, strict and records.plain_text(self.body)

    def record(self) -> Any:
        """Decode the body as one record: InvalidUpstreamData when any part of it cannot be
        stored and served (a NUL character, invalid UTF-8, a number out of range, nesting
        too deep)."""
        try:
            value, why = records.record_problem(self.body)
        except orjson.JSONDecodeError as e:
            raise InvalidUpstreamData(
                f"malformed JSON from {self.url}: {e}", url=self.url
            ) from None
        if why is not None:
            raise InvalidUpstreamData(f"refused the answer of {self.url}: {why}", url=self.url)
        return value


@dataclass(slots=True)
class UpstreamClient:
    """Talks to one upstream through a shared ClientSession, within that upstream's limits.

    Requests wait for a free slot (*concurrency*), then for the rate limit and any
    ``Retry-After`` pause the upstream asked for; timeouts, connection failures, 429 and 5xx
    are retried with exponential backoff and full jitter. After *abort_after_failures*
    requests in a row failed even with their retries, every further request fails at once
    with CircuitOpen.

    Requests go where ``policy`` allows (see ``egress``): the token only to the upstream's own
    origin; hosts neither the upstream's nor listed by the operator are reached through a
    session of this client's own whose resolver keeps only public addresses. Requests to the
    upstream's own origin take the lean keep-alive client of ``http1``; all others take
    aiohttp. ``close()`` releases this client's own connections.

    Attributes:
        session: The aiohttp session (owned by the caller).
        upstream: Limits and credentials come from here.
        token: A bearer token, if the upstream needs one.
        traffic: Requests, bytes and 304 answers are counted here.
        tripped: Why the breaker stopped this client, once it has.
        policy: Where requests may go, and with which credentials.
        tls: The TLS context for an HTTPS upstream's own origin (default: the system's
            trusted certificates).
    """

    session: aiohttp.ClientSession
    upstream: UpstreamConfig
    token: str | None = None
    traffic: Traffic = field(default_factory=Traffic)
    tripped: str | None = None
    tls: ssl.SSLContext | None = None
    policy: EgressPolicy = field(init=False)
    _public_session: aiohttp.ClientSession | None = None
    _semaphore: asyncio.Semaphore = field(init=False)
    _limiter: AsyncLimiter | None = field(init=False)
    _not_before: float = 0.0
    _failures_in_a_row: int = 0
    _timeout: aiohttp.ClientTimeout = field(init=False)
    _limits: Limits = field(init=False)
    _direct: OriginClient | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._semaphore = asyncio.Semaphore(self.upstream.concurrency)
        # A bucket of one request that empties at the rate limit: requests evenly spaced.
        rate = self.upstream.rate_limit
        self._limiter = AsyncLimiter(1, 1.0 / rate) if rate > 0 else None
        self.policy = EgressPolicy(
            self.upstream.url,
            file_hosts=self.upstream.file_hosts,
            redirect_hosts=self.upstream.redirect_hosts,
        )
        u = self.upstream
        self._timeout = aiohttp.ClientTimeout(
            total=u.timeout_s, sock_connect=u.connect_timeout_s, sock_read=u.timeout_s
        )
        self._limits = Limits(
            timeout_s=u.timeout_s,
            connect_timeout_s=u.connect_timeout_s,
            max_body_bytes=u.max_body_bytes,
            min_bytes_per_s=u.min_bytes_per_s,
            min_rate_after_s=u.min_rate_after_s,
        )
        origin = URL(u.url)
        if origin.scheme in ("http", "https") and origin.raw_host and origin.port:
            self._direct = OriginClient(
                origin.raw_host,
                origin.port,
                host_header=origin.host_port_subcomponent or origin.raw_host,
                headers=self.session.headers,
                max_idle=u.concurrency,
                tls=(self.tls or default_tls()) if origin.scheme == "https" else None,
            )

    async def get(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        accept: str = "application/json",
        ok_404: bool = False,
        validators: Validators | None = None,
        purpose: Purpose = "api",
    ) -> Response | None:
        """GET *url*, retrying timeouts, 429 and 5xx; None for a 404 when *ok_404*.

        *purpose* ``api`` (the default) keeps to the upstream's origin; ``file`` may fetch
        from other hosts, without credentials (see ``egress``). With *validators* the
        request is conditional and may answer 304. Raises Refused for a URL the policy
        refuses, UpstreamUnavailable when retries are exhausted (CircuitOpen once the
        breaker has tripped), UpstreamHTTPError for any other non-2xx answer or a refused
        redirect, and InvalidUpstreamData for a body over the size limit.
        """
        if self.tripped:
            raise CircuitOpen(self.tripped, url=url)
        decision = self.policy.decide(url, purpose)
        attempt = 0
        while True:
            try:
                response = await self._get_once(
                    url,
                    decision,
                    params=params,
                    accept=accept,
                    validators=validators,
                    purpose=purpose,
                )
            except (
                TimeoutError,
                aiohttp.ClientConnectionError,
                aiohttp.ClientPayloadError,
                SlowBody,
            ) as e:
                problem = self._describe(e)
                delay = None
            except aiohttp.ClientError as e:
                # Anything else aiohttp refuses (a URL it cannot request, an answer it cannot
                # parse, such as an oversized header) is this request's failure; not retried.
                raise UpstreamHTTPError(f"{self._describe(e)} (from {url})", url=url) from None
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
                delay = random.uniform(0, self.upstream.backoff_s * 2**attempt)  # noqa: S311
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
        """GET *url* and decode JSON as one record (``Response.record``); None for a
        tolerated 404."""
        response = await self.get(url, params=params, ok_404=ok_404)
        return None if response is None else (response.record(), response)

    async def close(self) -> None:
        """Close the connections to the upstream's origin and the session used for hosts
        other than the upstream's own."""
        if self._direct is not None:
            self._direct.close()
        if self._public_session is not None:
            await self._public_session.close()
            self._public_session = None

    def _session_for(self, *, trusted_host: bool) -> aiohttp.ClientSession:
        """The shared session for trusted hosts; for others, one resolving public addresses
        only."""
        if trusted_host:
            return self.session
        if self._public_session is None:
            self._public_session = aiohttp.ClientSession(
                headers=self.session.headers,
                connector=aiohttp.TCPConnector(
                    limit=self.upstream.concurrency,
                    resolver=PublicResolver(self.policy),
                    ttl_dns_cache=None,
                    use_dns_cache=False,
                ),
            )
        return self._public_session

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

    async def _get_once(
        self,
        url: str,
        decision: Decision,
        *,
        params: Mapping[str, str] | None,
        accept: str,
        validators: Validators | None,
        purpose: Purpose,
    ) -> Response:
        base_headers = {"Accept": accept}
        if validators is not None:
            base_headers.update(validators.headers())
        async with self._semaphore:
            for _ in range(MAX_REDIRECTS + 1):
                await self._wait_turn()
                self.traffic.requests += 1
                headers = dict(base_headers)
                # Credentials go to the upstream's own origin, never where it redirects.
                if self.token and decision.credentials:
                    headers["Authorization"] = f"Bearer {self.token}"
                if decision.credentials and self._direct is not None:
                    # The upstream's own origin (the decision says so).
                    response = await self._get_direct(self._direct, url, params, headers)
                else:
                    response = await self._get_aiohttp(url, params, headers, decision)
                if response.status in REDIRECT_STATUSES and "Location" in response.headers:
                    target = urljoin(response.url, response.headers["Location"])
                    try:
                        decision = self.policy.decide(
                            target, "file" if purpose == "file" else "redirect"
                        )
                    except Refused as e:
                        raise UpstreamHTTPError(
                            f"redirect from {response.url} to {target} refused: {e}",
                            url=response.url,
                            status=response.status,
                        ) from None
                    url, params = target, None
                    continue
                if response.status == 304:
                    self.traffic.not_modified += 1
                    return Response(response.url, 304, response.headers, b"")
                self.traffic.bytes += len(response.body)
                return response
        raise UpstreamHTTPError(f"more than {MAX_REDIRECTS} redirects from {url}", url=url)

    async def _get_direct(
        self,
        direct: OriginClient,
        url: str,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
    ) -> Response:
        """One request through the lean client (the body read whole, within the limits)."""
        target = URL(url)
        if params:
            target = target.extend_query(params)
        where = str(target)
        answer = await direct.get(target.raw_path_qs or "/", headers, self._limits, url=where)
        return Response(where, answer.status, answer.headers, answer.body)

    async def _get_aiohttp(
        self,
        url: str,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
        decision: Decision,
    ) -> Response:
        """One request through aiohttp; the body is left unread for a redirect or a 304."""
        try:
            resp = await self._session_for(trusted_host=decision.trusted_host).get(
                url,
                params=params,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.__cause__, RefusedAddress):
                raise Refused(f"refused {url}: {e.__cause__}", url=url) from None
            raise
        async with resp:
            self._check_peer(resp, trusted_host=decision.trusted_host)
            if resp.status == 304 or (
                resp.status in REDIRECT_STATUSES and "Location" in resp.headers
            ):
                return Response(str(resp.url), resp.status, resp.headers, b"")
            body = await self._read_body(resp)
            return Response(str(resp.url), resp.status, resp.headers, body)

    def _check_peer(self, resp: aiohttp.ClientResponse, *, trusted_host: bool) -> None:
        """Refuse an answer from an address the policy does not allow (the resolver already
        keeps such addresses out; this checks the socket itself)."""
        if trusted_host or resp.connection is None or resp.connection.transport is None:
            return
        peer = resp.connection.transport.get_extra_info("peername")
        host = resp.url.host or ""
        if peer:
            address = ip_address(str(peer[0]).split("%", 1)[0])
            if not self.policy.address_allowed(host, address):
                raise Refused(f"refused {resp.url}: connected to {address}, not public")

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body, decompressed, refused once it exceeds max_body_bytes: the limit counts
        decompressed bytes as they arrive, so a compression bomb is cut at the limit."""
        limit = self.upstream.max_body_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise InvalidUpstreamData(
                f"body of {resp.content_length} bytes from {resp.url} is over the limit of {limit}",
                url=str(resp.url),
            )
        min_rate = self.upstream.min_bytes_per_s
        encoded = resp.headers.get("Content-Encoding", "identity").strip().lower() != "identity"
        if (
            not encoded
            and resp.content_length is not None
            and resp.content_length <= min_rate * self.upstream.min_rate_after_s
        ):
            # Small enough to be complete before its rate would be checked: read it at once.
            return await resp.read()
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
                raise SlowBody(
                    f"body arriving at {size / elapsed:.0f} bytes/s, below the "
                    f"minimum of {min_rate} bytes/s"
                )
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
        if isinstance(e, SlowBody):
            return f"too slow: {e}"
        if isinstance(e, aiohttp.ClientPayloadError):
            return f"connection broken while reading the body ({_first_line(e)})"
        if isinstance(e, aiohttp.ServerDisconnectedError):
            return "connection closed by the server before it answered"
        if isinstance(e, aiohttp.ClientConnectorError | CannotConnect):
            return f"cannot connect: {e.os_error.strerror or e.os_error}"
        if isinstance(e, MalformedAnswer):
            return f"malformed answer: {_first_line(e)}"
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
