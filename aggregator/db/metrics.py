"""What /metrics reads of the database: the catalogue, each upstream's runs and fetch errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import asyncpg

    from aggregator.db.pool import Executor

_CATALOGUE: Final = """
select generation, (select count(*) from catalogue_tools) as tools from catalogue_state
"""


async def catalogue_size(conn: Executor) -> tuple[int, int]:
    """The catalogue's generation and how many merged tools it serves."""
    row = await conn.fetchrow(_CATALOGUE)
    assert row is not None
    return int(row["generation"]), int(row["tools"])


# Each upstream's newest finished run: the greatest id in the index of its finished runs, then
# that run (not every run of every upstream read and sorted).
_LAST_DURATIONS: Final = """
select u.name as upstream, extract(epoch from r.finished_at - r.started_at)::float8 as seconds
from upstreams u
join harvest_runs r on r.id = (select max(x.id) from harvest_runs x
                               where x.upstream_id = u.id and x.finished_at is not null)
"""


async def last_run_durations(conn: Executor) -> dict[str, float]:
    """How long each upstream's last finished run took, in seconds, by upstream name."""
    return {r["upstream"]: r["seconds"] for r in await conn.fetch(_LAST_DURATIONS)}


_SCHEDULED: Final = "select * from upstreams, now() as now where removed_at is null"


async def scheduled_upstreams(conn: Executor) -> list[asyncpg.Record]:
    """Every upstream not removed, with the database's ``now``."""
    return await conn.fetch(_SCHEDULED)


# Kept as runs record their conformance figures (migration 0027): the sum of the fetch errors
# of every run, not read from the runs at each scrape.
_FETCH_ERRORS: Final = """
select u.name, t.kind, t.errors::float8 as n
from upstream_fetch_errors t join upstreams u on u.id = t.upstream_id
where u.removed_at is null
"""


async def fetch_error_counts(conn: Executor) -> list[tuple[str, str, float]]:
    """(upstream, kind, count) of the fetch errors every run of every upstream recorded."""
    return [(r["name"], r["kind"], r["n"]) for r in await conn.fetch(_FETCH_ERRORS)]
