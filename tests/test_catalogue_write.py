"""The catalogue tables and the merge's evidence without per-row foreign-key checks: what the
foreign keys did on delete and rename still happens."""

from __future__ import annotations

from typing import Any

import asyncpg

from tests.populated import BWA

ORPHANS = """
select (select count(*) from catalogue_members m
        where not exists (select 1 from catalogue_tools c where c.id = m.tool_id)
           or not exists (select 1 from upstream_tools t where t.id = m.upstream_tool_id)),
       (select count(*) from catalogue_versions v
        where not exists (select 1 from catalogue_tools c where c.id = v.tool_id)
           or not exists (select 1 from upstream_versions u where u.id = v.upstream_version_id)),
       (select count(*) from catalogue_tools c
        where not exists (select 1 from upstream_tools t where t.id = c.primary_member_id)),
       (select count(*) from catalogue_id_history h
        where not exists (select 1 from upstream_tools t where t.id = h.upstream_tool_id)),
       (select count(*) from tool_evidence e
        where not exists (select 1 from upstream_tools t where t.id = e.upstream_tool_id))
"""


async def test_deletes_and_renames_leave_no_orphan(populated_dsn: str) -> None:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(populated_dsn)
    try:
        assert tuple(await conn.fetchrow(ORPHANS)) == (0, 0, 0, 0, 0)
        tools = await conn.fetchval("select count(*) from catalogue_tools")

        # A renamed tool keeps its members and versions.
        before = await conn.fetch(
            "select key from catalogue_versions where tool_id = $1 order by key", BWA
        )
        assert before
        await conn.execute("update catalogue_tools set id = 'renamed' where id = $1", BWA)
        after = await conn.fetch(
            "select key from catalogue_versions where tool_id = 'renamed' order by key"
        )
        assert after == before
        assert await conn.fetchval(
            "select count(*) from catalogue_members where tool_id = 'renamed'"
        )
        assert tuple(await conn.fetchrow(ORPHANS)) == (0, 0, 0, 0, 0)

        # A deleted tool takes its members and versions with it.
        await conn.execute("delete from catalogue_tools where id = 'renamed'")
        assert tuple(await conn.fetchrow(ORPHANS)) == (0, 0, 0, 0, 0)
        assert await conn.fetchval("select count(*) from catalogue_tools") == tools - 1

        # A deleted version, or a whole upstream's records, leave nothing behind.
        await conn.execute(
            "delete from upstream_versions where id = (select min(upstream_version_id) "
            "from catalogue_versions)"
        )
        assert tuple(await conn.fetchrow(ORPHANS)) == (0, 0, 0, 0, 0)
        assert await conn.fetchval(
            "select count(*) from tool_evidence e join upstream_tools t on t.id = e.upstream_tool_id"
            " join upstreams u on u.id = t.upstream_id where u.name = 'quirky'"
        )
        removed = await conn.fetchval("delete from upstreams where name = 'quirky' returning id")
        assert removed is not None
        assert tuple(await conn.fetchrow(ORPHANS)) == (0, 0, 0, 0, 0)
        assert await conn.fetchval("select count(*) from catalogue_tools") < tools - 1
    finally:
        await conn.close()
