"""``trs-aggregator export DIR``: a static TRS tree equal to what the API serves, served by a
plain static file server, rewritten incrementally and swapped atomically, read back by a
harvest and by cwltool."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aggregator.app import create_app
from aggregator.config import HarvestConfig, UpstreamConfig
from aggregator.db.pool import create_pool
from aggregator.demo.registry import STATE, make_registry_app
from aggregator.export import export
from tests.conftest import database_copy
from tests.plain_static import serve_folder
from tests.support import catalogue, config_for, cwl_tool, fetch, harvest
from tests.test_cwltool import cwltool_validate

TRS = "/ga4gh/trs/v2"
IDS = ("#workflow/github.com/lab/flow", "plain-one")


def static_app(folder: Path) -> web.Application:
    """A plain static file server: ``<mount>/<path>`` answers ``folder/<path>/index.json``,
    the URL decoded as nginx decodes it, at both /ga4gh/trs/v2 and /api/ga4gh/v2."""

    async def tree(request: web.Request) -> web.StreamResponse:
        rel = unquote(request.match_info["path"]).strip("/")
        target = (folder / rel / "index.json").resolve()
        if folder.resolve() not in target.parents or not target.is_file():
            raise web.HTTPNotFound
        kind = "application/json" if "PLAIN_" not in rel and "plain-" not in rel else "text/plain"
        return web.Response(body=target.read_bytes(), content_type=kind)

    app = web.Application()
    for mount in (TRS, "/api/ga4gh/v2"):
        app.router.add_get(mount + "/{path:.*}", tree)
    return app


def nested_tool(tool_id: str) -> dict[str, Any]:
    """A CWL workflow whose primary descriptor is not at the root and imports with ``../``."""
    tool = cwl_tool(tool_id, aliases=[f"{tool_id}-alias"])
    files = tool["versions"][0]["files"]["CWL"]
    files[0]["path"] = "workflows/main.cwl"
    files[0]["content"] = (
        "cwlVersion: v1.2\nclass: Workflow\ninputs: []\noutputs: []\n"
        "steps:\n  s:\n    run: ../tools/step.cwl\n    in: []\n    out: []\n"
    )
    files[1]["content"] = (
        "cwlVersion: v1.2\nclass: CommandLineTool\nbaseCommand: echo\ninputs: []\noutputs: []\n"
    )
    return tool


@pytest.fixture
async def setup(pg_admin_dsn: str, template_db: str) -> AsyncIterator[dict[str, Any]]:
    registry = make_registry_app(
        catalogue([nested_tool("#workflow/github.com/lab/flow"), cwl_tool("plain-one")])
    )
    server = TestServer(registry, host="127.0.0.1")
    await server.start_server()
    async with database_copy(pg_admin_dsn, template_db) as dsn:
        config = config_for(dsn, {"lab": server})
        config = dataclasses.replace(
            config, harvest=HarvestConfig(tombstone_after=1, revalidate_after="0s")
        )
        pool = await create_pool(dsn)
        try:
            await harvest(pool, config)
            yield {"config": config, "pool": pool, "registry": registry, "dsn": dsn}
        finally:
            await pool.close()
            await server.close()


def tree_files(root: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = (p.stat().st_ino, p.read_bytes())
    return out


async def test_export_is_what_the_api_serves_and_rewrites_incrementally(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    config = setup["config"]
    static = TestServer(static_app(tmp_path / "tree"), host="127.0.0.1")
    await static.start_server()
    public = str(static.make_url("")).rstrip("/")
    api = TestServer(
        create_app(
            dataclasses.replace(
                config, server=dataclasses.replace(config.server, public_url=public)
            )
        ),
        host="127.0.0.1",
    )
    await api.start_server()
    try:
        stats = await export(config, tmp_path / "tree", public_url=public)
        assert stats.tools == 2 and not stats.incremental and not stats.skipped
        assert (tmp_path / "tree").is_symlink()
        first = tree_files(tmp_path / "tree")
        flow = "tools/#workflow/github.com/lab/flow/versions/1.0"
        for rel in (
            "service-info/index.json",
            "toolClasses/index.json",
            "tools/index.json",
            "tools/plain-one/index.json",
            f"{flow}/index.json",
            f"{flow}/CWL/files/index.json",
            f"{flow}/CWL/descriptor/index.json",
            f"{flow}/PLAIN_CWL/descriptor/index.json",
            f"{flow}/CWL/descriptor/tools/step.cwl/index.json",
            f"{flow}/PLAIN_CWL/descriptor/types/t.yml/index.json",
            f"{flow}/PLAIN_CWL/tools/step.cwl/index.json",
            f"{flow}/CWL/tests/index.json",
            f"{flow}/containerfile/index.json",
        ):
            assert rel in first, rel
        # Every file is byte for byte what the API answers at that path (service-info aside:
        # it is read fresh and carries the time).
        async with aiohttp.ClientSession() as session:
            for rel, (_, body) in first.items():
                path = "/" + rel.removesuffix("/index.json")
                if path == "/service-info":
                    continue
                segments = [s for s in path.split("/") if s]
                if segments[0] == "tools" and len(segments) > 1:
                    # The tool id is one URL segment.
                    joined = "/".join(segments[1:])
                    tid = next(i for i in IDS if joined == i or joined.startswith(i + "/"))
                    end = 1 + len(tid.split("/"))
                    rest = segments[end:]
                    url = f"{TRS}/tools/{aiohttp.helpers.quote(tid, safe='')}" + "".join(
                        "/" + s for s in rest
                    )
                else:
                    url = TRS + path
                async with session.get(api.make_url(url), allow_redirects=False) as r:
                    assert r.status == 200, url
                    assert await r.read() == body, url
            # The static server answers the TRS paths clients ask for, encoded ids included.
            async with session.get(
                f"{public}{TRS}/tools/%23workflow%2Fgithub.com%2Flab%2Fflow/versions/1.0"
                "/PLAIN_CWL/descriptor/workflows%2Fmain.cwl"
            ) as r:
                assert r.status == 200
                assert (await r.text()).startswith("cwlVersion: v1.2\nclass: Workflow")
        # cwltool resolves the workflow and its ../ import from the plain static tree.
        code, output = await cwltool_validate(public, "#workflow/github.com/lab/flow:1.0")
        assert code == 0, output
        assert "is valid CWL" in output

        # Nothing changed: nothing rendered, nothing written but the top-level lists.
        stats = await export(config, tmp_path / "tree", public_url=public)
        assert stats.incremental and stats.rendered_tools == 0
        second = tree_files(tmp_path / "tree")
        assert {k: v[1] for k, v in second.items()} == {k: v[1] for k, v in first.items()}
        assert all(
            second[k][0] == first[k][0]
            for k in second
            if k.startswith("tools/") and k != "tools/index.json"
        )

        # One tool changes, one disappears: only the changed one is rendered; the gone one is
        # gone; the other files are the same inodes (not rewritten).
        changed = nested_tool("#workflow/github.com/lab/flow")
        changed["description"] = "changed"
        setup["registry"][STATE].catalogue = catalogue([changed])
        await harvest(setup["pool"], config)
        before = os.readlink(tmp_path / "tree")
        stats = await export(config, tmp_path / "tree", public_url=public)
        assert os.readlink(tmp_path / "tree") != before
        assert not (tmp_path / before).exists()
        assert stats.incremental and stats.rendered_tools == 1
        third = tree_files(tmp_path / "tree")
        assert not any(k.startswith("tools/plain-one/") for k in third)
        assert (
            orjson.loads(third[f"{flow.rsplit('/versions', 1)[0]}/index.json"][1])["description"]
            == "changed"
        )
        same = [k for k in third if k in first and third[k][1] == first[k][1]]
        assert f"{flow}/PLAIN_CWL/descriptor/index.json" in same
        assert all(third[k][0] == first[k][0] for k in same if k != "tools/index.json")
        assert [t["id"] for t in orjson.loads(third["tools/index.json"][1])] == [
            "#workflow/github.com/lab/flow"
        ]
    finally:
        await api.close()
        await static.close()


async def test_export_harvested_back_gives_the_same_catalogue(
    setup: dict[str, Any], tmp_path: Path, pg_admin_dsn: str, template_db: str
) -> None:
    # The tree as `python -m http.server` serves it: no TRS routing, directory listings for
    # folders; read back with the static upstream kind.
    await export(setup["config"], tmp_path / "tree", public_url="https://mirror.example")
    with serve_folder(tmp_path / "tree") as (origin, requests):
        async with database_copy(pg_admin_dsn, template_db) as dsn:
            upstream = UpstreamConfig(
                name="exported", url=origin, kind="static", retries=1, timeout_s=10
            )
            config = dataclasses.replace(setup["config"], upstreams=(upstream,))
            config = dataclasses.replace(
                config, database=dataclasses.replace(config.database, url=dsn)
            )
            pool = await create_pool(dsn)
            try:
                outcomes = await harvest(pool, config)
            finally:
                await pool.close()
            assert outcomes["exported"].status == "succeeded", (outcomes, requests)

            # The same tools, ids, versions, files and checksums.
            query = """select c.id, cv.key, v.external_id, f.descriptor_type, f.path,
                              f.file_type, f.sha256
                       from catalogue_tools c join catalogue_versions cv on cv.tool_id = c.id
                       join upstream_versions v on v.id = cv.upstream_version_id
                       join upstream_files f on f.upstream_version_id = cv.upstream_version_id
                       order by 1, 2, 4, 5"""
            original = [tuple(r) for r in await fetch(setup["dsn"], query)]
            again = [tuple(r) for r in await fetch(dsn, query)]
            assert again == original
            assert {r[0] for r in again} == set(IDS)
            aliases = """select c.id, t.doc->'aliases' from catalogue_tools c
                         join upstream_tools t on t.id = c.primary_member_id order by 1"""
            assert [tuple(r) for r in await fetch(dsn, aliases)] == [
                tuple(r) for r in await fetch(setup["dsn"], aliases)
            ]
