"""Static TRS trees (Yevis) served as plain files, with their files on other hosts."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson
from aiohttp import web

from aggregator.app import create_app
from aggregator.config import Config, DatabaseConfig, UpstreamConfig
from tests.plain_static import copy_tree, dead_origin, serve_folder
from tests.support import fetch, harvest

REALDATA = Path(__file__).parent / "data" / "realdata"
DDBJ = "ddbj+workflow-registry"
MANA = "manabuishii+yevis-getting-started"
SHARED_UUID = "324a6207-70bd-4a59-be2b-25001d1af9e3"
TRS = "/ga4gh/trs/v2"
ZENODO = "https://zenodo.org/"
RAW_GITHUB = "https://raw.githubusercontent.com/"


def static_config(dsn: str, origins: dict[str, str], **options: Any) -> Config:
    """Upstreams of kind static, one per name -> origin of a plain static host."""
    return Config(
        database=DatabaseConfig(url=dsn, pool_max=4),
        upstreams=tuple(
            UpstreamConfig(
                name=name,
                url=origin,
                kind="static",
                retries=1,
                backoff_s=0.05,
                timeout_s=10,
                abort_after_failures=3,
                # The stand-ins for Zenodo and raw GitHub listen on loopback addresses.
                file_hosts=("127.0.0.0/8",),
                **options,
            )
            for name, origin in origins.items()
        ),
    )


def stand_in_bytes(url: str) -> bytes:
    """What the stand-in file host serves at *url*."""
    return f"stand-in content of {url.rsplit('/', 1)[-1]}\n".encode()


async def file_host(aiohttp_server: Any, host: str, body: Callable[[str], bytes]) -> str:
    """Start a stand-in file host on *host* answering every URL with ``body(url)``; return its
    origin with a trailing ``/``."""
    app = web.Application()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body(str(request.url)))

    app.router.add_get("/{path:.*}", serve)
    server = await aiohttp_server(app, host=host)
    return str(server.make_url("/"))


async def test_two_yevis_registries_with_zenodo_unreachable_publish_all_14_tools(
    tmp_path: Path, aiohttp_client: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """Both real Yevis trees as plain files: Zenodo refusing connections costs single files,
    never a tool; all 14 tools are published, the shared ones merged, each with its primary
    descriptor under its Yevis target path, and the run record sums up the failing host."""
    zenodo = dead_origin() + "/"
    trees = {
        name: copy_tree(REALDATA / folder, tmp_path / name, {ZENODO: zenodo})
        for name, folder in (("ddbj", DDBJ), ("manabuishii", MANA))
    }
    with serve_folder(trees["ddbj"]) as (ddbj, _), serve_folder(trees["manabuishii"]) as (mana, _):
        config = static_config(db_dsn, {"ddbj": ddbj, "manabuishii": mana})
        outcomes = await harvest(pool, config)
    for name, outcome in outcomes.items():
        assert outcome.status == "partial", (name, outcome.error)
        assert outcome.error is None
        hosts = outcome.counts.file_hosts
        assert list(hosts) == ["127.0.0.3"], hosts
        assert hosts["127.0.0.3"]["fetched"] == 0
        assert hosts["127.0.0.3"]["failed"] >= 1 and hosts["127.0.0.3"]["last_error"]
    assert outcomes["ddbj"].counts.tools_fetched == 5
    assert outcomes["manabuishii"].counts.tools_fetched == 9
    rows = await fetch(db_dsn, "select file_hosts from harvest_runs order by id")
    assert all("127.0.0.3" in r["file_hosts"] for r in rows)
    paths = await fetch(db_dsn, "select path from upstream_files")
    assert paths and not [r["path"] for r in paths if "://" in r["path"] or r["path"][0] == "/"]

    client = await aiohttp_client(create_app(config))
    tools = await (await client.get(f"{TRS}/tools")).json()
    listed = {(s["upstream"], s["upstream_id"]) for t in tools for s in t["sources"]}
    assert len(listed) == 14
    # The shared UUID, and the mitochondria pipeline both publish with identical bytes.
    assert len(tools) == 12
    merged = next(t for t in tools if t["id"] == SHARED_UUID)
    assert sorted(s["upstream"] for s in merged["sources"]) == ["ddbj", "manabuishii"]
    for tool in tools:
        version = tool["versions"][0]
        kind = version["descriptor_type"][0]
        base = f"{TRS}/tools/{quote(tool['id'], safe='')}/versions/{version['id']}"
        listing = await (await client.get(f"{base}/{kind}/files")).json()
        primary = [f["path"] for f in listing if f["file_type"] == "PRIMARY_DESCRIPTOR"]
        assert len(primary) == 1 and "/" not in primary[0].strip("./"), (tool["id"], listing)
        plain = await client.get(f"{base}/PLAIN_{kind}/descriptor")
        body = await plain.read()
        assert plain.status == 200 and body, tool["id"]
        wrapper = await (await client.get(f"{base}/{kind}/descriptor/{primary[0]}")).json()
        assert wrapper["checksum"][0]["checksum"] == hashlib.sha256(body).hexdigest()


async def test_an_unchanged_tree_is_re_harvested_with_conditional_requests(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """With its file host up, the gh-trs tree publishes every file with verified bytes under
    the workflow's relative tree; harvesting it again costs a 304 for the listing and nothing
    else."""
    raw_origin = await file_host(aiohttp_server, "127.0.0.4", stand_in_bytes)
    tree = copy_tree(
        REALDATA / "suecharo+gh-trs",
        tmp_path / "gh-trs",
        {RAW_GITHUB: raw_origin, ZENODO: dead_origin() + "/"},
        stand_in=lambda url: stand_in_bytes(url) if url.startswith(raw_origin) else None,
    )
    # Without its index.json, service-info/ is an HTML directory listing: a 404, not an error.
    (tree / "service-info" / "index.json").unlink()
    with serve_folder(tree) as (origin, requests):
        config = static_config(db_dsn, {"gh-trs": origin})
        first = (await harvest(pool, config))["gh-trs"]
        assert first.counts.tools_fetched == 2, first.counts.error_samples
        mark = len(requests)
        second = (await harvest(pool, config))["gh-trs"]
        again = requests[mark:]
    assert first.status == "succeeded", first.counts.error_samples
    upstream = await fetch(
        db_dsn, "select service_info, next_harvest_at > now() as later from upstreams"
    )
    assert upstream[0]["service_info"] is None
    # The manual run stands for this tick of the schedule: a worker starting now waits.
    assert upstream[0]["later"]
    assert second.status == "succeeded" and second.counts.tools_fetched == 0
    assert second.counts.tools_unchanged == 2
    # Nothing changed: the catalogue keeps its generation, so API caches stay warm.
    assert second.generation == first.generation is not None
    assert [r for r in again if "/tools/" in r] == ["GET /tools/index.json 304"], again

    client = await aiohttp_client(create_app(config))
    tool = "493c4948-987a-482b-993c-733bdb3d1d6c"
    base = f"{TRS}/tools/{tool}/versions/1.0.0"
    listing = await (await client.get(f"{base}/CWL/files")).json()
    assert sorted((f["path"], f["file_type"]) for f in listing) == [
        ("fastqc.cwl", "SECONDARY_DESCRIPTOR"),
        ("tests/test-1.json", "TEST_FILE"),
        ("trimming_and_qc.cwl", "PRIMARY_DESCRIPTOR"),
        ("trimmomatic_pe.cwl", "SECONDARY_DESCRIPTOR"),
    ]
    fastqc = await client.get(f"{base}/PLAIN_CWL/descriptor/fastqc.cwl")
    assert await fastqc.read() == stand_in_bytes(f"{raw_origin}x/fastqc.cwl")
    archive = await client.get(f"{base}/CWL/files?format=zip")
    names = zipfile.ZipFile(io.BytesIO(await archive.read())).namelist()
    assert sorted(names) == sorted(f["path"] for f in listing)


def zenodo_bytes(url: str) -> bytes:
    """What the stand-in Zenodo serves: binary bytes for binary names, text for the others."""
    name = url.rsplit("/", 1)[-1]
    if name.endswith((".gz", ".tbi", ".png", ".pdf", ".crai", ".bam")):
        return b"\x1f\x8b\x08\x00\xff\xfe" + name.encode()
    return f"stand-in content of {name}\n".encode()


async def test_files_on_a_reachable_host_land_under_their_yevis_targets_with_binary_bytes(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any, pool: asyncpg.Pool[Any], db_dsn: str
) -> None:
    """With Zenodo up, a Yevis CWL tool's ~195 files are stored under the targets
    yevis-metadata.json gives them (``./output/…`` becomes ``output/…``), verified against the
    tree's checksums; a binary file's FileWrapper has its checksum and a url serving its bytes,
    and the zip holds every listed path."""
    origin = await file_host(aiohttp_server, "127.0.0.5", zenodo_bytes)
    tree = copy_tree(
        REALDATA / MANA,
        tmp_path / "mana",
        {ZENODO: origin},
        stand_in=lambda url: zenodo_bytes(url) if url.startswith(origin) else None,
    )
    with serve_folder(tree) as (base, _):
        config = static_config(db_dsn, {"manabuishii": base})
        outcome = (await harvest(pool, config))["manabuishii"]
    assert outcome.status == "succeeded", outcome.counts.error_samples
    assert outcome.counts.file_hosts["127.0.0.5"]["failed"] == 0
    statuses = await fetch(db_dsn, "select distinct checksum_status from upstream_files")
    assert {r["checksum_status"] for r in statuses} <= {"verified", "undeclared"}

    tool = "cde4e5b9-9847-46af-b458-5e7d41d5cca8"
    metadata = orjson.loads(
        (REALDATA / MANA / "tools" / tool / "versions/1.0.0/yevis-metadata.json").read_bytes()
    )
    urls = {f["target"].removeprefix("./"): f["url"] for f in metadata["workflow"]["files"]}
    targets = set(urls)
    client = await aiohttp_client(create_app(config))
    version = f"{TRS}/tools/{tool}/versions/1.0.0"
    listing = await (await client.get(f"{version}/CWL/files")).json()
    listed = {f["path"] for f in listing if f["file_type"] != "TEST_FILE"}
    assert listed == targets
    binary = next(p for p in sorted(listed) if p.endswith(".png"))
    wrapper = await (await client.get(f"{version}/CWL/descriptor/{binary}")).json()
    assert "content" not in wrapper
    expected = zenodo_bytes(urls[binary])
    assert wrapper["checksum"][0]["checksum"] == hashlib.sha256(expected).hexdigest()
    raw = await client.get(wrapper["url"].split(str(client.make_url("")).rstrip("/"), 1)[-1])
    assert raw.status == 200 and await raw.read() == expected
    archive = zipfile.ZipFile(
        io.BytesIO(await (await client.get(f"{version}/CWL/files?format=zip")).read())
    )
    assert set(archive.namelist()) == {f["path"] for f in listing}
    assert archive.read(binary) == expected
