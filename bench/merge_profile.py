"""Statement profile of the incremental merge, repeatable on one loaded database.

    python bench/merge_profile.py setup --tools 1000000 --dir /tmp/merge-profile
    python bench/merge_profile.py run --dir /tmp/merge-profile [--repeat 3] [--explain]
        [--checkpoint]
    python bench/merge_profile.py stop --dir /tmp/merge-profile

``setup`` starts a private durable cluster in *dir*, loads the records as
``merge_bench.py db`` does and runs the full merge (capture trigger disabled). ``run`` makes the
benchmark's 1% change (the same records each time: the random choice is seeded) and runs the
incremental merge inside a transaction that it rolls back, timing every call the merge makes on
its connection; ``--explain`` also logs every statement's plan with its triggers' times
(auto_explain) to the server log, printed after the run; ``--checkpoint`` runs a checkpoint
before the change, so that the merge's first write to each page writes the whole page to the
WAL, as it does in the benchmark right after a full merge (the repeated runs otherwise write
pages already written since the last checkpoint).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator.db.merge import remerge
from aggregator.db.migrate import migrate
from aggregator.db.pool import connect
from aggregator.pgcluster import LocalCluster
from bench.merge_bench import change_records, load_records


class Timed:
    """A connection that times each call by the statement's first words."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.times: dict[str, list[float]] = defaultdict(list)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._conn, name)
        if name not in {"execute", "fetch", "fetchval", "fetchrow", "copy_records_to_table"}:
            return attr

        async def timed(*args: Any, **kwargs: Any) -> Any:
            label = name + " " + " ".join(str(args[0]).split())[:90]
            t = time.perf_counter()
            try:
                return await attr(*args, **kwargs)
            finally:
                self.times[label].append(time.perf_counter() - t)

        return timed


async def setup(dsn: str, n: int) -> None:
    import asyncpg

    admin = await asyncpg.connect(dsn)
    await admin.execute("drop database if exists trs_merge_bench")
    await admin.execute("create database trs_merge_bench")
    await admin.close()
    db = _db(dsn)
    await migrate(db)
    conn = await connect(db)
    await conn.execute("alter table catalogue_state disable trigger catalogue_state_capture")
    await load_records(conn, n)
    await conn.execute("vacuum analyze")
    t = time.perf_counter()
    async with conn.transaction():
        await conn.execute("select 1 from catalogue_state for update")
        stats = await remerge(conn, tombstone_after=3, full=True)
    print(f"full merge {time.perf_counter() - t:.1f}s, {stats.tools} tools")
    await conn.execute("vacuum analyze")
    await conn.close()


def _db(dsn: str) -> str:
    base, sep, query = dsn.partition("?")
    return base.rsplit("/", 1)[0] + "/trs_merge_bench" + sep + query


async def run(dsn: str, n: int, *, explain: bool, capture: bool, checkpoint: bool) -> None:
    conn = await connect(_db(dsn))
    if capture:
        await conn.execute("alter table catalogue_state enable trigger catalogue_state_capture")
    else:
        await conn.execute("alter table catalogue_state disable trigger catalogue_state_capture")
    await conn.execute(
        "vacuum analyze catalogue_tools, catalogue_members, catalogue_versions,"
        " catalogue_id_history, tool_evidence, upstream_tools, merge_queue"
    )
    if checkpoint:
        # The next change to each page writes the whole page to the WAL, as after a full merge.
        await conn.execute("checkpoint")
    timed = Timed(conn)
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute("select setseed(0.5)")
        await change_records(conn, n // 100)
        if explain:
            await conn.execute(
                "load 'auto_explain'; set auto_explain.log_min_duration = 0;"
                " set auto_explain.log_analyze = on; set auto_explain.log_triggers = on;"
                " set auto_explain.log_nested_statements = on;"
                " set auto_explain.log_timing = on"
            )
        t = time.perf_counter()
        await conn.execute("select 1 from catalogue_state for update")
        stats = await remerge(timed, tombstone_after=3)  # type: ignore[arg-type]
        total = time.perf_counter() - t
    finally:
        await tr.rollback()
        await conn.close()
    print(f"incremental: {total:.2f}s, dirty {stats.dirty}, {stats.nodes} nodes, {stats.tools}")
    rows = sorted(((sum(v), len(v), k) for k, v in timed.times.items()), reverse=True)
    print(f"SQL total {sum(r[0] for r in rows):.3f}s")
    for s, c, k in rows:
        if s >= 0.005:
            print(f"{s:8.3f} {c:3d}  {k}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["setup", "run", "stop"])
    parser.add_argument("--tools", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--capture", action="store_true")
    parser.add_argument("--checkpoint", action="store_true")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    args.dir.chmod(0o755)
    cluster = LocalCluster(args.dir / "pg")
    if args.what == "stop":
        cluster.stop()
        return
    dsn = cluster.start()
    if args.what == "setup":
        asyncio.run(setup(dsn, args.tools))
        (args.dir / "tools").write_text(str(args.tools))
        return
    n = int((args.dir / "tools").read_text())
    for _ in range(args.repeat):
        asyncio.run(
            run(dsn, n, explain=args.explain, capture=args.capture, checkpoint=args.checkpoint)
        )


if __name__ == "__main__":
    main()
