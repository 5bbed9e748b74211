"""The migration runner against fresh PostgreSQL databases."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from aggregator.db.migrate import default_directory, load_migrations, migrate
from aggregator.errors import MigrationError
from tests.support import fetch

#: Tables the first migration creates (later migrations may add more).
CORE_TABLES = {
    "upstreams",
    "harvest_runs",
    "file_contents",
    "upstream_tools",
    "upstream_versions",
    "upstream_files",
    "staged_tools",
    "staged_versions",
    "staged_files",
    "catalogue_tools",
    "catalogue_members",
    "catalogue_state",
    "schema_migrations",
}


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """A private copy of sql/migrations that a test may edit."""
    target = tmp_path / "migrations"
    shutil.copytree(default_directory(), target)
    return target


async def tables(dsn: str) -> set[str]:
    """Names of the tables in the public schema."""
    rows = await fetch(dsn, "select tablename from pg_tables where schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def recorded(dsn: str) -> list[tuple[int, str]]:
    """(version, name) of each row in schema_migrations, in version order."""
    rows = await fetch(dsn, "select version, name from schema_migrations order by version")
    return [(r["version"], r["name"]) for r in rows]


async def test_fresh_database_gets_every_migration(empty_dsn: str) -> None:
    """A first run applies every file in order, records each, and creates the schema."""
    files = load_migrations(default_directory())
    assert files and files[0].name == "0001_create_catalogue.sql"
    assert await tables(empty_dsn) == set()
    applied = await migrate(empty_dsn)
    assert applied == [m.name for m in files]
    assert await recorded(empty_dsn) == [(m.version, m.name) for m in files]
    assert await tables(empty_dsn) >= CORE_TABLES
    rows = await fetch(empty_dsn, "select name, sha256 from schema_migrations")
    assert {r["name"]: r["sha256"] for r in rows} == {m.name: m.sha256 for m in files}


async def test_second_run_applies_nothing(empty_dsn: str) -> None:
    """Migrating an up-to-date database is a no-op that leaves the records untouched."""
    await migrate(empty_dsn)
    before = await fetch(empty_dsn, "select * from schema_migrations order by version")
    assert await migrate(empty_dsn) == []
    assert await fetch(empty_dsn, "select * from schema_migrations order by version") == before


async def test_edited_applied_file_is_refused(empty_dsn: str, migrations_copy: Path) -> None:
    """Changing a file after it was applied raises MigrationError naming it, applying nothing."""
    await migrate(empty_dsn, migrations_copy)
    first = migrations_copy / "0001_create_catalogue.sql"
    first.write_text(first.read_text() + "\n-- an innocent-looking comment\n")
    (migrations_copy / "0900_later.sql").write_text("create table later (id int);\n")
    with pytest.raises(MigrationError, match=r"0001_create_catalogue\.sql") as info:
        await migrate(empty_dsn, migrations_copy)
    assert "edited" in str(info.value)
    assert "later" not in await tables(empty_dsn)
    assert (900, "0900_later.sql") not in await recorded(empty_dsn)


async def test_new_file_is_applied_alone(empty_dsn: str, migrations_copy: Path) -> None:
    """A file added after the first run is the only one the next run applies."""
    await migrate(empty_dsn, migrations_copy)
    (migrations_copy / "0900_add_note.sql").write_text(
        "alter table upstreams add column note text;\n"
        "create table notes (id int primary key, body text not null);\n"
    )
    assert await migrate(empty_dsn, migrations_copy) == ["0900_add_note.sql"]
    columns = await fetch(
        empty_dsn,
        "select column_name from information_schema.columns "
        "where table_name = 'upstreams' and column_name = 'note'",
    )
    assert len(columns) == 1
    assert "notes" in await tables(empty_dsn)
    assert await migrate(empty_dsn, migrations_copy) == []


async def test_failed_migration_rolls_back_and_is_not_recorded(
    empty_dsn: str, migrations_copy: Path
) -> None:
    """A file that fails half way leaves none of its changes and no record; a fix then applies."""
    await migrate(empty_dsn, migrations_copy)
    bad = migrations_copy / "0900_half.sql"
    bad.write_text("create table half (id int);\nselect no_such_function();\n")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(empty_dsn, migrations_copy)
    assert "half" not in await tables(empty_dsn)
    assert all(v != 900 for v, _ in await recorded(empty_dsn))
    bad.write_text("create table half (id int);\n")
    assert await migrate(empty_dsn, migrations_copy) == ["0900_half.sql"]


async def test_concurrent_runs_apply_each_file_once(empty_dsn: str, migrations_copy: Path) -> None:
    """Two migrate calls racing on one fresh database both succeed; the lock applies each once."""
    # A slow second file keeps the first runner inside its lock while the second one arrives.
    (migrations_copy / "0900_slow.sql").write_text(
        "select pg_sleep(0.3);\ncreate table slow (id int);\n"
    )
    names = [m.name for m in load_migrations(migrations_copy)]
    one, two = await asyncio.gather(
        migrate(empty_dsn, migrations_copy), migrate(empty_dsn, migrations_copy)
    )
    assert sorted([one, two], key=len) == [[], names]
    assert [name for _, name in await recorded(empty_dsn)] == names
    assert CORE_TABLES | {"slow"} <= await tables(empty_dsn)
    # The session lock is released: a third run gets it at once.
    assert await asyncio.wait_for(migrate(empty_dsn, migrations_copy), 5) == []


async def test_notx_file_runs_outside_a_transaction(empty_dsn: str, migrations_copy: Path) -> None:
    """A *_notx.sql file may hold CREATE INDEX CONCURRENTLY; the same SQL in a plain file fails."""
    await migrate(empty_dsn, migrations_copy)
    sql = "create index concurrently upstreams_url_idx on upstreams (url)"
    plain = migrations_copy / "0900_url_index.sql"
    plain.write_text(sql)
    with pytest.raises(asyncpg.ActiveSQLTransactionError):
        await migrate(empty_dsn, migrations_copy)
    assert all(v != 900 for v, _ in await recorded(empty_dsn))

    plain.rename(migrations_copy / "0900_url_index_notx.sql")
    assert await migrate(empty_dsn, migrations_copy) == ["0900_url_index_notx.sql"]
    index = await fetch(
        empty_dsn,
        "select indisvalid from pg_index where indexrelid = 'upstreams_url_idx'::regclass",
    )
    assert [r["indisvalid"] for r in index] == [True]
    assert (900, "0900_url_index_notx.sql") in await recorded(empty_dsn)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"0001_first.sql": "select 1", "create_things.sql": "select 1"}, "create_things.sql"),
        ({"0001_first.sql": "select 1", "0001_again.sql": "select 1"}, "share a number"),
    ],
)
def test_badly_named_files_are_refused(tmp_path: Path, files: dict[str, str], message: str) -> None:
    """Files not named NNNN_description.sql, or sharing a number, raise MigrationError."""
    for name, sql in files.items():
        (tmp_path / name).write_text(sql)
    with pytest.raises(MigrationError, match=message):
        load_migrations(tmp_path)
