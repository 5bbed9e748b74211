"""The merge against PostgreSQL: real and synthetic upstreams, incremental equals full, ids."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import random
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from aggregator.app import create_app
from aggregator.config import Config, MergeConfig
from aggregator.db import merge as merge_db
from aggregator.db import merge_evidence, merge_write
from aggregator.db.merge import remerge, save_merge_rules
from aggregator.demo.registry import STATE, make_registry_app
from tests.static_trs import make_static_app
from tests.support import catalogue, config_for, cwl_tool, harvest, with_priority

REALDATA = Path(__file__).parent / "data" / "realdata"
SHARED_UUID = "324a6207-70bd-4a59-be2b-25001d1af9e3"
TRS = "/ga4gh/trs/v2"


def enc(value: str) -> str:
    return quote(value, safe="")


async def provenance(client: TestClient[Any, Any], tool_id: str) -> dict[str, Any]:
    r = await client.get(f"/aggregator/v1/tools/{enc(tool_id)}/provenance")
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def snapshot(conn: asyncpg.Connection[Any] | asyncpg.Pool[Any]) -> dict[str, Any]:
    """The published catalogue as comparable values (internal row ids replaced by names)."""
    tools = await conn.fetch(
        """select c.id, u.name || '/' || t.external_id as primary_member, c.conflicts::text
           from catalogue_tools c join upstream_tools t on t.id = c.primary_member_id
           join upstreams u on u.id = t.upstream_id order by c.id"""
    )
    members = await conn.fetch(
        """select m.tool_id, u.name || '/' || t.external_id as member
           from catalogue_members m join upstream_tools t on t.id = m.upstream_tool_id
           join upstreams u on u.id = t.upstream_id order by 1, 2"""
    )
    versions = await conn.fetch(
        """select cv.tool_id, cv.key, cv.conflict, u.name || '/' || t.external_id || '@' || v.key
           from catalogue_versions cv
           cross join lateral unnest(cv.source_ids) as s(version_id)
           join upstream_versions v on v.id = s.version_id
           join upstream_tools t on t.id = v.upstream_tool_id
           join upstreams u on u.id = t.upstream_id order by 1, 2, 4"""
    )
    ids = await conn.fetch(
        """select x.id, catalogue_resolve(x.id) from (
               select c.id from catalogue_tools c
               union select '#upstream/' || u.name || '/' || t.external_id
               from upstream_tools t join upstreams u on u.id = t.upstream_id
               union select external_id from upstream_tools
               union select id from catalogue_id_history) as x order by 1"""
    )
    return {
        "tools": [tuple(r) for r in tools],
        "members": [tuple(r) for r in members],
        "versions": [tuple(r) for r in versions],
        "ids": [tuple(r) for r in ids],
    }


async def catalogue_rows(conn: asyncpg.Connection[Any] | asyncpg.Pool[Any]) -> dict[str, Any]:
    """Every column of the catalogue's rows the merge writes (record ids replaced by names):
    what an incremental write must leave exactly as a full merge's would."""
    name = "(select u.name || '/' || t.external_id from upstream_tools t join upstreams u"
    name += " on u.id = t.upstream_id where t.id = {})"
    version = "(select {} || '@' || v.key from upstream_versions v where v.id = {})".format(
        name.format("v.upstream_tool_id"), "{}"
    )
    tools = await conn.fetch(
        f"""select c.id, c.sort_key, {name.format("c.primary_member_id")}, c.conflicts::text
            from catalogue_tools c order by c.id"""
    )
    members = await conn.fetch(
        f"""select m.tool_id, {name.format("m.upstream_tool_id")} as member, m.joined_by::text
            from catalogue_members m order by 1, 2"""
    )
    versions = await conn.fetch(
        f"""select cv.tool_id, cv.key, cv.position, {version.format("cv.upstream_version_id")},
                   array(select {version.format("s.id")}
                         from unnest(cv.source_ids) with ordinality as s(id, n) order by s.n),
                   cv.conflict
            from catalogue_versions cv order by 1, 2"""
    )
    return {
        "tools": [tuple(r) for r in tools],
        "members": [tuple(r) for r in members],
        "versions": [tuple(r) for r in versions],
    }


async def published_rows(conn: asyncpg.Connection[Any] | asyncpg.Pool[Any]) -> dict[str, Any]:
    """The snapshot and every column of the catalogue rows."""
    return await snapshot(conn) | {"rows": await catalogue_rows(conn)}


async def full_merge_snapshot(
    pool: asyncpg.Pool[Any],
    config: Config,
    slice_records: int = sys.maxsize,
    *,
    empty: bool = False,
) -> dict[str, Any]:
    """What a full re-merge (in one piece, unless *slice_records* says otherwise; into an
    emptied catalogue when *empty*, as a first merge is) would publish, computed in a
    transaction that is rolled back."""
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("select 1 from catalogue_state for update")
            if empty:
                await conn.execute("delete from catalogue_tools")
            stats = await remerge(
                conn,
                tombstone_after=config.harvest.tombstone_after,
                full=True,
                slice_records=slice_records,
            )
            assert stats.slices == 1 or slice_records < stats.nodes
            return await published_rows(conn)
        finally:
            await tx.rollback()


async def test_real_static_registries_and_a_dockstore_style_one_merge_the_shared_tool(
    aiohttp_server: Any, aiohttp_client: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """The GATK tool both real Yevis trees publish, and a Dockstore entry aliasing it, are one."""
    ddbj = await aiohttp_server(make_static_app(REALDATA / "ddbj+workflow-registry"))
    mana = await aiohttp_server(make_static_app(REALDATA / "manabuishii+yevis-getting-started"))
    dockstore_tool = cwl_tool(
        "#workflow/github.com/broadinstitute/gatk-mutect2", aliases=[SHARED_UUID]
    )
    dockstore = await aiohttp_server(make_registry_app(catalogue([dockstore_tool])))
    config = with_priority(
        config_for(db_dsn, {"ddbj": ddbj, "manabuishii": mana, "dockstore": dockstore}),
        "dockstore",
        10,
    )
    outcomes = await harvest(pool, config)
    assert {o.status for o in outcomes.values()} <= {"succeeded", "partial"}
    client = await aiohttp_client(create_app(config))

    tools = await (await client.get(f"{TRS}/tools")).json()
    # Besides the shared UUID, both trees publish the GATK mitochondria pipeline under
    # different UUIDs with byte-identical descriptors: the checksum joins them.
    assert len(tools) == 5 + 9 + 1 - 3
    mito = await provenance(client, "68c32f9c-bdaa-420c-879c-90b40d8bc4d5")
    assert sorted(m["upstream_id"] for m in mito["members"]) == [
        "677a5fd8-fe70-48f7-adb4-8842c6427ab6",
        "68c32f9c-bdaa-420c-879c-90b40d8bc4d5",
    ]
    assert {j["evidence"] for m in mito["members"] for j in m["joined_by"]} == {"content"}
    merged = await (await client.get(f"{TRS}/tools/{SHARED_UUID}")).json()
    assert merged["id"] == dockstore_tool["id"]
    record = await provenance(client, SHARED_UUID)
    assert sorted(m["upstream"] for m in record["members"]) == ["ddbj", "dockstore", "manabuishii"]
    evidence = {(j["evidence"], j["value"]) for m in record["members"] for j in m["joined_by"]}
    assert ("uuid", SHARED_UUID) in evidence
    # Both trees publish version 1.0.0 with the same descriptor bytes: one version, two sources.
    v100 = next(v for v in record["versions"] if v["key"] == "1.0.0")
    assert sorted(s["upstream"] for s in v100["sources"]) == ["ddbj", "manabuishii"]
    assert not v100["conflict"]
    wdl = await client.get(f"{TRS}/tools/{SHARED_UUID}/versions/1.0.0/PLAIN_WDL/descriptor")
    assert wdl.status == 200 and "workflow" in await wdl.text()
    for name in ("ddbj", "manabuishii"):
        qualified = f"#upstream/{name}/{SHARED_UUID}"
        assert (await (await client.get(f"{TRS}/tools/{enc(qualified)}")).json())["id"] == merged[
            "id"
        ]


async def test_ids_keep_resolving_when_a_better_member_joins(
    aiohttp_server: Any, aiohttp_client: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """A tool's old id still answers after a better-priority member takes over its id."""
    hub = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool("101", aliases=["#workflow/github.com/lab/align"], marker="hub")])
        )
    )
    dock = await aiohttp_server(make_registry_app(catalogue([])))
    config = with_priority(config_for(db_dsn, {"hub": hub, "dock": dock}), "dock", 1)
    await harvest(pool, config)
    client = await aiohttp_client(create_app(config))
    assert (await (await client.get(f"{TRS}/tools/101")).json())["id"] == "101"

    dock.app[STATE].catalogue = catalogue(
        [cwl_tool("#workflow/github.com/lab/align", marker="dock")]
    )
    await harvest(pool, config, ["dock"])
    merged = await (await client.get(f"{TRS}/tools/101")).json()
    assert merged["id"] == "#workflow/github.com/lab/align"
    assert "#workflow/github.com/lab/align" in merged["aliases"]
    assert (await client.get(f"{TRS}/tools/{enc('#upstream/hub/101')}")).status == 200
    # Same version name, different content: both stay reachable, the conflict is reported.
    keys = sorted(v["url"].rsplit("/", 1)[1] for v in merged["versions"])
    assert keys == ["1.0", "1.0~hub"]
    record = await provenance(client, "101")
    assert record["conflicts"][0]["kind"] == "version"
    text = await (await client.get(f"{TRS}/tools/101/versions/1.0~hub/PLAIN_CWL/descriptor")).text()
    assert "hub" in text

    dock.app[STATE].catalogue = catalogue([])
    for _ in range(config.harvest.tombstone_after):
        await harvest(pool, config, ["dock"])
    alone = await (await client.get(f"{TRS}/tools/101")).json()
    assert alone["id"] == "101"
    assert (await client.get(f"{TRS}/tools/{enc('#workflow/github.com/lab/align')}")).status == 200


async def test_one_upstream_is_never_merged_with_itself(
    aiohttp_server: Any, aiohttp_client: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """Evidence chaining two tools of one upstream is refused and reported, not applied."""
    one = await aiohttp_server(
        make_registry_app(
            catalogue(
                [
                    cwl_tool("a1", aliases=["kelmor tavisu"]),
                    cwl_tool("a2", aliases=["pilvan dorusk"]),
                    cwl_tool("a3", aliases=["zenvik-morla"]),
                    cwl_tool("a4", aliases=["zenvik-morla"]),
                ]
            )
        )
    )
    two = await aiohttp_server(
        make_registry_app(
            catalogue(
                [
                    cwl_tool("b1", aliases=["kelmor tavisu", "pilvan dorusk"]),
                    cwl_tool("b2", aliases=["zenvik-morla"]),
                ]
            )
        )
    )
    config = config_for(db_dsn, {"one": one, "two": two})
    await harvest(pool, config)
    client = await aiohttp_client(create_app(config))
    ids = sorted(t["id"] for t in await (await client.get(f"{TRS}/tools")).json())
    # a1+b1 joined; a2 refused (b1 already holds a tool of 'one'); the generic alias, held by
    # two tools of 'one', joins nothing.
    assert ids == ["a1", "a2", "a3", "a4", "b2"]
    record = await provenance(client, "a1")
    assert sorted(m["upstream_id"] for m in record["members"]) == ["a1", "b1"]
    refused = [c for c in record["conflicts"] if c["kind"] == "join_refused"]
    assert refused and refused[0]["value"] == "pilvan dorusk"
    # The counterpart outside this tool is named by its qualified id, not a row number.
    assert (refused[0]["a"], refused[0]["b"]) == ("#upstream/one/a2", "#upstream/two/b1")
    assert refused[0]["reason"] == "both tools come from one upstream"


async def test_merge_plans_each_statement_for_its_parameters_and_restores_the_settings(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a merge runs, its statements are planned for their own ids (a generic plan tests
    `<> all($1)` element by element), and the session's settings come back after it."""
    server = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool(f"t{i}", aliases=[f"kelmor tavisu {i}"]) for i in range(9)])
        )
    )
    config = config_for(db_dsn, {"one": server})
    await harvest(pool, config)
    seen: list[str] = []
    assign_ids = merge_write.assign_ids

    async def watched(conn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(await conn.fetchval("select current_setting('plan_cache_mode')"))
        return await assign_ids(conn, *args, **kwargs)

    monkeypatch.setattr(merge_write, "assign_ids", watched)
    settings = "select current_setting('plan_cache_mode'), current_setting('random_page_cost')"
    async with pool.acquire() as conn:
        before = tuple(await conn.fetchrow(settings))
        async with conn.transaction():
            await conn.execute("select 1 from catalogue_state for update")
            await remerge(conn, tombstone_after=3, full=True, slice_records=4)
            assert tuple(await conn.fetchrow(settings)) == before
    assert len(seen) > 1 and set(seen) == {"force_custom_plan"}


async def test_merge_pauses_the_garbage_collector_and_resumes_it_after(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's cyclic collector is off while a merge runs and back on after it, also after a
    merge that failed; one that was off before the merge stays off."""
    server = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool(f"t{i}", aliases=[f"kelmor tavisu {i}"]) for i in range(9)])
        )
    )
    config = config_for(db_dsn, {"one": server})
    await harvest(pool, config)
    seen: list[bool] = []
    assign_ids = merge_write.assign_ids
    failing = False

    async def watched(conn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        if failing:
            raise RuntimeError("write failed")
        return await assign_ids(conn, *args, **kwargs)

    monkeypatch.setattr(merge_write, "assign_ids", watched)

    async def full_merge() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("select 1 from catalogue_state for update")
            await remerge(conn, tombstone_after=3, full=True, slice_records=4)

    assert gc.isenabled()
    await full_merge()
    assert len(seen) > 1 and set(seen) == {False}
    assert gc.isenabled()
    failing = True
    with pytest.raises(RuntimeError, match="write failed"):
        await full_merge()
    assert gc.isenabled()
    failing = False
    gc.disable()
    try:
        await full_merge()
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_a_cancelled_full_merge_leaves_its_connection_free(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full merge cancelled while the server runs the statements it sent for one slice waits
    for them, so its transaction rolls back and the connection serves the next query."""
    server = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool(f"t{i}", aliases=[f"kelmor tavisu {i}"]) for i in range(9)])
        )
    )
    config = config_for(db_dsn, {"one": server})
    await harvest(pool, config)
    before = await published_rows(pool)
    send = merge_write.Writer.send

    async def cancelled_after_send(self: merge_write.Writer) -> None:
        await send(self)
        if self.running is not None:  # the statements are with the server: cancel now
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)

    monkeypatch.setattr(merge_write.Writer, "send", cancelled_after_send)

    async def first_merge(conn: Any) -> None:
        async with conn.transaction():
            await conn.execute("delete from catalogue_tools")
            await remerge(conn, tombstone_after=3, full=True, slice_records=4)

    async with pool.acquire() as conn:
        with pytest.raises(asyncio.CancelledError):
            await first_merge(conn)
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()
        assert not conn.is_in_transaction()
        assert await conn.fetchval("select count(*) from catalogue_tools") == len(before["tools"])
    assert await published_rows(pool) == before


async def test_full_merge_recomputes_every_records_evidence(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full merge replaces all the evidence at once by what the records hold now: a key no
    record holds any more is gone, every record's keys are back, in several batches too."""
    server = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool(f"t{i}", aliases=[f"kelmor tavisu {i}"]) for i in range(9)])
        )
    )
    config = config_for(db_dsn, {"one": server})
    await harvest(pool, config)
    evidence = "select upstream_tool_id, kind, value from tool_evidence order by 1, 2, 3"
    before = [tuple(r) for r in await pool.fetch(evidence)]
    assert len(before) == 9
    await pool.execute(
        "insert into tool_evidence (upstream_tool_id, kind, value)"
        " select min(id), 'alias', 'stale-key-nobody-holds' from upstream_tools"
    )
    monkeypatch.setattr(merge_evidence, "EVIDENCE_BATCH", 4)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("select 1 from catalogue_state for update")
        await remerge(conn, tombstone_after=3, full=True)
    assert [tuple(r) for r in await pool.fetch(evidence)] == before


async def test_first_merge_in_slices_settles_plain_ids_two_upstreams_hold(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """A full merge into an empty catalogue, slice after slice, gives a plain id that records
    of two upstreams hold to the better-ranked one even when the other's tool was written by
    an earlier slice (it steps aside to its qualified id), as the published catalogue has it;
    ids only one record holds are not looked up."""
    ids = [f"x{i}" for i in range(6)]
    red = await aiohttp_server(
        make_registry_app(catalogue([cwl_tool(i, marker="red") for i in [*ids, "red-only"]]))
    )
    blue = await aiohttp_server(
        make_registry_app(catalogue([cwl_tool(i, marker="blue") for i in [*ids, "blue-only"]]))
    )
    config = with_priority(config_for(db_dsn, {"red": red, "blue": blue}), "blue", 5)
    await harvest(pool, config)
    published = await published_rows(pool)
    plain = {t[0]: t[1] for t in published["tools"] if not t[0].startswith("#")}
    assert plain == {i: f"blue/{i}" for i in ids} | {"red-only": "red/red-only"} | {
        "blue-only": "blue/blue-only"
    }
    assert await full_merge_snapshot(pool, config, 4, empty=True) == published


@pytest.mark.parametrize("slice_records", [None, 4], ids=["one", "sliced"])
async def test_incremental_merge_publishes_what_a_full_merge_would(
    aiohttp_server: Any,
    pool: asyncpg.Pool[Any],
    db_dsn: str,
    slice_records: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After every harvest of random changes, the catalogue equals a full re-merge's, also
    when each merge is cut into slices of a few records."""
    if slice_records:
        monkeypatch.setattr(merge_db, "SLICE_RECORDS", slice_records)
    rng = random.Random(20261122)
    aliases = [f"https://github.com/lab/r{i}" for i in range(12)]
    names = ("red", "green", "blue")

    def random_catalogue(upstream: str) -> dict[str, Any]:
        tools = []
        for i in range(rng.randint(3, 8)):
            picked = rng.sample(aliases, rng.randint(0, 2))
            marker = rng.choice(["same", "same", upstream])
            tools.append(
                cwl_tool(
                    f"{upstream}-{i}",
                    aliases=picked,
                    marker=marker,
                    versions=rng.choice([("1.0",), ("1.0", "2.0")]),
                )
            )
        return catalogue(tools)

    servers = {n: await aiohttp_server(make_registry_app(random_catalogue(n))) for n in names}
    config = with_priority(config_for(db_dsn, servers), "blue", 5)
    for round_ in range(6):
        changed = names if round_ == 0 else rng.sample(names, rng.randint(1, 2))
        for n in changed:
            servers[n].app[STATE].catalogue = random_catalogue(n)
        await harvest(pool, config, list(changed))
        published = await published_rows(pool)
        assert published == await full_merge_snapshot(pool, config), round_
        if slice_records:
            sliced = await full_merge_snapshot(pool, config, slice_records)
            assert published == sliced, round_
            # Into an empty catalogue, slice after slice while the server writes the last.
            first = await full_merge_snapshot(pool, config, slice_records, empty=True)
            assert published == first, round_
        # Every live upstream version is a source of exactly one served version.
        assert (
            await pool.fetchval(
                """select count(*) filter (where n <> 1) from (
                   select v.id, count(s.version_id) as n
                   from upstream_versions v
                   join upstream_tools t on t.id = v.upstream_tool_id
                   left join (select unnest(source_ids) as version_id
                              from catalogue_versions) s on s.version_id = v.id
                   where t.missed_listings < $1 group by v.id) as x""",
                config.harvest.tombstone_after,
            )
            == 0
        )


@pytest.mark.parametrize("order", [("red", "blue"), ("blue", "red")])
async def test_merge_does_not_depend_on_harvest_order(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, order: tuple[str, str]
) -> None:
    """Harvesting the same upstreams in either order publishes the same catalogue."""
    red = await aiohttp_server(
        make_registry_app(
            catalogue(
                [
                    cwl_tool("r1", aliases=["https://github.com/lab/tool-x"]),
                    cwl_tool("x", marker="red"),
                ]
            )
        )
    )
    blue = await aiohttp_server(
        make_registry_app(
            catalogue(
                [
                    cwl_tool("b1", aliases=["git@github.com:lab/tool-x.git"]),
                    cwl_tool("x", marker="blue"),
                ]
            )
        )
    )
    config = config_for(db_dsn, {"red": red, "blue": blue})
    for name in order:
        await harvest(pool, config, [name])
    got = await published_rows(pool)
    assert [t[0] for t in got["tools"]] == ["#upstream/red/x", "b1", "x"]
    assert got == await full_merge_snapshot(pool, config)


async def test_merge_command_applies_a_priority_change(
    aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str, tmp_path: Path
) -> None:
    """`trs-aggregator merge` after swapping priorities makes the other member primary."""
    one = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool("one-tool", aliases=["https://github.com/lab/shared"])])
        )
    )
    two = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool("two-tool", aliases=["https://github.com/lab/shared"])])
        )
    )
    config = with_priority(config_for(db_dsn, {"one": one, "two": two}), "one", 1)
    await harvest(pool, config)
    assert await pool.fetchval("select array_agg(id) from catalogue_tools") == ["one-tool"]

    path = tmp_path / "agg.toml"
    path.write_text(f"""[database]
url = "{db_dsn}"
[[upstreams]]
name = "one"
url = "{one.make_url(TRS)}"
priority = 50
[[upstreams]]
name = "two"
url = "{two.make_url(TRS)}"
priority = 1
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aggregator",
        "merge",
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "into 1 tools" in out.decode()
    assert await pool.fetchval("select array_agg(id) from catalogue_tools") == ["two-tool"]
    assert await pool.fetchval("select catalogue_resolve('one-tool')") == "two-tool"


async def test_operator_rules_override_evidence_and_show_in_provenance(
    aiohttp_server: Any, aiohttp_client: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """`[merge] never` splits what evidence joins and `always` joins what nothing joins; the
    provenance names the rule, and a change of rules re-merges the records they name."""
    one = await aiohttp_server(
        make_registry_app(
            catalogue(
                [
                    cwl_tool("x", aliases=["https://github.com/lab/shared"]),
                    cwl_tool("lonely", marker="one"),
                ]
            )
        )
    )
    two = await aiohttp_server(
        make_registry_app(
            catalogue(
                [
                    cwl_tool("y", aliases=["github.com/lab/shared"]),
                    cwl_tool("other", aliases=["https://github.com/lab/elsewhere"]),
                ]
            )
        )
    )
    config = config_for(db_dsn, {"one": one, "two": two})
    rules = MergeConfig(
        never=(("#upstream/one/x", "#upstream/two/y"),),
        always=(("#upstream/one/lonely", "#upstream/two/other"),),
    )
    await harvest(pool, dataclasses.replace(config, merge=rules))
    client = await aiohttp_client(create_app(config))
    ids = sorted(t["id"] for t in await (await client.get(f"{TRS}/tools")).json())
    assert ids == ["lonely", "x", "y"]
    record = await provenance(client, "x")
    (refusal,) = [c for c in record["conflicts"] if c["kind"] == "join_refused"]
    assert refusal["reason"] == "operator rule: never"
    assert {refusal["a"], refusal["b"]} == {"#upstream/one/x", "#upstream/two/y"}
    joined = await provenance(client, "lonely")
    lines = [j for m in joined["members"] for j in m["joined_by"]]
    assert {(j["with"], j["evidence"], j.get("rule")) for j in lines} == {
        ("#upstream/two/other", "operator", "always"),
        ("#upstream/one/lonely", "operator", "always"),
    }

    # A change to one record of an always pair re-merges its partner too: the incremental
    # merge publishes what a full one would.
    two.app[STATE].catalogue = catalogue(
        [
            cwl_tool("y", aliases=["github.com/lab/shared"]),
            cwl_tool("other", aliases=["https://github.com/lab/elsewhere"], marker="new"),
        ]
    )
    await harvest(pool, dataclasses.replace(config, merge=rules), ["two"])
    assert await published_rows(pool) == await full_merge_snapshot(pool, config)
    assert await pool.fetchval("select catalogue_resolve('other')") == "lonely"

    # Without the rules, the next merge follows the evidence again.
    async with pool.acquire() as conn, conn.transaction():
        await save_merge_rules(conn)
        await conn.execute("select 1 from catalogue_state for update")
        stats = await remerge(conn, tombstone_after=3)
    assert stats.dirty == 4
    client = await aiohttp_client(create_app(config))
    ids = sorted(t["id"] for t in await (await client.get(f"{TRS}/tools")).json())
    assert ids == ["lonely", "other", "x"]
    record = await provenance(client, "x")
    (line,) = [j for m in record["members"] if m["upstream"] == "one" for j in m["joined_by"]]
    assert line == {"with": "#upstream/two/y", "evidence": "repo", "value": "github.com/lab/shared"}
