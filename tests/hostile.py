"""Hostile test servers: a registry whose answers a test rewrites, and "another host" that
records who asked it for what (with which credentials)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Rewrite = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
TOKEN: Final = "tok-9f2c41d7e8a6b5"


@dataclass
class Seen:
    """One request a server received: path with query, and its Authorization header."""

    host: str
    path_qs: str
    authorization: str | None


@dataclass
class Recorder:
    """Requests seen, and rewrite rules armed by the test (first matching rule answers)."""

    seen: list[Seen] = field(default_factory=list)
    rules: list[tuple[Callable[[web.Request], bool], Rewrite]] = field(default_factory=list)

    def middleware(self) -> Any:
        """Record every request, then apply the first matching rule."""

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.seen.append(
                Seen(request.host, request.path_qs, request.headers.get("Authorization"))
            )
            for matches, rewrite in self.rules:
                if matches(request):
                    return await rewrite(request, handler)
            return await handler(request)

        return record

    def authorizations(self) -> set[str | None]:
        """Every Authorization header value received (None: a request without one)."""
        return {s.authorization for s in self.seen}


RECORDER: Final = web.AppKey("recorder", Recorder)


def other_host(files: Mapping[str, bytes | Any]) -> web.Application:
    """A plain server: *files* by path (bytes as they are, anything else as JSON), 404 else."""
    recorder = Recorder()
    app = web.Application(middlewares=[recorder.middleware()])
    app[RECORDER] = recorder

    async def serve(request: web.Request) -> web.StreamResponse:
        found = files.get(request.path)
        if found is None:
            return web.json_response({"code": 404, "message": "not here"}, status=404)
        if isinstance(found, bytes):
            return web.Response(body=found, content_type="text/plain")
        return web.json_response(found)

    app.router.add_get("/{tail:.*}", serve)
    return app


def ends_with(suffix: str) -> Callable[[web.Request], bool]:
    """Match requests whose decoded path ends with *suffix*."""
    return lambda r: r.path.endswith(suffix)


def redirect_to(base: str) -> Rewrite:
    """Answer 302 to the same path and query on *base* (``http://host:port``)."""

    async def rewrite(request: web.Request, handler: Handler) -> web.StreamResponse:
        raise web.HTTPFound(base + request.path_qs)

    return rewrite


def with_header(name: str, value: str) -> Rewrite:
    """Answer as usual, with header *name* set to *value*."""

    async def rewrite(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers[name] = value
        return response

    return rewrite


def body_rewritten(change: Callable[[bytes], bytes]) -> Rewrite:
    """Answer the usual body passed through *change* (headers but the length kept)."""

    async def rewrite(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        assert isinstance(response, web.Response) and response.body is not None
        body = change(bytes(response.body))  # type: ignore[arg-type]
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-length", "content-type", "etag")
        }
        return web.Response(body=body, headers=headers, content_type="application/json")

    return rewrite
