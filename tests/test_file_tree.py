"""One relative file tree per version, and the URLs cwltool builds into it."""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urljoin

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from aggregator.app import create_app
from aggregator.demo.registry import make_registry_app
from tests.support import catalogue, config_for, harvest
from tests.test_cwltool import cwltool_validate

TOOL = "#workflow/github.com/lab/deep"
PRIMARY = "workflow/x/main.cwl"
FILES = {
    PRIMARY: """cwlVersion: v1.2
class: Workflow
requirements:
  SchemaDefRequirement:
    types:
      - $import: ../../types/reads.yml
inputs:
  reads: ../../types/reads.yml#Reads
outputs: []
steps:
  qc:
    run: ../../tool/fastqc/fastqc.cwl
    in: {reads: reads}
    out: []
  sub:
    run: ../common/echo.cwl
    in: {reads: reads}
    out: []
  same:
    run: same.cwl
    in: {reads: reads}
    out: []
""",
    "tool/fastqc/fastqc.cwl": """cwlVersion: v1.2
class: CommandLineTool
baseCommand: fastqc
requirements:
  SchemaDefRequirement:
    types:
      - $import: ../../types/reads.yml
inputs:
  reads: ../../types/reads.yml#Reads
outputs: []
""",
    "workflow/common/echo.cwl": """cwlVersion: v1.2
class: CommandLineTool
baseCommand: echo
requirements:
  SchemaDefRequirement:
    types:
      - $import: ../../types/reads.yml
inputs:
  reads: ../../types/reads.yml#Reads
outputs: []
""",
    "workflow/x/same.cwl": """cwlVersion: v1.2
class: CommandLineTool
baseCommand: 'true'
inputs:
  reads: Any
outputs: []
""",
    "types/reads.yml": "name: Reads\ntype: record\nfields:\n  path: string\n",
}


def deep_tool() -> dict[str, Any]:
    """A WorkflowHub-shaped CWL workflow: its primary two directories down, importing ``../..``."""
    files = [
        {
            "path": ("/" if i % 2 else "") + path,  # Both spellings upstreams send.
            "file_type": "PRIMARY_DESCRIPTOR" if path == PRIMARY else "SECONDARY_DESCRIPTOR",
            "content": content,
        }
        for i, (path, content) in enumerate(FILES.items())
    ]
    return {
        "id": TOOL,
        "name": "deep",
        "organization": "lab",
        "toolclass": {"id": "1", "name": "Workflow", "description": ""},
        "versions": [{"id": "1", "name": "1", "descriptor_type": ["CWL"], "files": {"CWL": files}}],
    }


@pytest.fixture
async def live_api(aiohttp_server: Any, pool: asyncpg.Pool[Any], db_dsn: str) -> AsyncIterator[str]:
    """The origin of an API over a database holding the deep workflow."""
    registry = await aiohttp_server(make_registry_app(catalogue([deep_tool()])))
    config = config_for(db_dsn, {"lab": registry})
    outcome = (await harvest(pool, config))["lab"]
    assert outcome.status == "succeeded", outcome.counts.error_samples
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_every_url_cwltool_builds_in_the_tree_answers_that_file(live_api: str) -> None:
    """From each file's URL as cwltool knows it, every other file's relative URL (up to two
    levels above the primary descriptor's directory) answers exactly that file's bytes; the
    listing holds one canonical path per file."""
    version = f"{live_api}/api/ga4gh/v2/tools/{quote(TOOL, safe='')}/versions/1"
    primary_url = f"{version}/plain-CWL/descriptor/{quote(PRIMARY, safe='')}"
    primary_dir = posixpath.dirname(PRIMARY)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{version}/CWL/files") as r:
            listed = sorted(f["path"] for f in await r.json())
        assert listed == sorted(FILES)
        # cwltool's URL of each file: resolved from the primary's URL by relative paths.
        urls = {PRIMARY: primary_url}
        for path in FILES:
            relative = posixpath.relpath(path, primary_dir)
            urls[path] = urljoin(primary_url, relative)
        checked = 0
        for source, source_url in urls.items():
            for target, content in FILES.items():
                relative = posixpath.relpath(target, posixpath.dirname(source))
                url = urljoin(source_url, relative)
                async with http.get(url) as r:
                    assert r.status == 200, (source, target, url, await r.text())
                    assert await r.text() == content, (source, target, url)
                checked += 1
        assert checked == len(FILES) ** 2
        for spelling in (PRIMARY, "/" + PRIMARY, "./" + PRIMARY, "workflow/y/../x/main.cwl"):
            async with http.get(f"{version}/PLAIN_CWL/descriptor/{quote(spelling)}") as r:
                assert await r.text() == FILES[PRIMARY], spelling
        for outside in ("../../../etc/passwd", "%2e%2e/x", "..%5cx"):
            async with http.get(f"{version}/PLAIN_CWL/descriptor/{outside}") as r:
                assert r.status in (400, 404), outside
                assert (await r.json())["code"] == r.status


async def test_cwltool_validates_a_workflow_importing_two_levels_up(live_api: str) -> None:
    """cwltool, unmodified, validates the deep workflow through the legacy /api/ga4gh/v2 mount."""
    code, output = await cwltool_validate(live_api, f"{TOOL}:1")
    assert code == 0, output
    assert f"{TOOL}:1 is valid CWL" in output
