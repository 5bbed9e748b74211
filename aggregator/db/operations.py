"""Operator state in the database: admin tokens, the audit log, paused and removed upstreams,
run conformance figures and requests to cancel a running harvest."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import asyncpg

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

#: NOTIFY channel telling workers that the upstream list changed (apply, pause, resume).
UPSTREAMS_CHANNEL: Final = "trs_aggregator_upstreams"
#: NOTIFY channel asking the worker running an upstream's harvest to cancel it (payload: name).
CANCEL_CHANNEL: Final = "trs_aggregator_cancel"
ROLES: Final = ("operator", "admin")
TOKEN_PREFIX: Final = "trsa_"  # noqa: S105 - the prefix tokens are recognised by, not one
# A removed upstream's records count this many extra missed listings: far beyond any
# harvest.tombstone_after, so the merge drops them, and exactly reversible when it comes back.
REMOVED_OFFSET: Final = 1_000_000
# Compared against when no token matches, so a miss takes as long as a wrong secret.
_DUMMY_SHA256: Final = hashlib.sha256(b"no such token").hexdigest()


@dataclass(frozen=True, slots=True)
class Token:
    """A valid admin API token.

    Attributes:
        name: Who holds it (shown in the audit log).
        role: ``operator`` (pause, resume, harvest) or ``admin`` (also change upstreams).
    """

    name: str
    role: str

    def allows(self, role: str) -> bool:
        """Whether this token's role includes *role*."""
        return ROLES.index(self.role) >= ROLES.index(role)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


async def create_token(conn: Connection, name: str, role: str, *, created_by: str = "") -> str:
    """Create a token called *name* with *role*; return it (the only time it is seen).

    Raises ValueError for an unknown role or a name a live token already has.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    lookup = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}{lookup}_{secrets.token_urlsafe(32)}"
    try:
        await conn.execute(
            """insert into api_tokens (name, role, lookup, token_sha256, created_by)
               values ($1, $2, $3, $4, $5)""",
            name,
            role,
            lookup,
            _sha256(token),
            created_by,
        )
    except asyncpg.UniqueViolationError:
        raise ValueError(f"a token named {name!r} exists; revoke it first") from None
    return token


async def revoke_token(conn: Connection, name: str) -> bool:
    """Revoke the live token called *name*; False if there is none."""
    done = await conn.fetchval(
        "update api_tokens set revoked_at = now() where name = $1 and revoked_at is null "
        "returning id",
        name,
    )
    return done is not None


async def list_tokens(conn: Connection | asyncpg.Pool[Any]) -> list[asyncpg.Record]:
    """Every token's name, role and dates (never a secret)."""
    return await conn.fetch(
        """select name, role, created_at, created_by, last_used_at, revoked_at
           from api_tokens order by revoked_at nulls first, name"""
    )


async def verify_token(conn: Connection | asyncpg.Pool[Any], presented: str) -> Token | None:
    """The live token *presented* is, or None; its hash is compared in constant time."""
    parts = presented.split("_", 2)
    lookup = parts[1] if len(parts) == 3 and presented.startswith(TOKEN_PREFIX) else ""
    row = await conn.fetchrow(
        """update api_tokens set last_used_at = now()
           where lookup = $1 and revoked_at is null returning name, role, token_sha256""",
        lookup,
    )
    expected = row["token_sha256"] if row is not None else _DUMMY_SHA256
    if not hmac.compare_digest(_sha256(presented), expected) or row is None:
        return None
    return Token(row["name"], row["role"])


async def audit(
    conn: Connection | asyncpg.Pool[Any],
    *,
    actor: str,
    role: str | None,
    action: str,
    target: str | None,
    outcome: str,
    status: int | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    """Record one admin action; return its id."""
    audit_id: int = await conn.fetchval(
        """insert into audit_log (actor, role, action, target, outcome, status, detail)
           values ($1, $2, $3, $4, $5, $6, $7) returning id""",
        actor,
        role,
        action,
        target,
        outcome,
        status,
        detail or {},
    )
    return audit_id


async def list_audit(
    conn: Connection | asyncpg.Pool[Any], *, limit: int, before: int | None = None
) -> list[asyncpg.Record]:
    """Audit records, newest first, older than record *before* when given."""
    return await conn.fetch(
        """select * from audit_log where $1::bigint is null or id < $1
           order by id desc limit $2""",
        before,
        limit,
    )


async def set_paused(conn: Connection, name: str, *, paused: bool, by: str) -> bool | None:
    """Pause or resume upstream *name*; None if there is no such (live) upstream, else whether
    anything changed. Workers are told at once."""
    async with conn.transaction():
        before = await conn.fetchval(
            "select paused from upstreams where name = $1 and removed_at is null for update", name
        )
        if before is None:
            return None
        await conn.execute(
            """update upstreams set paused = $2,
                   paused_at = case when $2 then now() end, paused_by = case when $2 then $3 end,
                   next_harvest_at = case when $2 then next_harvest_at else null end,
                   updated_at = now()
               where name = $1""",
            name,
            paused,
            by,
        )
        await conn.execute("select pg_notify($1, $2)", UPSTREAMS_CHANNEL, name)
    return bool(before) != paused


async def remove_upstream(conn: Connection, upstream_id: int) -> int:
    """Mark an upstream removed and tombstone its records (kept, not deleted); return how many
    records were live. Run inside the caller's transaction, then re-merge."""
    await conn.execute(
        "update upstreams set removed_at = now(), updated_at = now() where id = $1", upstream_id
    )
    status = await conn.execute(
        """update upstream_tools set missed_listings = missed_listings + $2,
               tombstoned_at = coalesce(tombstoned_at, now()), merge_dirty = true
           where upstream_id = $1 and missed_listings < $2""",
        upstream_id,
        REMOVED_OFFSET,
    )
    return int(status.split()[-1])


async def restore_upstream(conn: Connection, upstream_id: int) -> int:
    """Undo remove_upstream: the records are as they were before; return how many."""
    await conn.execute("update upstreams set removed_at = null where id = $1", upstream_id)
    status = await conn.execute(
        """update upstream_tools set missed_listings = missed_listings - $2,
               tombstoned_at = case when missed_listings - $2 = 0 then null else tombstoned_at end,
               merge_dirty = true
           where upstream_id = $1 and missed_listings >= $2""",
        upstream_id,
        REMOVED_OFFSET,
    )
    return int(status.split()[-1])


async def save_conformance(conn: Connection, run_id: int, conformance: dict[str, Any]) -> None:
    """Keep a run's conformance figures."""
    await conn.execute(
        "update harvest_runs set conformance = $2 where id = $1", run_id, conformance
    )


async def request_cancel(conn: Connection, name: str, *, by: str) -> int | None:
    """Ask the worker running upstream *name*'s harvest to cancel it; the run's id, or None
    when no run of it is running."""
    run_id: int | None = await conn.fetchval(
        """update harvest_runs r set cancel_requested_at = now(), cancel_requested_by = $2
           from upstreams u
           where u.id = r.upstream_id and u.name = $1 and r.status = 'running'
           returning r.id""",
        name,
        by,
    )
    if run_id is not None:
        await conn.execute("select pg_notify($1, $2)", CANCEL_CHANNEL, name)
    return run_id


async def cancel_requested(conn: Connection | asyncpg.Pool[Any]) -> list[str]:
    """Names of the upstreams whose running harvest someone asked to cancel."""
    rows = await conn.fetch(
        """select distinct u.name from harvest_runs r join upstreams u on u.id = r.upstream_id
           where r.status = 'running' and r.cancel_requested_at is not null"""
    )
    return [r["name"] for r in rows]
