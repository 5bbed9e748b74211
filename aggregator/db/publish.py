"""Staging what a run fetched, and publishing it atomically over the upstream's live records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from aggregator.db.merge import remerge
from aggregator.db.runs import RunCounts

CATALOGUE_CHANNEL: Final = "trs_aggregator_catalogue"
# Tools new or changed in one publish from which the tables' statistics are refreshed in it.
ANALYZE_AFTER: Final = 500


@dataclass(slots=True)
class StagedFile:
    """One file of one version, as fetched (content None in index mode or when unfetched)."""

    descriptor_type: str
    path: str
    file_type: str
    url: str | None
    content: bytes | None = None
    sha256: str | None = None
    declared_sha256: str | None = None
    checksum_status: str = "not_fetched"
    #: Fields the upstream sent beyond TRS's: {"wrapper": {...}, "tool_file": {...}}.
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class StagedVersion:
    """One version of a tool, with its files."""

    key: str
    external_id: str
    position: int
    doc: dict[str, Any]
    files: list[StagedFile] = field(default_factory=list)


@dataclass(slots=True)
class StagedTool:
    """One listed tool of a run.

    *detailed* False: the listing confirmed the tool, its versions and files were not fetched
    (unchanged, or the fetch failed); publishing keeps what was there. *listing_hash* None
    makes the next run fetch the tool's details again.
    """

    external_id: str
    doc: dict[str, Any]
    doc_hash: str
    detailed: bool
    listing_hash: str | None = None
    versions: Sequence[StagedVersion] = ()


async def stage_tools(
    conn: asyncpg.Connection[Any], run_id: int, tools: Sequence[StagedTool]
) -> None:
    """Stage *tools* of run *run_id*: documents, versions, files and their contents."""
    contents = {
        f.sha256: f.content
        for t in tools
        for v in t.versions
        for f in v.files
        if f.sha256 is not None and f.content is not None
    }
    async with conn.transaction():
        if contents:
            # In key order, so that runs storing the same contents at once cannot deadlock.
            shas = sorted(contents)
            await conn.execute(
                """insert into file_contents (sha256, content, size)
                   select s, c, length(c) from unnest($1::text[], $2::bytea[]) as x(s, c)
                   on conflict (sha256) do nothing""",
                shas,
                [contents[s] for s in shas],
            )
        await conn.copy_records_to_table(
            "staged_tools",
            records=[
                (run_id, t.external_id, t.doc, t.doc_hash, t.detailed, t.listing_hash)
                for t in tools
            ],
            columns=["run_id", "external_id", "doc", "doc_hash", "detailed", "listing_hash"],
        )
        versions = [
            (run_id, t.external_id, v.key, v.external_id, v.position, v.doc)
            for t in tools
            for v in t.versions
        ]
        if versions:
            await conn.copy_records_to_table(
                "staged_versions",
                records=versions,
                columns=["run_id", "tool_external_id", "key", "external_id", "position", "doc"],
            )
        files = [
            (
                run_id,
                t.external_id,
                v.key,
                f.descriptor_type,
                f.path,
                f.file_type,
                f.sha256,
                f.declared_sha256,
                f.checksum_status,
                f.url,
                f.extra,
            )
            for t in tools
            for v in t.versions
            for f in v.files
        ]
        if files:
            await conn.copy_records_to_table(
                "staged_files",
                records=files,
                columns=[
                    "run_id",
                    "tool_external_id",
                    "version_key",
                    "descriptor_type",
                    "path",
                    "file_type",
                    "sha256",
                    "declared_sha256",
                    "checksum_status",
                    "url",
                    "extra",
                ],
            )


_COUNT_CHANGES: Final = """
select count(*) filter (where t.id is null) as new,
       count(*) filter (where t.id is not null and t.doc_hash <> s.doc_hash) as changed,
       count(*) filter (where t.doc_hash = s.doc_hash) as unchanged
from staged_tools s
left join upstream_tools t on t.upstream_id = $2 and t.external_id = s.external_id
where s.run_id = $1
"""

_UPSERT_TOOLS: Final = """
insert into upstream_tools as t (upstream_id, external_id, doc, doc_hash, last_run_id,
                               listing_hash, details_fetched_at)
select $2, s.external_id, s.doc, s.doc_hash, $1, s.listing_hash, now()
from staged_tools s where s.run_id = $1 and s.detailed
on conflict (upstream_id, external_id) do update set
    doc = case when excluded.doc_hash = t.doc_hash then t.doc else excluded.doc end,
    last_changed = case when excluded.doc_hash = t.doc_hash then t.last_changed else now() end,
    doc_hash = excluded.doc_hash,
    listing_hash = excluded.listing_hash, details_fetched_at = excluded.details_fetched_at,
    last_confirmed = now(), last_run_id = excluded.last_run_id,
    merge_dirty = t.merge_dirty or t.doc_hash <> excluded.doc_hash or t.missed_listings > 0,
    missed_listings = 0, tombstoned_at = null
"""

_CONFIRM_ONLY: Final = """
update upstream_tools t set last_confirmed = now(), last_run_id = $1,
    merge_dirty = t.merge_dirty or t.missed_listings > 0,
    missed_listings = 0, tombstoned_at = null
from staged_tools s
where s.run_id = $1 and not s.detailed and t.upstream_id = $2 and t.external_id = s.external_id
"""

_DELETE_GONE_VERSIONS: Final = """
delete from upstream_versions v
using upstream_tools t, staged_tools s
where v.upstream_tool_id = t.id and t.upstream_id = $2
  and s.run_id = $1 and s.detailed and s.external_id = t.external_id
  and not exists (select 1 from staged_versions sv
                  where sv.run_id = $1 and sv.tool_external_id = t.external_id and sv.key = v.key)
"""

_UPSERT_VERSIONS: Final = """
insert into upstream_versions as v (upstream_tool_id, key, external_id, position, doc)
select t.id, sv.key, sv.external_id, sv.position, sv.doc
from staged_versions sv
join upstream_tools t on t.upstream_id = $2 and t.external_id = sv.tool_external_id
where sv.run_id = $1
on conflict (upstream_tool_id, key) do update set
    external_id = excluded.external_id, position = excluded.position, doc = excluded.doc
"""

_DELETE_GONE_FILES: Final = """
delete from upstream_files f
using upstream_versions v, upstream_tools t, staged_tools s
where f.upstream_version_id = v.id and v.upstream_tool_id = t.id and t.upstream_id = $2
  and s.run_id = $1 and s.detailed and s.external_id = t.external_id
  and not exists (select 1 from staged_files sf
                  where sf.run_id = $1 and sf.tool_external_id = t.external_id
                    and sf.version_key = v.key and sf.descriptor_type = f.descriptor_type
                    and sf.path = f.path)
"""

# A file this run could not fetch keeps the content an earlier run stored.
_UPSERT_FILES: Final = """
insert into upstream_files as f (upstream_version_id, descriptor_type, path, file_type, sha256,
                                 declared_sha256, checksum_status, url, extra)
select v.id, sf.descriptor_type, sf.path, sf.file_type, sf.sha256, sf.declared_sha256,
       sf.checksum_status, sf.url, sf.extra
from staged_files sf
join upstream_tools t on t.upstream_id = $2 and t.external_id = sf.tool_external_id
join upstream_versions v on v.upstream_tool_id = t.id and v.key = sf.version_key
where sf.run_id = $1
on conflict (upstream_version_id, descriptor_type, path) do update set
    file_type = excluded.file_type, url = excluded.url,
    extra = coalesce(excluded.extra, f.extra),
    declared_sha256 = case when excluded.sha256 is null and f.sha256 is not null
                           then f.declared_sha256 else excluded.declared_sha256 end,
    sha256 = coalesce(excluded.sha256, f.sha256),
    checksum_status = case when excluded.sha256 is null and f.sha256 is not null
                           then f.checksum_status else excluded.checksum_status end
"""

_MARK_MISSED: Final = """
update upstream_tools t set missed_listings = missed_listings + 1,
    tombstoned_at = coalesce(tombstoned_at, now()), merge_dirty = true
where t.upstream_id = $2
  and not exists (select 1 from staged_tools s where s.run_id = $1 and s.external_id = t.external_id)
"""


async def publish_run(
    conn: asyncpg.Connection[Any],
    run_id: int,
    upstream_id: int,
    *,
    listing_complete: bool,
    tombstone_after: int,
    counts: RunCounts,
    max_per_upstream: int = 1,
) -> int:
    """Publish run *run_id* over the live records of *upstream_id*; return the new generation.

    Runs in one transaction: clients see the whole run or none of it. Tools absent from a
    complete listing are tombstoned (the API hides them after *tombstone_after* misses);
    after an incomplete listing nothing is tombstoned. Fills the change counters of *counts*.
    """
    async with conn.transaction():
        # Publishes are serialised: the catalogue is rebuilt from all upstreams below.
        await conn.execute("select 1 from catalogue_state for update")
        changes = await conn.fetchrow(_COUNT_CHANGES, run_id, upstream_id)
        counts.tools_new, counts.tools_changed, counts.tools_unchanged = (
            changes["new"],
            changes["changed"],
            changes["unchanged"],
        )
        await conn.execute(_CONFIRM_ONLY, run_id, upstream_id)
        await conn.execute(_UPSERT_TOOLS, run_id, upstream_id)
        # After a large change the planner must see the new rows, or the joins below turn
        # into nested loops over whole tables (quadratic in the number of tools).
        large = counts.tools_new + counts.tools_changed >= ANALYZE_AFTER
        if large:
            await conn.execute("analyze upstream_tools")
        await conn.execute(_DELETE_GONE_VERSIONS, run_id, upstream_id)
        await conn.execute(_UPSERT_VERSIONS, run_id, upstream_id)
        if large:
            await conn.execute("analyze upstream_versions")
        await conn.execute(_DELETE_GONE_FILES, run_id, upstream_id)
        await conn.execute(_UPSERT_FILES, run_id, upstream_id)
        if large:
            await conn.execute("analyze upstream_files")
        if listing_complete:
            status = await conn.execute(_MARK_MISSED, run_id, upstream_id)
            counts.tools_tombstoned = int(status.split()[-1])
        generation = (
            await remerge(conn, tombstone_after=tombstone_after, max_per_upstream=max_per_upstream)
        ).generation
        await conn.execute("select pg_notify($1, $2)", CATALOGUE_CHANNEL, str(generation))
    return generation
