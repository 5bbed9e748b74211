"""Telling a database that cannot be reached from every other failure."""

from __future__ import annotations

import asyncpg

from aggregator.errors import DatabaseUnavailable

_UNAVAILABLE = (
    OSError,  # refused, reset, no such socket
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was lost
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, starting up
    asyncpg.exceptions.ConnectionDoesNotExistError,
)


def is_unavailable(e: BaseException) -> bool:
    """Whether *e* means PostgreSQL cannot be reached (rather than a query gone wrong)."""
    if isinstance(e, DatabaseUnavailable):
        return True
    if type(e).__module__.startswith("aiohttp"):
        return False  # an upstream's connection, not the database's
    if isinstance(e, asyncpg.InterfaceError):
        return "connection" in str(e) and ("closed" in str(e) or "lost" in str(e))
    return isinstance(e, _UNAVAILABLE)


def unavailable(e: BaseException) -> DatabaseUnavailable:
    """A DatabaseUnavailable saying what went wrong in one line."""
    if isinstance(e, DatabaseUnavailable):
        return e
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return DatabaseUnavailable(f"the database cannot be reached: {detail}")
