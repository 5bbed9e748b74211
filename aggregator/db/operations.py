"""Operator state in the database: admin tokens, the audit log, paused and removed upstreams,
run conformance figures and requests to cancel a running harvest."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import asyncpg

if TYPE_CHECKING:
    from aggregator.db.pool import Connection, Executor

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
_ANNOUNCE: Final = "select pg_notify($1, $2)"
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


_INSERT_CREDENTIAL: Final = """
insert into api_tokens (name, role, lookup, token_sha256, created_by)
values ($1, $2, $3, $4, $5)
"""


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
            _INSERT_CREDENTIAL,
            name,
            role,
            lookup,
            _sha256(token),
            created_by,
        )
    except asyncpg.UniqueViolationError:
        raise ValueError(f"a token named {name!r} exists; revoke it first") from None
    return token


_REVOKE_CREDENTIAL: Final = """
update api_tokens set revoked_at = now() where name = $1 and revoked_at is null returning id
"""


async def revoke_token(conn: Connection, name: str) -> bool:
    """Revoke the live token called *name*; False if there is none."""
    done = await conn.fetchval(
        _REVOKE_CREDENTIAL,
        name,
    )
    return done is not None


_LIST_TOKENS: Final = """
select name, role, created_at, created_by, last_used_at, revoked_at
from api_tokens order by revoked_at nulls first, name
"""


async def list_tokens(conn: Executor) -> list[asyncpg.Record]:
    """Every token's name, role and dates (never a secret)."""
    return await conn.fetch(_LIST_TOKENS)


_FIND_CREDENTIAL: Final = """
update api_tokens set last_used_at = now()
where lookup = $1 and revoked_at is null returning name, role, token_sha256
"""


async def verify_token(conn: Executor, presented: str) -> Token | None:
    """The live token *presented* is, or None; its hash is compared in constant time."""
    parts = presented.split("_", 2)
    lookup = parts[1] if len(parts) == 3 and presented.startswith(TOKEN_PREFIX) else ""
    row = await conn.fetchrow(
        _FIND_CREDENTIAL,
        lookup,
    )
    expected = row["token_sha256"] if row is not None else _DUMMY_SHA256
    if not hmac.compare_digest(_sha256(presented), expected) or row is None:
        return None
    return Token(row["name"], row["role"])


_AUDIT: Final = """
insert into audit_log (actor, role, action, target, outcome, status, detail)
values ($1, $2, $3, $4, $5, $6, $7) returning id
"""


async def audit(
    conn: Executor,
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
        _AUDIT,
        actor,
        role,
        action,
        target,
        outcome,
        status,
        detail or {},
    )
    return audit_id


# Refusals of requests without a valid token are counted on one row per action and minute
# rather than written one by one: nobody can grow the audit log faster than that. The row of
# the last minute is looked for among the newest AUDIT_RECENT rows (the log holds one such row
# per action and minute, and admin actions): every request without a token would otherwise
# read the whole log, which only grows.
AUDIT_RECENT: Final = 1000
_COUNT_ANONYMOUS_REFUSAL: Final = """
update audit_log set detail = detail || jsonb_build_object(
        'count', coalesce((detail ->> 'count')::bigint, 1) + 1,
        'last_at', now(), 'last_target', $2::text, 'last_remote', $3::text)
where id = (select r.id
            from (select id, actor, action, outcome, at from audit_log
                  order by id desc limit $4) as r
            where r.actor = 'anonymous' and r.action = $1 and r.outcome = 'refused'
              and r.at > now() - interval '1 minute'
            order by r.id desc limit 1)
returning id
"""


async def audit_anonymous_refusal(
    conn: Executor, *, action: str, target: str | None, remote: str | None
) -> int:
    """Record that a request for *action* came without a valid token (401); return the id of
    the audit record, which counts such refusals for a minute."""
    audit_id: int | None = await conn.fetchval(
        _COUNT_ANONYMOUS_REFUSAL, action, target, remote, AUDIT_RECENT
    )
    if audit_id is not None:
        return audit_id
    return await audit(
        conn,
        actor="anonymous",
        role=None,
        action=action,
        target=target,
        outcome="refused",
        status=401,
        detail={"count": 1, "remote": remote},
    )


_LIST_AUDIT: Final = """
select * from audit_log where $1::bigint is null or id < $1
order by id desc limit $2
"""


async def list_audit(
    conn: Executor, *, limit: int, before: int | None = None
) -> list[asyncpg.Record]:
    """Audit records, newest first, older than record *before* when given."""
    return await conn.fetch(
        _LIST_AUDIT,
        before,
        limit,
    )


_LOCK_PAUSED: Final = """
select paused from upstreams where name = $1 and removed_at is null for update
"""

_UPDATE_PAUSED: Final = """
update upstreams set paused = $2,
    paused_at = case when $2 then now() end, paused_by = case when $2 then $3 end,
    next_harvest_at = case when $2 then next_harvest_at else null end,
    updated_at = now()
where name = $1
"""


async def set_paused(conn: Connection, name: str, *, paused: bool, by: str) -> bool | None:
    """Pause or resume upstream *name*; None if there is no such (live) upstream, else whether
    anything changed. Workers are told at once."""
    async with conn.transaction():
        before = await conn.fetchval(_LOCK_PAUSED, name)
        if before is None:
            return None
        await conn.execute(
            _UPDATE_PAUSED,
            name,
            paused,
            by,
        )
        await conn.execute(_ANNOUNCE, UPSTREAMS_CHANNEL, name)
    return bool(before) != paused


_MARK_REMOVED: Final = """
update upstreams set removed_at = now(), updated_at = now(), source = $2 where id = $1
"""

_TOMBSTONE_REMOVED: Final = """
with changed as (
    update upstream_tools set missed_listings = missed_listings + $2,
        tombstoned_at = coalesce(tombstoned_at, now())
    where upstream_id = $1 and missed_listings < $2
    returning id),
queued as (
    insert into merge_queue (upstream_tool_id) select id from changed on conflict do nothing)
select count(*) from changed
"""


async def remove_upstream(
    conn: Connection, upstream_id: int, *, source: Literal["config", "api"] = "config"
) -> int:
    """Mark an upstream removed, as the configuration file (*source* ``config``) or the admin
    API (``api``) asked, and tombstone its records (kept, not deleted); return how many records
    were live. Run inside the caller's transaction, then re-merge."""
    await conn.execute(_MARK_REMOVED, upstream_id, source)
    count: int = await conn.fetchval(_TOMBSTONE_REMOVED, upstream_id, REMOVED_OFFSET)
    return count


_MARK_RESTORED: Final = "update upstreams set removed_at = null where id = $1"

_UNTOMBSTONE_RESTORED: Final = """
with changed as (
    update upstream_tools set missed_listings = missed_listings - $2,
        tombstoned_at = case when missed_listings - $2 = 0 then null else tombstoned_at end
    where upstream_id = $1 and missed_listings >= $2
    returning id),
queued as (
    insert into merge_queue (upstream_tool_id) select id from changed on conflict do nothing)
select count(*) from changed
"""


async def restore_upstream(conn: Connection, upstream_id: int) -> int:
    """Undo remove_upstream: the records are as they were before; return how many."""
    await conn.execute(_MARK_RESTORED, upstream_id)
    count: int = await conn.fetchval(_UNTOMBSTONE_RESTORED, upstream_id, REMOVED_OFFSET)
    return count


_SAVE_CONFORMANCE: Final = "update harvest_runs set conformance = $2 where id = $1"


async def save_conformance(conn: Connection, run_id: int, conformance: dict[str, Any]) -> None:
    """Keep a run's conformance figures."""
    await conn.execute(_SAVE_CONFORMANCE, run_id, conformance)


_REQUEST_CANCEL: Final = """
update harvest_runs r set cancel_requested_at = now(), cancel_requested_by = $2
from upstreams u
where u.id = r.upstream_id and u.name = $1 and r.status = 'running'
returning r.id
"""


async def request_cancel(conn: Connection, name: str, *, by: str) -> int | None:
    """Ask the worker running upstream *name*'s harvest to cancel it; the run's id, or None
    when no run of it is running."""
    run_id: int | None = await conn.fetchval(
        _REQUEST_CANCEL,
        name,
        by,
    )
    if run_id is not None:
        await conn.execute(_ANNOUNCE, CANCEL_CHANNEL, name)
    return run_id


_CANCEL_REQUESTED: Final = """
select distinct u.name from harvest_runs r join upstreams u on u.id = r.upstream_id
where r.status = 'running' and r.cancel_requested_at is not null
"""


async def cancel_requested(conn: Executor) -> list[str]:
    """Names of the upstreams whose running harvest someone asked to cancel."""
    rows = await conn.fetch(_CANCEL_REQUESTED)
    return [r["name"] for r in rows]


_UPSTREAM_ROWS: Final = "select * from upstreams where $1 or removed_at is null order by name"


async def fetch_upstream_rows(conn: Executor, *, removed: bool) -> list[asyncpg.Record]:
    """Every upstream row, by name; removed upstreams only when *removed*."""
    return await conn.fetch(_UPSTREAM_ROWS, removed)


_COUNT_RECORDS: Final = "select count(*) from upstream_tools where upstream_id = $1"
_COUNT_LIVE_RECORDS: Final = """
select count(*) from upstream_tools
where upstream_id = $1 and upstream_tool_live(missed_listings, $2)
"""


async def count_records(
    conn: Connection, upstream_id: int, *, live_after: int | None = None
) -> int:
    """How many records upstream *upstream_id* has (only live ones, for a tombstone_after of
    *live_after*)."""
    if live_after is None:
        count: int = await conn.fetchval(_COUNT_RECORDS, upstream_id)
    else:
        count = await conn.fetchval(_COUNT_LIVE_RECORDS, upstream_id, live_after)
    return count


_MERGED_MEMBERS: Final = """
select m.tool_id, m.upstream_tool_id, c.primary_member_id, u.name as upstream, t.external_id
from catalogue_members m
join catalogue_tools c on c.id = m.tool_id
join upstream_tools t on t.id = m.upstream_tool_id
join upstreams u on u.id = t.upstream_id
where m.tool_id in (select m2.tool_id from catalogue_members m2
                    join upstream_tools t2 on t2.id = m2.upstream_tool_id
                    join upstreams u2 on u2.id = t2.upstream_id
                    where u2.name = any($1::text[]) or m2.upstream_tool_id = any($2::bigint[]))
"""


async def fetch_merged_members(
    conn: Connection, names: list[str], members: list[int]
) -> list[asyncpg.Record]:
    """The members of every merged tool with a member from upstreams *names* or among the
    upstream tools *members*."""
    return await conn.fetch(_MERGED_MEMBERS, names, members)


_CATALOGUE_IDS: Final = "select id from catalogue_tools"


async def catalogue_ids(conn: Executor) -> set[str]:
    """The id of every merged tool."""
    return {r["id"] for r in await conn.fetch(_CATALOGUE_IDS)}


async def announce_upstreams_changed(conn: Connection, name: str = "") -> None:
    """Tell workers and API processes on UPSTREAMS_CHANNEL that the upstream list changed."""
    await conn.execute(_ANNOUNCE, UPSTREAMS_CHANNEL, name)


_UPSTREAMS_FINGERPRINT: Final = """
select coalesce(array_agg(array[name, updated_at::text, paused::text,
                                coalesce(removed_at::text, '')] order by name), '{}')
from upstreams
"""


async def upstreams_fingerprint(conn: Executor) -> Any:
    """What changes whenever an upstream is added, changed, paused or removed."""
    return await conn.fetchval(_UPSTREAMS_FINGERPRINT)
