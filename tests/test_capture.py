"""The capture at the generation bump (change feed, snapshot, search index, lexicon) gives
exactly what the capture of migrations 0010-0013 gave, on every path it can take: a first
publish that builds the indexes after filling the tables or fills them in place, a few touched
records looked up in the snapshot's index or many found by a pass over it, rows rewritten
unchanged, and upstream values of every JSON shape."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

import asyncpg
import pytest

from aggregator.db.migrate import default_directory, migrate
from tests.support import database_copy

#: The last migration of the capture this one is compared with.
REFERENCE_LAST = "0013"

#: Records of the first publish: enough for the capture's bulk path (a first publish of at
#: least 1,000 tools builds its indexes after filling the tables).
RECORDS = 1500

UPSTREAMS = """
insert into upstreams (name, url, kind, mode, priority) values
    ('a', 'http://a.test', 'trs', 'mirror', 0),
    ('b', 'http://b.test', 'trs', 'mirror', 1),
    ('c', 'http://c.test', 'trs', 'mirror', 2);
"""

#: Upstream records whose fields take every JSON shape an upstream may send (the search reads
#: arrays, strings, numbers, objects, nulls and nested arrays alike).
RECORDS_SQL = """
insert into upstream_tools (upstream_id, external_id, doc, doc_hash)
select 1 + g % 3, '{prefix}' || g,
       jsonb_build_object(
           'id', '{prefix}' || g,
           'name', case when g % 9 = 0 then null else 'Tool ' || g || ' aligner' end,
           'toolname', case when g % 4 = 0 then 'bwa-mem' || g end,
           'organization', case g % 4 when 0 then 'Lab-' || g % 7 when 1 then null
                                      else 'org' end,
           'description', case g % 8 when 0 then null when 1 then '  '
                                     else 'aligns sequencing reads ' || g || ' against references'
                                     end,
           'toolclass', case when g % 5 = 0 then null
                             else jsonb_build_object('name', case g % 2 when 0 then 'Workflow'
                                                                  else 'CommandLineTool' end) end,
           'aliases', case g % 10 when 0 then '["x-1", null, 3, ["n"], {"k": "v"}]'::jsonb
                                  when 1 then '"single-alias"' when 2 then '5'
                                  when 3 then '{"a": 1}' when 4 then '[]'
                                  when 5 then 'null' when 6 then jsonb_build_array('solo-' || g)
                                  when 7 then '[null]' when 8 then '[{"k": 1}]'
                                  else jsonb_build_array('alias-' || g, 'kelmor tavisu') end,
           'has_checker', g % 5 = 0,
           'checker_url', case when g % 11 = 0 then 'http://checker.test' end),
       'h' || g
from generate_series(1, {n}) g;
insert into upstream_versions (upstream_tool_id, key, external_id, position, doc)
select t.id, v.k, v.k, v.p,
       jsonb_build_object(
           'id', v.k,
           'author', case t.id % 6 when 0 then '["Ann Lee", null, "Bob"]' when 1 then '"Solo"'
                                   when 2 then '7' when 3 then '[]' when 4 then '[["x"]]'
                                   else '{"n": 1}' end::jsonb,
           'descriptor_type', case t.id % 5 when 0 then '["CWL", "wdl", "CWL"]'
                                            when 1 then '"nfl"' when 2 then '[null, "smk"]'
                                            when 3 then 'null' else '[]' end::jsonb)
from upstream_tools t cross join (values ('1.0', 0), ('2.0', 1)) as v(k, p)
where (v.p = 0 or t.id % 3 = 0) and t.external_id like '{prefix}%';
insert into upstream_files (upstream_version_id, descriptor_type, path, file_type, url,
                            checksum_status)
select v.id, 'CWL', 'main.cwl', 'PRIMARY_DESCRIPTOR', 'http://files.test/' || v.id, 'not_fetched'
from upstream_versions v where v.id % 4 <> 0
  and v.upstream_tool_id in (select id from upstream_tools where external_id like '{prefix}%');
"""


def records_sql(prefix: str, n: int) -> str:
    """RECORDS_SQL for *n* records whose external ids start with *prefix*."""
    return RECORDS_SQL.replace("{prefix}", prefix).replace("{n}", str(n))


#: The catalogue the merge would write for the records: records 10k and 10k+1 are one tool,
#: every other record a tool of its own; a tool serves the versions of its first record and
#: lists every record's version of the same key among its sources.
CATALOGUE_SQL = """
insert into catalogue_tools (id, sort_key, primary_member_id)
select k, k, min(id) from (
    select id, case when id % 10 in (0, 1) then 'm' || (id / 10) else 's' || id end as k
    from upstream_tools) g
group by k;
insert into catalogue_members (upstream_tool_id, tool_id)
select id, case when id % 10 in (0, 1) then 'm' || (id / 10) else 's' || id end
from upstream_tools;
insert into catalogue_versions (tool_id, key, position, upstream_version_id, source_ids)
select m.tool_id, v.key, min(v.position), min(v.id), array_agg(v.id order by v.id)
from catalogue_members m join upstream_versions v on v.upstream_tool_id = m.upstream_tool_id
group by m.tool_id, v.key;
"""

#: Move records {residue} mod 10 (below {below}) to the tool holding the record three above,
#: with the triggers off, then touch the records whose id mod 10 is {touched}.
UNSEEN_MOVE = """
set session_replication_role = replica;
update catalogue_members m set tool_id = x.tool_id
from catalogue_members x
where x.upstream_tool_id = m.upstream_tool_id + 3
  and m.upstream_tool_id % 10 = {residue} and m.upstream_tool_id < {below};
delete from catalogue_versions v
where not exists (select 1 from catalogue_members m where m.tool_id = v.tool_id);
delete from catalogue_tools c
where not exists (select 1 from catalogue_members m where m.tool_id = c.id);
set session_replication_role = origin;
update upstream_tools set doc_hash = doc_hash || 'q' where id % 10 {touched};
"""

#: One publish after another, each a change of the catalogue followed by the generation bump.
STEPS: Sequence[tuple[str, str]] = (
    ("nothing changed", "update catalogue_versions set position = position"),
    (
        "a few descriptions",
        """update upstream_tools set doc = jsonb_set(doc, '{description}', '"revised"'),
                  doc_hash = doc_hash || 'r' where id % 97 = 0""",
    ),
    (
        "many records rewritten, a few changed",
        """update upstream_tools set doc_hash = doc_hash || 'x',
                  doc = case when id % 50 = 0 then doc || '{"name": "renamed tool"}' else doc end
           where id % 5 <> 0""",
    ),
    (
        "versions and files",
        """update upstream_versions set doc = jsonb_set(doc, '{author}', '["New Author"]')
           where id % 31 = 0;
           update upstream_files set url = url || '?v=2' where upstream_version_id % 29 = 0;
           insert into upstream_files (upstream_version_id, descriptor_type, path, file_type,
                                       checksum_status)
           select id, 'WDL', 'main.wdl', 'PRIMARY_DESCRIPTOR', 'not_fetched'
           from upstream_versions where id % 37 = 0""",
    ),
    (
        "merged",
        """update catalogue_members set tool_id = 's' || (upstream_tool_id - 1)
           where upstream_tool_id % 10 = 3 and upstream_tool_id < 300;
           delete from catalogue_tools c
           where not exists (select 1 from catalogue_members m where m.tool_id = c.id);
           update catalogue_versions v set source_ids = v.source_ids || 0
           where v.tool_id like 's%' and substr(v.tool_id, 2)::bigint % 10 = 2
             and substr(v.tool_id, 2)::bigint < 300""",
    ),
    (
        "split",
        """insert into catalogue_tools (id, sort_key, primary_member_id)
           select 'p' || upstream_tool_id, 'p' || upstream_tool_id, upstream_tool_id
           from catalogue_members
           where upstream_tool_id % 10 = 1 and upstream_tool_id between 10 and 400;
           update catalogue_members set tool_id = 'p' || upstream_tool_id
           where upstream_tool_id % 10 = 1 and upstream_tool_id between 10 and 400""",
    ),
    (
        "renamed",
        """update catalogue_tools set id = 'r' || id, sort_key = 'r' || sort_key
           where id like 's%' and substr(id, 2)::bigint % 10 = 7
             and substr(id, 2)::bigint < 500""",
    ),
    ("removed", "delete from upstream_tools where id % 41 = 0"),
    # Tools of one record whose primary is another tool's record: they are not tools of one
    # record for the capture (it computes those from the primary record alone).
    (
        "primary not a member",
        """update catalogue_tools set primary_member_id = primary_member_id + 1
           where id like 's%' and substr(id, 2)::bigint % 10 = 5
             and substr(id, 2)::bigint < 400""",
    ),
    # Records that moved to another tool without the catalogue's triggers seeing it, then were
    # touched: the tool that held them is found through the snapshot (a probe per record for a
    # few records, a pass over the snapshot for many).
    ("moved unseen, a few records", UNSEEN_MOVE.format(residue=4, below=200, touched="= 4")),
    ("moved unseen, many records", UNSEEN_MOVE.format(residue=6, below=10**6, touched="in (6, 8)")),
    (
        "new records",
        """insert into upstream_tools (upstream_id, external_id, doc, doc_hash)
           select 2, 'new' || g, jsonb_build_object('name', 'fresh ' || g, 'aliases', 'solo'),
                  'n' || g
           from generate_series(1, 20) g;
           insert into catalogue_tools (id, sort_key, primary_member_id)
           select external_id, external_id, id from upstream_tools where external_id like 'new%';
           insert into catalogue_members (upstream_tool_id, tool_id)
           select id, external_id from upstream_tools where external_id like 'new%'""",
    ),
)

#: After STEPS, the catalogue emptied, then published again whole: the search index and
#: snapshot are filled before their indexes are built, and the lexicon, which keeps every word,
#: is not empty (its words are looked up).
REFILL: Sequence[tuple[str, str]] = (
    (
        "everything removed",
        "delete from catalogue_versions; delete from catalogue_members; delete from catalogue_tools",
    ),
    ("everything back", CATALOGUE_SQL),
)

BUMP = "update catalogue_state set generation = generation + 1"


@pytest.fixture(scope="module")
def reference_migrations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The migrations up to the capture this one is compared with."""
    directory = tmp_path_factory.mktemp("reference-migrations")
    for f in sorted(default_directory().glob("*.sql")):
        if f.name[:4] <= REFERENCE_LAST:
            shutil.copy(f, directory / f.name)
    return directory


@pytest.fixture
async def reference_dsn(pg_admin_dsn: str, reference_migrations: Path) -> AsyncIterator[str]:
    """A database migrated up to the reference capture."""
    async with database_copy(pg_admin_dsn, prefix="r") as dsn:
        await migrate(dsn, reference_migrations)
        yield dsn


async def outcome(conn: asyncpg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the capture writes, in a comparable form."""
    queries = {
        "feed": "select generation, kind, tool_id, related_ids, parts, digest "
        "from catalogue_changes order by seq",
        "snapshot": "select * from catalogue_snapshot order by tool_id",
        "search": "select tool_id, sort_key, name, organization, description, toolclass, names, "
        "document::text, upstreams, descriptor_types, toolclasses, organizations, has_checker "
        "from search_docs order by tool_id",
        "lexicon": "select word from search_lexicon order by word",
        "indexes": "select tablename, indexname, indexdef from pg_indexes "
        "where tablename in ('search_docs', 'search_lexicon', 'catalogue_snapshot') "
        "and indexname <> all($1::text[]) order by indexname",
        "constraints": "select conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
        "from pg_constraint where conrelid in ('search_docs'::regclass, "
        "'search_lexicon'::regclass, 'catalogue_snapshot'::regclass) order by conname",
    }
    return {
        k: [tuple(r) for r in await conn.fetch(q, *([LATER_INDEXES] if "$1" in q else []))]
        for k, q in queries.items()
    }


#: Indexes of the search rows made by migrations after the reference capture's (it has none):
#: publish_all checks that a first publish remakes them.
LATER_INDEXES: Final = [
    "search_docs_sort_key_idx",
    "search_docs_organization_idx",
    "search_docs_multi_idx",
    "search_docs_organizations_idx",
]
ALL_INDEXES = """
select array_agg(indexdef order by indexname) from pg_indexes
where tablename in ('search_docs', 'search_lexicon', 'catalogue_snapshot')
"""
# The facet groups (migration 0025) as they should be: the search rows counted anew.
FACET_GROUPS = """
select upstreams, descriptor_types, toolclass, organization, toolclasses, organizations,
       has_checker, {tools} from {source} {group} order by 1, 2, 3, 4, 5, 6, 7, 8
"""


async def check_facet_groups(conn: asyncpg.Connection[Any]) -> None:
    """The facet groups kept by the triggers are the search rows counted anew (when the
    database has them)."""
    if await conn.fetchval("select to_regclass('search_facet_groups')") is None:
        return
    kept = await conn.fetch(
        FACET_GROUPS.format(tools="tools", source="search_facet_groups", group="")
    )
    counted = await conn.fetch(
        FACET_GROUPS.format(
            tools="count(*)", source="search_docs", group="group by 1, 2, 3, 4, 5, 6, 7"
        )
    )
    assert [tuple(r) for r in kept] == [tuple(r) for r in counted]
    if await conn.fetchval("select to_regclass('search_facet_values')") is not None:
        values = await conn.fetch("select facet, value, tools from search_facet_values")
        rows = await conn.fetch("select * from search_docs")
        assert {(f, v): n for f, v, n in values} == facet_values(rows)


def facet_values(rows: list[asyncpg.Record]) -> dict[tuple[str, str], int]:
    """The search rows *rows* counted per value of each facet, as search_facet_values
    (migration 0028) should hold them."""
    found: Counter[tuple[str, str]] = Counter()
    for r in rows:
        found["total", ""] += 1
        found.update(("upstreams", u) for u in r["upstreams"] if u is not None)
        found.update(("descriptor_types", t) for t in r["descriptor_types"] if t is not None)
        found.update(("toolclasses", c) for c in r["toolclasses"] if c is not None)
        found.update(("organizations", o) for o in r["organizations"] if o is not None)
        for column in ("toolclass", "organization"):
            if r[column]:
                found[column, r[column]] += 1
        if len(r["upstreams"]) >= 2:
            found["multi", "yes"] += 1
        elif len(r["upstreams"]) == 1:
            found["only", r["upstreams"][0]] += 1
        found["has_checker", str(r["has_checker"]).lower()] += 1
    return dict(found)


INDEX_OIDS = """
select array_agg(indexrelid order by indexrelid) from pg_index
where indrelid in ('search_docs'::regclass, 'search_lexicon'::regclass,
                   'catalogue_snapshot'::regclass)
"""


async def publish_all(dsn: str, *, seed: int) -> tuple[list[dict[str, Any]], bool]:
    """The first publish of RECORDS records (after *seed* others published alone, when not 0),
    then every step; what the capture wrote after each, and whether the first publish made its
    indexes anew."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
    try:
        await conn.execute(UPSTREAMS)
        outcomes = []
        if seed:
            async with conn.transaction():
                await conn.execute(records_sql("seed", seed))
                await conn.execute(CATALOGUE_SQL)
                await conn.execute(BUMP)
            outcomes.append(await outcome(conn))
            await check_facet_groups(conn)
        indexes = await conn.fetchval(INDEX_OIDS)
        made = await conn.fetchval(ALL_INDEXES)
        async with conn.transaction():
            await conn.execute(records_sql("t", RECORDS))
            await conn.execute(
                "delete from catalogue_tools; delete from catalogue_members;"
                "delete from catalogue_versions;" + CATALOGUE_SQL
            )
            await conn.execute(BUMP)
        rebuilt = await conn.fetchval(INDEX_OIDS) != indexes
        await conn.execute("analyze")
        outcomes.append(await outcome(conn))
        assert await conn.fetchval(ALL_INDEXES) == made
        await check_facet_groups(conn)
        for _, sql in (*STEPS, *REFILL):
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(BUMP)
            outcomes.append(await outcome(conn))
            await check_facet_groups(conn)
        return outcomes, rebuilt
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("seed", "bulk"), [(0, True), (5, False)], ids=["first-publish", "after-a-small-one"]
)
async def test_capture_writes_what_the_reference_capture_wrote(
    reference_dsn: str, db_dsn: str, seed: int, bulk: bool
) -> None:
    """Feed (digests included), snapshot, search rows, lexicon and indexes, after every
    publish, are those of the capture of migrations 0010-0013."""
    expected, _ = await publish_all(reference_dsn, seed=seed)
    got, rebuilt = await publish_all(db_dsn, seed=seed)
    # A first publish into empty tables builds their indexes after filling them; a publish
    # into tables that hold rows fills them in place.
    assert rebuilt is bulk
    names = ["seed"] if seed else []
    names += ["first publish"] + [name for name, _ in (*STEPS, *REFILL)]
    assert len(got) == len(expected) == len(names)
    for name, want, have in zip(names, expected, got, strict=True):
        for part in want:
            assert have[part] == want[part], f"{part} after {name!r}"
    kinds = {entry[1] for entry in got[-1]["feed"]}
    assert kinds == {"added", "changed", "removed", "merged", "split", "id_changed"}
