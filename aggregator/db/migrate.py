"""Apply the numbered SQL migrations in sql/migrations, once each, under an advisory lock."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import structlog

from aggregator.db.locks import migrate_lock
from aggregator.errors import MigrationError

if TYPE_CHECKING:
    from aggregator.db.pool import Connection, Executor

log = structlog.get_logger()

_NAME_RE: Final = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CREATE_TABLE: Final = """
create table if not exists schema_migrations (
    version integer primary key,
    name text not null,
    sha256 text not null,
    applied_at timestamptz not null default now()
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str
    sha256: str

    @property
    def transactional(self) -> bool:
        """False for files whose DDL cannot run in a transaction (``*_notx.sql``)."""
        return not self.name.endswith("_notx.sql")


def default_directory() -> Path:
    """Find sql/migrations: inside the installed wheel, else beside the source package."""
    packaged = resources.files("aggregator") / "sql" / "migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    source = Path(__file__).resolve().parents[2] / "sql" / "migrations"
    if source.is_dir():
        return source
    raise MigrationError("cannot find the sql/migrations directory")


def load_migrations(directory: Path) -> list[Migration]:
    """Read every migration file in *directory*, in version order."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME_RE.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNNN_description.sql")
        data = path.read_bytes()
        found.append(
            Migration(
                int(m.group(1)), path.name, data.decode("utf-8"), hashlib.sha256(data).hexdigest()
            )
        )
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: two migration files share a number")
    return found


async def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply the pending migrations of *directory* to *dsn*; return the names applied.

    Idempotent. Refuses (MigrationError) when an applied file has been edited since.
    """
    migrations = load_migrations(directory or default_directory())
    conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
    try:
        return await _apply(conn, migrations)
    finally:
        await conn.close()


_APPLIED: Final = "select version, name, sha256 from schema_migrations"


async def _apply(conn: Connection, migrations: list[Migration]) -> list[str]:
    applied_names: list[str] = []
    async with migrate_lock(conn):
        await conn.execute(_CREATE_TABLE)
        applied = {r["version"]: r for r in await conn.fetch(_APPLIED)}
        for m in migrations:
            row = applied.get(m.version)
            if row is not None and row["sha256"] != m.sha256:
                raise MigrationError(
                    f"{m.name} was edited after it was applied (recorded sha256 "
                    f"{row['sha256'][:12]}…, file {m.sha256[:12]}…); add a new migration instead"
                )
        for m in migrations:
            if m.version in applied:
                continue
            if m.transactional:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await _record(conn, m)
            else:
                await conn.execute(m.sql)
                await _record(conn, m)
            applied_names.append(m.name)
            log.info("migration_applied", migration=m.name)
    return applied_names


_RECORD: Final = "insert into schema_migrations (version, name, sha256) values ($1, $2, $3)"


async def _record(conn: Connection, m: Migration) -> None:
    await conn.execute(_RECORD, m.version, m.name, m.sha256)


_APPLIED_NAMES: Final = "select name from schema_migrations"


async def applied_migrations(conn: Executor) -> set[str]:
    """The names of the migrations applied to the database (raises when none ever were)."""
    return {r["name"] for r in await conn.fetch(_APPLIED_NAMES)}


async def missing_migrations(conn: Executor) -> list[str]:
    """The names of the migrations not applied to the database, in order."""
    names = [m.name for m in load_migrations(default_directory())]
    try:
        applied = await applied_migrations(conn)
    except asyncpg.UndefinedTableError:
        applied = set()
    return [n for n in names if n not in applied]
