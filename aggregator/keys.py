"""Every application key of the aiohttp apps (nothing else)."""

from __future__ import annotations

from typing import Final

import asyncpg
from aiohttp import web

from aggregator.config import Config

CONFIG: Final = web.AppKey("config", Config)
DB_POOL: Final = web.AppKey("db_pool", asyncpg.Pool)
