"""Searches without words (the console's home page, filters alone, the search API with filters
only) read their totals and facet counts from search_facet_groups (migration 0025), or without
filters from search_facet_values (migration 0028): they must be what counting the search rows
gives, after every publish, for every combination of filters, on an empty catalogue too."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from aggregator.console.render import tool_path
from aggregator.db import console as db_console
from aggregator.db import search as db_search
from aggregator.db.pool import connect, create_pool
from tests.support import eventually
from tests.test_api_cache import publish
from tests.test_capture import (
    BUMP,
    CATALOGUE_SQL,
    STEPS,
    UPSTREAMS,
    check_facet_groups,
    records_sql,
)

Client = TestClient[Any, Any]

#: The console's filters, each with values present and absent in the catalogue of
#: tests/test_capture.py (upstreams a, b, c; organisations org, Lab-n; mixed-case classes).
CONSOLE_FILTERS: dict[str, list[Any]] = {
    "upstream": ["a", "c", "nowhere"],
    "descriptor_type": ["cwl", "SMK"],
    "toolclass": ["workflow", "CommandLineTool"],
    "organization": ["ORG", "lab-3"],
    "only": ["b"],
    "multi": [True],
}
API_FILTERS: dict[str, list[Any]] = {
    "upstream": ["a", "b"],
    "descriptor_type": ["wdl", "NFL"],
    "toolclass": ["WORKFLOW"],
    "organization": ["Lab-3", "org"],
    "has_checker": [True, False],
}


def combinations(filters: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """No filter, each filter value alone, and every pair of filters (first values), and
    three at once."""
    out: list[dict[str, Any]] = [{}]
    out += [{k: v} for k, values in filters.items() for v in values]
    out += [{a: filters[a][0], b: filters[b][0]} for a, b in itertools.combinations(filters, 2)]
    first = list(filters)
    out.append({k: filters[k][-1] for k in first[:3]})
    return out


@pytest.fixture
async def db(db_dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to this test's empty catalogue, its upstreams made."""
    conn = await connect(db_dsn)
    await conn.execute(UPSTREAMS)
    yield conn
    await conn.close()


async def scanned_console(conn: asyncpg.Connection[Any], query: db_console.Search) -> Any:
    """The console's search without words as it was before the facet groups: every search
    row matched and counted (the statement of the search with words, every tool found)."""
    async with conn.transaction(readonly=True):
        args = await query.args(conn)
        chosen = [v for v in (query.upstream, query.descriptor_type, query.toolclass) if v]
        chosen += [v for v in (query.organization, query.only) if v]
        sql = db_console._MATCHED_OF.format(found="select tool_id from search_docs")
        rows = await conn.fetch(
            sql + db_console._PAGE, *args, 1000, 0, db_console.FACET_VALUES, chosen
        )
    facets: dict[str, list[tuple[str, int]]] = {}
    for facet, value, n in rows[0]["facets"]:
        facets.setdefault(facet, []).append((value, int(n)))
    return int(rows[0]["total"]), facets, [r["id"] for r in rows if r["id"] is not None]


def counted_api(rows: list[asyncpg.Record], query: db_search.SearchQuery) -> Any:
    """The API's total, facets and hits without text, counted here from the search rows
    (*rows*, in id order)."""

    def passes(r: asyncpg.Record) -> bool:
        return (
            (query.upstream is None or query.upstream in r["upstreams"])
            and (
                query.descriptor_type is None
                or query.descriptor_type.upper() in r["descriptor_types"]
            )
            and (
                query.toolclass is None
                or query.toolclass.lower() in {c.lower() for c in r["toolclasses"]}
            )
            and (query.organization is None or query.organization.lower() in r["organizations"])
            and (query.has_checker is None or r["has_checker"] == query.has_checker)
        )

    hits = [r for r in rows if passes(r)]
    facets = {
        "upstream": Counter(u for r in hits for u in r["upstreams"]),
        "descriptor_type": Counter(t for r in hits for t in r["descriptor_types"] if t),
        "toolclass": Counter(c for r in hits for c in r["toolclasses"]),
        "organization": Counter(o for r in hits for o in r["organizations"]),
        "has_checker": Counter(str(r["has_checker"]).lower() for r in hits),
    }
    return len(hits), {k: dict(v) for k, v in facets.items()}, [r["tool_id"] for r in hits]


async def check_searches(dsn: str, conn: asyncpg.Connection[Any]) -> int:
    """Every search without words agrees with the search rows counted, and so do the groups
    and the values they are read from; return the tools."""
    await check_facet_groups(conn)
    rows = await conn.fetch("select * from search_docs order by tool_id")
    for filters in combinations(CONSOLE_FILTERS):
        query = db_console.Search(**filters)
        async with conn.transaction(readonly=True):
            found = await db_console.search(conn, query, offset=0, limit=1000)
        total, facets, ids = await scanned_console(conn, query)
        assert (found.total, found.facets) == (total, facets), filters
        assert [h.id for h in found.hits] == ids, filters
        assert not any(h.exact for h in found.hits)
        # (A null in an upstream's list of descriptor types is no value.)
        assert all(v is not None for values in found.facets.values() for v, _ in values)
        # A later page is the same rows further on; past the end, none.
        async with conn.transaction(readonly=True):
            later = await db_console.search(conn, query, offset=3, limit=4)
            past = await db_console.search(conn, query, offset=total, limit=4)
        assert [h.id for h in later.hits] == ids[3:7] and later.total == total
        assert past.hits == [] and past.total == total and past.facets == facets
    pool = await create_pool(dsn)
    try:
        for filters in combinations(API_FILTERS):
            search = db_search.SearchQuery(**filters)
            total, facets, ids = counted_api(rows, search)
            result = await db_search.search(pool, search, limit=1000)
            assert (result.total, result.facets) == (total, facets), filters
            assert not result.facets_estimated
            assert [h.id for h in result.hits] == ids, filters
            # Pages of three, one after the other, hold every hit once.
            paged: list[str] = []
            after = None
            while True:
                page = await db_search.search(pool, search, limit=3, after=after, facets=False)
                assert page.total == total and page.facets == {}
                paged += [h.id for h in page.hits]
                if page.next_after is None:
                    break
                after = page.next_after
            assert paged == ids, filters
    finally:
        await pool.close()
    return len(rows)


async def test_an_empty_catalogue_has_no_hits_and_no_counts(
    db_dsn: str, db: asyncpg.Connection[Any]
) -> None:
    """Before anything is published: no tools, every count zero, every facet empty."""
    assert await check_searches(db_dsn, db) == 0
    async with db.transaction(readonly=True):
        found = await db_console.search(db, db_console.Search(), offset=0, limit=20)
    assert (found.total, found.hits, found.facets) == (0, [], {"multi": [("yes", 0)]})
    pool = await create_pool(db_dsn)
    try:
        result = await db_search.search(pool, db_search.SearchQuery(upstream="a"), limit=5)
    finally:
        await pool.close()
    assert (result.total, result.hits, result.next_after) == (0, [], None)
    assert result.facets == {name: {} for name in db_search.FACETS}
    assert await db.fetchval("select count(*) from search_facet_groups") == 0


async def test_counts_follow_every_publish(db_dsn: str, db: asyncpg.Connection[Any]) -> None:
    """After a first publish and after each change of the capture's tests (merges, splits,
    renames, records moved, records gone), the counts are those of the search rows, for each
    filter and their combinations; a catalogue emptied again counts nothing."""
    async with db.transaction():
        await db.execute(records_sql("t", 300))
        await db.execute(CATALOGUE_SQL)
        await db.execute(BUMP)
    assert await check_searches(db_dsn, db) > 250
    for name, sql in STEPS:
        async with db.transaction():
            await db.execute(sql)
            await db.execute(BUMP)
        assert await check_searches(db_dsn, db) > 0, name
    async with db.transaction():
        await db.execute(
            "delete from catalogue_versions; delete from catalogue_members; "
            "delete from catalogue_tools"
        )
        await db.execute(BUMP)
    assert await check_searches(db_dsn, db) == 0
    assert await db.fetchval("select count(*) from search_facet_groups") == 0
    assert await db.fetchval("select count(*) from search_facet_values") == 0


async def test_search_rows_emptied_at_once_empty_the_groups(
    db_dsn: str, db: asyncpg.Connection[Any]
) -> None:
    """The search rows truncated (by hand: no publish does it) take their counts along."""
    async with db.transaction():
        await db.execute(records_sql("t", 30))
        await db.execute(CATALOGUE_SQL)
        await db.execute(BUMP)
    tools = await db.fetchval("select count(*) from search_docs")
    assert await db.fetchval("select sum(tools) from search_facet_groups") == tools > 20
    await db.execute("truncate search_docs")
    assert await check_searches(db_dsn, db) == 0


async def _facet_count(client: Client, path: str, value: str) -> int | None:
    """The count shown next to facet value *value* on console page *path*."""
    page = await (await client.get(path)).text()
    marker = f'<bdi>{value}</bdi> <span class="count">'
    at = page.find(marker)
    return None if at < 0 else int(page[at + len(marker) :].split("<", 1)[0])


async def test_no_stale_counts_after_a_publish(populated_dsn: str, own_trs: Client) -> None:
    """The home page and the search API count a tool under its new organisation as soon as
    the publish that moved it is announced, and no longer under the old one."""
    before = await (await own_trs.get("/aggregator/v1/search")).json()
    orgs = before["facets"]["organization"]
    assert "moved-lab" not in orgs
    assert await _facet_count(own_trs, "/", "moved-lab") is None
    conn = await asyncpg.connect(populated_dsn)
    try:
        tool_id, org = await conn.fetchrow(
            "select d.tool_id, d.organization from search_docs d "
            "where cardinality(d.upstreams) = 1 and d.organization <> '' order by d.tool_id "
            "limit 1"
        )
        was = await _facet_count(own_trs, "/", org)
        assert was is not None
        async with conn.transaction():
            await conn.execute(
                "update upstream_tools t set doc = jsonb_set(doc, '{organization}', "
                "'\"moved-lab\"'), doc_hash = doc_hash || 'moved' "
                "from catalogue_members m where m.tool_id = $1 and m.upstream_tool_id = t.id",
                tool_id,
            )
            await publish(conn)
    finally:
        await conn.close()

    async def moved() -> bool:
        return await _facet_count(own_trs, "/", "moved-lab") == 1

    await eventually(moved, what="the moved tool counted on the home page")
    assert await _facet_count(own_trs, "/", org) == (was - 1 or None)
    after = await (await own_trs.get("/aggregator/v1/search")).json()
    assert after["facets"]["organization"]["moved-lab"] == 1
    assert after["total"] == before["total"]
    filtered = await (await own_trs.get("/aggregator/v1/search?organization=moved-lab")).json()
    assert [h["id"] for h in filtered["hits"]] == [tool_id]
    page = await (await own_trs.get("/?org=moved-lab")).text()
    assert f'href="{tool_path(tool_id)}"' in page
