"""Every application key of the aiohttp apps (nothing else)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import asyncpg
from aiohttp import web

from aggregator.config import Config

if TYPE_CHECKING:
    from aggregator.api.cache import GenerationWatcher, ResponseCache
    from aggregator.api.reqlog import RequestLog

CONFIG: Final = web.AppKey("config", Config)
DB_POOL: Final = web.AppKey("db_pool", asyncpg.Pool)
RESPONSE_CACHE: Final = web.AppKey["ResponseCache"]("response_cache")
GENERATION_WATCHER: Final = web.AppKey["GenerationWatcher"]("generation_watcher")
REQUEST_LOG: Final = web.AppKey["RequestLog"]("request_log")
OPENAPI: Final = web.AppKey("openapi", bytes)
