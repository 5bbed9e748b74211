"""Shared fixtures: a PostgreSQL server, a migrated template database, a database per test.

The fixtures over the harvested demo catalogue live in ``tests/populated.py``, registered here
as a plugin so every test module can ask for them by name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import settings

from aggregator.pgcluster import LocalCluster
from tests.support import database_copy, dsn_with_db, fetch, run_sync

#: Point the suite at an existing server (a role allowed to create databases); when unset,
#: the suite starts its own throwaway cluster.
TEST_DSN_ENV = "AGGREGATOR_TEST_DSN"

pytest_plugins = ["tests.populated", "tests.console_fixtures"]

# Property tests judge results, not speed: on a loaded machine one example may take seconds.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


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
    run_sync(fetch(pg_admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        # migrate() closes its connection before returning, so the database can be cloned.
        run_sync(migrate(dsn_with_db(pg_admin_dsn, name)))
        yield name
    finally:
        run_sync(fetch(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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
