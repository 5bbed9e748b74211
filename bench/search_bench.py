"""Search benchmark: GET /aggregator/v1/search over 100,000 merged tools, cold and warm, with
the same searches run by a bare asyncpg client (no HTTP, no JSON) as the reference. Run by
hand; results go to docs/benchmarks.md.

    .venv/bin/python bench/search_bench.py --tools 100000

Builds a private PostgreSQL cluster under a temporary directory, fills it with synthetic
upstream records and their merged catalogue (the search index is built by the publish
trigger, timed), restarts the server (empty shared buffers), then runs each query once
(cold), then every query again several times (warm), interleaving the API and the reference.
The web console's search page for the same words and filters is timed too, cold only (a page
is rendered once per catalogue generation, then served from the cache).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from aiohttp import web

from aggregator.app import create_app
from aggregator.config import Config, DatabaseConfig
from aggregator.db import search as db_search
from aggregator.db.migrate import migrate
from aggregator.db.pool import connect, create_pool
from aggregator.pgcluster import LocalCluster

UPSTREAMS = ("dockstore", "workflowhub", "biocontainers", "yevis", "galaxy")
WORDS = [
    "align",
    "bwa",
    "samtools",
    "sort",
    "variant",
    "calling",
    "germline",
    "somatic",
    "rnaseq",
    "salmon",
    "star",
    "kallisto",
    "fastqc",
    "trimming",
    "adapter",
    "qc",
    "metagenome",
    "kraken",
    "bracken",
    "assembly",
    "spades",
    "megahit",
    "annotation",
    "prokka",
    "busco",
    "phylogeny",
    "iqtree",
    "mafft",
    "blast",
    "diamond",
    "hmmer",
    "chipseq",
    "macs",
    "peak",
    "atacseq",
    "methylation",
    "bismark",
    "singlecell",
    "scanpy",
    "seurat",
    "proteomics",
    "maxquant",
    "structural",
    "gatk",
    "mutect",
    "deepvariant",
    "bcftools",
    "vcf",
    "bam",
    "cram",
    "coverage",
    "mosdepth",
    "pangenome",
    "nanopore",
    "minimap",
    "medaka",
]
TYPES = ("CWL", "WDL", "NFL", "SMK", "GALAXY")
SYLLABLES = [
    "ba",
    "ce",
    "di",
    "fo",
    "gu",
    "ka",
    "le",
    "mi",
    "no",
    "pu",
    "ra",
    "se",
    "ti",
    "vo",
    "zu",
    "xan",
    "tor",
    "mel",
    "qui",
    "dra",
]
# A vocabulary of 8,000 made-up words, drawn with a Zipf-like skew, stands for the long tail
# of real descriptions and names (a tiny vocabulary would make every word match a third of
# the catalogue).
VOCABULARY = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES][:8000]
WEIGHTS = [1 / (i + 1) for i in range(len(VOCABULARY))]


def words(rng: random.Random, k: int) -> list[str]:
    return rng.choices(VOCABULARY, weights=WEIGHTS, k=k)


def name(rng: random.Random, i: int) -> str:
    return f"{rng.choice(WORDS)}-{rng.choice(VOCABULARY)}-{i}"


async def populate(dsn: str, n: int) -> float:
    """*n* upstream records, one catalogue tool each; return the seconds the publish took
    (merged catalogue rows written, search index and change feed built by the trigger)."""
    rng = random.Random(7)
    conn = await connect(dsn)
    try:
        for i, u in enumerate(UPSTREAMS):
            await conn.execute(
                "insert into upstreams (name, url, kind, mode, priority) values ($1, $2, 'trs', "
                "'mirror', $3)",
                u,
                f"https://{u}.example/ga4gh/trs/v2",
                i,
            )
        ups = {r["name"]: r["id"] for r in await conn.fetch("select id, name from upstreams")}
        tools, versions = [], []
        for i in range(n):
            nm = name(rng, i)
            org = f"lab-{rng.randrange(500)}"
            desc = " ".join([rng.choice(WORDS), *words(rng, 24)])
            doc = {
                "id": f"#workflow/github.com/{org}/{nm}",
                "name": nm,
                "organization": org,
                "description": f"A workflow for {desc}.",
                "toolclass": {"id": "1", "name": rng.choice(("Workflow", "CommandLineTool"))},
                "aliases": [f"10.5281/zenodo.{1000000 + i}"],
                "has_checker": rng.random() < 0.05,
            }
            tools.append((ups[UPSTREAMS[i % 5]], doc["id"], doc, f"h{i}"))
            versions.append(
                {
                    "id": "1.0",
                    "name": "1.0",
                    "author": [f"Author {rng.randrange(2000)}"],
                    "descriptor_type": [rng.choice(TYPES)],
                }
            )
        await conn.copy_records_to_table(
            "upstream_tools",
            records=tools,
            columns=["upstream_id", "external_id", "doc", "doc_hash"],
        )
        ids = [r["id"] for r in await conn.fetch("select id from upstream_tools order by id")]
        await conn.copy_records_to_table(
            "upstream_versions",
            records=[(t, "1.0", "1.0", 0, v) for t, v in zip(ids, versions, strict=True)],
            columns=["upstream_tool_id", "key", "external_id", "position", "doc"],
        )
        vids = {
            r["upstream_tool_id"]: r["id"]
            for r in await conn.fetch("select id, upstream_tool_id from upstream_versions")
        }
        ext = {
            r["id"]: r["external_id"]
            for r in await conn.fetch("select id, external_id from upstream_tools")
        }
        started = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table(
                "catalogue_tools",
                records=[(ext[t], ext[t], t) for t in ids],
                columns=["id", "sort_key", "primary_member_id"],
            )
            await conn.copy_records_to_table(
                "catalogue_members",
                records=[(t, ext[t]) for t in ids],
                columns=["upstream_tool_id", "tool_id"],
            )
            await conn.copy_records_to_table(
                "catalogue_versions",
                records=[(ext[t], "1.0", 0, vids[t], [vids[t]]) for t in ids],
                columns=["tool_id", "key", "position", "upstream_version_id", "source_ids"],
            )
            await conn.execute("update catalogue_state set generation = generation + 1")
        took = time.perf_counter() - started
        await conn.execute("vacuum analyze")
        return took
    finally:
        await conn.close()


def queries(rng: random.Random, count: int) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for i in range(count):
        w1, w2 = rng.choice(WORDS), words(rng, 1)[0]
        kind = i % 6
        if kind == 0:
            out.append({"q": w1})
        elif kind == 1:
            out.append({"q": f"{w1} {w2}"})
        elif kind == 2:  # a typo in a name word
            j = rng.randrange(1, len(w1))
            out.append({"q": w1[:j] + w1[j + 1 :] + f" {w2}-{rng.randrange(100000)}"})
        elif kind == 3:
            out.append({"q": w1, "descriptorType": rng.choice(TYPES)})
        elif kind == 4:
            out.append({"q": f'"{w1} {w2}"', "upstream": rng.choice(UPSTREAMS)})
        else:
            out.append({"q": f"lab-{rng.randrange(500)} {w1}"})
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


async def measure(dsn: str, qs: list[dict[str, str]], rounds: int) -> dict[str, list[float]]:
    config = Config(database=DatabaseConfig(url=dsn, pool_max=4))
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    pool = await create_pool(dsn)
    times: dict[str, list[float]] = {
        "api_cold": [],
        "ref_cold": [],
        "console_cold": [],
        "api_warm": [],
        "ref_warm": [],
    }
    try:
        async with aiohttp.ClientSession() as session:

            async def api(params: dict[str, str]) -> float:
                t0 = time.perf_counter()
                async with session.get(
                    f"http://127.0.0.1:{port}/aggregator/v1/search", params=params
                ) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
                return time.perf_counter() - t0

            async def console(params: dict[str, str]) -> float:
                names = {"q": "q", "descriptorType": "type", "upstream": "upstream"}
                page = {names[k]: v for k, v in params.items()}
                t0 = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}/", params=page) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
                return time.perf_counter() - t0

            async def ref(params: dict[str, str]) -> float:
                query = db_search.SearchQuery(
                    text=params["q"],
                    upstream=params.get("upstream"),
                    descriptor_type=params.get("descriptorType"),
                )
                t0 = time.perf_counter()
                await db_search.search(pool, query, limit=20)
                return time.perf_counter() - t0

            # Cold: each query the first time (half through the API first, half the reference
            # first, so neither always meets the other's cache).
            for i, q in enumerate(qs):
                if i % 2:
                    times["api_cold"].append(await api(q))
                    times["ref_cold"].append(await ref(q))
                else:
                    times["ref_cold"].append(await ref(q))
                    times["api_cold"].append(await api(q))
                times["console_cold"].append(await console(q))
            for _ in range(rounds):
                for q in qs:
                    times["api_warm"].append(await api(q))
                    times["ref_warm"].append(await ref(q))
    finally:
        await pool.close()
        await runner.cleanup()
    return times


async def main_async(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="search-bench-"))
    root.chmod(0o755)
    cluster = LocalCluster(root / "pg")
    try:
        dsn = cluster.start()
        await migrate(dsn)
        print(f"populating {args.tools} tools ...", file=sys.stderr)
        build = await populate(dsn, args.tools)
        cluster.stop()
        dsn = cluster.start()  # empty shared buffers
        qs = queries(random.Random(11), args.queries)
        times = await measure(dsn, qs, args.rounds)
        print(f"tools: {args.tools}; queries: {len(qs)} distinct, warm x{args.rounds}")
        print(
            f"publish of the whole catalogue (index and feed built by the trigger): {build:.1f} s"
        )
        print("| | p50 ms | p99 ms | mean ms |")
        print("| --- | ---: | ---: | ---: |")
        for key in ("api_cold", "ref_cold", "console_cold", "api_warm", "ref_warm"):
            v = times[key]
            print(
                f"| {key} | {pct(v, 50):.1f} | {pct(v, 99):.1f} | {statistics.mean(v) * 1000:.1f} |"
            )
        for phase in ("cold", "warm"):
            a, r = times[f"api_{phase}"], times[f"ref_{phase}"]
            print(
                f"{phase}: API / bare client p50 {pct(a, 50) / pct(r, 50):.2f}, "
                f"p99 {pct(a, 99) / pct(r, 99):.2f}"
            )
        c, r = times["console_cold"], times["ref_cold"]
        print(
            f"console page cold / bare client cold: p50 {pct(c, 50) / pct(r, 50):.2f}, "
            f"p99 {pct(c, 99) / pct(r, 99):.2f}"
        )
        # The queries behind the cold tail: their place in the run (the first ones meet an
        # empty cache) and their cold times through the API.
        slowest = sorted(range(len(qs)), key=lambda i: -times["api_cold"][i])[:6]
        print("slowest cold (API):")
        for i in slowest:
            print(f"  #{i} {qs[i]} {times['api_cold'][i] * 1000:.1f} ms")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tools", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
