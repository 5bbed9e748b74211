"""The trs-aggregator command end to end: real subprocesses, PostgreSQL and TRS registries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from aggregator.db.migrate import default_directory, load_migrations
from aggregator.demo.registry import STATE, make_registry_app
from aggregator.pgcluster import LocalCluster
from tests.support import catalogue, config_for, cwl_tool, eventually, fetch, harvest, upstream_toml

TRS = "/ga4gh/trs/v2"


@dataclass
class Result:
    """What a finished command did."""

    returncode: int
    stdout: str
    stderr: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(**extra: str) -> dict[str, str]:
    """Our environment without a database override, plus *extra*."""
    env = {k: v for k, v in os.environ.items() if k != "AGGREGATOR_DATABASE_URL"}
    env.update(extra)
    return env


async def spawn_cli(cwd: Path, *args: str, output: Any) -> asyncio.subprocess.Process:
    """Start ``python -m aggregator ARGS``, stdout and stderr going to *output* (PIPE: each
    its own pipe)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aggregator",
        *args,
        cwd=cwd,
        env=child_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=output,
        stderr=output,
    )


async def run_cli(cwd: Path, *args: str, timeout: float = 60) -> Result:
    """Run ``python -m aggregator ARGS`` to completion, without blocking our event loop."""
    proc = await spawn_cli(cwd, *args, output=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def start_cli(cwd: Path, log: Path, *args: str) -> asyncio.subprocess.Process:
    """Start ``python -m aggregator ARGS`` in the background, its output going to *log*."""
    with log.open("wb") as out:
        return await spawn_cli(cwd, *args, output=out)


def write_config(path: Path, dsn: str, upstreams: dict[str, TestServer], *, port: int = 0) -> Path:
    """A TOML config: database *dsn*, API on *port*, one upstream per running registry."""
    lines = [
        "[database]",
        f"url = {json.dumps(dsn)}",
        "pool_max = 4",
        "",
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port}",
    ]
    for name, server in upstreams.items():
        lines += upstream_toml(name, server, page_size=2)
    path.write_text("\n".join(lines) + "\n")
    return path


def failing_tools(status: int) -> Any:
    """A registry middleware answering *status* to every /tools request."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if "/tools" in request.raw_path:
            return web.json_response({"code": status, "message": "injected"}, status=status)
        return await handler(request)

    return middleware


async def wait_for_json(
    session: aiohttp.ClientSession,
    url: str | URL,
    proc: asyncio.subprocess.Process,
    log: Path,
    timeout: float = 60,
) -> Any:
    """Poll *url* until it answers 200 (failing early if *proc* exits); return its JSON."""

    async def answer() -> Any:
        if proc.returncode is not None:
            pytest.fail(f"exited {proc.returncode} before serving:\n{log.read_text()}")
        with contextlib.suppress(aiohttp.ClientConnectionError):
            async with session.get(url) as r:
                if r.status == 200:
                    return await r.json()
        return None

    return await eventually(
        answer, timeout=timeout, what=f"an answer from {url}", interval=0.1, detail=log.read_text
    )


async def stop(proc: asyncio.subprocess.Process, sig: int, timeout: float) -> int:
    """Send *sig* and return the exit status, which must come within *timeout* seconds."""
    proc.send_signal(sig)
    return await asyncio.wait_for(proc.wait(), timeout)


async def kill(proc: asyncio.subprocess.Process) -> None:
    """Kill *proc* unless it has already exited."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def summary_lines(stdout: str) -> dict[str, str]:
    """The per-upstream summary lines of ``harvest``, by upstream name."""
    lines = [line for line in stdout.splitlines() if line and not line.startswith(" ")]
    return {line.split(":", 1)[0]: line for line in lines}


async def test_migrate_then_harvest_from_the_command_line(
    aiohttp_server: Any, empty_dsn: str, tmp_path: Path
) -> None:
    """migrate twice, then harvest all, an unknown name, and with one upstream failing."""
    one = await aiohttp_server(make_registry_app(catalogue([cwl_tool("a1"), cwl_tool("a2")])))
    two = await aiohttp_server(make_registry_app(catalogue([cwl_tool("b1")])))
    bad = await aiohttp_server(
        make_registry_app(catalogue([cwl_tool("x")]), middlewares=[failing_tools(500)])
    )
    config = str(write_config(tmp_path / "agg.toml", empty_dsn, {"one": one, "two": two}))
    names = [m.name for m in load_migrations(default_directory())]

    r = await run_cli(tmp_path, "--config", config, "migrate")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"applied {len(names)} migration(s): {', '.join(names)}"
    r = await run_cli(tmp_path, "migrate", "--config", config)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "applied 0 migration(s); the schema is up to date"

    r = await run_cli(tmp_path, "harvest", "--config", config)
    assert r.returncode == 0, r.stderr
    summary = summary_lines(r.stdout)
    assert sorted(summary) == ["one", "two"], r.stdout
    assert summary["one"].startswith("one: succeeded (run ")
    assert ": 2 tools (2 new, 0 changed, 0 unchanged, 0 missing), 2 versions" in summary["one"]
    assert ": 1 tools (1 new," in summary["two"]
    runs = await fetch(
        empty_dsn,
        "select u.name, r.status, r.tools_seen, r.finished_at "
        "from harvest_runs r join upstreams u on u.id = r.upstream_id",
    )
    assert sorted((r["name"], r["status"], r["tools_seen"]) for r in runs) == [
        ("one", "succeeded", 2),
        ("two", "succeeded", 1),
    ]
    assert all(r["finished_at"] is not None for r in runs)

    r = await run_cli(tmp_path, "harvest", "--config", config, "no-such-upstream")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        (
            "trs-aggregator: config error: upstreams: no upstream named 'no-such-upstream' "
            "(known: one, two)"
        )
    ]
    assert r.stdout == ""

    one.app[STATE].catalogue = catalogue([cwl_tool("a1"), cwl_tool("a2"), cwl_tool("a3")])
    config = str(write_config(tmp_path / "agg2.toml", empty_dsn, {"one": one, "bad": bad}))
    r = await run_cli(tmp_path, "harvest", "--config", config)
    assert r.returncode == 1, r.stderr
    summary = summary_lines(r.stdout)
    assert summary["one"].startswith("one: succeeded")
    assert summary["bad"].startswith("bad: failed")
    lines = r.stdout.splitlines()
    error_line = lines[lines.index(summary["bad"]) + 1]
    assert error_line.startswith("  error: ") and "500" in error_line
    published = await fetch(empty_dsn, "select id from catalogue_tools order by id")
    assert [p["id"] for p in published] == ["a1", "a2", "a3", "b1"]
    status = await fetch(
        empty_dsn,
        "select r.status, r.error from harvest_runs r join "
        "upstreams u on u.id = r.upstream_id where u.name = 'bad'",
    )
    assert [s["status"] for s in status] == ["failed"] and "500" in status[0]["error"]


async def test_serve_answers_until_sigterm(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, tmp_path: Path
) -> None:
    """serve lists the harvested tools on its port, and exits 0 promptly on SIGTERM."""
    registry = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool("#workflow/github.com/org/one"), cwl_tool("quay.io/org/two")])
        )
    )
    outcome = (await harvest(pool, config_for(db_dsn, {"up": registry})))["up"]
    assert outcome.status == "succeeded"
    port = free_port()
    config = write_config(tmp_path / "agg.toml", db_dsn, {"up": registry}, port=port)
    log = tmp_path / "serve.log"
    proc = await start_cli(tmp_path, log, "serve", "--config", str(config))
    try:
        async with aiohttp.ClientSession() as session:
            tools = await wait_for_json(session, f"http://127.0.0.1:{port}{TRS}/tools", proc, log)
            assert sorted(t["id"] for t in tools) == [
                "#workflow/github.com/org/one",
                "quay.io/org/two",
            ]
            one = URL(
                f"http://127.0.0.1:{port}{TRS}/tools/%23workflow%2Fgithub.com%2Forg%2Fone",
                encoded=True,
            )
            async with session.get(one) as r:
                assert r.status == 200
                assert (await r.json())["id"] == "#workflow/github.com/org/one"
        assert await stop(proc, signal.SIGTERM, timeout=30) == 0, log.read_text()
    finally:
        await kill(proc)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


async def test_serve_refuses_an_unmigrated_database(empty_dsn: str, tmp_path: Path) -> None:
    """serve on a database without the schema exits 1, telling to run migrate."""
    config = write_config(tmp_path / "agg.toml", empty_dsn, {}, port=free_port())
    r = await run_cli(tmp_path, "serve", "--config", str(config))
    assert r.returncode == 1, r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("trs-aggregator: MigrationError: the database lacks migrations ")
    assert "run 'trs-aggregator migrate' first" in last
    assert "Traceback" not in r.stderr


async def read_until(stream: asyncio.StreamReader, marker: str, seen: list[str]) -> None:
    """Read lines of *stream* into *seen* until one contains *marker*."""
    while True:
        line = await stream.readline()
        if not line:
            raise AssertionError(f"output ended before {marker!r}:\n{''.join(seen)}")
        seen.append(line.decode())
        if marker in seen[-1]:
            return


def processes_in(directory: Path) -> list[int]:
    """Pids of the processes whose working directory is *directory* (a postmaster's is)."""
    target = os.path.realpath(directory)
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and os.path.realpath(entry / "cwd") == target:
                pids.append(int(entry.name))
    return pids


async def demo_session(proc: asyncio.subprocess.Process, log: Path) -> None:
    """Wait for the demo to serve, check the merged catalogue, then stop it with SIGINT."""
    assert proc.stdout is not None
    out: list[str] = []
    try:
        await read_until(proc.stdout, "Press Ctrl-C to stop.", out)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- stderr ---\n{log.read_text()}") from None
    text = "".join(out)
    assert "trs-aggregator demo is serving" in text
    first = next(line for line in out if "http://" in line)  # the URLs it prints: console first
    assert first.startswith("Console: http://"), out
    console = first.split()[1]
    base = next(
        word
        for line in out
        for word in line.split()
        if word.startswith("http://") and word.endswith(f"{TRS}/service-info")
    )
    base = base.removesuffix("/service-info")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/tools") as r:
            assert r.status == 200
            ids = [t["id"] for t in await r.json()]
        dockstore = [i for i in ids if i.startswith(("#workflow/", "quay.io/"))]
        workflowhub = [i for i in ids if i.isdigit()]
        assert len(dockstore) >= 2 and len(workflowhub) >= 2, ids
        assert len(dockstore) + len(workflowhub) == len(ids), ids
        bwa = URL(f"{base}/tools/%23workflow%2Fgithub.com%2Fdemo-lab%2Fbwa-mem-align", encoded=True)
        async with session.get(bwa) as r:
            assert r.status == 200
            assert (await r.json())["id"] == "#workflow/github.com/demo-lab/bwa-mem-align"
        async with session.get(console) as r:
            assert r.status == 200 and "bwa-mem-align" in await r.text()
    assert await stop(proc, signal.SIGINT, timeout=30) == 0, log.read_text()


async def start_demo(cwd: Path, log: Path, *args: str) -> asyncio.subprocess.Process:
    """Start ``python -m aggregator demo --port <free> ARGS`` in *cwd*: stdout piped (for
    demo_session), stderr going to *log*."""
    with log.open("wb") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aggregator",
            "demo",
            "--port",
            str(free_port()),
            *args,
            cwd=cwd,
            env=child_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )


async def test_demo_runs_its_own_database_and_stops_it(tmp_path: Path) -> None:
    """demo starts PostgreSQL, harvests both bundled registries, serves, and cleans up on ^C."""
    # Short and world-traversable: as root the server runs as 'postgres' and needs to enter it.
    data_dir = Path(tempfile.mkdtemp(prefix="trsagg-demo-"))
    data_dir.chmod(0o755)
    cluster = LocalCluster(data_dir / "pg")
    log = tmp_path / "demo.log"
    proc: asyncio.subprocess.Process | None = None
    try:
        proc = await start_demo(tmp_path, log, "--data-dir", str(data_dir))
        await asyncio.wait_for(demo_session(proc, log), 90)
        assert cluster.initialized
        assert not (cluster.data_dir / "postmaster.pid").exists()
        assert not cluster.is_running()
        assert processes_in(cluster.data_dir) == []
    finally:
        if proc is not None:
            await kill(proc)
        try:
            cluster.stop()
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


def test_demo_refuses_an_unusable_data_dir(tmp_path: Path) -> None:
    """demo with a data dir holding something that is not a cluster exits 1 with the reason."""
    data_dir = Path(tempfile.mkdtemp(prefix="trsagg-demo-"))
    try:
        data_dir.chmod(0o755)
        (data_dir / "pg").mkdir()
        (data_dir / "pg" / "precious.txt").write_text("not a database")
        if os.geteuid() == 0:
            shutil.chown(data_dir / "pg", "postgres")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "aggregator",
                "demo",
                "--data-dir",
                str(data_dir),
                "--port",
                str(free_port()),
            ],
            cwd=tmp_path,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        assert "is not empty and holds no PostgreSQL cluster" in result.stderr
        assert "Traceback" not in result.stderr
        assert (data_dir / "pg" / "precious.txt").read_text() == "not a database"
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
