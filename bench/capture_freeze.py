"""Capture harness: the merge benchmark's catalogue frozen just before the generation bump,
and the bump (the capture trigger) timed in a transaction that is rolled back, so variants of
the capture's functions run on the same rows. Run by hand.

    python bench/capture_freeze.py build --tools 200000 --dsn postgresql://postgres@127.0.0.1/postgres
    python bench/capture_freeze.py time --db cap_inc --dsn ... [--sql variant.sql] [--explain]

``build`` makes two databases (names prefixed by ``--prefix``, default ``cap``): ``cap_full``
(the first full merge written, its touches recorded, the bump not yet run) and ``cap_inc`` (that
bump committed, then a 1% change merged, the bump not yet run). ``time`` runs, in one
transaction each, the optional SQL (``--sql``: new function definitions), the bump, and a
rollback, then vacuums what the rollback left; ``--explain light`` prints each statement's
duration inside the trigger (auto_explain, nested statements), ``--explain analyze`` its plan
with row counts, timings and buffers. The databases are on the server of ``--dsn``: at
1,000,000 records, take the heavy-work lock.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg

from aggregator.db.merge import remerge
from aggregator.db.migrate import migrate
from aggregator.db.pool import connect
from bench.merge_bench import change_records, load_records

BUMP = "update catalogue_state set generation = generation + 1, published_at = now()"


def _db(dsn: str, name: str) -> str:
    base, sep, query = dsn.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + sep + query


async def _merge(conn: asyncpg.Connection, *, full: bool, capture: bool) -> None:
    if not capture:
        await conn.execute("alter table catalogue_state disable trigger catalogue_state_capture")
    async with conn.transaction():
        await conn.execute("select 1 from catalogue_state for update")
        await remerge(conn, tombstone_after=3, full=full)
    await conn.execute("alter table catalogue_state enable trigger catalogue_state_capture")


async def build(n: int, dsn: str, prefix: str) -> None:
    admin = await asyncpg.connect(dsn)
    for name in (f"{prefix}_full", f"{prefix}_inc"):
        await admin.execute(f"drop database if exists {name}")
    await admin.execute(f"create database {prefix}_full")
    full = _db(dsn, f"{prefix}_full")
    await migrate(full)
    conn = await connect(full)
    await load_records(conn, n)
    await conn.execute("vacuum analyze")
    await _merge(conn, full=True, capture=False)
    print("touched rows:", await conn.fetchval("select count(*) from catalogue_touched"))
    await conn.close()
    await admin.execute(f"create database {prefix}_inc template {prefix}_full")
    conn = await connect(_db(dsn, f"{prefix}_inc"))
    t = time.perf_counter()
    await conn.execute(BUMP)
    print(f"first bump committed in {time.perf_counter() - t:.1f}s")
    await conn.execute("vacuum analyze")
    await change_records(conn, n // 100)
    await _merge(conn, full=False, capture=False)
    print("touched rows:", await conn.fetchval("select count(*) from catalogue_touched"))
    await conn.close()
    await admin.close()


#: What the capture wrote, as one digest per table (``--check``: variants must print the same).
CHECKS = {
    "feed": "select md5(string_agg(concat_ws('|', generation, kind, tool_id, related_ids, parts,"
    " digest), E'\\n' order by seq)) from catalogue_changes",
    "snapshot": "select md5(string_agg(s::text, E'\\n' order by tool_id))"
    " from catalogue_snapshot s",
    "search": "select md5(string_agg(s::text, E'\\n' order by tool_id)) from search_docs s",
    "lexicon": "select md5(string_agg(word, E'\\n' order by word)) from search_lexicon",
}


async def time_bump(
    dsn: str, db: str, sql: list[str], repeat: int, explain: str | None, *, check: bool = False
) -> None:
    conn = await asyncpg.connect(_db(dsn, db))
    if explain:
        conn.add_log_listener(lambda _c, msg: print(msg.message))
    for _ in range(repeat):
        tr = conn.transaction()
        await tr.start()
        try:
            for path in sql:
                await conn.execute(Path(path).read_text())
            if explain:
                analyze = "on" if explain == "analyze" else "off"
                await conn.execute(
                    "load 'auto_explain';"
                    "set local auto_explain.log_min_duration = 0;"
                    "set local auto_explain.log_nested_statements = on;"
                    f"set local auto_explain.log_analyze = {analyze};"
                    f"set local auto_explain.log_buffers = {analyze};"
                    "set local auto_explain.log_level = notice;"
                )
            t = time.perf_counter()
            await conn.execute(BUMP)
            took = time.perf_counter() - t
            feed = await conn.fetchval(
                "select count(*) from catalogue_changes where generation = "
                "(select generation from catalogue_state)"
            )
            print(f"{db} {' '.join(sql) or 'as migrated'}: bump {took:.2f}s, {feed} entries")
            if check:
                for name, query in CHECKS.items():
                    print(f"  {name}: {await conn.fetchval(query)}")
        finally:
            await tr.rollback()
        # The rolled-back rows leave dead tuples (and GIN pending-list entries) behind.
        await conn.execute(
            "vacuum catalogue_touched, catalogue_snapshot, catalogue_changes, search_docs,"
            " search_lexicon"
        )
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["build", "time"])
    parser.add_argument("--tools", type=int, default=200_000)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1/postgres")
    parser.add_argument("--db", default="cap_inc")
    parser.add_argument("--prefix", default="cap", help="build: the databases' name prefix")
    parser.add_argument("--sql", action="append", default=[])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--explain", choices=["analyze", "light"])
    parser.add_argument(
        "--check", action="store_true", help="print a digest of each table the capture writes"
    )
    args = parser.parse_args()
    if args.what == "build":
        asyncio.run(build(args.tools, args.dsn, args.prefix))
    else:
        asyncio.run(
            time_bump(args.dsn, args.db, args.sql, args.repeat, args.explain, check=args.check)
        )


if __name__ == "__main__":
    main()
