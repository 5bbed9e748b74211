"""Test helpers: databases, polling, catalogues for the in-process registry, configs, and
harvest runners."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer

from aggregator.api.cache import RESPONSE_CACHE
from aggregator.config import Config, DatabaseConfig, UpstreamConfig
from aggregator.db.generation import catalogue_generation
from aggregator.harvest.crawl import RunOutcome
from aggregator.harvest.runner import harvest_upstreams, make_session

T = TypeVar("T")

SERVICE_INFO = {
    "id": "org.example.test",
    "name": "test registry",
    "type": {"group": "org.ga4gh", "artifact": "trs", "version": "2.0.1"},
    "organization": {"name": "Example", "url": "https://example.org"},
    "version": "1",
}
WORKFLOW = {"id": "1", "name": "Workflow", "description": "A workflow"}


def cwl_tool(
    tool_id: str,
    *,
    versions: Sequence[str] = ("1.0",),
    marker: str = "",
    aliases: Sequence[str] = (),
) -> dict[str, Any]:
    """A CWL workflow with a nested relative import and a test file, in catalogue form."""
    return {
        "id": tool_id,
        "name": tool_id.rsplit("/", 1)[-1],
        "organization": "lab",
        "toolclass": WORKFLOW,
        "aliases": list(aliases),
        "description": f"tool {tool_id}",
        "versions": [
            {
                "id": v,
                "name": v,
                "author": ["A. Author"],
                "descriptor_type": ["CWL"],
                "is_production": True,
                "files": {
                    "CWL": [
                        {
                            "path": "main.cwl",
                            "file_type": "PRIMARY_DESCRIPTOR",
                            "content": f"cwlVersion: v1.2\nclass: Workflow\n# {tool_id} {v} {marker}\n"
                            "steps:\n  s:\n    run: tools/step.cwl\n",
                        },
                        {
                            "path": "tools/step.cwl",
                            "file_type": "SECONDARY_DESCRIPTOR",
                            "content": f"cwlVersion: v1.2\nclass: CommandLineTool\n# {v} {marker}\n"
                            "requirements:\n  $import: ../types/t.yml\n",
                        },
                        {
                            "path": "types/t.yml",
                            "file_type": "SECONDARY_DESCRIPTOR",
                            "content": f"types: []\n# {marker}\n",
                        },
                        {
                            "path": "tests/job.json",
                            "file_type": "TEST_FILE",
                            "content": '{"reads": "r.fq"}\n',
                        },
                    ]
                },
                "containerfile": [{"path": "Dockerfile", "content": f"FROM debian:12\n# {v}\n"}],
            }
            for v in versions
        ],
    }


def catalogue(tools: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A catalogue dict for make_registry_app."""
    return {"service_info": SERVICE_INFO, "tool_classes": [WORKFLOW], "tools": list(tools)}


def config_for(dsn: str, servers: dict[str, TestServer], **upstream: Any) -> Config:
    """A Config whose upstreams are the given running registries (name -> server)."""
    ups = tuple(
        UpstreamConfig(
            name=name, url=str(server.make_url("/ga4gh/trs/v2")), retries=1, timeout_s=5, **upstream
        )
        for name, server in servers.items()
    )
    return Config(database=DatabaseConfig(url=dsn, pool_max=4), upstreams=ups)


def with_priority(config: Config, name: str, priority: int) -> Config:
    """*config* with upstream *name* given *priority*."""
    ups = tuple(
        dataclasses.replace(u, priority=priority) if u.name == name else u for u in config.upstreams
    )
    return dataclasses.replace(config, upstreams=ups)


async def harvest(
    pool: asyncpg.Pool[Any], config: Config, names: Sequence[str] = ()
) -> dict[str, RunOutcome]:
    """Harvest *names* (all when empty) and return the outcomes by upstream."""
    async with make_session(config) as session:
        outcomes = await harvest_upstreams(pool, session, config, names)
    return {o.upstream: o for o in outcomes}


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement on a connection of its own (the suite's one-shot connection); its rows."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def dsn_with_db(dsn: str, name: str) -> str:
    """Return *dsn* with its database replaced by *name*.

    Handles ``postgresql://user@host:port/db`` as well as the unix-socket form
    ``postgresql://user@/db?host=/socket/dir&port=N``; a ``dbname``/``database``
    query parameter is dropped in favour of the path.
    """
    parts = urlsplit(dsn)
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k not in ("dbname", "database")
    ]
    return urlunsplit(
        (
            parts.scheme,
            parts.netloc,
            "/" + quote(name, safe=""),
            urlencode(query, safe="/"),
            parts.fragment,
        )
    )


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run *coro* with asyncio.run in a helper thread, leaving this thread's loop alone."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-fixture") as pool:
        return pool.submit(asyncio.run, coro).result()


@contextlib.asynccontextmanager
async def database_copy(
    admin_dsn: str, template: str | None = None, prefix: str = "t"
) -> AsyncIterator[str]:
    """A new database (a copy of *template*, else empty) for the block; its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex}"
    clause = f' TEMPLATE "{template}"' if template else ""
    await fetch(admin_dsn, f'CREATE DATABASE "{name}"{clause}')
    try:
        yield dsn_with_db(admin_dsn, name)
    finally:
        await fetch(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = 30.0,
    what: str = "the condition",
    interval: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll *check* until it returns something truthy, and return that.

    The timeout is generous on purpose: it only bounds a test that is already failing, so a
    loaded machine never turns a slow success into a failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f":\n{detail()}" if detail is not None else ""
            raise AssertionError(f"{what} did not happen within {timeout}s{extra}")
        await asyncio.sleep(interval)


def upstream_toml(name: str, server: TestServer, **keys: Any) -> list[str]:
    """The lines of one fast-failing ``[[upstreams]]`` table for the registry *server*;
    *keys* add to it or override its defaults."""
    values: dict[str, Any] = {
        "name": name,
        "url": str(server.make_url("/ga4gh/trs/v2")),
        "retries": 0,
        "timeout_s": 5,
        **keys,
    }
    return ["", "[[upstreams]]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]


async def caught_up(app: web.Application, pool: asyncpg.Pool[Any]) -> None:
    """Wait until *app*'s response cache knows the catalogue generation the database holds: an
    API process hears of a publish asynchronously, so an answer asked for right after one may
    still be the cached answer of the generation before."""
    async with pool.acquire() as conn:
        generation = await catalogue_generation(conn)

    async def heard() -> bool:
        known = app[RESPONSE_CACHE].generation
        return known is not None and known >= generation

    await eventually(heard, what=f"the API hearing of generation {generation}")
