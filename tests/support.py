"""Test helpers: catalogues for the in-process registry, configs, and harvest runners."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import asyncpg
from aiohttp.test_utils import TestServer

from aggregator.config import Config, DatabaseConfig, UpstreamConfig
from aggregator.harvest.crawl import RunOutcome
from aggregator.harvest.runner import harvest_upstreams, make_session

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
    """Run one query on a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()
