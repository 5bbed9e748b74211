"""Searches without words (the console's home page and filters alone, the search API with
filters only) at catalogue scale, this tree against a reference tree (the code before), on one
database. Run by hand; results go to docs/benchmarks.md.

    git worktree add /tmp/facet-ref <commit before>
    .venv/bin/python bench/facet_bench.py --tools 1000000 --reference /tmp/facet-ref

Builds a private PostgreSQL cluster, migrates it with the reference tree's migrations, fills it
with bench/search_bench.py's synthetic catalogue (one tool per record, five upstreams, 500
organisations, five descriptor types) and publishes it (the capture builds the search rows);
then applies this tree's migrations (timed: the facet groups are filled from the search rows
and their indexes built). Each round runs every search once through the reference tree's
database functions and once through this tree's (``db.console.search``, ``db.search.search``;
bare asyncpg, no HTTP), each in a process of its own, alternating which goes first. The
reference reads a database that also has this tree's table and indexes (they can only help
it). Last, the cost of the facet triggers: the search rows written again into a scratch table
(the groups and values emptied first, as at a first publish) and a 1% change published, each
with this tree's triggers, with the reference tree's trigger function and without triggers;
and the rows written without triggers, then the groups and values counted once from them (what
a first publish could do instead). All rolled back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# (label, console filters, API filters): what an operator clicks.
SEARCHES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("home (no filter)", {}, {}),
    ("upstream", {"upstream": "workflowhub"}, {"upstream": "workflowhub"}),
    ("descriptor type", {"descriptor_type": "CWL"}, {"descriptor_type": "CWL"}),
    ("tool class", {"toolclass": "Workflow"}, {"toolclass": "Workflow"}),
    ("organisation", {"organization": "lab-42"}, {"organization": "lab-42"}),
    ("only in one registry", {"only": "galaxy"}, {"has_checker": True}),
    ("two or more registries", {"multi": True}, {"has_checker": False}),
    (
        "upstream + type + class",
        {"upstream": "dockstore", "descriptor_type": "WDL", "toolclass": "CommandLineTool"},
        {"upstream": "dockstore", "descriptor_type": "WDL", "toolclass": "CommandLineTool"},
    ),
    (
        "organisation + type",
        {"organization": "lab-7", "descriptor_type": "NFL"},
        {"organization": "lab-7", "descriptor_type": "NFL"},
    ),
]
#: The console's last reachable page (results 981-1000) of the home page, too.
DEEP_OFFSET = 980


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="build, measure, report (the default)")
    for p in (parser, run):
        p.add_argument("--tools", type=int, default=1_000_000)
        p.add_argument("--reference", type=Path, help="a checkout of the code before")
        p.add_argument("--rounds", type=int, default=3)
    timer = sub.add_parser("time", help="(internal) time the searches with one tree's code")
    timer.add_argument("--code", type=Path, required=True)
    timer.add_argument("--dsn", required=True)
    args = parser.parse_args()
    if args.command == "time":
        sys.path.insert(0, str(args.code))
        print(json.dumps(asyncio.run(time_searches(args.dsn))))
        return 0
    if args.reference is None:
        parser.error("--reference is required")
    asyncio.run(run_bench(args))
    return 0


async def time_searches(dsn: str) -> dict[str, Any]:
    """Each search once, console then API, with the code importable as ``aggregator``."""
    import aggregator
    from aggregator.db import console as db_console
    from aggregator.db import search as db_search
    from aggregator.db.pool import connect, create_pool

    out: dict[str, Any] = {"code": str(Path(aggregator.__file__).parent.parent)}
    conn = await connect(dsn)
    pool = await create_pool(dsn)
    try:
        for label, console_filters, api_filters in SEARCHES:
            offsets = [0, DEEP_OFFSET] if not console_filters else [0]
            for offset in offsets:
                key = label if offset == 0 else f"{label}, results {offset + 1}-{offset + 20}"
                t0 = time.perf_counter()
                async with conn.transaction(readonly=True):
                    page = await db_console.search(
                        conn, db_console.Search(**console_filters), offset=offset, limit=20
                    )
                out[f"console: {key}"] = [time.perf_counter() - t0, page.total]
            t0 = time.perf_counter()
            result = await db_search.search(pool, db_search.SearchQuery(**api_filters), limit=20)
            out[f"API: {label if api_filters == console_filters else str(api_filters)}"] = [
                time.perf_counter() - t0,
                result.total,
            ]
    finally:
        await pool.close()
        await conn.close()
    return out


def timed(code: Path, dsn: str) -> dict[str, Any]:
    """One round of every search with *code*'s functions, in a process of its own."""
    result = subprocess.run(
        [sys.executable, __file__, "time", "--code", str(code), "--dsn", dsn],
        check=True,
        capture_output=True,
        text=True,
    )
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found.pop("code")).resolve() == code.resolve(), "the wrong tree was imported"
    return found


async def run_bench(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    import search_bench

    from aggregator.db.migrate import migrate
    from aggregator.db.pool import connect
    from aggregator.pgcluster import LocalCluster

    root = Path(tempfile.mkdtemp(prefix="facet-bench-"))
    root.chmod(0o755)
    cluster = LocalCluster(root / "pg")
    try:
        dsn = cluster.start()
        await migrate(dsn, args.reference / "sql" / "migrations")
        print(f"populating {args.tools:,} tools ...", file=sys.stderr)
        publish = await search_bench.populate(dsn, args.tools)
        print(f"published in {publish:.1f} s", file=sys.stderr)
        t0 = time.perf_counter()
        await migrate(dsn)
        migrated = time.perf_counter() - t0
        conn = await connect(dsn)
        try:
            await conn.execute("vacuum analyze")
            groups = await conn.fetchval("select count(*) from search_facet_groups")
            sizes = await conn.fetch(
                "select relname, pg_size_pretty(pg_total_relation_size(oid)) as size "
                "from pg_class where relname in ('search_docs', 'search_facet_groups')"
            )
        finally:
            await conn.close()
        here = HERE.parent
        times: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
        totals: dict[str, int] = {}
        for r in range(args.rounds):
            order = [("before", args.reference), ("after", here)]
            for name, code in order if r % 2 == 0 else order[::-1]:
                for key, (seconds, total) in timed(code, dsn).items():
                    times[name].setdefault(key, []).append(seconds)
                    if totals.setdefault(key, total) != total:
                        raise AssertionError(f"{key}: {name} counted {total}, not {totals[key]}")
            print(f"round {r + 1} done, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
        triggers = await trigger_cost(dsn, args.reference)
        report(
            args,
            publish=publish,
            migrated=migrated,
            groups=groups,
            sizes=sizes,
            times=times,
            totals=totals,
            triggers=triggers,
        )
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def reference_count_function(reference: Path) -> str | None:
    """The reference tree's last definition of the facet triggers' function (its migrations'
    ``search_facet_groups_count``), as ``create or replace``; None when it has none."""
    found = None
    for path in sorted((reference / "sql" / "migrations").glob("*.sql")):
        text = path.read_text()
        at = text.find("function search_facet_groups_count()")
        if at >= 0:
            found = "create or replace " + text[at : text.index("end $$;", at) + len("end $$;")]
    return found


# A first publish could write the search rows without the facet triggers and count the groups
# and values once from the rows written: that count, into scratch tables.
COUNTED_ONCE = """
create temporary table groups_scratch on commit drop as
select upstreams, descriptor_types, toolclass, organization, toolclasses, organizations,
       has_checker, count(*) as tools
from facet_scratch group by 1, 2, 3, 4, 5, 6, 7;
create temporary table values_scratch on commit drop as
select f.facet, f.value, sum(g.tools) as tools
from groups_scratch g,
     search_facet_values_of(g.upstreams, g.descriptor_types, g.toolclass, g.organization,
                            g.toolclasses, g.organizations, g.has_checker) f
group by 1, 2;
"""


async def trigger_cost(dsn: str, reference: Path) -> dict[str, list[float]]:
    """What the facet triggers add: every search row written again into a scratch table (as
    a first publish writes them) and a publish of a 1% change, each with this tree's
    triggers, with the reference's trigger function instead and without triggers; and the
    rows written without triggers, then counted once (COUNTED_ONCE); interleaved, every change
    rolled back."""
    from aggregator.db.pool import connect

    conn = await connect(dsn)
    out: dict[str, list[float]] = {}
    before = reference_count_function(reference)
    variants = ["this tree", "none", "counted once"] + (["reference"] if before else [])
    try:
        n = await conn.fetchval("select count(*) from upstream_tools")
        for r in range(2):
            for variant in variants if r % 2 == 0 else variants[::-1]:
                tr = conn.transaction()
                await tr.start()
                try:
                    if variant == "reference":
                        await conn.execute(before)
                    # As at a first publish: no groups and no values yet.
                    await conn.execute("truncate search_facet_groups, search_facet_values")
                    await conn.execute("create table facet_scratch (like search_docs)")
                    if variant in {"this tree", "reference"}:
                        await conn.execute(
                            "create trigger facet_scratch_ins after insert on facet_scratch "
                            "referencing new table as new_rows for each statement "
                            "execute function search_facet_groups_count()"
                        )
                    t0 = time.perf_counter()
                    await conn.execute("insert into facet_scratch select * from search_docs")
                    if variant == "counted once":
                        await conn.execute(COUNTED_ONCE)
                    out.setdefault(f"all search rows written, triggers: {variant}", []).append(
                        time.perf_counter() - t0
                    )
                finally:
                    await tr.rollback()
                if variant == "counted once":
                    continue
                tr = conn.transaction()
                await tr.start()
                try:
                    if variant == "reference":
                        await conn.execute(before)
                    if variant == "none":
                        await conn.execute(
                            "alter table search_docs disable trigger search_docs_facets_ins, "
                            "disable trigger search_docs_facets_upd, "
                            "disable trigger search_docs_facets_del"
                        )
                    await conn.execute(
                        "update upstream_tools set doc = jsonb_set(doc, '{organization}', "
                        "to_jsonb('moved-' || (id % 50))), doc_hash = doc_hash || 'm' "
                        "where id % 100 = $1",
                        r,
                    )
                    t0 = time.perf_counter()
                    await conn.execute("update catalogue_state set generation = generation + 1")
                    out.setdefault(f"1% change published, triggers: {variant}", []).append(
                        time.perf_counter() - t0
                    )
                finally:
                    await tr.rollback()
        out["records"] = [float(n)]
    finally:
        await conn.close()
    return out


def report(
    args: argparse.Namespace,
    *,
    publish: float,
    migrated: float,
    groups: int,
    sizes: list[Any],
    times: dict[str, dict[str, list[float]]],
    totals: dict[str, int],
    triggers: dict[str, list[float]],
) -> None:
    """Print the Markdown of docs/benchmarks.md."""
    print(
        f"{args.tools:,} tools, {args.rounds} rounds; first publish {publish:.1f} s; this "
        f"tree's migrations on top {migrated:.1f} s; {groups:,} facet groups; "
        + ", ".join(f"{r['relname']} {r['size']}" for r in sizes)
        + f"; load average now {os.getloadavg()[0]:.1f}\n"
    )
    print("| search | hits | before, median ms (each round) | after, median ms | before / after |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for key, before in times["before"].items():
        after = times["after"][key]
        b, a = statistics.median(before), statistics.median(after)
        rounds = ", ".join(f"{x * 1000:,.0f}" for x in before)
        print(
            f"| {key} | {totals[key]:,} | {b * 1000:,.1f} ({rounds}) | {a * 1000:,.1f} "
            f"({', '.join(f'{x * 1000:,.1f}' for x in after)}) | **{b / a:,.0f}x** |"
        )
    print()
    for key, values in triggers.items():
        if key != "records":
            print(f"- {key}: " + ", ".join(f"{v:.2f} s" for v in values))


if __name__ == "__main__":
    sys.exit(main())
