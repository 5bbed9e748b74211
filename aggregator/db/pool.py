"""Connection pools with the jsonb codec the rest of the code expects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, TypeAlias

import asyncpg
import orjson

from aggregator.config import DatabaseConfig

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    #: A connection of its own or one a pool lends: what database functions take.
    Connection: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
    #: What one statement can run on outside a transaction: a connection or a pool.
    Executor: TypeAlias = Connection | asyncpg.Pool[Any]


def _encode_jsonb(value: Any) -> bytes:
    # The binary jsonb format is a version byte (1) before the JSON text.
    return b"\x01" + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def init_connection(conn: Connection) -> None:
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


_DATABASE_EXISTS: Final = "select 1 from pg_database where datname = $1"


async def ensure_database(admin_dsn: str, name: str) -> str:
    """Create database *name* on the server of *admin_dsn* if missing; return its DSN."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(admin_dsn)
    try:
        if not await conn.fetchval(_DATABASE_EXISTS, name):
            # An identifier cannot be a parameter; *name* is ours, quoted.
            await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    return admin_dsn.replace("/postgres?", f"/{name}?", 1)
