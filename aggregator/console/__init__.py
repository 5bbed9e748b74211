"""The web console at ``/``: server-rendered pages over the merged catalogue and the upstreams."""

from __future__ import annotations

from aiohttp import web

from aggregator.console import catalogue, operators, render, search


def add_routes(app: web.Application) -> None:
    """Mount the console's pages and assets on *app* (the API's application)."""
    render.setup(app)
    version = "/tools/{id}/versions/{version_id}"
    app.router.add_get("/", search.home)
    app.router.add_get("/tools/{id}", catalogue.tool_page)
    app.router.add_get(version, catalogue.version_page)
    app.router.add_get(version + "/files", catalogue.file_page)
    app.router.add_get("/upstreams", operators.upstreams_page)
    app.router.add_get("/upstreams/{name}", operators.upstream_page)
    app.router.add_get("/upstreams/{name}/runs/{run_id}", operators.run_page)
    app.router.add_get("/static/{name}", render.get_static)
    app.router.add_get("/favicon.ico", render.no_icon)
