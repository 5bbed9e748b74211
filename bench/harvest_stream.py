"""Harvest benchmark: a large local upstream served by nginx, harvested into PostgreSQL.

Measures, interleaved in one run on the same machine:

- a first harvest (``trs-aggregator harvest``, mirror mode): wall time and peak RSS;
- the same URLs fetched by a bare aiohttp client with the same concurrency (the reference);
- a re-harvest of the unchanged upstream.

Usage::

    .venv/bin/python bench/harvest_stream.py --tools 100000 --rounds 2

``--baseline DIR`` also runs, in each round, the harvest of another checkout (for example
``git worktree add /tmp/base main``) against a database of its own, between the reference and
this tree's harvest, so that a change is measured against what it changes in the same run.
Each harvest's resident memory is sampled while it runs, with what its database sessions are
doing, and reported by phase: ``crawl`` (listing, fetching and staging), ``publish`` (the
staged rows written over the upstream's records), ``merge`` and ``capture`` (the generation
bump, with the change feed and search index triggers).

Needs nginx (``apt-get install nginx``) and the PostgreSQL server binaries. Everything it
creates lives in a temporary directory and is removed at the end. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.pgcluster import LocalCluster

TRS = "/ga4gh/trs/v2"
PAGE = 100
VERSION = "1.0"
# Per tool, the harvester asks for these (relative to the tool's URL), in mirror mode.
TOOL_PATHS = (
    "/versions",
    f"/versions/{VERSION}/CWL/descriptor",
    f"/versions/{VERSION}/CWL/files",
    f"/versions/{VERSION}/CWL/descriptor/tools/step.cwl",
    f"/versions/{VERSION}/CWL/descriptor/tests/job.json",
    f"/versions/{VERSION}/CWL/tests",
    f"/versions/{VERSION}/containerfile",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool_id(i: int) -> str:
    return f"bench-tool-{i:06d}"


def listing_entry(i: int, base: str) -> dict[str, Any]:
    tid = tool_id(i)
    return {
        "id": tid,
        "url": f"{base}/tools/{tid}",
        "name": tid,
        "organization": "bench",
        "description": f"benchmark tool {i}",
        "aliases": [],
        "meta_version": "1",
        "toolclass": {"id": "1", "name": "Workflow", "description": "A workflow"},
        "versions": [
            {
                "id": VERSION,
                "name": VERSION,
                "meta_version": "1",
                "url": f"{base}/tools/{tid}/versions/{VERSION}",
                "author": ["Bench"],
                "descriptor_type": ["CWL"],
                "is_production": True,
                "containerfile": True,
            }
        ],
    }


def nginx_escape(text: str) -> str:
    """A JSON text for an nginx ``return`` string in single quotes."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def wrapper(content: str, url: str) -> str:
    return json.dumps({"content": content, "url": url, "checksum": []})


def write_upstream(root: Path, tools: int, port: int) -> Path:
    """Listing pages as static files; every per-tool answer made by nginx from the tool id."""
    base = f"http://127.0.0.1:{port}{TRS}"
    pages = root / "pages"
    pages.mkdir(parents=True)
    # The first page has no offset: it is the map's default.
    next_map = [
        f'        default "{TRS}/tools?limit={PAGE}&offset={PAGE}";'
        if tools > PAGE
        else '        default "";'
    ]
    for start in range(0, tools, PAGE):
        entries = [listing_entry(i, base) for i in range(start, min(start + PAGE, tools))]
        (pages / f"{start}.json").write_text(json.dumps(entries))
        if start:
            following = (
                f"{TRS}/tools?limit={PAGE}&offset={start + PAGE}" if start + PAGE < tools else ""
            )
            next_map.append(f'        "{start}" "{following}";')
    tool = f"{TRS}/tools/$1"
    vurl = f"http://$http_host{tool}/versions/{VERSION}"
    main = "cwlVersion: v1.2\nclass: Workflow\n# $1\nsteps:\n  s:\n    run: tools/step.cwl\n"
    step = "cwlVersion: v1.2\nclass: CommandLineTool\n# step of $1\n"
    job = '{"reads": "$1.fq"}\n'
    answers = {
        "/versions": json.dumps(
            [
                {
                    "id": VERSION,
                    "name": VERSION,
                    "url": vurl,
                    "meta_version": "1",
                    "author": ["Bench"],
                    "descriptor_type": ["CWL"],
                    "is_production": True,
                    "containerfile": True,
                }
            ]
        ),
        f"/versions/{VERSION}/CWL/descriptor": wrapper(main, f"{vurl}/PLAIN_CWL/descriptor"),
        f"/versions/{VERSION}/CWL/files": json.dumps(
            [
                {"path": "main.cwl", "file_type": "PRIMARY_DESCRIPTOR"},
                {"path": "tools/step.cwl", "file_type": "SECONDARY_DESCRIPTOR"},
                {"path": "tests/job.json", "file_type": "TEST_FILE"},
            ]
        ),
        f"/versions/{VERSION}/CWL/descriptor/tools/step.cwl": wrapper(
            step, f"{vurl}/PLAIN_CWL/descriptor/tools/step.cwl"
        ),
        f"/versions/{VERSION}/CWL/descriptor/tests/job.json": wrapper(
            job, f"{vurl}/PLAIN_CWL/descriptor/tests/job.json"
        ),
        f"/versions/{VERSION}/CWL/tests": "["
        + wrapper(job, f"{vurl}/PLAIN_CWL/descriptor/tests/job.json")
        + "]",
        f"/versions/{VERSION}/containerfile": "["
        + wrapper("FROM debian:12\n# $1\n", f"{vurl}/containerfile")
        + "]",
    }
    locations = "\n".join(
        f"        location ~ ^{TRS}/tools/([^/]+){re.escape(suffix)}$ {{\n"
        f"            return 200 '{nginx_escape(body)}';\n        }}"
        for suffix, body in answers.items()
    )
    service_info = json.dumps(
        {
            "id": "bench",
            "name": "bench",
            "type": {"group": "org.ga4gh", "artifact": "trs", "version": "2.0.1"},
            "organization": {"name": "bench", "url": "http://127.0.0.1"},
            "version": "1",
        }
    )
    conf = root / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/json;
    keepalive_requests 1000000;
    client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp; uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
    map $arg_offset $next_page {{
{chr(10).join(next_map)}
    }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = {TRS}/service-info {{ return 200 '{nginx_escape(service_info)}'; }}
        location = {TRS}/toolClasses {{
            return 200 '[{{"id": "1", "name": "Workflow", "description": "A workflow"}}]';
        }}
        location = {TRS}/tools {{
            add_header next_page $next_page;
            try_files /pages/${{arg_offset}}.json /pages/0.json =404;
        }}
{locations}
    }}
}}
""")
    (root / "tmp").mkdir()
    return conf


def urls(tools: int, port: int) -> tuple[list[str], list[str]]:
    """The listing pages and the per-tool URLs a first harvest fetches."""
    base = f"http://127.0.0.1:{port}{TRS}"
    pages = [f"{base}/tools?limit={PAGE}"] + [
        f"{base}/tools?limit={PAGE}&offset={s}" for s in range(PAGE, tools, PAGE)
    ]
    per_tool = [f"{base}/tools/{tool_id(i)}{p}" for i in range(tools) for p in TOOL_PATHS]
    return pages, per_tool


async def reference(tools: int, port: int, concurrency: int) -> None:
    """Fetch what a harvest fetches, and nothing else: the listing pages one after another
    while *concurrency* workers read every per-tool response."""
    pages, per_tool = urls(tools, port)
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=concurrency * 4)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100), timeout=timeout
    ) as session:

        async def worker() -> None:
            while (url := await queue.get()) is not None:
                async with session.get(url) as r:
                    await r.read()

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        per_page = PAGE * len(TOOL_PATHS)
        for n, page in enumerate(pages):
            async with session.get(page) as r:
                await r.read()
            for url in per_tool[n * per_page : (n + 1) * per_page]:
                await queue.put(url)
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)


PHASES = ("crawl", "publish", "merge", "capture")


def phase_of(query: str, current: str) -> str:
    """The phase a harvest is in when one of its sessions runs *query* (the latest phase
    seen so far is *current*: phases only go forward)."""
    q = query.lstrip().lower()
    if q.startswith("copy") or ("file_contents" in q and q.startswith("insert")):
        found = "crawl"  # staging
    elif "staged_" in q or q.startswith("analyze upstream_"):
        found = "publish"
    elif "catalogue_state" in q:
        found = "capture"
    elif current in ("publish", "merge"):
        found = "merge"
    else:
        found = current
    return max(found, current, key=PHASES.index)


class Sampler(threading.Thread):
    """Samples the resident memory of the harvest running under GNU time (its child *pid*)
    and the queries its database *db* runs, every *period* seconds."""

    def __init__(self, pid: int, admin: str, db: str, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.admin, self.db, self.period = pid, admin, db, period
        self.done = threading.Event()
        #: phase: [seconds, peak RSS in KiB, CPU seconds of the harvest]
        self.phases: dict[str, list[float]] = {p: [0.0, 0, 0.0] for p in PHASES}
        self._ticks = os.sysconf("SC_CLK_TCK")

    def _rss(self, pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _cpu(self, pid: int) -> float:
        """User and system seconds of *pid* so far."""
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / self._ticks

    def _child(self) -> int | None:
        """The harvest: the only child of GNU time."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def run(self) -> None:
        """Sample until ``done`` is set."""
        asyncio.run(self._sample())

    async def _sample(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin)
        phase, child, cpu, now = "crawl", None, 0.0, time.perf_counter()
        try:
            while not self.done.is_set():
                then, now = now, time.perf_counter()
                if child is None:
                    child = self._child()
                before, cpu = cpu, self._cpu(child) if child else 0.0
                rows = await conn.fetch(
                    "select query from pg_stat_activity where datname = $1 "
                    "and state = 'active' and backend_type = 'client backend' "
                    "and pid <> pg_backend_pid()",
                    self.db,
                )
                for r in rows:
                    phase = phase_of(r["query"], phase)
                rss = self._rss(child) if child else 0
                seen = self.phases[phase]
                seen[0] += now - then
                seen[1] = max(seen[1], rss)
                seen[2] += max(0.0, cpu - before)
                await asyncio.sleep(self.period)
        finally:
            await conn.close()

    def summary(self) -> dict[str, tuple[float, int, int]]:
        """Seconds, peak RSS in MiB and the harvest's CPU use (% of one core) of each phase
        seen."""
        return {
            p: (round(s, 1), round(r / 1024), round(100 * c / s))
            for p, (s, r, c) in self.phases.items()
            if s
        }


def run_timed(
    args: list[str],
    env: dict[str, str],
    *,
    cwd: Path | None = None,
    sample: tuple[str, str] | None = None,
) -> tuple[float, int, str, dict[str, tuple[float, int, int]]]:
    """Run *args* under GNU time in *cwd*; return wall seconds, peak RSS in KiB, stdout and,
    with *sample* (admin DSN, database), seconds, peak RSS and CPU use by phase."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["/usr/bin/time", "-v", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    sampler = Sampler(proc.pid, *sample) if sample else None
    if sampler:
        sampler.start()
    out, err = proc.communicate()
    elapsed = time.perf_counter() - started
    if sampler:
        sampler.done.set()
        sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{args} failed:\n{out}\n{err[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)[1])
    return elapsed, rss, out, sampler.summary() if sampler else {}


def harvest_round(
    py: str,
    tree: Path,
    *,
    admin: str,
    db: str,
    config: Path,
    port: int,
    args: argparse.Namespace,
    env: dict[str, str],
) -> dict[str, Any]:
    """A first harvest and a re-harvest by the checkout *tree* into a new database *db*."""
    subprocess.run(
        [
            py,
            "-c",
            f"""
import asyncio, asyncpg
async def go():
    c = await asyncpg.connect({admin!r}); await c.execute('create database {db}'); await c.close()
asyncio.run(go())""",
        ],
        check=True,
    )
    dsn = re.sub(r"/[^/?]*(\?|$)", f"/{db}\\1", admin, count=1)
    config.write_text(f"""[database]
url = {json.dumps(dsn)}
pool_max = 6
[[upstreams]]
name = "bench"
url = "http://127.0.0.1:{port}{TRS}"
page_size = {PAGE}
concurrency = {args.concurrency}
""")
    env = {**env, "AGGREGATOR_DATABASE_URL": dsn}
    # Run from *tree*: its package is the one imported, its migrations the ones applied.
    subprocess.run(
        [py, "-m", "aggregator", "migrate", "--config", str(config)],
        check=True,
        env=env,
        capture_output=True,
        cwd=tree,
    )
    profile = os.environ.get("BENCH_PROFILE")
    cmd = [py, *(["-m", "cProfile", "-o", profile] if profile else [])]
    cmd += ["-m", "aggregator", "harvest", "--config", str(config)]
    first_s, first_rss, out, phases = run_timed(cmd, env, cwd=tree, sample=(admin, db))
    if profile:
        cmd[4] = profile + ".again"
    again_s, again_rss, out2, _ = run_timed(cmd, env, cwd=tree)
    return {
        "harvest_s": first_s,
        "harvest_rss_mib": first_rss / 1024,
        "phases": phases,
        "reharvest_s": again_s,
        "reharvest_rss_mib": again_rss / 1024,
        "reharvest_speedup": first_s / again_s,
        "harvest_summary": out.strip(),
        "reharvest_summary": out2.strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout whose harvest is also run in each round, before this tree's",
    )
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        asyncio.run(reference(args.tools, args.port, args.concurrency))
        return

    work = Path(tempfile.mkdtemp(prefix="trsagg-bench-"))
    work.chmod(0o755)
    cluster = LocalCluster(work / "pg", fast=True)
    nginx: subprocess.Popen[bytes] | None = None
    try:
        admin = cluster.start()
        port = free_port()
        conf = write_upstream(work / "upstream", args.tools, port)
        nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(work / "upstream")])
        time.sleep(0.5)
        env = {**os.environ, "AGGREGATOR_DATABASE_URL": ""}
        py = sys.executable
        trees = [("baseline", args.baseline)] if args.baseline else []
        trees.append(("this tree", ROOT))
        results: list[dict[str, Any]] = []
        databases = 0
        for n in range(args.rounds):
            ref_s, _, _, _ = run_timed(
                [
                    py,
                    __file__,
                    "--reference",
                    "--tools",
                    str(args.tools),
                    "--port",
                    str(port),
                    "--concurrency",
                    str(args.concurrency),
                ],
                env,
            )
            for label, tree in trees:
                databases += 1
                db = f"bench_{databases}"
                row = harvest_round(
                    py,
                    tree,
                    admin=admin,
                    db=db,
                    config=work / f"agg_{databases}.toml",
                    port=port,
                    args=args,
                    env=env,
                )
                row = {"round": n + 1, "tree": label, "reference_s": ref_s, **row}
                row["throughput_ratio"] = ref_s / row["harvest_s"]
                row["load"] = os.getloadavg()
                results.append(row)
                print(json.dumps(row), flush=True)
        requests = args.tools * len(TOOL_PATHS) + len(urls(args.tools, port)[0])
        print(
            f"\n{args.tools} tools, {requests} requests per first harvest, "
            f"concurrency {args.concurrency}"
        )
        print(
            "round | tree | reference s | harvest s | ratio | peak RSS MiB | re-harvest s | "
            "speed-up | phases: s (peak MiB, harvest CPU %)"
        )
        for r in results:
            phases = ", ".join(f"{p} {s:.0f} ({m}, {c}%)" for p, (s, m, c) in r["phases"].items())
            print(
                f"{r['round']} | {r['tree']} | {r['reference_s']:.1f} | {r['harvest_s']:.1f} | "
                f"{r['throughput_ratio']:.2f} | {r['harvest_rss_mib']:.0f} | "
                f"{r['reharvest_s']:.1f} | {r['reharvest_speedup']:.1f}x | {phases}"
            )
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait()
        cluster.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
