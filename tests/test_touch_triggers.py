"""The triggers that record which upstream records an update changed: right rows, and a join
planned for the rows there, not for the first (often empty) update of the session."""

from __future__ import annotations

from typing import Any

import asyncpg

TOOLS = 300

#: Set up an upstream with TOOLS tools, each with one version and one file.
SETUP = f"""
insert into upstreams (name, url, kind, mode) values ('u', 'http://u.test', 'trs', 'mirror');
insert into upstream_tools (upstream_id, external_id, doc, doc_hash)
select (select id from upstreams where name = 'u'), 't' || g, '{{}}', 'h' || g
from generate_series(1, {TOOLS}) g;
insert into upstream_versions (upstream_tool_id, key, external_id, position, doc)
select id, '1', '1', 0, '{{}}' from upstream_tools;
insert into upstream_files (upstream_version_id, descriptor_type, path, file_type, url,
                            checksum_status)
select id, 'CWL', 'main.cwl', 'PRIMARY_DESCRIPTOR', 'http://u.test/a', 'not_fetched'
from upstream_versions;
"""

#: The three updates whose old and new rows the triggers compare, each run on no rows first
#: (its plan is made then) and on every row after; a tenth of the rows really change.
UPDATES = (
    """update upstream_tools set last_confirmed = now(),
       doc_hash = case when id % 10 = 0 then 'changed' else doc_hash end where {}""",
    """update upstream_versions set
       position = case when id % 10 = 0 then 1 else position end where {}""",
    """update upstream_files set
       url = case when upstream_version_id % 10 = 0 then 'http://u.test/b' else url end
       where {}""",
)


async def test_touched_rows_and_plans_after_an_empty_update(db_dsn: str) -> None:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(db_dsn)
    plans: list[str] = []
    conn.add_log_listener(lambda _c, message: plans.append(str(message.message)))
    try:
        await conn.execute(SETUP)
        await conn.execute("analyze")
        await conn.execute("load 'auto_explain'")
        await conn.execute(
            "set auto_explain.log_min_duration = 0; set auto_explain.log_nested_statements = on;"
            "set auto_explain.log_level = notice"
        )
        async with conn.transaction():
            # What the inserts above recorded is not this test's.
            await conn.execute("delete from catalogue_touched")
            for update in UPDATES:
                await conn.execute(update.format("false"))
                plans.clear()
                await conn.execute(update.format("true"))
                joins = [p for p in plans if "new_rows n join old_rows o" in p]
                assert len(joins) == 1, plans
                # Planned for the rows there: never a loop over every pair of old and new rows.
                assert "Nested Loop" not in joins[0], joins[0]
            touched = await conn.fetchrow(
                "select count(upstream_tool_id) as tools, count(upstream_version_id) as versions "
                "from catalogue_touched"
            )
            assert touched is not None
            expected = await conn.fetchval(
                "select count(distinct t.id) from upstream_tools t "
                "join upstream_versions v on v.upstream_tool_id = t.id where v.id % 10 = 0"
            )
            # Tools: those whose hash changed and those with a changed version.
            assert touched["tools"] == TOOLS // 10 + expected
            assert touched["versions"] == await conn.fetchval(
                "select count(*) from upstream_files where upstream_version_id % 10 = 0"
            )
    finally:
        await conn.close()
