"""Merge benchmark: the pure engine over synthetic records, and the database merge, full and
incremental. Run by hand; results go to docs/benchmarks.md.

    python bench/merge_bench.py pure --tools 1000000
    python bench/merge_bench.py db --tools 1000000      # on a private PostgreSQL cluster
    python bench/merge_bench.py db --tools 1000000 --dsn postgresql://postgres@127.0.0.1/postgres

``--sized`` starts the private cluster with settings sized for the catalogue and this machine
(24 GB, 2 cores, SSD) as PGTune gives them for a mixed workload, where PostgreSQL's defaults
(128 MB of shared buffers, 1 GB of WAL between checkpoints) are sized for a small database;
``--setting NAME=VALUE`` (repeatable) adds or overrides one.

Each step also prints the processor time it took: the benchmark's own process (the merge's
Python) and the database server (every process of the cluster: the connection's backend, its
parallel workers, the background writers), read from ``/proc``; on this machine's two cores
their sum over two is the least wall time the step could take with both kept busy. (With
``--dsn``, the server's figure includes whatever else that server runs.)

``--as-publish`` runs the first merge as a publish runs it (``remerge`` without ``full``, into
the empty catalogue) instead of as ``trs-aggregator merge --full``.

``--no-capture`` disables, in the benchmark's database only, the trigger that records the
change feed and search index at the generation bump (migration 0010), to time the merge's
own phases apart from it (``merge_finished`` logs the seconds of each).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg

from aggregator.db.merge import remerge
from aggregator.db.migrate import migrate
from aggregator.db.pool import connect
from aggregator.merge.engine import Node, identifying_keys, merge

# PGTune (mixed workload, PostgreSQL 15, 24 GB, 2 cores, SSD).
SIZED: dict[str, str] = {
    "shared_buffers": "6GB",
    "effective_cache_size": "18GB",
    "maintenance_work_mem": "1536MB",
    "checkpoint_completion_target": "0.9",
    "wal_buffers": "16MB",
    "random_page_cost": "1.1",
    "effective_io_concurrency": "200",
    "work_mem": "31457kB",
    "min_wal_size": "1GB",
    "max_wal_size": "4GB",
}
UPSTREAMS = ("dockstore", "workflowhub", "biocontainers", "yevis", "private")


def synthetic_nodes(n: int, seed: int = 1) -> list[Node]:
    """*n* records of n/2 real tools spread over five upstreams: half carry a repository, half a
    descriptor checksum, some a distinctive alias, and one record in a hundred a generic word."""
    rng = random.Random(seed)
    nodes = []
    for i in range(n):
        upstream = UPSTREAMS[i % len(UPSTREAMS)]
        real = rng.randrange(n // 2)
        keys: set[tuple[str, str]] = set()
        if rng.random() < 0.5:
            keys.add(("repo", f"github.com/org{real % 997}/repo{real}"))
        if rng.random() < 0.5:
            keys.add(("content", f"{real:064x}"))
        if rng.random() < 0.2:
            keys.add(("alias", f"tool-{real}"))
        if rng.random() < 0.01:
            keys.add(("word", "variant calling"))
        nodes.append(Node(i, upstream, UPSTREAMS.index(upstream), f"t{i}", frozenset(keys)))
    return nodes


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_pure(n: int) -> None:
    base = rss_mb()
    t0 = time.perf_counter()
    nodes = synthetic_nodes(n)
    t1 = time.perf_counter()
    identifying = identifying_keys(nodes)
    comps = merge(nodes, identifying=identifying)
    t2 = time.perf_counter()
    merged = sum(1 for c in comps if len(c.members) > 1)
    print(
        f"pure n={n}: generate {t1 - t0:.1f}s, merge {t2 - t1:.1f}s, "
        f"{len(comps)} tools ({merged} merged), peak RSS {rss_mb():.0f} MB "
        f"(before {base:.0f} MB)"
    )
    # Incremental: 1% of records change; merge the closure of the changed records.
    rng = random.Random(2)
    changed = set(rng.sample(range(n), n // 100))
    t3 = time.perf_counter()
    holders: dict[tuple[str, str], list[int]] = {}
    for node in nodes:
        for k in node.keys & identifying:
            holders.setdefault(k, []).append(node.id)
    part, frontier = set(changed), set(changed)
    while frontier:
        reached = {
            h for i in frontier for k in nodes[i].keys & identifying for h in holders[k]
        } - part
        part |= reached
        frontier = reached
    merge([nodes[i] for i in part], identifying=identifying)
    print(
        f"pure incremental: {len(changed)} changed, closure {len(part)}, "
        f"{time.perf_counter() - t3:.2f}s (index build included)"
    )


async def load_records(conn: asyncpg.Connection, n: int) -> None:
    """*n* records over the five upstreams, stored directly, one version each, a third with a
    Dockstore-style alias and a third with a distinctive plain alias; queued for the merge, as
    a publish queues new records."""
    for i, name in enumerate(UPSTREAMS):
        await conn.execute(
            "insert into upstreams (name, url, kind, mode, priority) "
            "values ($1, $2, 'trs', 'index', $3)",
            name,
            f"https://{name}.test",
            i,
        )
    await conn.execute(
        """insert into upstream_tools (upstream_id, external_id, doc, doc_hash)
           select 1 + i % 5, 't' || i,
                  jsonb_build_object('id', 't' || i, 'aliases',
                      case when i % 3 = 0 then jsonb_build_array(
                               '#workflow/github.com/org/repo' || (i / 7))
                           when i % 3 = 1 then jsonb_build_array('kelmor-tavisu-' || (i / 11))
                           else '[]'::jsonb end),
                  md5(i::text)
           from generate_series(0, $1 - 1) as i""",
        n,
    )
    await conn.execute(
        """insert into upstream_versions (upstream_tool_id, key, external_id, position, doc)
           select id, '1.0', '1.0', 0, '{"id": "1.0", "name": "1.0"}' from upstream_tools"""
    )
    # Queued for the merge, as a publish queues new records.
    await conn.execute("insert into merge_queue select id from upstream_tools")


async def change_records(conn: asyncpg.Connection, count: int) -> None:
    """Give *count* records chosen at random a new alias of their own (which moves most of them
    out of their groups), and queue them for the merge."""
    await conn.execute(
        """with changed as (
               update upstream_tools
               set doc = jsonb_set(doc, '{aliases}', jsonb_build_array('changed-' || id))
               where id in (select id from upstream_tools order by random() limit $1)
               returning id)
           insert into merge_queue select id from changed""",
        count,
    )


def _proc_cpu(pid: int, *, children: bool = False) -> float:
    """User and system seconds of process *pid* (and of its children it has waited for)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:  # it has exited
        return 0.0
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / os.sysconf("SC_CLK_TCK")


def server_cpu(backend: int) -> float:
    """Processor seconds used so far by the PostgreSQL server of *backend* (a local server's
    backend process): its postmaster, every process it started that still runs, and those
    that have exited (the postmaster's children's times)."""
    with open(f"/proc/{backend}/stat") as f:
        postmaster = int(f.read().rsplit(")", 1)[1].split()[1])
    total = _proc_cpu(postmaster, children=True)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) != postmaster:
                        continue
            except (OSError, ValueError, IndexError):
                continue
            total += _proc_cpu(int(entry.name))
    return total


async def bench_db(n: int, dsn: str, *, capture: bool = True, as_publish: bool = False) -> None:
    admin = await asyncpg.connect(dsn)
    await admin.execute("drop database if exists trs_merge_bench")
    await admin.execute("create database trs_merge_bench")
    await admin.close()
    base, sep, query = dsn.partition("?")
    db = base.rsplit("/", 1)[0] + "/trs_merge_bench" + sep + query
    await migrate(db)
    conn = await connect(db)
    if not capture:
        await conn.execute("alter table catalogue_state disable trigger catalogue_state_capture")
    t0 = time.perf_counter()
    await load_records(conn, n)
    await conn.execute("vacuum analyze")
    print(f"db n={n}: loaded in {time.perf_counter() - t0:.1f}s")
    backend = await conn.fetchval("select pg_backend_pid()")
    first = ("first publish", False, 0) if as_publish else ("full", True, 0)
    for label, full, change in (first, ("incremental 1%", False, n // 100)):
        if change:
            await change_records(conn, change)
        t, own, server = time.perf_counter(), time.process_time(), server_cpu(backend)
        async with conn.transaction():
            await conn.execute("select 1 from catalogue_state for update")
            stats = await remerge(conn, tombstone_after=3, full=full)
        wall, own = time.perf_counter() - t, time.process_time() - own
        server = server_cpu(backend) - server
        print(
            f"db {label}: {wall:.2f}s, dirty {stats.dirty}, "
            f"re-merged {stats.nodes} records into {stats.tools} tools, "
            f"peak RSS {rss_mb():.0f} MB; processor: merge {own:.2f}s, server {server:.2f}s, "
            f"(merge + server) / 2 = {(own + server) / 2:.2f}s"
        )
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["pure", "db"])
    parser.add_argument("--tools", type=int, default=1_000_000)
    parser.add_argument("--dsn", help="an existing server (default: start a private cluster)")
    parser.add_argument(
        "--no-capture", action="store_true", help="db: without the change-feed capture trigger"
    )
    parser.add_argument(
        "--as-publish", action="store_true", help="db: the first merge as a publish runs it"
    )
    parser.add_argument("--sized", action="store_true", help="db: PGTune's settings (see above)")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="NAME=VALUE", help="db: a server setting"
    )
    args = parser.parse_args()
    settings = dict(SIZED) if args.sized else {}
    settings.update(s.split("=", 1) for s in args.setting)
    if args.what == "pure":
        bench_pure(args.tools)
    elif args.dsn:
        asyncio.run(
            bench_db(args.tools, args.dsn, capture=not args.no_capture, as_publish=args.as_publish)
        )
    else:
        import shutil
        import tempfile

        from aggregator.pgcluster import LocalCluster

        work = Path(tempfile.mkdtemp(prefix="trsagg-merge-bench-"))
        work.chmod(0o755)  # the server runs as postgres when we are root
        cluster = LocalCluster(work / "pg", settings=settings)  # durable, as a real database is
        try:
            asyncio.run(
                bench_db(
                    args.tools,
                    cluster.start(),
                    capture=not args.no_capture,
                    as_publish=args.as_publish,
                )
            )
        finally:
            cluster.stop()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
