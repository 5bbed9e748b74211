"""The API reading from a streaming replica (``database.replica_url``), made with
``pg_basebackup -R`` from the test cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from aggregator.api.cache import GENERATION_WATCHER, RESPONSE_CACHE
from aggregator.app import create_app
from aggregator.config import Config, DatabaseConfig
from aggregator.keys import DB_POOL
from aggregator.pgcluster import LocalCluster
from tests.populated import NESTED, TRS, enc
from tests.support import dsn_with_db, eventually
from tests.test_api_cache import publish, rewrite_description


def _as_server_user() -> list[str]:
    """The command prefix that runs a PostgreSQL tool as the owner of cluster files."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@pytest.fixture(scope="module")
def replica_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """DSN of a hot standby streaming from the test cluster."""
    params = parse_qs(urlsplit(pg_admin_dsn).query)
    if "host" not in params or not params["host"][0].startswith("/"):
        pytest.fail("the replica test needs the suite's own cluster (AGGREGATOR_TEST_DSN unset)")
    work = Path(tempfile.mkdtemp(prefix="trsagg-replica-"))
    work.chmod(0o755)
    data = work / "data"
    cluster = LocalCluster(data, fast=True)
    try:
        data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        bindir = cluster.binaries()
        subprocess.run(
            [
                *_as_server_user(),
                str(bindir / "pg_basebackup"),
                "-d",
                pg_admin_dsn,
                "-D",
                str(data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
            check=True,
            capture_output=True,
        )
        # The copy carries the primary's port and socket; let the standby pick its own.
        (data / "trs_aggregator.conf").unlink(missing_ok=True)
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


async def test_api_reads_a_replica_and_serves_only_what_it_has_replayed(
    populated_dsn: str, replica_dsn: str, aiohttp_client: Any
) -> None:
    """Answers come from the standby; a publish announced by the primary is served only once the
    standby has replayed it, and at once after."""
    name = urlsplit(populated_dsn).path.lstrip("/")
    replica = dsn_with_db(replica_dsn, name)
    standby = await eventually(
        lambda: _connect(replica), what="the standby to replay the test database"
    )
    primary = await asyncpg.connect(populated_dsn)
    try:
        config = Config(database=DatabaseConfig(url=populated_dsn, replica_url=replica))
        client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
        app = client.server.app
        assert await app[RESPONSE_CACHE].pool.fetchval("select pg_is_in_recovery()")
        assert not await app[DB_POOL].fetchval("select pg_is_in_recovery()")
        assert await _description(client) is None
        before = app[RESPONSE_CACHE].generation

        await standby.execute("select pg_wal_replay_pause()")
        await rewrite_description(primary, "replayed")
        generation = await publish(primary)
        watcher = app[GENERATION_WATCHER]

        async def announced() -> bool:
            return watcher.announced == generation

        await eventually(announced, what="the announcement")
        assert await _description(client) is None, "served before the standby replayed it"
        assert app[RESPONSE_CACHE].generation == before

        await standby.execute("select pg_wal_replay_resume()")

        async def fresh() -> bool:
            return await _description(client) == "replayed"

        await eventually(fresh, what="the replayed publish")
        assert app[RESPONSE_CACHE].generation == generation
    finally:
        await primary.close()
        await standby.close()


async def _connect(dsn: str) -> asyncpg.Connection[Any] | None:
    try:
        return await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError):
        return None


async def _description(client: TestClient[Any, Any]) -> str | None:
    r = await client.get(f"{TRS}/tools/{enc(NESTED)}")
    assert r.status == 200
    value: str | None = (await r.json()).get("description")
    return value
