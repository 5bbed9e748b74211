"""Benchmark console pages against the TRS API's JSON of the same tool, and nginx serving the
pages' bytes as static files.

Run by hand (never in the test suite)::

    apt-get install -y nginx wrk
    .venv/bin/pip install -e '.[speed]'
    .venv/bin/python bench/console_bench.py --tools 5000 --rounds 3 --duration 8

It reuses bench/api_bench.py: a private PostgreSQL cluster, a harvested synthetic registry of
``--tools`` tools, ``--workers`` API processes on one port (SO_REUSEPORT, uvloop, the canonical
request line logged to /dev/null). wrk measures each target in turn, interleaved round by
round, and a Markdown report gives requests/s and latency percentiles, each page's ratio to
the API's JSON in the same round, and the first request after a new catalogue generation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

import api_bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--cold-repeats", type=int, default=10)
    args = parser.parse_args()

    from aggregator.pgcluster import LocalCluster

    work = Path(tempfile.mkdtemp(prefix="trsagg-console-bench-"))
    os.chmod(work, 0o755)
    cluster = LocalCluster(work / "pg", fast=True)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        dsn = cluster.start()
        started = time.monotonic()
        asyncio.run(api_bench.populate(dsn, args.tools))
        print(f"harvested {args.tools} tools in {time.monotonic() - started:.1f}s", file=sys.stderr)
        port, nginx_port = api_bench.free_port(), api_bench.free_port()
        workers.extend(
            subprocess.Popen(
                [sys.executable, api_bench.__file__, "--serve", dsn, str(port), "INFO"],
                stderr=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            for _ in range(args.workers)
        )
        origin = f"http://127.0.0.1:{port}"
        api_bench.wait_ready(origin + "/ga4gh/trs/v2/toolClasses")
        name = f"workflow-{args.tools // 2:06d}"
        tool_id = quote(f"#workflow/github.com/bench-org/{name}", safe="")
        targets = {
            "API: GET /ga4gh/trs/v2/tools/{id}": (f"/ga4gh/trs/v2/tools/{tool_id}", "tool.json"),
            "console: GET /tools/{id}": (f"/tools/{tool_id}", "tool.html"),
            "console: GET /tools/{id}?tab=use": (f"/tools/{tool_id}?tab=use", "use.html"),
            "console: GET /?q=NAME": (f"/?q={name}", "search.html"),
            "console: GET /": ("/", "home.html"),
            "console: GET /upstreams": ("/upstreams", "upstreams.html"),
        }
        static = work / "www"
        static.mkdir()
        for path, file in targets.values():
            (static / file).write_bytes(api_bench.fetch(origin + path))
        os.chmod(static, 0o755)
        sizes = {label: (static / f).stat().st_size for label, (_, f) in targets.items()}
        results: dict[str, list[dict[str, float]]] = {label: [] for label in targets}
        results["nginx: the tool page's bytes"] = []
        with api_bench.nginx(static, nginx_port, args.workers):
            for _ in range(args.rounds):  # interleaved: the machine is shared and noisy
                for label, (path, _) in targets.items():
                    results[label].append(
                        api_bench.wrk(
                            origin + path,
                            connections=args.connections,
                            duration=args.duration,
                            threads=2,
                        )
                    )
                results["nginx: the tool page's bytes"].append(
                    api_bench.wrk(
                        f"http://127.0.0.1:{nginx_port}/tool.html",
                        connections=args.connections,
                        duration=args.duration,
                        threads=2,
                    )
                )
        cold = {
            label: asyncio.run(api_bench.cold_latencies(dsn, origin + path, args.cold_repeats))
            for label, (path, _) in targets.items()
        }
        report(args, results, cold, sizes)
        return 0
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=30)
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(
    args: argparse.Namespace,
    results: dict[str, list[dict[str, float]]],
    cold: dict[str, list[float]],
    sizes: dict[str, int],
) -> None:
    """Print the Markdown tables of docs/benchmarks.md."""
    api = results["API: GET /ga4gh/trs/v2/tools/{id}"]
    print(
        f"{args.tools} tools, {args.workers} workers, wrk -t2 -c{args.connections}, "
        f"{args.duration} s x {args.rounds} rounds\n"
    )
    print("| request | body | req/s | / API JSON | p50 ms | p90 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, runs in results.items():

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r.get(key, 0.0) for r in runs)

        ratios = [r["rps"] / a["rps"] for r, a in zip(runs, api, strict=True)]
        size = sizes.get(label, sizes["console: GET /tools/{id}"])
        print(
            f"| {label} | {size / 1024:.1f} KiB | {med('rps'):,.0f} | "
            f"**{statistics.median(ratios):.0%}** ({', '.join(f'{x:.0%}' for x in ratios)}) | "
            f"{med('p50'):.1f} | {med('p90'):.1f} | {med('p99'):.1f} |"
        )
    print("\nCold: the first request after a new catalogue generation\n")
    api_bench.print_cold_table(cold)


if __name__ == "__main__":
    sys.exit(main())
