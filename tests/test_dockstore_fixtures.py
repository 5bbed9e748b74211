"""Harvesting Dockstore's own integration-test fixtures from a real HTTP server."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

import asyncpg

from aggregator.app import create_app
from aggregator.config import Config, DatabaseConfig, UpstreamConfig
from tests.dockstore_fixtures import BASE, TEST6, VERSION, WDL_PRIMARY, made_up, make_dockstore_app
from tests.support import fetch, harvest

TRS = "/ga4gh/trs/v2"
POTATO = "e91c254ad58860a02c788dfb5c1a65d6a8846ab1dc649631c7db16fef4af2dec"


async def test_dockstore_fixtures_harvest_into_tools_versions_files_and_bytes(
    aiohttp_server: Any, aiohttp_client: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """Pre-release tools keep toolname and author beside name; tree-rooted paths become one
    canonical path; every file is stored with the bytes and checksum Dockstore declared; the
    FileWrapper keeps Dockstore's own fields in the default profile and drops them in strict."""
    server = await aiohttp_server(make_dockstore_app())
    config = Config(
        database=DatabaseConfig(url=db_dsn, pool_max=4),
        upstreams=(UpstreamConfig(name="dockstore", url=str(server.make_url(BASE)), retries=0),),
    )
    outcome = (await harvest(pool, config))["dockstore"]
    assert outcome.status == "succeeded", outcome.counts.error_samples
    assert outcome.counts.tools_new == 2 and outcome.counts.versions_seen == 1

    stored = {
        (r["descriptor_type"], r["path"]): r
        for r in await fetch(
            db_dsn, "select descriptor_type, path, sha256, checksum_status from upstream_files"
        )
    }
    assert sorted(stored) == [
        ("", "Dockerfile"),
        ("CWL", "Dockstore.cwl"),
        ("CWL", "nested/test.cwl.json"),
        ("CWL", "test.cwl.json"),
        ("WDL", "Dockstore.wdl"),
        ("WDL", "test.wdl.json"),
    ]
    assert stored[("CWL", "Dockstore.cwl")]["sha256"] == POTATO
    assert {r["checksum_status"] for r in stored.values()} == {"verified"}

    client = await aiohttp_client(create_app(config))
    tools = {t["id"]: t for t in await (await client.get(f"{TRS}/tools")).json()}
    assert sorted(tools) == ["#workflow/G/A/l", TEST6]
    test6 = tools[TEST6]
    assert test6["name"] == test6["toolname"] == "test6"
    assert test6["author"] == "Unknown author" and test6["contains"] == []
    assert [v["name"] for v in test6["versions"]] == [VERSION]
    assert test6["versions"][0]["author"] == ["Unknown author"]

    version = f"{TRS}/tools/{quote(TEST6, safe='')}/versions/{VERSION}"
    for kind, primary, content in (
        ("CWL", "Dockstore.cwl", b"potato"),
        ("WDL", "Dockstore.wdl", WDL_PRIMARY),
    ):
        listing = await (await client.get(f"{version}/{kind}/files")).json()
        assert all(not f["path"].startswith("/") for f in listing), listing
        for f in listing:
            served = await client.get(f"{version}/PLAIN_{kind}/descriptor/{quote(f['path'])}")
            body = await served.read()
            assert hashlib.sha256(body).hexdigest() == f["checksum"]["checksum"], f
            expected = content if f["path"] == primary else made_up("/" + f["path"])
            assert body == expected or body == made_up(f["path"]), f
        for spelling in (primary, "/" + primary, quote("/" + primary, safe="")):
            r = await client.get(f"{version}/{kind}/descriptor/{spelling}")
            assert r.status == 200, spelling
            wrapper = await r.json()
            assert wrapper["content"].encode() == content
    wrapper = await (await client.get(f"{version}/CWL/descriptor")).json()
    assert wrapper["checksum"] == [{"checksum": POTATO, "type": "sha-256"}]
    assert wrapper["dockstore_absolute_path"] == "/Dockstore.cwl"
    assert wrapper["dockstore_self_url"].endswith("/CWL/descriptor/%2FDockstore.cwl")
    strict = await (
        await client.get(f"/strict-2.0.0{version}/CWL/descriptor".replace("//", "/"))
    ).json()
    assert "dockstore_absolute_path" not in strict and strict["content"] == "potato"
