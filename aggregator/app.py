"""The aiohttp application factory and its cleanup contexts."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from aggregator import console
from aggregator.api import admin, openapi, provenance, upstreams
from aggregator.api.cache import cache_ctx
from aggregator.api.handlers import add_routes
from aggregator.api.middleware import request_context
from aggregator.api.reqlog import REQUEST_LOG, request_log_ctx, request_log_for
from aggregator.config import Config
from aggregator.db.pool import create_pool
from aggregator.keys import CONFIG, DB_POOL
from aggregator.ops import metrics


async def db_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the database pool for the app's lifetime."""
    app[DB_POOL] = pool = await create_pool(app[CONFIG].database)
    yield
    await pool.close()


def create_app(config: Config) -> web.Application:
    """Build the API application for *config*."""
    app = web.Application(middlewares=[metrics.observe, request_context, metrics.mark_handled])
    app[CONFIG] = config
    app[REQUEST_LOG] = request_log_for(config.server)
    app.cleanup_ctx.extend([request_log_ctx, db_pool_ctx, cache_ctx])  # cache reads the pool
    add_routes(app)
    provenance.add_routes(app)
    openapi.add_routes(app)
    upstreams.add_routes(app)
    admin.add_routes(app)
    metrics.add_routes(app)
    console.add_routes(app)
    return app
