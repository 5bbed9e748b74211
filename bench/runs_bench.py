# ruff: noqa: SLF001 - the statements are explained as the code runs them: its own constants
"""The frequent reads of the harvest runs and the audit log over a long history: each query as
the code runs it, EXPLAIN (ANALYZE, BUFFERS), now and as it was before migrations 0025 and 0027.
Run by hand; results go to docs/benchmarks.md.

    .venv/bin/python bench/runs_bench.py --runs 200000

Makes a scratch database on the server of ``--admin-dsn`` (migrated), five upstreams and
``--runs`` finished runs (every 50th failed, 20th partial, 97th abandoned, every 10th with fetch
errors, all of them the first upstream's: the four others conform), two runs still running,
and a sixth upstream whose 100 runs are older than all of those; and as many rows of audit
log (refusals without a token, one row per minute). Each query is explained three
times as it is now and three times as it was before (the statement of then, 0025's indexes
and 0027's triggers dropped in a transaction that is rolled back), interleaved; the report
gives the median execution time, the plan's scans of harvest_runs and audit_log and the
buffers it touched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg

from aggregator.db import console, metrics, operations, runs, upstreams
from aggregator.db.migrate import migrate
from aggregator.db.pool import connect

RUNS_SQL = """
insert into upstreams (name, url, kind, mode, priority)
select 'u' || g, 'https://u' || g || '.test/ga4gh/trs/v2', 'trs', 'mirror', g
from generate_series(1, 6) g;
-- u6 last ran long ago (paused, or removed from the configuration): 100 old runs.
insert into harvest_runs (upstream_id, status, started_at, finished_at, trigger)
select (select id from upstreams where name = 'u6'), 'succeeded',
       now() - interval '3 years', now() - interval '3 years', 'scheduled'
from generate_series(1, 100);
insert into harvest_runs (upstream_id, status, started_at, finished_at, tools_seen, errors,
                          conformance, trigger)
select (select min(id) from upstreams) + g % 5,
       case when g % 50 = 0 then 'failed' when g % 20 = 0 then 'partial'
            when g % 97 = 0 then 'abandoned' else 'succeeded' end,
       now() - ($1 - g) * interval '5 minutes',
       now() - ($1 - g) * interval '5 minutes' + interval '2 minutes', 1000, g % 3,
       case when g % 10 = 0 then '{"fetch_errors": {"timeout": 2}}'::jsonb else '{}' end,
       'scheduled'
from generate_series(1, $1) g;
insert into harvest_runs (upstream_id, status)
select id, 'running' from upstreams where name in ('u2', 'u4');
-- The audit log: as many rows, one refusal without a token counted per minute.
insert into audit_log (at, actor, action, outcome, status, detail)
select now() - ($1 - g) * interval '1 minute', 'anonymous', 'pause', 'refused', 401,
       '{"count": 3}'
from generate_series(1, $1) g;
"""

#: The statements as they were before migration 0025 (where they changed with it).
LAST_DURATIONS_BEFORE = """
select distinct on (upstream_id) u.name as upstream,
       extract(epoch from r.finished_at - r.started_at)::float8 as seconds
from harvest_runs r join upstreams u on u.id = r.upstream_id
where r.finished_at is not null order by upstream_id, r.id desc
"""
LIST_UPSTREAMS_BEFORE = """
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
left join lateral (select * from harvest_runs r where r.upstream_id = u.id
                   order by r.id desc limit 1) last on true
left join lateral (select * from harvest_runs r
                   where r.upstream_id = u.id and r.status in ('succeeded', 'partial')
                   order by r.id desc limit 1) ok on true
where $1::text is null or u.name = $1
order by u.priority, u.name
"""
COUNT_REFUSAL_BEFORE = """
update audit_log set detail = detail || jsonb_build_object(
        'count', coalesce((detail ->> 'count')::bigint, 1) + 1,
        'last_at', now(), 'last_target', $2::text, 'last_remote', $3::text)
where id = (select id from audit_log
            where actor = 'anonymous' and action = $1 and outcome = 'refused'
              and at > now() - interval '1 minute'
            order by id desc limit 1)
returning id
"""
FETCH_ERRORS_BEFORE = """
select u.name, e.key as kind, sum(e.value::bigint)::float8 as n
from harvest_runs r join upstreams u on u.id = r.upstream_id,
     jsonb_each_text(r.conformance -> 'fetch_errors') e
where u.removed_at is null group by 1, 2
"""
#: Migration 0027's triggers keeping the fetch-error totals.
TOTALS_TRIGGERS = (
    "harvest_runs_fetch_errors_ins",
    "harvest_runs_fetch_errors_upd",
    "harvest_runs_fetch_errors_del",
)
RUN_INDEXES = (
    "harvest_runs_running_idx",
    "harvest_runs_conformance_idx",
    "harvest_runs_upstream_id_status_idx",
    "harvest_runs_finished_idx",
)

#: (label, statement, the statement before 0025 or None (the same), arguments: "up" is the id
#: of an upstream with a running run, "last" the newest run's).
QUERIES: list[tuple[str, str, str | None, list[Any]]] = [
    ("abandon_orphaned_runs: upstreams with a running run", runs._RUNNING_UPSTREAMS, None, []),
    ("abandon_stale_runs (rolled back)", runs._ABANDON_STALE_RUNS, None, ["up"]),
    ("unfinished_run: the upstream's latest run", runs._LATEST_RUN, None, ["up"]),
    ("list_runs (newest 20)", runs._LIST_RUNS, None, ["up", None, 20]),
    (
        "list_upstreams (last run, last success, conformance)",
        upstreams._LIST_UPSTREAMS,
        LIST_UPSTREAMS_BEFORE,
        [None],
    ),
    ("metrics: last run durations", metrics._LAST_DURATIONS, LAST_DURATIONS_BEFORE, []),
    ("metrics: fetch errors of every run", metrics._FETCH_ERRORS, FETCH_ERRORS_BEFORE, []),
    (
        "a run's conformance figures saved (rolled back)",
        operations._SAVE_CONFORMANCE,
        None,
        ["last", {"fetch_errors": {"timeout": 2, "http_5xx": 1}, "problems": []}],
    ),
    (
        "audit: a refusal without a token counted (rolled back)",
        operations._COUNT_ANONYMOUS_REFUSAL,
        COUNT_REFUSAL_BEFORE,
        ["cancel", "x", None, operations.AUDIT_RECENT],
    ),
    (
        "console: run status counts",
        "select status, count(*) from harvest_runs where upstream_id = $1 group by status",
        None,
        ["up"],
    ),
    (
        "console: run series (last 50 finished)",
        (
            "select id from harvest_runs "
            "where upstream_id = $1 and finished_at is not null order by id desc limit 50"
        ),
        None,
        ["up"],
    ),
]
_ = console  # the console's two statements above are its run_status_counts and run_series


async def explain(conn: asyncpg.Connection[Any], sql: str, args: list[Any]) -> dict[str, Any]:
    """The plan of *sql* run once, in a transaction rolled back."""
    tr = conn.transaction()
    await tr.start()
    try:
        found = await conn.fetchval(f"explain (analyze, buffers, format json) {sql}", *args)
        plan: dict[str, Any] = (json.loads(found) if isinstance(found, str) else found)[0]
    finally:
        await tr.rollback()
    return plan


def max_param(sql: str) -> int:
    """The highest $n of *sql*."""
    return max(int(n) for n in re.findall(r"\$(\d+)", sql))


def scans(node: dict[str, Any]) -> list[str]:
    """The scans of a plan, e.g. ``Index Scan harvest_runs_running_idx``."""
    found = []
    if "Scan" in node["Node Type"] and node.get("Relation Name") in {"harvest_runs", "audit_log"}:
        found.append(f"{node['Node Type']} {node.get('Index Name', '')}".strip())
    for child in node.get("Plans", []):
        found += scans(child)
    return found


async def main_async(args: argparse.Namespace) -> None:
    name = f"runs_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.admin_dsn)
    await admin.execute(f'create database "{name}"')
    dsn = args.admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        await migrate(dsn)
        conn = await connect(dsn)
        try:
            await conn.execute(RUNS_SQL.replace("$1", str(args.runs)))
            await conn.execute("vacuum analyze harvest_runs")
            up = await conn.fetchval("select id from upstreams where name = 'u2'")
            last = await conn.fetchval("select max(id) from harvest_runs")
            values = {"up": up, "last": last}
            print(
                f"{args.runs:,} finished runs of five upstreams, 2 running; a sixth upstream's "
                f"100 runs, older; {args.runs:,} rows of audit log\n"
            )
            print("| query | now: ms, scans, buffers | before |")
            print("| --- | --- | --- |")
            for label, sql, before, raw in QUERIES:
                bound = [values.get(a, a) if isinstance(a, str) else a for a in raw]
                seen: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
                for r in range(3):
                    for indexed in (True, False) if r % 2 == 0 else (False, True):
                        if indexed:
                            seen[True].append(await explain(conn, sql, bound))
                        else:
                            tr = conn.transaction()
                            await tr.start()
                            try:
                                for index in RUN_INDEXES:
                                    await conn.execute(f"drop index {index}")
                                for trigger in TOTALS_TRIGGERS:
                                    await conn.execute(f"drop trigger {trigger} on harvest_runs")
                                then = before or sql
                                then_args = bound[: max_param(then)] if "$" in then else bound
                                seen[False].append(await explain(conn, then, then_args))
                            finally:
                                await tr.rollback()
                cells = []
                for indexed in (True, False):
                    plans = seen[indexed]
                    ms = statistics.median(p["Execution Time"] for p in plans)
                    top = plans[0]["Plan"]
                    buffers = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
                    cells.append(f"{ms:.2f} ms, {', '.join(scans(top)) or '-'}, {buffers:,}")
                print(f"| {label} | {cells[0]} | {cells[1]} |")
        finally:
            await conn.close()
    finally:
        await admin.execute(f'drop database "{name}" with (force)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1/postgres")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
