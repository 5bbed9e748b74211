"""How console pages are made and sent: the template environment, the page cache, the
Content-Security-Policy, and the fingerprinted static assets.

A page is rendered once per catalogue generation, in the same read-only snapshot the API's
answers are rendered in, and kept in the API's response cache (``api/cache.py``): a warm page
is found by the middleware before any handler runs. Pages that show harvest state rather than
the catalogue (the upstream pages) expire after a few seconds instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

import aiohttp_jinja2
import jinja2
import orjson
from aiohttp import web
from markupsafe import Markup

from aggregator.api.cache import RESPONSE_CACHE, Entry, cache_key, make_entry, send
from aggregator.console.highlight import STYLE_CSS
from aggregator.db import queries
from aggregator.errors import BadRequest, NotFound
from aggregator.keys import CONFIG

#: No inline script or style, nothing from elsewhere; JSON-LD is a data block, never run.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
HTML: Final = "text/html; charset=utf-8"
#: The TRS API the console links to (the default profile's first mount).
TRS_MOUNT: Final = "/ga4gh/trs/v2"
#: How long a page showing harvest state (not the catalogue) is served from memory.
LIVE_TTL_S: Final = 5.0

_TYPES: Final = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class Page:
    """What a page handler renders: a template, its context, and how long it stays true.

    Attributes:
        template: The template's file name under ``templates/``.
        context: The template's variables.
        status: The HTTP status.
        expires_in_s: Seconds after which it must be rendered again (a stale badge flips, or
            it shows live harvest state); None: good for the whole generation.
    """

    template: str
    context: dict[str, Any]
    status: int = 200
    expires_in_s: float | None = None


Build = Callable[[Any], Awaitable[Page]]


# -- static assets ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Asset:
    """A static file, served under a name that carries its content hash."""

    url: str
    entry: Entry


def _load_assets() -> dict[str, Asset]:
    folder = resources.files("aggregator.console") / "static"
    out: dict[str, Asset] = {}
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        name = item.name
        stem, dot, ext = name.rpartition(".")
        if not dot or "." + ext not in _TYPES:
            continue
        body = item.read_bytes()
        if name == "console.css":
            body += b"\n" + STYLE_CSS.encode()
        digest = hashlib.blake2b(body, digest_size=6).hexdigest()
        entry = make_entry(200, body, _TYPES["." + ext], generation=None)
        entry.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        entry.headers["X-Content-Type-Options"] = "nosniff"
        out[name] = Asset(f"/static/{stem}.{digest}.{ext}", entry)
    return out


ASSETS: Final = _load_assets()
_BY_URL: Final = {a.url.rsplit("/", 1)[1]: a for a in ASSETS.values()}


async def get_static(request: web.Request) -> web.Response:
    """GET /static/{name}: a fingerprinted asset, cacheable for ever."""
    asset = _BY_URL.get(request.match_info["name"])
    if asset is None:
        return web.Response(status=404, text="no such asset", headers=PAGE_HEADERS)
    return await send(request, asset.entry)


async def no_icon(_request: web.Request) -> web.Response:
    """GET /favicon.ico: none (browsers ask for it beside any document, text ones too)."""
    return web.Response(status=204, headers={"Cache-Control": "public, max-age=86400"})


# -- URLs and filters --------------------------------------------------------------------------


def tool_path(tool_id: str) -> str:
    """The console URL of a tool."""
    return "/tools/" + quote(tool_id, safe="")


def version_path(tool_id: str, key: str) -> str:
    """The console URL of a tool version."""
    return f"{tool_path(tool_id)}/versions/{quote(key, safe='')}"


def file_path(tool_id: str, key: str, descriptor_type: str, path: str) -> str:
    """The console URL of one file of a version."""
    query = urlencode({"type": descriptor_type, "path": path})
    return f"{version_path(tool_id, key)}/files?{query}"


def upstream_path(name: str, **query: Any) -> str:
    """The console URL of an upstream (with *query*)."""
    tail = urlencode({k: v for k, v in query.items() if v is not None})
    return "/upstreams/" + quote(name, safe="") + (f"?{tail}" if tail else "")


def safe_href(url: Any) -> str | None:
    """*url* if it is an absolute http(s) URL (a link an upstream gave us), else None."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    return url.strip() if parts.scheme in ("http", "https") and parts.netloc else None


def when(value: dt.datetime | None) -> Markup:
    """A ``<time>`` element: UTC to the minute (the script adds how long ago)."""
    if value is None:
        return Markup("never")
    utc = value.astimezone(dt.UTC)
    return Markup('<time datetime="{}">{}</time>').format(
        utc.isoformat(timespec="seconds"), utc.strftime("%Y-%m-%d %H:%M UTC")
    )


def jsonld(data: Any) -> Markup:
    """JSON for a ``<script type="application/ld+json">`` block: nothing in it can close the
    element or start markup."""
    text = orjson.dumps(data).decode()
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return Markup(text)  # noqa: S704 - every character that could end the block is escaped


def text_list(value: Any) -> list[str]:
    """An upstream field that should be a list of strings, as one (anything else dropped)."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, str | int | float) and str(v)]
    return []


def text(value: Any) -> str:
    """An upstream field that should be a string, as one ('' for null, objects, arrays)."""
    return str(value) if isinstance(value, str | int | float) and value is not True else ""


def setup(app: web.Application) -> None:
    """Give *app* the console's template environment (autoescaping everything)."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("aggregator.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        static=lambda name: ASSETS[name].url,
        tool_path=tool_path,
        version_path=version_path,
        file_path=file_path,
        upstream_path=upstream_path,
    )
    env.filters.update(safe_href=safe_href, when=when, jsonld=jsonld, text_list=text_list)
    env.filters["text"] = text


# -- pages -------------------------------------------------------------------------------------


def origin(request: web.Request) -> str:
    """Our origin as clients reach it (``server.public_url`` when configured)."""
    public = request.app[CONFIG].server.public_url.rstrip("/")
    return public or f"{request.scheme}://{request.host}"


async def _chrome(conn: Any, generation: int) -> dict[str, Any]:
    tools, _, published_at = await queries.catalogue_summary(conn)
    return {"catalogue": {"tools": tools, "generation": generation, "published_at": published_at}}


def _entry(request: web.Request, page: Page, chrome: Mapping[str, Any], generation: int) -> Entry:
    context = {**chrome, **page.context, "request_path": request.path}
    body = aiohttp_jinja2.render_string(page.template, request, context).encode()
    expires = None if page.expires_in_s is None else time.monotonic() + page.expires_in_s
    return make_entry(
        page.status, body, HTML, generation=generation, headers=PAGE_HEADERS, expires=expires
    )


def error_page(status: int, message: str) -> Page:
    """The page shown for a bad request or a missing resource."""
    title = "Not found" if status == 404 else "Bad request"
    return Page("error.html", {"title": title, "message": message, "status": status}, status)


async def serve_page(request: web.Request, build: Build) -> web.Response:
    """Send the page *build* renders, from the cache when this generation already has it."""
    cache = request.app[RESPONSE_CACHE]
    key = cache_key(request)
    entry = cache.get(key)
    if entry is None:

        async def render(conn: Any, generation: int) -> Entry:
            chrome = await _chrome(conn, generation)
            try:
                page = await build(conn)
            except (NotFound, BadRequest) as e:
                page = error_page(e.status, e.message)
            return _entry(request, page, chrome, generation)

        entry = await cache.fill(key, render)
    return await send(request, entry)
