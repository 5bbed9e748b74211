"""Shared fixtures: a PostgreSQL server, a migrated template database, a database per test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from aggregator.pgcluster import LocalCluster

T = TypeVar("T")

#: Point the suite at an existing server (a role allowed to create databases); when unset,
#: the suite starts its own throwaway cluster.
TEST_DSN_ENV = "AGGREGATOR_TEST_DSN"


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


async def admin_execute(admin_dsn: str, sql: str) -> None:
    """Run one statement on a connection of its own."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def database_copy(
    admin_dsn: str, template: str | None = None, prefix: str = "t"
) -> AsyncIterator[str]:
    """A new database (a copy of *template*, else empty) for the block; its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex}"
    clause = f' TEMPLATE "{template}"' if template else ""
    await admin_execute(admin_dsn, f'CREATE DATABASE "{name}"{clause}')
    try:
        yield dsn_with_db(admin_dsn, name)
    finally:
        await admin_execute(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """DSN of a server where the suite may create databases: $AGGREGATOR_TEST_DSN or our own."""
    configured = os.environ.get(TEST_DSN_ENV, "").strip()
    if configured:
        yield configured
        return
    # Not pytest's tmp_path: as root the server runs as 'postgres', which cannot enter the
    # 0700 /tmp/pytest-of-root, and a short path lets the socket live in the data dir.
    data_dir = Path(tempfile.mkdtemp(prefix="trsagg-"))
    cluster = LocalCluster(data_dir, fast=True)
    try:
        yield cluster.start()
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_admin_dsn: str) -> Iterator[str]:
    """Name of a database migrated once per session, cloned by ``db_dsn``."""
    from aggregator.db.migrate import migrate

    name = f"aggregator_tpl_{uuid.uuid4().hex[:12]}"
    run_sync(admin_execute(pg_admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        # migrate() closes its connection before returning, so the database can be cloned.
        run_sync(migrate(dsn_with_db(pg_admin_dsn, name)))
        yield name
    finally:
        run_sync(admin_execute(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def db_dsn(pg_admin_dsn: str, template_db: str) -> AsyncIterator[str]:
    """DSN of a fresh, fully migrated database of this test's own, dropped afterwards."""
    async with database_copy(pg_admin_dsn, template_db) as dsn:
        yield dsn


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A pool on the test's own database, with the application's codecs."""
    from aggregator.db.pool import create_pool

    p = await create_pool(db_dsn)
    yield p
    await p.close()


@pytest.fixture
async def empty_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    """DSN of a brand-new, empty database (not cloned from the migrated template)."""
    async with database_copy(pg_admin_dsn, prefix="e") as dsn:
        yield dsn
