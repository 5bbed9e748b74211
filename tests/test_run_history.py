"""The reads of the harvest runs over a history of many runs of several upstreams (migration
0025's indexes): the runs still running, each upstream's last run, last success, last
conformance findings, last finished run and its runs by status are those the history holds,
for an upstream that ran last long ago too. And the audit log's row of the last minute that
counts refusals without a token, over a long log."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from aggregator.db import console, metrics, operations, runs
from aggregator.db.pool import create_pool
from aggregator.db.upstreams import list_upstreams

_RUNNING_OF = "select max(id) from harvest_runs where upstream_id = $1 and status = 'running'"

#: Per upstream, the statuses of its runs, oldest first; the histories of "a" and "b" are
#: interleaved run by run after all of "old"'s.
HISTORY: dict[str, list[str]] = {
    "old": ["succeeded", "partial", "failed", "abandoned"],
    "a": [["succeeded", "failed", "partial", "succeeded"][i % 4] for i in range(300)]
    + ["failed"] * 5,
    "b": ["succeeded"] * 299 + ["running", "failed", "running"],
    "never": [],
}


@pytest.fixture
async def history(db_dsn: str) -> AsyncIterator[tuple[asyncpg.Pool[Any], list[dict[str, Any]]]]:
    """A pool over a database holding HISTORY, and every run as written (id, upstream,
    status, conformance)."""
    pool = await create_pool(db_dsn)
    ids = {}
    for priority, name in enumerate(HISTORY):
        ids[name] = await pool.fetchval(
            "insert into upstreams (name, url, kind, mode, priority) "
            "values ($1, $2, 'trs', 'mirror', $3) returning id",
            name,
            f"https://{name}.test/ga4gh/trs/v2",
            priority,
        )
    order = [("old", s) for s in HISTORY["old"]]
    longest = max(len(HISTORY["a"]), len(HISTORY["b"]))
    for i in range(longest):
        order += [(n, HISTORY[n][i]) for n in ("a", "b") if i < len(HISTORY[n])]
    written = []
    for i, (name, status) in enumerate(order):
        # Conformance findings on every 7th run, but never on "b"'s.
        conformance = {"fetch_errors": {"timeout": i}} if i % 7 == 0 and name != "b" else {}
        run_id = await pool.fetchval(
            "insert into harvest_runs (upstream_id, status, finished_at, conformance, "
            "started_at) values ($1, $2, case when $2 <> 'running' then now() + "
            "make_interval(secs => $3) end, $4, now()) returning id",
            ids[name],
            status,
            i,
            conformance,
        )
        written.append(
            {"id": run_id, "upstream": name, "upstream_id": ids[name], "status": status}
            | {"conformance": conformance, "seconds": float(i)}
        )
    await pool.execute("analyze harvest_runs")
    yield pool, written
    await pool.close()


async def test_upstreams_list_their_last_runs(
    history: tuple[asyncpg.Pool[Any], list[dict[str, Any]]],
) -> None:
    """Last run, last success (succeeded or partial) and the ten last runs with conformance
    findings of each upstream, the one that ran long ago and the one that never ran too."""
    pool, written = history
    listed = {
        u["name"]: u for u in await list_upstreams(pool, tombstone_after=3, stale_after_s=60.0)
    }
    assert set(listed) == set(HISTORY)
    for name in HISTORY:
        mine = [r for r in written if r["upstream"] == name]
        ok = [r for r in mine if r["status"] in {"succeeded", "partial"}]
        found = [r for r in mine if r["conformance"]][::-1][:10]
        row = listed[name]
        assert row["last_run_id"] == (mine[-1]["id"] if mine else None), name
        assert row["last_run_status"] == (mine[-1]["status"] if mine else None), name
        assert row["last_success_id"] == (ok[-1]["id"] if ok else None), name
        assert [c["run_id"] for c in row["conformance_runs"]] == [r["id"] for r in found], name
    assert listed["old"]["last_success_id"] == written[1]["id"]
    assert listed["b"]["last_run_status"] == "running"


async def test_last_finished_run_durations(
    history: tuple[asyncpg.Pool[Any], list[dict[str, Any]]],
) -> None:
    """Each upstream's newest finished run, passing over the runs still running."""
    pool, written = history
    durations = await metrics.last_run_durations(pool)
    expected = {}
    for r in written:
        if r["status"] != "running":
            expected[r["upstream"]] = r
    assert set(durations) == {"old", "a", "b"}
    for name, run in expected.items():
        seconds = await pool.fetchval(
            "select extract(epoch from finished_at - started_at)::float8 from harvest_runs "
            "where id = $1",
            run["id"],
        )
        assert durations[name] == pytest.approx(seconds), name
    # "b"'s newest finished run is the failed one between its two running runs.
    assert expected["b"]["status"] == "failed"


async def test_status_counts_and_series(
    history: tuple[asyncpg.Pool[Any], list[dict[str, Any]]],
) -> None:
    """An upstream's runs by status, and its last finished runs oldest first."""
    pool, written = history
    for name in HISTORY:
        mine = [r for r in written if r["upstream"] == name]
        upstream_id = await pool.fetchval("select id from upstreams where name = $1", name)
        counts = await console.run_status_counts(pool, upstream_id)
        assert counts == dict(Counter(r["status"] for r in mine)), name
        series = await console.run_series(pool, upstream_id, limit=50)
        finished = [r["id"] for r in mine if r["status"] != "running"][-50:]
        assert [r["id"] for r in series] == finished, name


async def test_orphaned_runs_are_abandoned_and_only_they(
    history: tuple[asyncpg.Pool[Any], list[dict[str, Any]]],
) -> None:
    """Both runs left running (no process holds "b"'s lock) are abandoned; nothing else
    changes; a second pass finds none."""
    pool, written = history
    async with pool.acquire() as conn:
        b = await conn.fetchval("select id from upstreams where name = 'b'")
        running = [r["id"] for r in written if r["status"] == "running"]
        assert await conn.fetchval(_RUNNING_OF, b) == running[-1]
    before = {r["id"]: r["status"] for r in await pool.fetch("select id, status from harvest_runs")}
    assert await runs.abandon_orphaned_runs(pool) == 2
    after = {r["id"]: r["status"] for r in await pool.fetch("select id, status from harvest_runs")}
    assert {i for i in after if after[i] != before[i]} == set(running)
    assert all(after[i] == "abandoned" for i in running)
    async with pool.acquire() as conn:
        assert await conn.fetchval(_RUNNING_OF, b) is None
    assert await runs.abandon_orphaned_runs(pool) == 0


async def test_refusals_without_a_token_share_a_row_per_action_and_minute(db_dsn: str) -> None:
    """Over a long audit log: a refusal is counted on its action's row of the last minute,
    after admin actions written since too; a row older than a minute, or another action's,
    is not used."""
    pool = await create_pool(db_dsn)
    try:
        await pool.execute(
            "insert into audit_log (at, actor, action, outcome, status, detail) "
            "select now() - interval '2 minutes' - g * interval '1 minute', 'anonymous', "
            "'pause', 'refused', 401, '{\"count\": 3}' from generate_series(1, 5000) g"
        )
        first = await operations.audit_anonymous_refusal(
            pool, action="pause", target="a", remote="192.0.2.1"
        )
        for i in range(20):
            await operations.audit(
                pool, actor="token:ops", role="admin", action="apply", target=str(i), outcome="ok"
            )
        again = await operations.audit_anonymous_refusal(
            pool, action="pause", target="b", remote="192.0.2.2"
        )
        other = await operations.audit_anonymous_refusal(
            pool, action="cancel", target="a", remote=None
        )
        assert again == first and other != first
        detail = await pool.fetchval("select detail from audit_log where id = $1", first)
        assert detail["count"] == 2 and detail["last_target"] == "b"
        assert await pool.fetchval("select count(*) from audit_log") == 5000 + 20 + 2
    finally:
        await pool.close()
