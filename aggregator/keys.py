"""The application keys every part of the aiohttp apps shares (nothing else).

A key whose value is a type of one ``api`` module lives beside that type
(``api.cache.RESPONSE_CACHE``): nothing at the base of the package imports from ``api``.
"""

from __future__ import annotations

from typing import Final

import asyncpg
from aiohttp import web

from aggregator.config import Config

CONFIG: Final = web.AppKey("config", Config)
DB_POOL: Final = web.AppKey("db_pool", asyncpg.Pool)
OPENAPI: Final = web.AppKey("openapi", bytes)
