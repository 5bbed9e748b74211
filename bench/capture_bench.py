"""Capture benchmark: what the generation bump costs (the trigger that writes the change feed,
the catalogue snapshot and the search index) for a whole catalogue at once, with the capture
of migration 0010 (``before``: the database migrated up to 0010) and the current one
(``after``), interleaved in one run. Run by hand; results go to docs/benchmarks.md.

    .venv/bin/python bench/capture_bench.py --tools 100000 --sides after
    .venv/bin/python bench/capture_bench.py --tools 20000 --sides before,after
    .venv/bin/python bench/capture_bench.py --tools 100000 --sides before --steps ""

Three publishes, each of every tool of the catalogue (the synthetic one of search_bench.py):

- ``added``: the catalogue written for the first time (copied in, then the bump; the whole
  transaction is timed, as search_bench.py reports it);
- ``unchanged``: every tool's catalogue rows rewritten as they were, then the bump (each tool
  is compared with its snapshot; nothing is announced);
- ``changed``: every upstream record's description changed, then the bump (each tool is
  announced ``changed`` with its metadata, and its search row rebuilt).

For each the bump alone is timed (the writes before it are not). With both sides, the
change feeds the two wrote are compared entry by entry.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search_bench import populate  # type: ignore[import-not-found]

from aggregator.db.migrate import default_directory, migrate
from aggregator.db.pool import connect
from aggregator.pgcluster import LocalCluster

BEFORE_LAST = "0010"
BUMP = "update catalogue_state set generation = generation + 1"


async def timed_bump(dsn: str, prepare: str) -> float:
    """Run *prepare*, then time the generation bump, in one transaction."""
    conn = await connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(prepare)
            started = time.perf_counter()
            await conn.execute(BUMP)
            took = time.perf_counter() - started
        await conn.execute("vacuum analyze")
        return took
    finally:
        await conn.close()


async def feed(dsn: str) -> list[tuple[object, ...]]:
    conn = await connect(dsn)
    try:
        rows = await conn.fetch(
            "select generation, kind, tool_id, related_ids, parts, digest "
            "from catalogue_changes order by seq"
        )
        return [tuple(r) for r in rows]
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> None:
    sides = [s for s in args.sides.split(",") if s]
    root = Path(tempfile.mkdtemp(prefix="capture-bench-"))
    root.chmod(0o755)
    before_dir = root / "migrations-before"
    before_dir.mkdir()
    for f in sorted(default_directory().glob("*.sql")):
        if f.name[:4] <= BEFORE_LAST:
            shutil.copy(f, before_dir / f.name)
    cluster = LocalCluster(root / "pg")
    results: dict[str, dict[str, float]] = {s: {} for s in sides}
    try:
        admin = cluster.start()
        dsns = {}
        for side in sides:
            conn = await connect(admin)
            try:
                await conn.execute(f'create database "{side}"')
            finally:
                await conn.close()
            parts = urlsplit(admin)
            dsns[side] = urlunsplit(parts._replace(path=f"/{side}"))
            await migrate(dsns[side], before_dir if side == "before" else None)
        steps = {
            "unchanged": "update catalogue_versions set position = position",
            "changed": "update upstream_tools set doc = jsonb_set(doc, '{description}', "
            "to_jsonb(doc->>'description' || ' (revised)')), doc_hash = doc_hash || 'r'",
        }
        for side in sides:
            print(f"{side}: added ...", file=sys.stderr)
            results[side]["added"] = await populate(dsns[side], args.tools)
        wanted = [s for s in args.steps.split(",") if s in steps]
        for step in wanted:
            prepare = steps[step]
            for side in sides:
                print(f"{side}: {step} ...", file=sys.stderr)
                results[side][step] = await timed_bump(dsns[side], prepare)
        if len(sides) == 2:
            a, b = [await feed(dsns[s]) for s in sides]
            same = "identical" if a == b else f"DIFFERENT ({len(a)} and {len(b)} entries)"
            print(f"change feeds of the two sides: {same} ({len(a)} entries)")
        print(f"tools: {args.tools}")
        print("| publish | " + " | ".join(sides) + " |")
        print("| --- | " + " | ".join("---:" for _ in sides) + " |")
        for step in ("added", *wanted):
            print(f"| {step} | " + " | ".join(f"{results[s][step]:.1f} s" for s in sides) + " |")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tools", type=int, default=100_000)
    parser.add_argument("--sides", default="before,after")
    parser.add_argument("--steps", default="unchanged,changed", help="after the first publish")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
