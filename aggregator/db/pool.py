"""Connection pools with the jsonb codec the rest of the code expects."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from aggregator.config import DatabaseConfig


def _encode_jsonb(value: Any) -> bytes:
    # The binary jsonb format is a version byte (1) before the JSON text.
    return b"\x01" + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def init_connection(conn: asyncpg.Connection[Any]) -> None:
    """Encode and decode json and jsonb with orjson, in binary (so COPY can carry them too)."""
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", format="binary", encoder=_encode_jsonb, decoder=_decode_jsonb
    )
    await conn.set_type_codec(
        "json", schema="pg_catalog", format="binary", encoder=orjson.dumps, decoder=orjson.loads
    )


async def create_pool(database: DatabaseConfig | str, **kwargs: Any) -> asyncpg.Pool[Any]:
    """Create a pool for *database* (a DatabaseConfig or a DSN)."""
    if isinstance(database, str):
        database = DatabaseConfig(url=database)
    if database.url is None:
        raise ValueError("no database URL configured")
    pool = await asyncpg.create_pool(
        database.url,
        min_size=database.pool_min,
        max_size=database.pool_max,
        init=init_connection,
        **kwargs,
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection[Any]:
    """Open one connection to *dsn* with the codecs installed."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
    await init_connection(conn)
    return conn
