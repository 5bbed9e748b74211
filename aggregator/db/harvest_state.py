"""What a run reads of its upstream's last publish: each tool's hashes, the listing's pages with
their validators, and the sha256 of each stored file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aggregator.trs.staged import KnownTool, ListingPage

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

_KNOWN_TOOLS: Final = """
select external_id, doc_hash, listing_hash,
       coalesce(details_fetched_at > now() - make_interval(secs => $2), false) as fresh
from upstream_tools where upstream_id = $1
"""


async def fetch_known_tools(
    conn: Connection, upstream_id: int, *, revalidate_after_s: float
) -> dict[str, KnownTool]:
    """What was published for each tool of *upstream_id*, by upstream id; *fresh* when its
    details were fetched less than *revalidate_after_s* ago."""
    rows = await conn.fetch(_KNOWN_TOOLS, upstream_id, revalidate_after_s)
    return {r["external_id"]: KnownTool(r["doc_hash"], r["listing_hash"], r["fresh"]) for r in rows}


_LISTING_PAGES: Final = """
select url, etag, last_modified, next_page, tool_ids, listing_hashes
from listing_pages where upstream_id = $1
"""


async def fetch_listing_pages(conn: Connection, upstream_id: int) -> dict[str, ListingPage]:
    """The listing pages stored by the last publish of *upstream_id*, by URL."""
    rows = await conn.fetch(_LISTING_PAGES, upstream_id)
    return {
        r["url"]: ListingPage(
            r["url"],
            r["etag"],
            r["last_modified"],
            r["next_page"],
            list(r["tool_ids"]),
            list(r["listing_hashes"]),
        )
        for r in rows
    }


_STORED_FILES: Final = """
select v.key, f.descriptor_type, f.path, f.sha256
from upstream_files f
join upstream_versions v on v.id = f.upstream_version_id
join upstream_tools t on t.id = v.upstream_tool_id
where t.upstream_id = $1 and t.external_id = $2 and f.sha256 is not null
"""


async def fetch_stored_files(
    conn: Connection, upstream_id: int, external_id: str
) -> dict[str, dict[tuple[str, str], str]]:
    """The sha256 published for each file of tool *external_id*: by version key, then by
    (descriptor type, path)."""
    out: dict[str, dict[tuple[str, str], str]] = {}
    for r in await conn.fetch(_STORED_FILES, upstream_id, external_id):
        out.setdefault(r["key"], {})[(r["descriptor_type"], r["path"])] = r["sha256"]
    return out
