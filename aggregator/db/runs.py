"""Harvest run records: one row per run, with its status, counts and sample errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import structlog

from aggregator.db.locks import try_harvest_lock
from aggregator.trs.conformance import error_kind

if TYPE_CHECKING:
    from aggregator.db.pool import Connection, Executor

MAX_ERROR_SAMPLES: Final = 20

log = structlog.get_logger()


def storable(message: str) -> str:
    """*message* as PostgreSQL can store it: NUL characters and lone surrogates (quoted from
    what an upstream sent) written as escapes."""
    return message.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(slots=True)
class RunCounts:
    """The counters of one run, as stored in harvest_runs."""

    tools_seen: int = 0
    tools_new: int = 0
    tools_changed: int = 0
    tools_unchanged: int = 0
    tools_tombstoned: int = 0
    tools_fetched: int = 0
    versions_seen: int = 0
    files_stored: int = 0
    requests: int = 0
    bytes_fetched: int = 0
    not_modified: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)
    #: Per host other than the upstream's own: files fetched, failed, skipped, last error.
    file_hosts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def error(self, message: str) -> None:
        """Count an error (by kind, too) and keep the first few as samples."""
        self.errors += 1
        kind = error_kind(message)
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(storable(message))


_INSERT_RUN: Final = """
insert into harvest_runs (upstream_id, trigger, worker) values ($1, $2, $3)
returning id
"""

_SERVE_REQUESTS: Final = """
update harvest_requests set run_id = $2, served_at = now()
where upstream_id = $1 and served_at is null
"""


async def insert_run(
    conn: Connection,
    upstream_id: int,
    *,
    trigger: str = "manual",
    worker: str | None = None,
) -> int:
    """Start a run record; return its id.

    *trigger* is why it runs (``manual``, ``scheduled``, ``requested``), *worker* which
    process runs it. Pending "harvest now" requests of the upstream are served by this run.
    """
    run_id: int = await conn.fetchval(_INSERT_RUN, upstream_id, trigger, worker)
    await conn.execute(_SERVE_REQUESTS, upstream_id, run_id)
    return run_id


_FINISH_RUN: Final = """
update harvest_runs set status = $2, finished_at = now(), listing_complete = $3,
    error = $4, tools_seen = $5, tools_new = $6, tools_changed = $7,
    tools_unchanged = $8, tools_tombstoned = $9, versions_seen = $10,
    files_stored = $11, requests = $12, bytes_fetched = $13, errors = $14,
    error_samples = $15, tools_fetched = $16, not_modified = $17, file_hosts = $18
where id = $1
"""


async def finish_run(
    conn: Connection,
    run_id: int,
    *,
    status: str,
    counts: RunCounts,
    listing_complete: bool,
    error: str | None,
) -> None:
    """Close a run record with its outcome."""
    c = asdict(counts)
    await conn.execute(
        _FINISH_RUN,
        run_id,
        status,
        listing_complete,
        None if error is None else storable(error),
        c["tools_seen"],
        c["tools_new"],
        c["tools_changed"],
        c["tools_unchanged"],
        c["tools_tombstoned"],
        c["versions_seen"],
        c["files_stored"],
        c["requests"],
        c["bytes_fetched"],
        c["errors"],
        c["error_samples"],
        c["tools_fetched"],
        c["not_modified"],
        c["file_hosts"],
    )


_ABANDON_STALE_RUNS: Final = """
update harvest_runs set status = 'abandoned', finished_at = now(),
    error = coalesce(error, 'the harvesting process stopped before the run ended')
where upstream_id = $1 and status = 'running' returning id
"""


async def abandon_stale_runs(conn: Connection, upstream_id: int) -> int:
    """Mark runs left 'running' by a dead process as abandoned and drop their staged rows.

    Only call while holding the upstream's harvest lock: then no other run of it is alive.
    """
    stale = await conn.fetch(_ABANDON_STALE_RUNS, upstream_id)
    ids = [r["id"] for r in stale]
    if ids:
        await delete_staged(conn, ids)
    return len(ids)


# The latest run of an upstream: the greatest id in the index of its runs, then that run (asked
# for "its newest run", the planner may walk the primary key through every other upstream's
# newer runs).
_LATEST_RUN: Final = """
select id, status from harvest_runs
where id = (select max(x.id) from harvest_runs x where x.upstream_id = $1)
"""
UNFINISHED: Final = frozenset({"running", "abandoned"})


async def unfinished_run(conn: Connection, upstream_id: int) -> int | None:
    """The id of *upstream_id*'s latest run when that run did not end: it is recorded as
    running, or was abandoned (its process stopped before it ended)."""
    row = await conn.fetchrow(_LATEST_RUN, upstream_id)
    return row["id"] if row is not None and row["status"] in UNFINISHED else None


_RUNNING_UPSTREAMS: Final = "select distinct upstream_id from harvest_runs where status = 'running'"


async def abandon_orphaned_runs(pool: asyncpg.Pool[Any]) -> int:
    """Mark abandoned every run left 'running' by a process that is gone (cut off by an
    outage, killed), whatever upstream it harvested; return how many.

    A live run's process holds its upstream's harvest lock, so a run whose upstream's lock can
    be taken has no process left. Workers call this at each poll, so such runs do not stay
    'running' until their upstream's next run.
    """
    abandoned = 0
    async with pool.acquire() as conn:
        for row in await conn.fetch(_RUNNING_UPSTREAMS):
            async with try_harvest_lock(conn, row["upstream_id"]) as taken:
                if taken:
                    abandoned += await abandon_stale_runs(conn, row["upstream_id"])
    if abandoned:
        log.info("orphaned_runs_abandoned", runs=abandoned)
    return abandoned


_ABANDON_RUN: Final = """
update harvest_runs set status = 'abandoned', finished_at = now(),
    error = case when cancel_requested_at is null then $2
                 else 'cancelled by ' || coalesce(cancel_requested_by, 'an operator')
            end
where id = $1 and status = 'running'
"""


async def abandon_run(conn: Connection, run_id: int, reason: str) -> None:
    """Close run *run_id* as abandoned (its process is stopping, or an operator cancelled it)
    and drop its staged rows."""
    await conn.execute(_ABANDON_RUN, run_id, reason)
    await delete_staged(conn, [run_id])


_LIST_RUNS: Final = """
select * from harvest_runs
where upstream_id = $1 and ($2::bigint is null or id < $2)
order by id desc limit $3
"""


async def list_runs(
    conn: Executor, upstream_id: int, *, limit: int, before: int | None = None
) -> list[asyncpg.Record]:
    """Runs of *upstream_id*, newest first, older than run *before* when given."""
    return await conn.fetch(_LIST_RUNS, upstream_id, before, limit)


_DELETE_STAGED: Final = (
    "delete from staged_files where run_id = any($1::bigint[])",
    "delete from staged_versions where run_id = any($1::bigint[])",
    "delete from staged_tools where run_id = any($1::bigint[])",
)


async def delete_staged(conn: Connection, run_ids: list[int]) -> None:
    """Remove what the runs *run_ids* staged."""
    for statement in _DELETE_STAGED:
        await conn.execute(statement, run_ids)
