"""What a request asks for beyond its URL: a zip instead of JSON, gzip, a revalidation."""

from __future__ import annotations

from aiohttp import web


def wants_zip(request: web.BaseRequest) -> bool:
    """Whether the Accept header asks for a zip (and not for JSON)."""
    return accept_wants_zip(request.headers.get("Accept", ""))


def accept_wants_zip(accept: str) -> bool:
    """Whether an Accept header's value asks for a zip (and not for JSON)."""
    return "application/zip" in accept and "application/json" not in accept


def accepts_gzip(request: web.BaseRequest) -> bool:
    """Whether Accept-Encoding allows gzip (``gzip`` or ``*`` without ``q=0``)."""
    return encoding_allows_gzip(request.headers.get("Accept-Encoding", ""))


def encoding_allows_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header's value allows gzip."""
    for part in accept_encoding.split(","):
        coding, _, params = part.partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            return not (params and q.replace(".", "").strip("0") == "")
    return False


def not_modified(request: web.BaseRequest, etag: str, *, suffix: str = "") -> bool:
    """Whether If-None-Match names *etag* (a quoted strong ETag) or its variant tagged with
    *suffix* (``"<tag><suffix>"``), or is ``*``. Weak and strong forms match alike."""
    tags = request.if_none_match
    if not tags:
        return False
    bare = etag.strip('"')
    return any(t.value in ("*", bare) or (suffix and t.value == bare + suffix) for t in tags)
