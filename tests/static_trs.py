"""Serve a static TRS tree (Yevis layout) the way GitHub Pages does, on 127.0.0.1 only.

``<base>/<path>`` answers ``<folder>/<path>/index.json``; a directory without its trailing
slash is redirected to it. JSON string values that are absolute https URLs (file paths on Zenodo
or GitHub) are rewritten to ``/_external/<host>/...`` on this server, which answers 404, so a
harvest never reaches beyond the machine; file contents are left as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web

REQUESTS: Final = web.AppKey("requests", list[str])


def _localise(value: Any, origin: str) -> Any:
    if isinstance(value, str) and value.startswith("https://"):
        return origin + value[len("https://") :]
    if isinstance(value, list):
        return [_localise(v, origin) for v in value]
    if isinstance(value, dict):
        return {k: _localise(v, origin) for k, v in value.items()}
    return value


def make_static_app(folder: Path, *, base: str = "/ga4gh/trs/v2") -> web.Application:
    """An app serving *folder* as a static TRS tree under *base*."""
    app = web.Application()
    app[REQUESTS] = []

    async def tree(request: web.Request) -> web.StreamResponse:
        app[REQUESTS].append(request.raw_path)
        rel = request.match_info["path"]
        target = (folder / rel.strip("/")).resolve()
        if folder.resolve() not in (target, *target.parents):
            raise web.HTTPNotFound
        index = target / "index.json"
        if not index.is_file():
            raise web.HTTPNotFound
        if rel and not rel.endswith("/"):
            raise web.HTTPMovedPermanently(f"{base}/{rel}/")
        doc = _localise(orjson.loads(index.read_bytes()), f"http://{request.host}/_external/")
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def external(request: web.Request) -> web.StreamResponse:
        app[REQUESTS].append(request.raw_path)
        raise web.HTTPNotFound

    app.router.add_get(base + "/{path:.*}", tree)
    app.router.add_get("/_external/{path:.*}", external)
    return app
