"""Staging what a run fetched, publishing it atomically over the upstream's live records, and
announcing the catalogue generation that results.

``publish_run`` is the one way a harvest changes the catalogue; ``remerge_catalogue`` is its
sibling for a merge without a harvest (the ``merge`` command). Both take the merge lock, merge
what changed and announce the new generation (``db.generation``) in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from aggregator.db.generation import lock_catalogue
from aggregator.db.locks import lock_merge
from aggregator.db.merge import ANALYZE_AFTER, MergeStats, remerge
from aggregator.db.runs import RunCounts
from aggregator.db.upstreams import save_service_info
from aggregator.trs.staged import ListingPage, StagedTool

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

_STAGE_CONTENTS: Final = """
insert into file_contents (sha256, content, size)
select s, c, length(c) from unnest($1::text[], $2::bytea[]) as x(s, c)
on conflict (sha256) do nothing
"""


async def stage_tools(conn: Connection, run_id: int, tools: Sequence[StagedTool]) -> None:
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
            await conn.execute(_STAGE_CONTENTS, shas, [contents[s] for s in shas])
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

# Before the writes below: the stored tools this run changes (their document) or revives.
_QUEUE_CHANGED: Final = """
insert into merge_queue (upstream_tool_id)
select t.id from staged_tools s
join upstream_tools t on t.upstream_id = $2 and t.external_id = s.external_id
where s.run_id = $1 and (s.detailed and t.doc_hash <> s.doc_hash or t.missed_listings > 0)
on conflict do nothing
"""

# New tools are queued for the merge as they are inserted (first_seen is the transaction's).
_UPSERT_TOOLS: Final = """
with written as (
    insert into upstream_tools as t (upstream_id, external_id, doc, doc_hash, last_run_id,
                                   listing_hash, details_fetched_at)
    select $2, s.external_id, s.doc, s.doc_hash, $1, s.listing_hash, now()
    from staged_tools s where s.run_id = $1 and s.detailed
    on conflict (upstream_id, external_id) do update set
        doc = case when excluded.doc_hash = t.doc_hash then t.doc else excluded.doc end,
        last_changed = case when excluded.doc_hash = t.doc_hash then t.last_changed
                            else now() end,
        doc_hash = excluded.doc_hash,
        listing_hash = excluded.listing_hash, details_fetched_at = excluded.details_fetched_at,
        last_confirmed = now(), last_run_id = excluded.last_run_id,
        missed_listings = 0, tombstoned_at = null
    returning t.id, t.first_seen = now() as new)
insert into merge_queue (upstream_tool_id) select id from written where new
on conflict do nothing
"""

_CONFIRM_ONLY: Final = """
update upstream_tools t set last_confirmed = now(), last_run_id = $1,
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
with missed as (
    update upstream_tools t set missed_listings = missed_listings + 1,
        tombstoned_at = coalesce(tombstoned_at, now())
    where t.upstream_id = $2
      and not exists (select 1 from staged_tools s
                      where s.run_id = $1 and s.external_id = t.external_id)
    returning t.id),
queued as (
    insert into merge_queue (upstream_tool_id) select id from missed on conflict do nothing)
select count(*) from missed
"""


_ANALYZE_STAGED: Final = "analyze staged_tools"
_ANALYZE_TOOLS: Final = "analyze upstream_tools"
_ANALYZE_VERSIONS: Final = "analyze upstream_versions"
_ANALYZE_FILES: Final = "analyze upstream_files"
_DELETE_PAGES: Final = "delete from listing_pages where upstream_id = $1"


async def publish_run(
    conn: Connection,
    run_id: int,
    upstream_id: int,
    *,
    listing_complete: bool,
    tombstone_after: int,
    counts: RunCounts,
    max_per_upstream: int = 1,
    service_info: Any = None,
    tool_classes: list[dict[str, Any]] | None = None,
    pages: list[ListingPage] | None = None,
) -> int:
    """Publish run *run_id* over the live records of *upstream_id*, re-merge what changed and
    announce the new generation; return it.

    Runs in one transaction under the merge lock: clients see the whole run or none of it.
    Tools absent from a complete listing are tombstoned (the API hides them after
    *tombstone_after* misses); after an incomplete listing nothing is tombstoned. Fills the
    change counters of *counts*. *service_info* and *tool_classes* (None: keep what was
    stored) and the listing *pages* with validators are stored for the next run; *pages* is
    emptied once they are, before the merge, which can then use that memory (a large
    upstream's listing keeps every tool's id and listing hash).
    """
    async with conn.transaction():
        await lock_merge(conn)
        # Fresh statistics, or the publish may plan nested loops over a big run's rows.
        await conn.execute(_ANALYZE_STAGED)
        await save_service_info(conn, upstream_id, service_info, tool_classes)
        # Publishes are serialised: the catalogue is rebuilt from all upstreams below.
        await lock_catalogue(conn)
        await _apply_run(
            conn, run_id, upstream_id, listing_complete=listing_complete, counts=counts
        )
        await _save_pages(conn, upstream_id, pages or ())
        if pages:
            pages.clear()
        stats = await remerge(
            conn, tombstone_after=tombstone_after, max_per_upstream=max_per_upstream
        )
    return stats.generation


async def remerge_catalogue(
    conn: Connection, *, tombstone_after: int, max_per_upstream: int, full: bool
) -> MergeStats:
    """Re-merge without a harvest and announce the new generation, in one transaction.

    Merges what is marked changed (a priority change marks an upstream's tools), or
    everything with *full*.
    """
    async with conn.transaction():
        await lock_merge(conn)
        await lock_catalogue(conn)
        return await remerge(
            conn, tombstone_after=tombstone_after, max_per_upstream=max_per_upstream, full=full
        )


async def _apply_run(
    conn: Connection,
    run_id: int,
    upstream_id: int,
    *,
    listing_complete: bool,
    counts: RunCounts,
) -> None:
    """Write the staged rows of *run_id* over the upstream's records; count the changes."""
    changes = await conn.fetchrow(_COUNT_CHANGES, run_id, upstream_id)
    assert changes is not None
    counts.tools_new, counts.tools_changed, counts.tools_unchanged = (
        changes["new"],
        changes["changed"],
        changes["unchanged"],
    )
    await conn.execute(_QUEUE_CHANGED, run_id, upstream_id)
    await conn.execute(_CONFIRM_ONLY, run_id, upstream_id)
    await conn.execute(_UPSERT_TOOLS, run_id, upstream_id)
    # After a large change the planner must see the new rows, or the joins below turn
    # into nested loops over whole tables (quadratic in the number of tools).
    large = counts.tools_new + counts.tools_changed >= ANALYZE_AFTER
    if large:
        await conn.execute(_ANALYZE_TOOLS)
    await conn.execute(_DELETE_GONE_VERSIONS, run_id, upstream_id)
    await conn.execute(_UPSERT_VERSIONS, run_id, upstream_id)
    if large:
        await conn.execute(_ANALYZE_VERSIONS)
    await conn.execute(_DELETE_GONE_FILES, run_id, upstream_id)
    await conn.execute(_UPSERT_FILES, run_id, upstream_id)
    if large:
        await conn.execute(_ANALYZE_FILES)
    if listing_complete:
        counts.tools_tombstoned = await conn.fetchval(_MARK_MISSED, run_id, upstream_id)


async def _save_pages(conn: Connection, upstream_id: int, pages: Sequence[ListingPage]) -> None:
    """Keep the listing pages that came with validators, for conditional requests next run."""
    await conn.execute(_DELETE_PAGES, upstream_id)
    records = [
        (
            upstream_id,
            p.url,
            p.etag,
            p.last_modified,
            p.next_page,
            p.tool_ids,
            p.listing_hashes,
        )
        for p in pages
        if p.etag or p.last_modified
    ]
    if records:
        await conn.copy_records_to_table(
            "listing_pages",
            records=records,
            columns=[
                "upstream_id",
                "url",
                "etag",
                "last_modified",
                "next_page",
                "tool_ids",
                "listing_hashes",
            ],
        )
