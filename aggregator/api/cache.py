"""Rendered responses served from memory, valid for one catalogue generation.

The catalogue changes only when a harvest publishes, which bumps ``catalogue_state.generation``
and announces it with ``NOTIFY trs_aggregator_catalogue``. Every API process listens on that
channel (``GenerationWatcher``) and drops its cache when the generation changes, so a response
rendered once is served from memory until the next publish.

A response is rendered inside one read-only repeatable-read transaction that also reads the
generation, and is kept only if that is still the generation the process knows: a render that
straddles a publish is served once and never cached. While the listener is disconnected the
generation is unknown and nothing is cached. Concurrent misses on one key render once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gzip
import hashlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import structlog
from aiohttp import web
from multidict import CIMultiDict

from aggregator.api.negotiation import accepts_gzip, not_modified, wants_zip
from aggregator.config import ServerConfig
from aggregator.db.generation import CATALOGUE_CHANNEL, catalogue_generation
from aggregator.db.pool import create_pool
from aggregator.db.queries import PageIndex, ToolQuery, page_index
from aggregator.keys import CONFIG, DB_POOL

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

log = structlog.get_logger()

#: Bodies at least this large are sent gzip-compressed to clients that accept it.
GZIP_MIN_BYTES: Final = 1024
#: Bodies larger than this are compressed in a thread rather than on the event loop.
_GZIP_INLINE_MAX: Final = 256 * 1024
#: How often the listener also reads the generation (a lost connection is noticed too).
POLL_S: Final = 5.0
#: How often a replica's generation is read while it has yet to replay an announced one.
REPLAY_POLL_S: Final = 0.05
_MAX_INDEXES: Final = 256
#: The application_name of the listening connection (as pg_stat_activity shows it).
LISTENER_NAME: Final = "trs-aggregator-catalogue-listener"

#: Sent with every response: any origin may read it, paging headers included.
CORS_HEADERS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": (
        "next_page, last_page, self_link, current_offset, "
        "current_limit, Link, ETag, Content-Disposition"
    ),
}

#: Renders one answer from a connection in a snapshot, at the catalogue generation given.
Render = Callable[["Connection", int], Awaitable["Entry"]]


class Entry:
    """A rendered response.

    Attributes:
        status: The HTTP status.
        body: The exact bytes sent.
        headers: Every header sent with it (Content-Type, ETag, CORS, paging …), ready to hand
            to each response.
        etag: The strong ETag (a hash of the body) or None (errors).
        expires: ``time.monotonic()`` after which it must be rendered again (a ``stale`` flag
            it shows flips then), or None.
        compressible: Whether clients that accept gzip get it compressed.
        gzipped: The gzip-compressed variant, once made.
    """

    __slots__ = (
        "body",
        "compressible",
        "etag",
        "expires",
        "gzipped",
        "headers",
        "route",
        "status",
        "wire_head",
    )

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str],
        etag: str | None,
        expires: float | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = CIMultiDict(headers)
        self.etag = etag
        self.expires = expires
        self.gzipped: Entry | None = None
        #: The route template that rendered it, once known (for the request metrics).
        self.route: str | None = None
        #: Its status line and fixed headers as sent on the wire, once made (api.fastpath).
        self.wire_head: bytes | None = None
        self.compressible = (
            len(body) >= GZIP_MIN_BYTES
            and "Content-Encoding" not in headers
            and headers.get("Content-Type", "").startswith(("application/json", "text/"))
        )

    @property
    def size(self) -> int:
        """Bytes held, roughly."""
        return len(self.body) + 512 + (self.gzipped.size if self.gzipped else 0)


def cache_key(request: web.BaseRequest) -> Hashable:
    """What an answer depends on: the URL as sent (scheme, host, path and query) and whether
    the client asked for a zip by Accept header."""
    return (request.scheme, request.host, request.raw_path, wants_zip(request))


def make_entry(
    status: int,
    body: bytes,
    content_type: str,
    *,
    generation: int | None,  # noqa: ARG001 - says what it was rendered at; the ETag ignores it
    headers: dict[str, str] | None = None,
    expires: float | None = None,
    vary: str = "Accept-Encoding",
) -> Entry:
    """An Entry with the standard headers; 200s get a strong ETag: a hash of the body.

    The cache is keyed by generation, the ETag is not: a client revalidating after a publish
    that did not change this answer still gets 304. (*generation* is the one the answer was
    rendered at.)
    """
    all_headers = {"Content-Type": content_type, **CORS_HEADERS, **(headers or {})}
    etag = None
    if status == 200:
        etag = f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'
        all_headers["ETag"] = etag
        all_headers["Cache-Control"] = "public, no-cache"
        all_headers["Vary"] = vary
    return Entry(status, body, all_headers, etag, expires)


def _gzip(entry: Entry, body: bytes) -> Entry:
    headers = {**entry.headers, "Content-Encoding": "gzip"}
    etag = _gzip_etag(entry.etag)
    if etag:
        headers["ETag"] = etag
    return Entry(entry.status, body, headers, etag, entry.expires)


_GZIP_SUFFIX: Final = "-gz"


def _gzip_etag(etag: str | None) -> str | None:
    return etag[:-1] + _GZIP_SUFFIX + '"' if etag else None


def respond(request: web.BaseRequest, entry: Entry) -> web.Response | None:
    """Send *entry*: 304 when If-None-Match names it, gzip when accepted and worth it.

    None when the gzip variant has yet to be made (``await compress(entry)``, then again).
    """
    gz = entry.compressible and accepts_gzip(request)
    if entry.etag is not None and not_modified(request, entry.etag, suffix=_GZIP_SUFFIX):
        keep = {
            k: v
            for k, v in entry.headers.items()
            if k in ("ETag", "Cache-Control", "Vary") or k.startswith("Access-Control")
        }
        if gz:
            keep["ETag"] = _gzip_etag(entry.etag) or ""
        return web.Response(status=304, headers=keep)
    if gz:
        if entry.gzipped is None:
            return None
        entry = entry.gzipped
    return web.Response(status=entry.status, body=entry.body, headers=entry.headers)


async def compress(entry: Entry) -> None:
    """Make the gzip variant of *entry* (in a thread when the body is large)."""
    if entry.gzipped is not None:
        return
    if len(entry.body) > _GZIP_INLINE_MAX:
        body = await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(gzip.compress, entry.body, 6, mtime=0)
        )
    else:
        body = gzip.compress(entry.body, 6, mtime=0)
    entry.gzipped = _gzip(entry, body)


async def send(request: web.Request, entry: Entry) -> web.Response:
    """respond(), compressing first when needed."""
    response = respond(request, entry)
    if response is None:
        await compress(entry)
        response = respond(request, entry)
        assert response is not None
    return response


class ResponseCache:
    """Entries by request key, for the current generation only, least recently used dropped
    first beyond *max_bytes*; and the page indexes of /tools queries."""

    def __init__(
        self, pool: asyncpg.Pool[Any], *, max_bytes: int = ServerConfig().cache_mb * 1024 * 1024
    ) -> None:
        self.pool = pool
        self.max_bytes = max_bytes
        self.generation: int | None = None
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[Hashable, asyncio.Future[Entry]] = {}
        self._indexes: OrderedDict[ToolQuery, PageIndex] = OrderedDict()
        # The answers of the last known generation while the listener is down: served only
        # when the database cannot be reached, and again as current if it comes back at the
        # same generation.
        self._last: OrderedDict[Hashable, Entry] = OrderedDict()
        self._last_bytes = 0
        self.last_generation: int | None = None
        #: ``time.monotonic()`` until which the database is taken to be unreachable.
        self.unavailable_until = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def set_generation(self, generation: int | None) -> None:
        """Learn the catalogue's generation; a change drops everything cached."""
        if generation != self.generation:
            log.info(
                "catalogue_generation_changed",
                old=self.generation,
                new=generation,
                dropped=len(self._entries),
            )
            if generation is None:
                if self._entries:
                    self._last, self._last_bytes = self._entries, self._bytes
                    self.last_generation = self.generation
                self._entries = OrderedDict()
                self._bytes = 0
            elif generation == self.last_generation:
                self._entries, self._bytes = self._last, self._last_bytes
                self._last, self._last_bytes, self.last_generation = OrderedDict(), 0, None
            else:
                self._entries.clear()
                self._bytes = 0
                self._last, self._last_bytes, self.last_generation = OrderedDict(), 0, None
            self.generation = generation
            self._indexes.clear()

    def get(self, key: Hashable) -> Entry | None:
        """The cached entry for *key*, if it is still good."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires is not None and entry.expires <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def last(self, key: Hashable) -> Entry | None:
        """The answer of the last known generation for *key*, for when the database cannot be
        reached (None when there is none)."""
        entry = self._entries.get(key) or self._last.get(key)
        return entry if entry is not None and entry.status == 200 else None

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size

    def put(self, key: Hashable, entry: Entry, generation: int) -> None:
        """Keep *entry* if it was rendered at the current generation."""
        if generation != self.generation or self.generation is None:
            return
        self._drop(key)
        self._entries[key] = entry
        self._bytes += entry.size
        while self._bytes > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    async def fill(self, key: Hashable, render: Render) -> Entry:
        """Render *key* in a snapshot of the catalogue and keep it; one render per key at once."""
        pending = self._inflight.get(key)
        if pending is not None:
            with contextlib.suppress(asyncio.CancelledError):
                return await asyncio.shield(pending)
            if not pending.cancelled():
                raise asyncio.CancelledError
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            async with (
                self.pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                generation = await catalogue_generation(conn)
                entry = await render(conn, generation)
            self.put(key, entry, generation)
            future.set_result(entry)
        except Exception as e:
            future.set_exception(e)
            future.exception()  # retrieved: followers re-raise it, nobody else must
            raise
        except BaseException:
            future.cancel()
            raise
        else:
            return entry
        finally:
            del self._inflight[key]

    async def page_index(self, conn: Connection, generation: int, query: ToolQuery) -> PageIndex:
        """The page index of *query* at *generation*, computed once per generation."""
        if generation == self.generation:
            index = self._indexes.get(query)
            if index is not None:
                self._indexes.move_to_end(query)
                return index
        index = await page_index(conn, query)
        if generation == self.generation:
            self._indexes[query] = index
            if len(self._indexes) > _MAX_INDEXES:
                self._indexes.popitem(last=False)
        return index


RESPONSE_CACHE: Final = web.AppKey("response_cache", ResponseCache)


class GenerationWatcher:
    """Keeps a ResponseCache's generation current: LISTEN for publishes, and poll as a backstop.

    With a *replica*, the generation is read from the replica (LISTEN does not reach a standby):
    a notification from the primary makes the watcher read the replica's generation until it
    has replayed the announced one (every ``REPLAY_POLL_S``), so the cache never holds a
    generation the replica has not replayed, and answers rendered on the replica are cached
    from the moment it has.
    """

    def __init__(
        self,
        dsn: str,
        cache: ResponseCache,
        *,
        poll_s: float = POLL_S,
        replica: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.replica = replica
        self.cache = cache
        self.poll_s = poll_s
        self.ready = asyncio.Event()
        #: The newest generation the primary announced.
        self.announced = 0
        self._wake = asyncio.Event()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            generation = int(str(payload))
        except ValueError:
            log.warning("catalogue_notification_unreadable", payload=payload)
            return
        self.announced = max(self.announced, generation)
        if self.replica is not None:
            self._wake.set()
            return
        if self.cache.generation is None or generation > self.cache.generation:
            self.cache.set_generation(generation)

    async def _follow(self, reader: Connection, lost: asyncio.Event) -> None:
        """Read the generation from *reader* every poll_s, and (with a replica) soon after each
        announcement until the replica has caught up; return when the connection is lost."""
        while True:
            self._wake.clear()
            waits = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(self._wake.wait())]
            try:
                await asyncio.wait(waits, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
            finally:  # cancelled too when this watcher is
                for w in waits:
                    w.cancel()
            if lost.is_set():
                raise ConnectionResetError("the listening connection was closed")
            generation = await catalogue_generation(reader, timeout=self.poll_s)
            self.cache.set_generation(generation)
            while generation < self.announced and not lost.is_set():
                await asyncio.sleep(REPLAY_POLL_S)
                generation = await catalogue_generation(reader, timeout=self.poll_s)
                self.cache.set_generation(generation)

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff; the cache is off while down."""
        delay = 0.5
        while True:
            conns: list[Connection] = []
            try:
                conn = await asyncpg.connect(
                    self.dsn, timeout=10, server_settings={"application_name": LISTENER_NAME}
                )
                conns.append(conn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                reader = conn
                if self.replica is not None:
                    reader = await asyncpg.connect(
                        self.replica,
                        timeout=10,
                        server_settings={"application_name": LISTENER_NAME},
                    )
                    conns.append(reader)
                    reader.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener(CATALOGUE_CHANNEL, self._notified)
                self.cache.set_generation(await catalogue_generation(reader))
                self.ready.set()
                delay = 0.5
                await self._follow(reader, lost)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("catalogue_listener_lost", error=str(e), retry_in_s=delay)
                self.cache.set_generation(None)
                self.ready.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            finally:
                for c in conns:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(c.close(), 2)


GENERATION_WATCHER: Final = web.AppKey("generation_watcher", GenerationWatcher)


async def cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """The response cache and its generation listener, for the app's lifetime. With
    ``database.replica_url`` the cache renders from a pool of its own on the replica (everything
    else, the admin API's writes included, uses the primary's pool)."""
    config = app[CONFIG]
    replica = config.database.replica_url
    pool = (
        await create_pool(dataclasses.replace(config.database, url=replica))
        if replica
        else app[DB_POOL]
    )
    cache = ResponseCache(pool, max_bytes=config.server.cache_mb * 1024 * 1024)
    app[RESPONSE_CACHE] = cache
    assert config.database.url is not None
    app[GENERATION_WATCHER] = watcher = GenerationWatcher(
        config.database.url, cache, replica=config.database.replica_url
    )
    task = asyncio.create_task(watcher.run(), name="catalogue-generation-watcher")
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(watcher.ready.wait(), 10)
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if pool is not app[DB_POOL]:
        await pool.close()
