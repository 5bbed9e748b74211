"""Benchmark the TRS API against nginx serving the same response bytes as static files.

Run by hand (never in the test suite), on an otherwise idle machine::

    apt-get install -y nginx wrk
    .venv/bin/python bench/api_bench.py --tools 5000 --rounds 3 --duration 10

It starts a private PostgreSQL cluster, harvests a synthetic registry of ``--tools`` tools
(three versions each) from an in-process TRS server, starts ``trs-aggregator serve`` twice —
with its defaults (one process per CPU, uvloop, one JSON log line per request, here to
/dev/null) and with ``--best`` — an nginx with ``--workers`` workers (default: one per CPU)
serving the API's own answers as static files, and as many bare aiohttp processes answering
those bytes from memory; then measures with wrk, the servers taking turns, and prints a
Markdown report: requests/s and latency percentiles of each side, their ratio to nginx in the
same round, and the latency of the first request after a new catalogue generation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHANNEL = "trs_aggregator_catalogue"


def synthetic_catalogue(n: int) -> dict[str, Any]:
    """*n* Dockstore-like tools with three versions each (metadata only: harvested in index
    mode)."""
    tools = []
    for i in range(n):
        tid = f"#workflow/github.com/bench-org/workflow-{i:06d}"
        versions = [
            {
                "id": name,
                "name": name,
                "author": ["A. Author", "B. Author"],
                "descriptor_type": ["CWL"],
                "descriptor_type_version": {"CWL": ["v1.2"]},
                "is_production": name != "main",
                "containerfile": False,
                "meta_version": "2024-05-14 09:31:27.418",
                "verified": False,
                "verified_source": [],
                "signed": False,
                "included_apps": [],
                "images": [
                    {
                        "registry_host": "quay.io",
                        "image_name": f"quay.io/biocontainers/tool{i % 97}:1.{j}",
                        "size": 38123520 + i,
                        "updated": "2024-02-01T10:12:00Z",
                        "checksum": [{"checksum": f"{i:032x}{j:032x}", "type": "sha-256"}],
                        "image_type": "Docker",
                    }
                ],
            }
            for j, name in enumerate(("1.0.0", "1.1.0", "main"))
        ]
        tools.append(
            {
                "id": tid,
                "name": f"bench-org/workflow-{i:06d}",
                "organization": "bench-org",
                "toolclass": {"id": "1", "name": "Workflow", "description": "Workflow"},
                "description": f"Synthetic workflow number {i} for the API benchmark.",
                "aliases": [f"10.5281-zenodo.{1000000 + i}"],
                "meta_version": "2024-05-14",
                "has_checker": False,
                "checker_url": "",
                "versions": versions,
            }
        )
    return {"tools": tools}


async def populate(dsn: str, n: int) -> None:
    """Migrate *dsn* and harvest the synthetic registry into it."""
    from aiohttp.test_utils import TestServer

    from aggregator.config import Config, DatabaseConfig, UpstreamConfig
    from aggregator.db.migrate import migrate
    from aggregator.db.pool import create_pool
    from aggregator.demo.registry import make_registry_app
    from aggregator.harvest.runner import harvest_upstreams, make_session

    await migrate(dsn)
    server = TestServer(make_registry_app(synthetic_catalogue(n), page_size=1000), host="127.0.0.1")
    await server.start_server()
    try:
        config = Config(
            database=DatabaseConfig(url=dsn),
            upstreams=(
                UpstreamConfig(
                    name="bench",
                    url=str(server.make_url("/ga4gh/trs/v2")),
                    mode="index",
                    page_size=1000,
                    timeout_s=300,
                ),
            ),
        )
        pool = await create_pool(dsn)
        try:
            async with make_session(config) as session:
                (outcome,) = await harvest_upstreams(pool, session, config)
        finally:
            await pool.close()
        assert outcome.status == "succeeded", outcome.error
    finally:
        await server.close()


def start_service(dsn: str, port: int, work: Path, extra: str) -> subprocess.Popen[bytes]:
    """``trs-aggregator serve`` as a user runs it: its defaults (one process per CPU, uvloop,
    the JSON request log, here to /dev/null) plus *extra* TOML lines under ``[server]``."""
    config = work / f"serve-{port}.toml"
    config.write_text(
        f'[database]\nurl = "{dsn}"\n[server]\nhost = "127.0.0.1"\nport = {port}\n{extra}\n'
    )
    return subprocess.Popen(
        [sys.executable, "-m", "aggregator", "serve", "--config", str(config)],
        cwd=work,
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def serve_bare(root: str, port: int) -> None:
    """A bare aiohttp process (``--serve-bare``): the same bytes from memory, one handler, no
    middleware, as a reference for what aiohttp itself costs."""
    from aiohttp import web

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    bodies = {f"/{p.name}": p.read_bytes() for p in Path(root).iterdir()}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=bodies[request.path], content_type="application/json")

    app = web.Application()
    app.router.add_get("/{name}", handler)
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, access_log=None, print=None)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as r:
        body: bytes = r.read()
        return body


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fetch(url)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        else:
            return


@contextlib.contextmanager
def nginx(root: Path, port: int, workers: int) -> Iterator[None]:
    """nginx serving *root* on *port* (static files, sendfile, no access log)."""
    conf = root.parent / "nginx.conf"
    conf.write_text(f"""
worker_processes {workers};
pid {root.parent}/nginx.pid;
error_log {root.parent}/nginx-error.log;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    types {{ application/json json; }}
    default_type application/json;
    server {{
        listen 127.0.0.1:{port} reuseport;
        root {root};
        location / {{ try_files $uri =404; }}
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(root.parent)])
    try:
        wait_ready(f"http://127.0.0.1:{port}/tool.json")
        yield
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(timeout=30)


_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_PCT = re.compile(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)


def wrk(url: str, *, connections: int, duration: int, threads: int) -> dict[str, float]:
    """Requests/s and p50/p90/p99 latency (ms) of wrk against *url*."""
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "30s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    result = {"rps": float(_RPS.search(out).group(1))}  # type: ignore[union-attr]
    for pct, value, unit in _PCT.findall(out):
        result[f"p{pct}"] = float(value) * scale[unit]
    if "Non-2xx" in out or "Socket errors" in out:
        result["errors"] = 1.0
    return result


async def cold_latencies(dsn: str, url: str, repeats: int) -> list[float]:
    """Latency (ms) of the first request after each of *repeats* new generations."""
    import aiohttp
    import asyncpg

    conn = await asyncpg.connect(dsn)
    out = []
    try:
        for _ in range(repeats):
            generation = await conn.fetchval(
                "update catalogue_state set generation = generation + 1 returning generation"
            )
            await conn.execute("select pg_notify($1, $2)", CHANNEL, str(generation))
            await asyncio.sleep(0.3)  # every process hears of it
            async with aiohttp.ClientSession(auto_decompress=False) as session:
                started = time.perf_counter()
                async with session.get(url, headers={"Accept-Encoding": "identity"}) as r:
                    await r.read()
                    assert r.status == 200
                out.append((time.perf_counter() - started) * 1000)
    finally:
        await conn.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cold-repeats", type=int, default=15)
    parser.add_argument("--dsn", help="use this (empty) database instead of a private cluster")
    parser.add_argument(
        "--best",
        default='request_log = "errors"',
        help="[server] settings of the 'API, best' side (default: %(default)s)",
    )
    parser.add_argument("--serve-bare", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare[0], int(args.serve_bare[1]))
        return 0

    from aggregator.pgcluster import LocalCluster

    work = Path(tempfile.mkdtemp(prefix="trsagg-bench-"))
    os.chmod(work, 0o755)
    cluster = None
    workers: list[subprocess.Popen[bytes]] = []
    try:
        dsn = args.dsn
        if dsn is None:
            cluster = LocalCluster(work / "pg", fast=True)
            dsn = cluster.start()
        started = time.monotonic()
        asyncio.run(populate(dsn, args.tools))
        print(f"harvested {args.tools} tools in {time.monotonic() - started:.1f}s", file=sys.stderr)

        port, quiet_port, bare_port, nginx_port = (free_port() for _ in range(4))
        workers.append(start_service(dsn, port, work, ""))
        workers.append(start_service(dsn, quiet_port, work, args.best))
        api = f"http://127.0.0.1:{port}/ga4gh/trs/v2"
        wait_ready(f"{api}/toolClasses")
        wait_ready(f"http://127.0.0.1:{quiet_port}/ga4gh/trs/v2/toolClasses")
        tool_id = quote(f"#workflow/github.com/bench-org/workflow-{args.tools // 2:06d}", safe="")
        deep = max(0, args.tools - 1000)
        targets = {
            "GET /tools/{id}": (f"{api}/tools/{tool_id}", "tool.json"),
            "GET /tools?limit=1000": (f"{api}/tools?limit=1000", "tools-1000.json"),
            f"GET /tools?limit=1000&offset={deep}": (
                f"{api}/tools?limit=1000&offset={deep}",
                "tools-deep.json",
            ),
        }
        static = work / "www"
        static.mkdir()
        for url, name in targets.values():
            (static / name).write_bytes(fetch(url))
        os.chmod(static, 0o755)
        sizes = {label: (static / name).stat().st_size for label, (_, name) in targets.items()}
        workers.extend(
            subprocess.Popen(
                [sys.executable, __file__, "--serve-bare", str(static), str(bare_port)],
                stderr=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            for _ in range(args.workers)
        )
        wait_ready(f"http://127.0.0.1:{bare_port}/tool.json")

        results: dict[str, dict[str, list[dict[str, float]]]] = {}
        with nginx(static, nginx_port, args.workers):
            for label, (url, name) in targets.items():
                sides = {
                    "nginx": f"http://127.0.0.1:{nginx_port}/{name}",
                    "bare aiohttp": f"http://127.0.0.1:{bare_port}/{name}",
                    "API, best": url.replace(f":{port}/", f":{quiet_port}/"),
                    "API, defaults": url,
                }
                results[label] = {side: [] for side in sides}
                for target in sides.values():  # every process renders it once first
                    wrk(target, connections=args.connections, duration=2, threads=args.threads)
                for _ in range(args.rounds):  # interleaved: the machine is shared and noisy
                    for side, target in sides.items():
                        results[label][side].append(
                            wrk(
                                target,
                                connections=args.connections,
                                duration=args.duration,
                                threads=args.threads,
                            )
                        )
        cold = {
            label: asyncio.run(cold_latencies(dsn, url, args.cold_repeats))
            for label, (url, _) in targets.items()
        }
        report(args, results, cold, sizes)
        return 0
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=30)
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(
    args: argparse.Namespace,
    results: dict[str, dict[str, list[dict[str, float]]]],
    cold: dict[str, list[float]],
    sizes: dict[str, int],
) -> None:
    """Print the Markdown tables."""
    med = statistics.median
    print(
        f"\n{args.tools} tools; {args.workers} processes per server (nginx workers, bare "
        f"aiohttp, API); wrk -t{args.threads} -c{args.connections} -d{args.duration}s; "
        f"{args.rounds} rounds, the servers taking turns within each round. Medians of the "
        "rounds; the ratio to nginx is taken per round, its median shown with each round's "
        "in brackets.\n"
    )
    print("| request | body | server | req/s | / nginx | p50 ms | p90 ms | p99 ms |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for label, sides in results.items():
        ng = sides["nginx"]
        for side, runs in sides.items():
            ratios = [a["rps"] / n["rps"] for a, n in zip(runs, ng, strict=True)]
            ratio = (
                ""
                if side == "nginx"
                else (f"**{med(ratios):.0%}** ({', '.join(f'{r:.0%}' for r in ratios)})")
            )
            print(
                f"| {label} | {sizes[label] / 1024:.0f} KiB | {side} | "
                f"{med(r['rps'] for r in runs):,.0f} | {ratio} | "
                f"{med(r['p50'] for r in runs):.1f} | {med(r['p90'] for r in runs):.1f} | "
                f"{med(r['p99'] for r in runs):.1f} |"
            )
    print(
        "\nCold: the first request after a new catalogue generation (one client, "
        f"{args.cold_repeats} generations)\n"
    )
    print_cold_table(cold)


def print_cold_table(cold: dict[str, list[float]]) -> None:
    """The Markdown table of cold-request times (ms) by request label."""
    print("| request | median ms | p90 ms | max ms |")
    print("| --- | ---: | ---: | ---: |")
    for label, measured in cold.items():
        values = sorted(measured)
        p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
        print(f"| {label} | {statistics.median(values):.1f} | {p90:.1f} | {values[-1]:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
