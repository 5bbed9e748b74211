"""Hostile-conditions figures: peak RSS of a harvest fed compression bombs, and what the API
answers during a database outage.

- **Bombs.** A registry of 20 tools whose first two descriptors are gzip bombs (one with
  Content-Length, one streamed), each ``--bomb-mib`` MiB once decompressed, is harvested by
  ``trs-aggregator harvest`` under GNU time, interleaved with harvests of the same registry
  without bombs (the reference); peak RSS of each.
- **Outage.** ``trs-aggregator serve`` reads PostgreSQL through a TCP proxy; after a warm-up
  that caches the 20 tools, ``--clients`` clients request a cached tool and an uncached
  answer (a query string never asked before), alternately, for ``--outage-s`` seconds
  before, during and after the proxy drops every connection; answers are counted by status
  (and ``X-Aggregator-Stale``).

Usage::

    .venv/bin/python bench/hostile_bench.py --rounds 2 --bomb-mib 1024 --outage-s 10

Needs the PostgreSQL server binaries and GNU time. Everything lives in a temporary directory
removed at the end. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.demo.registry import make_registry_app
from aggregator.pgcluster import LocalCluster
from tests.pgproxy import PgProxy
from tests.support import catalogue, cwl_tool, dsn_with_db

TRS = "/ga4gh/trs/v2"
TOOLS = [f"t{i:02d}" for i in range(20)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gzip_bomb(mib: int) -> bytes:
    """A gzip FileWrapper whose content is *mib* MiB of '#', compressed without holding it."""
    out = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [out.compress(b'{"content":"')]
    block = b"#" * (1 << 20)
    parts += [out.compress(block) for _ in range(mib)]
    parts += [out.compress(b'"}'), out.flush()]
    return b"".join(parts)


def registry(bomb: bytes | None) -> web.Application:
    @web.middleware
    async def bombs(request: web.Request, handler: Any) -> web.StreamResponse:
        if bomb is not None and request.path.endswith("/versions/1.0/CWL/descriptor"):
            headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
            if f"/tools/{TOOLS[0]}/" in request.path:
                return web.Response(body=bomb, headers=headers)
            if f"/tools/{TOOLS[1]}/" in request.path:
                response = web.StreamResponse(headers=headers)
                await response.prepare(request)
                for i in range(0, len(bomb), 65536):
                    await response.write(bomb[i : i + 65536])
                await response.write_eof()
                return response
        return await handler(request)

    return make_registry_app(catalogue([cwl_tool(t) for t in TOOLS]), middlewares=[bombs])


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def write_config(path: Path, dsn: str, upstream_port: int, api_port: int = 0) -> Path:
    path.write_text(
        f"[database]\nurl = {json.dumps(dsn)}\npool_max = 6\n"
        f'[server]\nhost = "127.0.0.1"\nport = {api_port}\n'
        f'[[upstreams]]\nname = "bench"\nurl = "http://127.0.0.1:{upstream_port}{TRS}"\n'
    )
    return path


async def aggregator(*args: str, timed: bool = False) -> tuple[int, str, int | None]:
    """Run the command (under GNU time when *timed*); exit status, output, peak RSS KiB."""
    cmd = [sys.executable, "-m", "aggregator", *args]
    if timed:
        cmd = ["/usr/bin/time", "-v", *cmd]
    env = {k: v for k, v in os.environ.items() if k != "AGGREGATOR_DATABASE_URL"}
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    text = out.decode() + err.decode()
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    assert proc.returncode is not None
    return proc.returncode, text, int(found[1]) if found else None


async def bombs(admin_dsn: str, work: Path, rounds: int, mib: int) -> list[dict[str, Any]]:
    bomb = gzip_bomb(mib)
    print(f"bomb: {len(bomb)} bytes compressed, {mib} MiB decompressed", flush=True)
    results = []
    for n in range(rounds):
        for kind in ("reference", "bombs"):
            runner, port = await serve(registry(bomb if kind == "bombs" else None))
            db = f"bomb_{kind}_{n}"
            await admin(admin_dsn, f"create database {db}")
            dsn = dsn_with_db(admin_dsn, db)
            config = write_config(work / f"{db}.toml", dsn, port)
            status, text, _ = await aggregator("migrate", "--config", str(config))
            assert status == 0, text
            started = time.perf_counter()
            status, text, rss = await aggregator("harvest", "--config", str(config), timed=True)
            seconds = time.perf_counter() - started
            await runner.cleanup()
            summary = next(line for line in text.splitlines() if line.startswith("bench:"))
            results.append({"kind": kind, "round": n, "rss_kib": rss, "s": seconds})
            print(f"{kind:9} round {n}: peak RSS {rss / 1024:.0f} MiB, {seconds:.1f}s; {summary}")
    return results


async def load(
    base: str, clients: int, seconds: float, counts: collections.Counter[str], phase: str
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        deadline = time.monotonic() + seconds

        async def client(i: int) -> None:
            n = i
            while time.monotonic() < deadline:
                tool = TOOLS[n % len(TOOLS)]
                # A query never asked before is a cache miss: it needs the database.
                path = (
                    f"{TRS}/tools/{tool}" if n % 2 else f"{TRS}/tools/{tool}/versions?{phase}={n}"
                )
                kind = "cached" if n % 2 else "uncached"
                n += 1
                try:
                    async with session.get(base + path) as r:
                        await r.read()
                        stale = " stale" if "X-Aggregator-Stale" in r.headers else ""
                        counts[f"{kind} {r.status}{stale}"] += 1
                except (aiohttp.ClientError, TimeoutError) as e:
                    counts[f"{kind} {type(e).__name__}"] += 1

        await asyncio.gather(*(client(i) for i in range(clients)))


async def outage(admin_dsn: str, work: Path, clients: int, seconds: float) -> None:
    runner, port = await serve(registry(None))
    await admin(admin_dsn, "create database outage")
    dsn = dsn_with_db(admin_dsn, "outage")
    proxy = await PgProxy(dsn).start()
    api_port = free_port()
    config = write_config(work / "outage.toml", proxy.dsn(), port, api_port)
    status, text, _ = await aggregator("migrate", "--config", str(config))
    assert status == 0, text
    status, text, _ = await aggregator("harvest", "--config", str(config))
    assert status == 0, text
    env = {k: v for k, v in os.environ.items() if k != "AGGREGATOR_DATABASE_URL"}
    log = (work / "serve.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aggregator", "serve", "--config", str(config),
        cwd=ROOT, env=env, stdout=log, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{api_port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"{base}{TRS}/tools") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            for t in TOOLS:  # the cached half
                async with session.get(f"{base}{TRS}/tools/{t}") as r:
                    assert r.status == 200
        phases: dict[str, collections.Counter[str]] = {}
        for phase in ("before", "during", "after"):
            if phase == "during":
                proxy.cut()
            if phase == "after":
                proxy.restore()
            phases[phase] = collections.Counter()
            await load(base, clients, seconds, phases[phase], phase)
        for phase, counts in phases.items():
            total = sum(counts.values())
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
            print(f"outage {phase:6} {seconds:g}s, {clients} clients: {total} answers ({detail})")
    finally:
        proc.terminate()
        await proc.wait()
        await proxy.close()
        await runner.cleanup()


async def main_async(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="trsagg-hostile-"))
    work.chmod(0o755)
    cluster = LocalCluster(work / "pg", fast=True)
    try:
        admin_dsn = cluster.start()
        if args.rounds:
            await bombs(admin_dsn, work, args.rounds, args.bomb_mib)
        if args.outage_s:
            await outage(admin_dsn, work, args.clients, args.outage_s)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bomb-mib", type=int, default=1024)
    parser.add_argument("--outage-s", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
