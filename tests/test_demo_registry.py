"""Tests for the in-memory TRS 2.0.1 demo registry server and the bundled demo catalogues."""

from __future__ import annotations

import hashlib
import io
import posixpath
import zipfile
from collections.abc import Awaitable, Callable
from typing import Any, Literal
from urllib.parse import quote, urljoin

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler
from yarl import URL

from aggregator.demo.catalogues import DEMO_REGISTRIES, load_catalogue
from aggregator.demo.registry import REQUESTS, STATE, make_registry_app

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]
BASE = "/ga4gh/trs/v2"
WEIRD_IDS = ["#workflow/github.com/org/repo", "quay.io/org/tool", "with spaces:1.0", "lit%2Fpct"]


def _tool(tool_id: str, version_id: str = "1.0", *, containerfile: bool = False) -> dict[str, Any]:
    primary = {"path": "main.cwl", "file_type": "PRIMARY_DESCRIPTOR", "content": f"# {tool_id}\n"}
    version: dict[str, Any] = {
        "id": version_id,
        "name": version_id,
        "descriptor_type": ["CWL"],
        "files": {
            "CWL": [
                primary,
                {"path": "tools/sub/step.cwl", "file_type": "SECONDARY_DESCRIPTOR", "content": "s"},
                {"path": "tests/job.json", "file_type": "TEST_FILE", "content": '{"x": 1}'},
            ]
        },
    }
    if containerfile:
        version["containerfile"] = [{"path": "Dockerfile", "content": "FROM debian:12\n"}]
    toolclass = {"id": "1", "name": "Workflow", "description": "Workflow"}
    return {"id": tool_id, "name": tool_id, "organization": "org", "toolclass": toolclass,
            "aliases": [f"alias-{tool_id}"], "versions": [version]}  # fmt: skip


def _catalogue(n_tools: int = 7) -> dict[str, Any]:
    return {"tools": [_tool(f"tool-{i:02d}", containerfile=i == 0) for i in range(n_tools)]}


def _rel(url: str) -> str:
    """The path and query of an absolute URL the server handed out, still percent-encoded."""
    return URL(url).raw_path_qs


async def _get_json(client: Client, path: str, status: int = 200) -> Any:
    resp = await client.get(path)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


@pytest.mark.parametrize("style", ["index", "page"])
async def test_paging_headers_walk_every_tool(
    aiohttp_client: MakeClient, style: Literal["index", "page"]
) -> None:
    """Following next_page from the first page yields every tool once, in catalogue order."""
    catalogue = _catalogue(7)
    client = await aiohttp_client(make_registry_app(catalogue, page_size=3, offset_style=style))
    seen: list[str] = []
    path: str | None = f"{BASE}/tools?toolClass=Workflow"
    pages = 0
    while path is not None:
        resp = await client.get(path)
        assert resp.status == 200
        seen += [t["id"] for t in await resp.json()]
        assert resp.headers["current_limit"] == "3"
        assert resp.headers["self_link"].startswith("http://")
        last = resp.headers["last_page"]
        path = _rel(resp.headers["next_page"]) if "next_page" in resp.headers else None
        assert path is None or "toolClass=Workflow" in path
        pages += 1
    assert seen == [t["id"] for t in catalogue["tools"]]
    assert pages == 3
    expected_last = "2" if style == "page" else "6"
    assert URL(last).query["offset"] == expected_last
    assert resp.headers["current_offset"] == expected_last


async def test_limit_is_capped_at_page_size(aiohttp_client: MakeClient) -> None:
    """A limit above page_size is served as page_size, like Dockstore's maximum."""
    client = await aiohttp_client(make_registry_app(_catalogue(5), page_size=2))
    resp = await client.get(f"{BASE}/tools?limit=1000")
    assert resp.headers["current_limit"] == "2"
    assert len(await resp.json()) == 2


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "offset=-1", "offset=x"])
async def test_bad_paging_parameters_are_400_json(aiohttp_client: MakeClient, query: str) -> None:
    """Malformed limit/offset answer 400 with a TRS Error body."""
    client = await aiohttp_client(make_registry_app(_catalogue()))
    body = await _get_json(client, f"{BASE}/tools?{query}", 400)
    assert body["code"] == 400 and body["message"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("id=tool-03", ["tool-03"]),
        ("alias=alias-tool-01", ["tool-01"]),
        ("name=tool-02", ["tool-02"]),
        ("toolClass=workflow", [f"tool-0{i}" for i in range(4)]),
        ("toolClass=CommandLineTool", []),
        ("descriptorType=cwl", [f"tool-0{i}" for i in range(4)]),
        ("descriptorType=WDL", []),
        ("organization=org&id=tool-00", ["tool-00"]),
    ],
)
async def test_tool_filters(aiohttp_client: MakeClient, query: str, expected: list[str]) -> None:
    """The simple /tools filters select exactly the matching tools."""
    client = await aiohttp_client(make_registry_app(_catalogue(4)))
    assert [t["id"] for t in await _get_json(client, f"{BASE}/tools?{query}")] == expected


@pytest.mark.parametrize("tool_id", WEIRD_IDS)
async def test_ids_round_trip_percent_encoded(aiohttp_client: MakeClient, tool_id: str) -> None:
    """Ids with '#', '/', ':', spaces or '%' survive as one percent-encoded path segment."""
    catalogue = {"tools": [_tool("other"), _tool(tool_id, "feature/x y:2")]}
    client = await aiohttp_client(make_registry_app(catalogue))
    [listed] = await _get_json(client, f"{BASE}/tools?id={quote(tool_id, safe='')}")
    assert listed["url"].endswith(f"/tools/{quote(tool_id, safe='')}")
    assert (await _get_json(client, _rel(listed["url"])))["id"] == tool_id
    version = await _get_json(client, _rel(listed["versions"][0]["url"]))
    assert version["id"] == "feature/x y:2"
    primary = await _get_json(client, _rel(version["url"]) + "/CWL/descriptor")
    assert primary["content"] == f"# {tool_id}\n"


async def test_unencoded_slashes_in_id_do_not_match(aiohttp_client: MakeClient) -> None:
    """An id sent with raw '/' is not the same tool (it splits into segments): 404."""
    client = await aiohttp_client(make_registry_app({"tools": [_tool("quay.io/org/tool")]}))
    body = await _get_json(client, f"{BASE}/tools/quay.io/org/tool", 404)
    assert body["code"] == 404


async def test_nested_relative_paths_encoded_and_unencoded(aiohttp_client: MakeClient) -> None:
    """descriptor/{relative_path} serves nested files given with raw '/' or with '%2F'."""
    client = await aiohttp_client(make_registry_app({"tools": [_tool("t")]}))
    version = f"{BASE}/tools/t/versions/1.0/CWL/descriptor"
    for path in ("tools/sub/step.cwl", "tools%2Fsub%2Fstep.cwl", "tools/sub%2Fstep.cwl"):
        assert (await _get_json(client, f"{version}/{path}"))["content"] == "s"
    await _get_json(client, f"{version}/tools/sub/missing.cwl", 404)


async def test_relative_imports_resolve_against_wrapper_urls(aiohttp_client: MakeClient) -> None:
    """The demo CWL's nested imports resolve, URL-relative, to files the server serves."""
    app = make_registry_app(load_catalogue("dockstore-demo"))
    client = await aiohttp_client(app)
    tool_id = quote("#workflow/github.com/demo-lab/bwa-mem-align", safe="")
    primary = await _get_json(client, f"{BASE}/tools/{tool_id}/versions/1.2.0/CWL/descriptor")
    assert "run: tools/bwa_mem.cwl" in primary["content"]
    step_url = urljoin(primary["url"], "tools/bwa_mem.cwl")
    step = await client.get(_rel(step_url))
    assert step.status == 200 and "$import: ../types/read_group.yml" in await step.text()
    record = await client.get(_rel(urljoin(step_url, "../types/read_group.yml")))
    assert record.status == 200 and "name: ReadGroup" in await record.text()


@pytest.mark.parametrize("type_", ["PLAIN_CWL", "plain-cwl", "Plain_Cwl"])
async def test_plain_types_answer_text_plain(aiohttp_client: MakeClient, type_: str) -> None:
    """PLAIN_ descriptor and tests variants return bare text/plain content."""
    client = await aiohttp_client(make_registry_app({"tools": [_tool("t")]}))
    resp = await client.get(f"{BASE}/tools/t/versions/1.0/{type_}/descriptor")
    assert resp.status == 200 and resp.content_type == "text/plain"
    assert await resp.text() == "# t\n"
    tests = await client.get(f"{BASE}/tools/t/versions/1.0/{type_}/tests")
    assert tests.content_type == "text/plain" and await tests.text() == '{"x": 1}'


async def test_checksums_are_sha256_of_served_content(aiohttp_client: MakeClient) -> None:
    """Every checksum in /files, descriptor and containerfile is sha-256 of the bytes served."""
    client = await aiohttp_client(make_registry_app({"tools": [_tool("t", containerfile=True)]}))
    version = f"{BASE}/tools/t/versions/1.0"
    listing = await _get_json(client, f"{version}/CWL/files")
    assert {f["file_type"] for f in listing} >= {"PRIMARY_DESCRIPTOR", "TEST_FILE", "CONTAINERFILE"}
    for entry in listing:
        assert entry["checksum"]["type"] == "sha-256"
        if entry["file_type"] == "CONTAINERFILE":
            [wrapper] = await _get_json(client, f"{version}/containerfile")
        else:
            wrapper = await _get_json(client, f"{version}/CWL/descriptor/{entry['path']}")
        digest = hashlib.sha256(wrapper["content"].encode()).hexdigest()
        assert entry["checksum"]["checksum"] == digest
        assert wrapper["checksum"] == [{"checksum": digest, "type": "sha-256"}]


async def test_files_zip_holds_every_listed_file(aiohttp_client: MakeClient) -> None:
    """?format=zip returns an application/zip with the same paths and contents as /files."""
    client = await aiohttp_client(make_registry_app({"tools": [_tool("t", containerfile=True)]}))
    listing = await _get_json(client, f"{BASE}/tools/t/versions/1.0/CWL/files")
    resp = await client.get(f"{BASE}/tools/t/versions/1.0/CWL/files?format=zip")
    assert resp.status == 200 and resp.content_type == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(await resp.read()))
    assert sorted(archive.namelist()) == sorted(f["path"] for f in listing)
    assert archive.read("Dockerfile") == b"FROM debian:12\n"


async def test_if_none_match_answers_304(aiohttp_client: MakeClient) -> None:
    """JSON responses carry a strong ETag; a matching If-None-Match gets an empty 304."""
    client = await aiohttp_client(make_registry_app(_catalogue()))
    for path in (f"{BASE}/tools", f"{BASE}/tools/tool-01", f"{BASE}/service-info"):
        first = await client.get(path)
        etag = first.headers["ETag"]
        assert etag.startswith('"') and not etag.startswith("W/")
        again = await client.get(path, headers={"If-None-Match": f'"other", W/{etag}'})
        assert again.status == 304 and await again.read() == b""
        changed = await client.get(path, headers={"If-None-Match": '"stale"'})
        assert changed.status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/tools/nope",
        "/tools/t/versions/9.9",
        "/tools/t/versions/1.0/FOO/descriptor",
        "/tools/t/versions/1.0/WDL/descriptor",
        "/tools/t/versions/1.0/CWL/descriptor/nope.cwl",
        "/tools/t/versions/1.0/containerfile",
        "/no/such/route",
    ],
)
async def test_unknown_resources_are_404_json(aiohttp_client: MakeClient, path: str) -> None:
    """Unknown tools, versions, types, files and routes answer 404 TRS Error JSON."""
    client = await aiohttp_client(make_registry_app({"tools": [_tool("t")]}))
    body = await _get_json(client, BASE + path, 404)
    assert set(body) == {"code", "message"} and body["code"] == 404


async def test_requests_are_recorded_with_final_status(aiohttp_client: MakeClient) -> None:
    """REQUESTS logs path_qs as received and the status produced by inner custom middlewares."""

    @web.middleware
    async def unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
        if "offset=4" in request.raw_path:
            raise web.HTTPServiceUnavailable
        return await handler(request)

    app = make_registry_app(_catalogue(), middlewares=[unavailable])
    client = await aiohttp_client(app)
    await client.get(f"{BASE}/tools?limit=2&offset=2")
    await client.get(f"{BASE}/tools/%23nope%2Fx")
    body = await _get_json(client, f"{BASE}/tools?limit=2&offset=4", 503)
    assert body["code"] == 503
    assert app[REQUESTS] == [
        f"GET {BASE}/tools?limit=2&offset=2 > 200",
        f"GET {BASE}/tools/%23nope%2Fx > 404",
        f"GET {BASE}/tools?limit=2&offset=4 > 503",
    ]


async def test_catalogue_can_be_swapped_while_running(aiohttp_client: MakeClient) -> None:
    """Assigning app[STATE].catalogue changes what the next request sees."""
    app = make_registry_app(_catalogue(2))
    client = await aiohttp_client(app)
    assert len(await _get_json(client, f"{BASE}/tools")) == 2
    app[STATE].catalogue = {"tools": [_tool("new")]}
    assert [t["id"] for t in await _get_json(client, f"{BASE}/tools")] == ["new"]


async def test_tool_json_shape(aiohttp_client: MakeClient) -> None:
    """Tools and versions get absolute urls; files are stripped and containerfile is a boolean."""
    app = make_registry_app({"tools": [_tool("a/b", containerfile=True)]}, base_path="/api/trs/")
    client = await aiohttp_client(app)
    tool = await _get_json(client, "/api/trs/tools/a%2Fb")
    assert tool["url"] == str(client.make_url("/api/trs/tools/a%2Fb"))
    [version] = tool["versions"]
    assert "files" not in version and version["containerfile"] is True
    assert version["url"] == tool["url"] + "/versions/1.0"
    assert await _get_json(client, "/api/trs/tools/a%2Fb/versions") == [version]
    assert (await _get_json(client, "/api/trs/service-info"))["type"]["artifact"] == "trs"
    assert (await _get_json(client, "/api/trs/toolClasses"))[0]["name"] == "Workflow"


@pytest.mark.parametrize("name", DEMO_REGISTRIES)
async def test_demo_catalogue_serves_descriptors(aiohttp_client: MakeClient, name: str) -> None:
    """Each bundled catalogue serves a primary descriptor for every version and type."""
    catalogue = load_catalogue(name)
    client = await aiohttp_client(make_registry_app(catalogue, offset_style="page"))
    assert len(await _get_json(client, f"{BASE}/tools")) == len(catalogue["tools"])
    for tool in catalogue["tools"]:
        for version in tool["versions"]:
            tool_id, version_id = quote(tool["id"], safe=""), quote(version["id"], safe="")
            vpath = f"{BASE}/tools/{tool_id}/versions/{version_id}"
            for dtype in version["files"]:
                assert (await client.get(f"{vpath}/PLAIN_{dtype}/descriptor")).status == 200


def test_demo_catalogues_cover_languages_and_file_kinds() -> None:
    """The demo set spans all five languages, test files, a containerfile and nested CWL imports."""
    dockstore = load_catalogue("dockstore-demo")
    assert len(dockstore["tools"]) >= 8
    assert {"0", "1"} <= {t["toolclass"]["id"] for t in dockstore["tools"]}
    tools = [t for name in DEMO_REGISTRIES for t in load_catalogue(name)["tools"]]
    versions = [v for t in tools for v in t["versions"]]
    assert {d for v in versions for d in v["files"]} == {"CWL", "WDL", "NFL", "GALAXY", "SMK"}
    assert any(v.get("containerfile") for v in versions)
    files = [f for v in versions for fs in v["files"].values() for f in fs]
    assert any(f["file_type"] == "TEST_FILE" for f in files)
    assert all(isinstance(f["content"], str) and f["content"] for f in files)
    bwa = next(t for t in dockstore["tools"] if t["id"].endswith("/bwa-mem-align"))
    paths = {f["path"] for f in bwa["versions"][0]["files"]["CWL"]}
    assert posixpath.normpath(posixpath.join("tools", "../types/read_group.yml")) in paths
    workflowhub = load_catalogue("workflowhub-demo")
    assert all(t["id"].isdigit() for t in workflowhub["tools"])
    assert ("1", "1.0") in {
        (v["id"], v["name"]) for t in workflowhub["tools"] for v in t["versions"]
    }


def test_demo_registries_overlap_on_shared_tools() -> None:
    """At least two WorkflowHub tools alias a Dockstore id and share primary descriptor bytes."""
    dockstore = {t["id"]: t for t in load_catalogue("dockstore-demo")["tools"]}

    def primaries(tool: dict[str, Any]) -> set[str]:
        return {
            f["content"]
            for v in tool["versions"]
            for fs in v["files"].values()
            for f in fs
            if f["file_type"] == "PRIMARY_DESCRIPTOR"
        }

    shared = [
        t["id"]
        for t in load_catalogue("workflowhub-demo")["tools"]
        for alias in t.get("aliases", ())
        if alias in dockstore and primaries(t) & primaries(dockstore[alias])
    ]
    assert len(shared) >= 2


def test_load_catalogue_returns_independent_copies() -> None:
    """Mutating a loaded catalogue does not leak into the next load; unknown names fail."""
    first = load_catalogue("dockstore-demo")
    first["tools"].clear()
    assert load_catalogue("dockstore-demo")["tools"]
    with pytest.raises(KeyError):
        load_catalogue("nope")
