"""The catalogue's generation: bumped by every publish and merge, announced to API processes.

Every change to the served catalogue happens in one transaction that ends with
``advance_generation``; API processes LISTEN on ``CATALOGUE_CHANNEL`` (the payload is the new
generation) and drop what they cached for older generations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from aggregator.db.pool import Connection, Executor

#: NOTIFY channel of new catalogue generations; the payload is the generation number.
CATALOGUE_CHANNEL: Final = "trs_aggregator_catalogue"

_LOCK: Final = "select 1 from catalogue_state for update"
_ADVANCE: Final = """
update catalogue_state set generation = generation + 1, published_at = now()
returning generation
"""
_ANNOUNCE: Final = "select pg_notify($1, $2)"
_GENERATION: Final = "select generation from catalogue_state"


async def lock_catalogue(conn: Connection) -> None:
    """Serialise catalogue changes: hold the catalogue's state row until the transaction ends."""
    await conn.execute(_LOCK)


async def advance_generation(conn: Connection) -> int:
    """Bump the generation and announce it on CATALOGUE_CHANNEL; return it.

    Call inside the transaction that changed the catalogue: the notification is delivered
    when it commits, and not at all when it rolls back.
    """
    generation: int = await conn.fetchval(_ADVANCE)
    await conn.execute(_ANNOUNCE, CATALOGUE_CHANNEL, str(generation))
    return generation


async def catalogue_generation(
    conn: Executor,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - asyncpg's own per-query timeout
) -> int:
    """The catalogue's current generation (waiting at most *timeout* seconds for it)."""
    value: int = await conn.fetchval(_GENERATION, timeout=timeout)
    return value
