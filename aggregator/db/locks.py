"""Every PostgreSQL advisory lock the aggregator takes, and how it is taken.

- ``HARVEST_LOCK`` with an upstream's id: one run of that upstream at a time, held by a
  session for the whole run (a process that dies releases it with its connection).
- ``MERGE_LOCK``: one publish (and so one merge) at a time, held by the publishing
  transaction.
- ``MIGRATE_LOCK``: one migration runner at a time, held by its session (so that a file that
  cannot run in a transaction is covered too).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

import structlog

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

log = structlog.get_logger()

HARVEST_LOCK: Final = 0x7472_7368  # "trsh"
MERGE_LOCK: Final = 0x7472_736D_6572_6765  # "trsmerge"
MIGRATE_LOCK: Final = 0x7472_7361_6D69  # "trs-aggregator migrate"

_TRY_HARVEST: Final = "select pg_try_advisory_lock($1, $2)"
_UNLOCK_HARVEST: Final = "select pg_advisory_unlock($1, $2)"
_MERGE: Final = "select pg_advisory_xact_lock($1)"
_MIGRATE: Final = "select pg_advisory_lock($1)"
_UNLOCK_MIGRATE: Final = "select pg_advisory_unlock($1)"


@contextlib.asynccontextmanager
async def try_harvest_lock(
    conn: Connection, upstream_id: int, *, patience_s: float = 0.0
) -> AsyncIterator[bool]:
    """Try to take *upstream_id*'s harvest lock on *conn*, again every 0.1 s for up to
    *patience_s*; yield whether it was taken.

    A taken lock is released when the block ends, even when the block is cancelled.
    """
    taken: bool = await conn.fetchval(_TRY_HARVEST, HARVEST_LOCK, upstream_id)
    give_up = asyncio.get_running_loop().time() + patience_s
    while not taken and asyncio.get_running_loop().time() < give_up:
        await asyncio.sleep(0.1)
        taken = await conn.fetchval(_TRY_HARVEST, HARVEST_LOCK, upstream_id)
    try:
        yield taken
    finally:
        if taken:
            await asyncio.shield(_release_harvest_lock(conn, upstream_id))


async def _release_harvest_lock(conn: Connection, upstream_id: int) -> None:
    """Unlock; when that fails (the connection is broken), drop the connection, which
    releases its session locks, so that the failure never escapes unobserved."""
    try:
        await conn.execute(_UNLOCK_HARVEST, HARVEST_LOCK, upstream_id)
    except Exception as e:  # noqa: BLE001 - whatever failed, the dropped session releases it
        log.warning("harvest_lock_release_failed", upstream_id=upstream_id, error=repr(e))
        conn.terminate()


async def lock_merge(conn: Connection) -> None:
    """Take the merge lock until *conn*'s transaction ends."""
    await conn.execute(_MERGE, MERGE_LOCK)


@contextlib.asynccontextmanager
async def migrate_lock(conn: Connection) -> AsyncIterator[None]:
    """Hold the migration lock on *conn* (waiting for it) while the block runs."""
    await conn.execute(_MIGRATE, MIGRATE_LOCK)
    try:
        yield
    finally:
        await conn.execute(_UNLOCK_MIGRATE, MIGRATE_LOCK)
