"""Upstream rows: the configured registries, their health, schedule state and harvest requests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import asyncpg
import structlog

from aggregator.config import UpstreamConfig, upstream_table
from aggregator.db.operations import restore_upstream

if TYPE_CHECKING:
    from aggregator.db.pool import Connection, Executor

#: NOTIFY channel of "harvest now" requests; the payload is the upstream's name.
HARVEST_REQUEST_CHANNEL: Final = "trs_aggregator_harvest"

log = structlog.get_logger()

_PRIORITY: Final = "select priority from upstreams where name = $1"
# A changed schedule makes the upstream due at once, so a shorter interval takes effect now.
# $9 is the source ('config': the configuration file, 'api': the admin API). A write from the
# file records the file's table in file_config; with $10, it leaves alone an upstream changed
# through the admin API since the file last set it, as long as the file's entry is unchanged.
_UPSERT_UPSTREAM: Final = """
insert into upstreams (name, url, kind, mode, priority, schedule, enabled, source, config,
                       file_config)
values ($1, $2, $3, $4, $5, $6, $7, $9::text, $8::jsonb,
        case when $9::text = 'config' then $8::jsonb end)
on conflict (name) do update set
    url = excluded.url, kind = excluded.kind, mode = excluded.mode,
    priority = excluded.priority, schedule = excluded.schedule, enabled = excluded.enabled,
    source = excluded.source, config = excluded.config,
    file_config = case when excluded.source = 'config' then excluded.config
                       else upstreams.file_config end,
    next_harvest_at = case when upstreams.schedule is distinct from excluded.schedule then null
                           else upstreams.next_harvest_at end,
    updated_at = case
        when (upstreams.url, upstreams.kind, upstreams.mode, upstreams.priority,
              upstreams.schedule, upstreams.enabled, upstreams.config, upstreams.removed_at)
             is distinct from
             (excluded.url, excluded.kind, excluded.mode, excluded.priority, excluded.schedule,
              excluded.enabled, excluded.config, null)
        then now() else upstreams.updated_at end
where not ($10::boolean and upstreams.source = 'api' and upstreams.file_config = excluded.config)
returning id, (select removed_at is not null from upstreams where name = $1) as was_removed
"""

_UPSTREAM_ID: Final = "select id from upstreams where name = $1"

_QUEUE_UPSTREAM_TOOLS: Final = """
insert into merge_queue (upstream_tool_id) select id from upstream_tools where upstream_id = $1
on conflict do nothing
"""


async def upsert_upstreams(
    conn: Connection,
    upstreams: Sequence[UpstreamConfig],
    *,
    source: Literal["config", "api"] = "config",
    keep_api_changes: bool = False,
) -> dict[str, int]:
    """Insert or update *upstreams*, as the configuration file (*source* ``config``) or the
    admin API (``api``) says; return their ids by name.

    With *keep_api_changes* (what the commands do with the file when they start), an upstream
    changed or removed through the admin API since the file last set it keeps that change while
    the file's entry stays as it was; an edited entry wins. An upstream that was removed comes
    back with its records (db.operations.restore_upstream).
    """
    ids: dict[str, int] = {}
    for u in upstreams:
        before = await conn.fetchval(_PRIORITY, u.name)
        row = await conn.fetchrow(
            _UPSERT_UPSTREAM,
            u.name,
            u.url,
            u.kind,
            u.mode,
            u.priority,
            u.schedule,
            u.enabled,
            upstream_table(u),
            source,
            keep_api_changes,
        )
        if row is None:
            # Changed through the admin API since the file last set it: keep that.
            ids[u.name] = await conn.fetchval(_UPSTREAM_ID, u.name)
            log.warning("upstream_config_kept", upstream=u.name, reason=_KEPT_REASON)
            continue
        ids[u.name] = row["id"]
        if row["was_removed"]:
            await restore_upstream(conn, row["id"])
        if before is not None and before != u.priority:
            # Priority decides merged records' primaries and plain-id claims: re-merge them at
            # the next publish.
            await conn.execute(_QUEUE_UPSTREAM_TOOLS, ids[u.name])
    return ids


_KEPT_REASON: Final = (
    "changed through the admin API since the configuration file last set it, and the file's "
    "entry is unchanged: the database's version stays (edit the file's entry, or run "
    "`trs-aggregator upstreams apply`, to make the file's version current)"
)


_SAVE_SERVICE_INFO: Final = """
update upstreams set service_info = coalesce($2, service_info),
                     tool_classes = coalesce($3, tool_classes)
where id = $1
"""


async def save_service_info(
    conn: Connection, upstream_id: int, service_info: Any, tool_classes: list[dict[str, Any]] | None
) -> None:
    """Store what the upstream said about itself; None leaves the previous value."""
    await conn.execute(_SAVE_SERVICE_INFO, upstream_id, service_info, tool_classes)


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    """When failed runs open an upstream's circuit, and for how long.

    Attributes:
        failures: Consecutive failed runs that open it.
        open_for_s: The first pause; doubled for each further failure.
        open_max_s: The longest pause.
    """

    failures: int
    open_for_s: float
    open_max_s: float


_SKIP_REASON: Final = """
select now() as now, next_harvest_at, circuit_open_until, paused, removed_at,
       exists (select 1 from harvest_requests r
               where r.upstream_id = u.id and r.served_at is null) as requested
from upstreams u where id = $1
"""


async def skip_reason(
    conn: Connection, upstream_id: int, trigger: str, *, slack_s: float = 0.0
) -> str | None:
    """Why a run of *trigger* should not start now, or None when it should.

    A scheduled run is skipped while the upstream's circuit is open, and when the upstream is
    not due yet (*slack_s* allows for clocks that differ): another worker harvested this tick.
    A requested run is skipped when no request is pending (another run served it).
    """
    row = await conn.fetchrow(_SKIP_REASON, upstream_id)
    assert row is not None
    if row["removed_at"] is not None:
        return "removed from the configuration"
    if trigger == "scheduled":
        if row["paused"]:
            return "paused"
        if row["circuit_open_until"] is not None and row["circuit_open_until"] > row["now"]:
            return f"circuit open until {row['circuit_open_until'].isoformat()}"
        due = row["next_harvest_at"]
        if due is not None and due > row["now"] + dt.timedelta(seconds=slack_s):
            return f"not due until {due.isoformat()} (harvested by another worker)"
    if trigger == "requested" and not row["requested"]:
        return "no pending request"
    return None


_RECORD_RESULT: Final = """
update upstreams set
    consecutive_failures = case when $2 then consecutive_failures + 1 else 0 end,
    circuit_open_until = case
        when not $2 then null
        when consecutive_failures + 1 >= $3 then now() + make_interval(
            secs => least($5::float8,
                          $4::float8 * 2 ^ (consecutive_failures + 1 - $3)))
        else circuit_open_until end,
    next_harvest_at = coalesce($6, next_harvest_at)
where id = $1
"""


async def record_result(
    conn: Connection,
    upstream_id: int,
    *,
    failed: bool,
    policy: CircuitPolicy,
    next_due: dt.datetime | None,
) -> None:
    """Update the upstream's health after a run, and when its next scheduled run is due.

    A failure adds to the consecutive failures and opens the circuit once they reach
    *policy.failures*; a success closes it. *next_due* None leaves the due time alone.
    """
    await conn.execute(
        _RECORD_RESULT,
        upstream_id,
        failed,
        policy.failures,
        policy.open_for_s,
        policy.open_max_s,
        next_due,
    )


_REQUEST_HARVEST: Final = """
insert into harvest_requests (upstream_id, requested_by)
select id, $2 from upstreams where name = $1 returning id
"""


async def request_harvest(
    conn: Connection, names: Sequence[str], *, requested_by: str = ""
) -> dict[str, int]:
    """Ask running workers to harvest *names* now; return the request ids by name.

    Each request is served by the first run of its upstream that starts after it.
    """
    ids: dict[str, int] = {}
    async with conn.transaction():
        for name in names:
            ids[name] = await conn.fetchval(
                _REQUEST_HARVEST,
                name,
                requested_by,
            )
            await announce_request(conn, name)
    return ids


_ANNOUNCE_REQUEST: Final = "select pg_notify($1, $2)"


async def announce_request(conn: Connection, name: str) -> None:
    """Tell the workers listening on HARVEST_REQUEST_CHANNEL that *name* has a request."""
    await conn.execute(_ANNOUNCE_REQUEST, HARVEST_REQUEST_CHANNEL, name)


_PENDING_REQUESTS: Final = """
select distinct u.name from harvest_requests r join upstreams u on u.id = r.upstream_id
where r.served_at is null order by u.name
"""


async def pending_requests(conn: Executor) -> list[str]:
    """Names of the upstreams with a "harvest now" request no run has served yet."""
    rows = await conn.fetch(_PENDING_REQUESTS)
    return [r["name"] for r in rows]


# An upstream's last run and last success are found as the greatest id in an index of its
# own runs (by status for the success), then read by id: asked for "its newest run", the
# planner walks the primary key from the newest run of all, through every newer run of every
# other upstream when this one has not run for a while.
_LIST_UPSTREAMS: Final = """
select u.id, u.name, u.url, u.kind, u.mode, u.priority, u.schedule, u.enabled, u.source,
       u.next_harvest_at, u.consecutive_failures, u.circuit_open_until, now() as now,
       last.id as last_run_id, last.status as last_run_status,
       last.started_at as last_run_started_at, last.finished_at as last_run_finished_at,
       last.error as last_run_error,
       ok.id as last_success_id, ok.started_at as last_success_started_at,
       ok.finished_at as last_success_finished_at,
       (select count(*) from harvest_requests r
        where r.upstream_id = u.id and r.served_at is null) as pending_requests,
       u.paused, u.paused_at, u.paused_by, u.removed_at,
       (select coalesce(jsonb_agg(c.conformance || jsonb_build_object('run_id', c.id)
                                  order by c.id desc), '[]')
        from (select r.id, r.conformance from harvest_runs r
              where r.upstream_id = u.id and r.conformance <> '{}'
              order by r.id desc limit 10) c) as conformance_runs
from upstreams u
left join lateral (select * from harvest_runs r
                   where r.id = (select max(x.id) from harvest_runs x
                                 where x.upstream_id = u.id)) last on true
left join lateral (select * from harvest_runs r
                   where r.id = greatest((select max(x.id) from harvest_runs x
                                          where x.upstream_id = u.id and x.status = 'succeeded'),
                                         (select max(x.id) from harvest_runs x
                                          where x.upstream_id = u.id and x.status = 'partial')))
                  ok on true
where $1::text is null or u.name = $1
order by u.priority, u.name
"""

# One upstream's record counts, in one pass over its records (and one over their versions),
# and when the next fresh record turns stale.
_RECORD_COUNTS: Final = """
with t as (
    select id, tombstoned_at, last_confirmed,
           upstream_tool_live(missed_listings, $2) as live,
           last_confirmed < now() - make_interval(secs => $3) as stale
    from upstream_tools where upstream_id = $1)
select count(*) filter (where live) as tools,
       count(*) filter (where live and tombstoned_at is not null) as tools_tombstoned,
       count(*) filter (where live and stale) as tools_stale,
       min(last_confirmed) filter (where live and not stale)
           + make_interval(secs => $3) as next_stale_at,
       (select count(*) from upstream_versions v join t on t.id = v.upstream_tool_id
        where t.live) as versions
from t
"""

_COUNT_KEYS: Final = ("tools", "tools_tombstoned", "tools_stale", "versions")
#: The longest a process reuses an upstream's record counts (a safety net: they change only
#: when a run of it publishes, it is removed or restored, or a record turns stale — each of
#: which the cache key or its expiry covers).
COUNTS_MAX_AGE_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class _Counts:
    key: tuple[Any, ...]
    values: dict[str, int]
    valid_until: dt.datetime


#: upstream id -> its counts as last computed in this process.
_counts: dict[int, _Counts] = {}


async def _record_counts(
    conn: Executor, row: asyncpg.Record, tombstone_after: int, stale_after_s: float
) -> dict[str, int]:
    """*row*'s upstream's record counts: live tools, missing (tombstoned but kept), stale, and
    versions of live tools. Counting is a pass over every record of the upstream (seconds at a
    million), so the answer is kept until a run of the upstream publishes, the upstream is
    removed or restored, a record turns stale, or COUNTS_MAX_AGE_S pass."""
    # The last publish's finish time tells one database's run from another's of the same id.
    key = (
        row["last_success_id"],
        row["last_success_finished_at"],
        row["last_run_id"],
        row["removed_at"],
        tombstone_after,
        stale_after_s,
    )
    now: dt.datetime = row["now"]
    kept = _counts.get(row["id"])
    if kept is not None and kept.key == key and now < kept.valid_until:
        return kept.values
    counted = await conn.fetchrow(_RECORD_COUNTS, row["id"], tombstone_after, stale_after_s)
    assert counted is not None
    values = {k: int(counted[k]) for k in _COUNT_KEYS}
    valid_until = now + dt.timedelta(seconds=COUNTS_MAX_AGE_S)
    if counted["next_stale_at"] is not None:
        valid_until = min(valid_until, counted["next_stale_at"])
    _counts[row["id"]] = _Counts(key, values, valid_until)
    return values


async def list_upstreams(
    conn: Executor, *, tombstone_after: int, stale_after_s: float, name: str | None = None
) -> list[dict[str, Any]]:
    """Every upstream (or the one called *name*) with its last runs and record counts."""
    rows = await conn.fetch(_LIST_UPSTREAMS, name)
    return [dict(r) | await _record_counts(conn, r, tombstone_after, stale_after_s) for r in rows]


_FETCH_UPSTREAM_ID: Final = "select id from upstreams where name = $1"


async def fetch_upstream_id(conn: Executor, name: str) -> int | None:
    """The id of the upstream called *name*, if there is one."""
    upstream_id: int | None = await conn.fetchval(_FETCH_UPSTREAM_ID, name)
    return upstream_id


_DUE: Final = (
    "select name, next_harvest_at is null or next_harvest_at <= now() as due from upstreams"
)


async def due_now(conn: Executor) -> dict[str, bool]:
    """Whether each upstream is due now (never harvested, or its due time has passed), by name."""
    return {r["name"]: r["due"] for r in await conn.fetch(_DUE)}
