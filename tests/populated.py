"""A populated instance for the API tests: the two bundled demo registries and one registry
whose documents break the schema in the ways real upstreams do, harvested into PostgreSQL."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from aggregator.api.fastpath import FastRunner
from aggregator.app import create_app
from aggregator.config import Config, DatabaseConfig
from aggregator.db.pool import create_pool
from aggregator.demo.catalogues import load_catalogue
from aggregator.demo.registry import STATE, make_registry_app
from tests.support import (
    SERVICE_INFO,
    config_for,
    database_copy,
    dsn_with_db,
    fetch,
    harvest,
    run_sync,
)

T = TypeVar("T")

TRS = "/ga4gh/trs/v2"
STRICT = "/strict-2.0.0/ga4gh/trs/v2"
BWA = "#workflow/github.com/demo-lab/bwa-mem-align"
NESTED = "#workflow/github.com/quirky/nested"
CHECKED = "#workflow/github.com/quirky/checked"
CHECKER = "#workflow/github.com/quirky/checked/_cwl_checker"

_CWL_TOOL = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: echo
requirements:
  SchemaDefRequirement:
    types:
      - $import: ../types/greeting.yml
inputs:
  greeting:
    type: ../types/greeting.yml#Greeting
    inputBinding: {valueFrom: $(self.text)}
outputs: []
"""
_TYPES = """name: Greeting
type: record
fields:
  text: string
"""
_WORKFLOW = """cwlVersion: v1.2
class: Workflow
requirements:
  SchemaDefRequirement:
    types:
      - $import: ../types/greeting.yml
inputs:
  greeting: ../types/greeting.yml#Greeting
outputs: []
steps:
  say:
    run: ../tools/say.cwl
    in: {greeting: greeting}
    out: []
"""


def enc(value: str) -> str:
    """*value* percent-encoded into one path segment."""
    return quote(value, safe="")


def quirky_catalogue(base: str) -> dict[str, Any]:
    """Tools whose documents are not valid TRS as served (wrong types, unknown enum values,
    nulls), a CWL workflow whose primary descriptor is not at the root, and a checker pair.

    *base* is the registry's own TRS base URL (checker_url points into it).
    """
    nested_files = [
        {"path": "workflows/main.cwl", "file_type": "PRIMARY_DESCRIPTOR", "content": _WORKFLOW},
        {"path": "tools/say.cwl", "file_type": "SECONDARY_DESCRIPTOR", "content": _CWL_TOOL},
        {"path": "types/greeting.yml", "file_type": "SECONDARY_DESCRIPTOR", "content": _TYPES},
        {"path": "tests/job.json", "file_type": "TEST_FILE", "content": '{"greeting": {}}\n'},
    ]
    toolclass = {"id": 1, "name": "Workflow", "description": None}
    return {
        "service_info": {**SERVICE_INFO, "id": "org.example.quirky", "name": "quirky"},
        "tool_classes": [{"id": "9", "name": "Notebook", "description": "A notebook"}],
        "tools": [
            {
                "id": NESTED,
                "name": "nested",
                "organization": "quirky",
                "toolclass": toolclass,
                "description": None,
                "meta_version": 7,
                "has_checker": "no",
                "aliases": ["quirky-nested", 5],
                "license": "MIT",
                "versions": [
                    {
                        "id": "v1",
                        "name": None,
                        "author": "Solo Author",
                        "descriptor_type": ["CWL", "SERVICE"],
                        "is_production": "yes",
                        "descriptor_type_version": {"CWL": ["v1.2", 3]},
                        "images": [
                            {
                                "registry_host": "docker.io",
                                "image_name": "library/alpine:3.19",
                                "size": "big",
                                "image_type": "Podman",
                                "checksum": "nope",
                            }
                        ],
                        "verified_source": "a lab",
                        "signed": None,
                        "files": {"CWL": nested_files},
                        "containerfile": [{"path": "Dockerfile", "content": "FROM alpine:3.19\n"}],
                    }
                ],
            },
            {
                "id": CHECKED,
                "name": "checked",
                "organization": "quirky",
                "toolclass": toolclass,
                "description": "A checked workflow",
                "has_checker": True,
                "checker_url": f"{base}/tools/{enc(CHECKER)}",
                "aliases": [],
                "versions": [
                    {
                        "id": "v1",
                        "name": "v1",
                        "descriptor_type": ["CWL"],
                        "files": {"CWL": nested_files},
                    }
                ],
            },
            {
                "id": CHECKER,
                "name": "checker",
                "organization": "quirky",
                "toolclass": toolclass,
                "description": "Checks the checked workflow",
                "aliases": [],
                "versions": [
                    {
                        "id": "v1",
                        "name": "v1",
                        "descriptor_type": ["CWL"],
                        "files": {"CWL": nested_files},
                    }
                ],
            },
        ],
    }


async def _harvest_all(dsn: str) -> None:
    """Serve the three registries, harvest them into *dsn*, stop them."""
    servers: dict[str, TestServer] = {}
    quirky_app = make_registry_app({"tools": []})
    apps = {
        "dockstore": make_registry_app(
            load_catalogue("dockstore-demo"), page_size=3, offset_style="page"
        ),
        "workflowhub": make_registry_app(load_catalogue("workflowhub-demo")),
        "quirky": quirky_app,
    }
    try:
        for name, app in apps.items():
            servers[name] = TestServer(app, host="127.0.0.1")
            await servers[name].start_server()
        quirky_app[STATE].catalogue = quirky_catalogue(str(servers["quirky"].make_url(TRS)))
        pool = await create_pool(dsn)
        try:
            outcomes = await harvest(pool, config_for(dsn, servers))
        finally:
            await pool.close()
        failed = {n: o.error for n, o in outcomes.items() if o.status != "succeeded"}
        assert not failed, failed
    finally:
        for server in servers.values():
            await server.close()


@pytest.fixture(scope="session")
def populated_db(pg_admin_dsn: str, template_db: str) -> Iterator[str]:
    """Name of a database holding the harvested demo and quirky registries (cloned per test)."""
    name = f"populated_{uuid.uuid4().hex[:12]}"
    run_sync(fetch(pg_admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    try:
        run_sync(_harvest_all(dsn_with_db(pg_admin_dsn, name)))
        yield name
    finally:
        run_sync(fetch(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def populated_dsn(pg_admin_dsn: str, populated_db: str) -> AsyncIterator[str]:
    """DSN of this test's own copy of the populated database."""
    async with database_copy(pg_admin_dsn, populated_db) as dsn:
        yield dsn


def api_config(dsn: str) -> Config:
    """A configuration serving the API from *dsn*."""
    return Config(database=DatabaseConfig(url=dsn, pool_max=4))


class Api:
    """A client of a running API: paths are relative to its origin, full URLs are taken as
    they are."""

    def __init__(self, session: aiohttp.ClientSession, origin: str) -> None:
        self.session = session
        self.origin = origin

    def make_url(self, path: str) -> URL:
        """The full URL of *path*."""
        return URL(self.origin + path, encoded="%" in path)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send *method* to *path*."""
        url = self.make_url(path) if path.startswith("/") else path
        return self.session.request(method, url, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        """GET *path*."""
        return self.request("GET", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> Any:
        """HEAD *path*."""
        return self.request("HEAD", path, **kwargs)

    def options(self, path: str, **kwargs: Any) -> Any:
        """OPTIONS *path*."""
        return self.request("OPTIONS", path, **kwargs)


@contextlib.contextmanager
def live_api(admin_dsn: str, template: str, prefix: str = "live") -> Iterator[str]:
    """The origin (``http://127.0.0.1:PORT``) of an API serving a copy of database *template*
    from its own thread until the block ends."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    run_sync(fetch(admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    loop = asyncio.new_event_loop()
    runner = FastRunner(create_app(api_config(dsn_with_db(admin_dsn, name))))
    ready: concurrent.futures.Future[str] = concurrent.futures.Future()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            port = runner.addresses[0][1]
            ready.set_result(f"http://127.0.0.1:{port}")
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread, which raises it
            ready.set_exception(e)
            return
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name=f"{prefix}-api", daemon=True)
    thread.start()
    try:
        yield ready.result(timeout=30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        run_sync(fetch(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def live_origin(pg_admin_dsn: str, populated_db: str) -> Iterator[str]:
    """The origin (``http://127.0.0.1:PORT``) of an API serving a copy of the populated
    database from its own thread for the whole session; tests must not change that database."""
    with live_api(pg_admin_dsn, populated_db) as origin:
        yield origin


@pytest.fixture
async def trs(live_origin: str) -> AsyncIterator[Api]:
    """A client of the session's live API over the populated catalogue (read-only)."""
    async with aiohttp.ClientSession() as session:
        yield Api(session, live_origin)


@pytest.fixture
async def own_trs(populated_dsn: str, aiohttp_client: Any) -> TestClient[Any, Any]:
    """A client of an API over this test's own copy of the populated database."""
    client: TestClient[Any, Any] = await aiohttp_client(create_app(api_config(populated_dsn)))
    return client
