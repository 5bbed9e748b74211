"""A merge into an empty catalogue (migration 0029): no touches recorded, every tool captured,
the id history loaded without its indexes, the evidence emptied at once — and the same outcome
as the merge that records touches, inserts through the indexes and deletes the evidence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import pytest

from aggregator.db import merge as merge_db
from aggregator.db import merge_evidence
from aggregator.db.merge import remerge
from aggregator.db.pool import connect
from tests.support import database_copy

UPSTREAMS: Final = """
insert into upstreams (name, url, kind, mode, priority)
select name, 'https://' || name || '.test', 'trs', 'index', n
from unnest(array['red', 'blue', 'green']) with ordinality as u(name, n)
"""
# Records of three upstreams, most sharing a repository-style alias or a distinctive one with
# records of the others (so many tools join several records), and every one a name, a
# description and an organization for the search rows.
RECORD_COUNT: Final = 2_400
RECORDS: Final = f"""
insert into upstream_tools (upstream_id, external_id, doc, doc_hash)
select 1 + i % 3, 't' || i,
       jsonb_build_object(
           'id', 't' || i, 'name', 'tool ' || (i / 5), 'organization', 'org' || (i % 13),
           'description', 'aligns reads number ' || i,
           'toolclass', jsonb_build_object('name', case when i % 4 = 0 then 'Workflow'
                                                        else 'CommandLineTool' end),
           'aliases', case when i % 5 = 4 then '[]'::jsonb
                           when i % 2 = 0 then jsonb_build_array(
                               '#workflow/github.com/org/repo' || (i / 6))
                           else jsonb_build_array('kelmor-tavisu-' || (i / 9)) end),
       md5(i::text)
from generate_series(0, {RECORD_COUNT - 1}) as i;
insert into upstream_versions (upstream_tool_id, key, external_id, position, doc)
select id, k, k, n, jsonb_build_object('id', k, 'name', k, 'author', array['ann', 'bo'],
                                       'descriptor_type', array['CWL'])
from upstream_tools cross join unnest(array['1.0', '2.0']) with ordinality as v(k, n);
insert into merge_queue select id from upstream_tools
"""
CHANGE: Final = """
with changed as (
    update upstream_tools set doc = jsonb_set(doc, '{aliases}', jsonb_build_array('moved-' || id))
    where id % 17 = 0 returning id)
insert into merge_queue select id from changed
"""

# Migration 0029's merge_save_history() before it: every staged row inserted through the
# history's indexes.
SAVE_THROUGH_INDEXES: Final = """
create or replace function merge_save_history() returns void language plpgsql as $$
begin
    insert into catalogue_id_history (id, upstream_tool_id, was_primary)
    select id, upstream_tool_id, was_primary from merge_history_all
    order by id, upstream_tool_id
    on conflict (id, upstream_tool_id) do nothing;
    truncate merge_history_all;
end $$
"""
TABLES: Final = (
    "'tool_evidence', 'catalogue_id_history', 'search_docs', 'search_lexicon', "
    "'catalogue_snapshot', 'catalogue_tools', 'catalogue_members', 'catalogue_versions'"
)
# The rows this transaction inserted into the touch records.
TOUCHES: Final = """
select coalesce(sum(n_tup_ins), 0) from pg_stat_xact_user_tables where relname = 'catalogue_touched'
"""
INDEX_OIDS: Final = """
select array_agg(indexrelid order by indexrelid) from pg_index
where indrelid = 'catalogue_id_history'::regclass
"""
OUTCOME: Final = {
    "tools": "select id, primary_member_id, conflicts::text from catalogue_tools order by id",
    "members": "select upstream_tool_id, tool_id, joined_by::text from catalogue_members "
    "order by upstream_tool_id",
    "feed": "select generation, kind, tool_id, related_ids, parts, digest "
    "from catalogue_changes order by generation, kind, tool_id",
    "snapshot": "select * from catalogue_snapshot order by tool_id",
    "search": "select tool_id, sort_key, name, organization, description, toolclass, names, "
    "document::text, upstreams, descriptor_types, toolclasses, organizations, has_checker "
    "from search_docs order by tool_id",
    "facets": "select facet, value, tools from search_facet_values order by facet, value",
    "lexicon": "select word from search_lexicon order by word",
    "history": "select id, upstream_tool_id, was_primary from catalogue_id_history order by 1, 2",
    "evidence": "select upstream_tool_id, kind, value from tool_evidence order by 1, 2, 3",
    "touched": "select count(*) from catalogue_touched",
    "indexes": f"select tablename, indexname, indexdef from pg_indexes "
    f"where tablename in ({TABLES}) order by indexname",
    "constraints": f"select conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
    f"from pg_constraint where conrelid::regclass::text in ({TABLES}) order by conname",
}


@pytest.fixture
async def reference_dsn(pg_admin_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A second migrated database, for the merge as it ran before migration 0029."""
    async with database_copy(pg_admin_dsn, template_db, prefix="r") as dsn:
        yield dsn


async def publish_twice(dsn: str, *, bulk: bool) -> list[dict[str, list[tuple[Any, ...]]]]:
    """A full merge of RECORD_COUNT records into the empty catalogue, in slices, then an
    incremental merge after a change; what the catalogue and its capture hold after each.
    Without *bulk*, the first merge records touches and inserts through every index, as
    before migration 0029."""
    conn = await connect(dsn)  # with the application's codecs
    try:
        await conn.execute(UPSTREAMS)
        await conn.execute(RECORDS)
        if not bulk:
            await conn.execute(SAVE_THROUGH_INDEXES)
        outcomes = []
        indexes = await conn.fetchval(INDEX_OIDS)
        for full in (True, False):
            if not full:
                await conn.execute(CHANGE)
            async with conn.transaction():
                await conn.execute("select 1 from catalogue_state for update")
                before = await conn.fetchval(TOUCHES)
                stats = await remerge(conn, tombstone_after=3, full=full, slice_records=500)
                assert stats.slices > 1 or not full
                # The setting never outlives the merge: later writes are touched again.
                assert await conn.fetchval(
                    "select coalesce(current_setting('aggregator.capture_all', true), '')"
                ) in ("", "off")
                touches = await conn.fetchval(TOUCHES) - before
            outcomes.append(
                {part: [tuple(r) for r in await conn.fetch(sql)] for part, sql in OUTCOME.items()}
            )
            if full:  # whether the merge recorded touches, and made the indexes anew
                assert (touches == 0) is bulk, touches
                assert (await conn.fetchval(INDEX_OIDS) != indexes) is bulk
        return outcomes
    finally:
        await conn.close()


async def test_a_first_merge_ends_as_the_merge_that_records_every_touch(
    db_dsn: str, reference_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catalogue, feed (digests included), snapshot, search rows, facet counts, lexicon, id
    history, evidence, indexes and constraints after a first full merge and the incremental
    merge after it are those of the merge that records touches and writes through indexes."""
    with monkeypatch.context() as patched:
        patched.setattr(merge_db, "_CAPTURE_ALL", "select $1::text")
        patched.setattr(merge_evidence, "_EMPTY_ALL_EVIDENCE", "delete from tool_evidence")
        expected = await publish_twice(reference_dsn, bulk=False)
    got = await publish_twice(db_dsn, bulk=True)
    assert len(expected[0]["tools"]) > 1_000  # the capture's own bulk path, on both sides
    assert any(m[2] != "[]" for m in expected[0]["members"]), "some tools join records"
    assert expected[1]["feed"] != expected[0]["feed"]
    for step, want, have in zip(("first merge", "then"), expected, got, strict=True):
        for part in OUTCOME:
            assert have[part] == want[part], f"{part} after the {step}"
