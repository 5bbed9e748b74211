"""The TRS API over a populated catalogue: endpoints, filters, paging, files, HTTP semantics."""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
from typing import Any

import pytest

from tests.populated import BWA, CHECKED, CHECKER, NESTED, TRS, Api, enc

Client = Api
BWA_V = f"{TRS}/tools/{enc(BWA)}/versions/1.2.0"
NESTED_V = f"{TRS}/tools/{enc(NESTED)}/versions/v1"
MOUNTS = ("/ga4gh/trs/v2", "/api/ga4gh/trs/v2", "/api/ga4gh/v2")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def ids(client: Client, **params: str) -> list[str]:
    r = await client.get(f"{TRS}/tools", params=params)
    assert r.status == 200, await r.text()
    return [t["id"] for t in await r.json()]


@pytest.mark.parametrize("mount", MOUNTS)
async def test_every_endpoint_answers_at_every_default_mount(trs: Client, mount: str) -> None:
    """Each TRS endpoint answers 200 under /ga4gh/trs/v2, /api/ga4gh/trs/v2 and /api/ga4gh/v2."""
    v = f"{mount}/tools/{enc(BWA)}/versions/1.2.0"
    for path in (
        "/service-info",
        "/toolClasses",
        "/tools",
        f"/tools/{enc(BWA)}",
        f"/tools/{enc(BWA)}/versions",
    ):
        assert (await trs.get(mount + path)).status == 200, path
    for path in (
        "",
        "/CWL/descriptor",
        "/CWL/descriptor/tools%2Fbwa_mem.cwl",
        "/CWL/files",
        "/CWL/files?format=zip",
        "/CWL/tests",
        "/PLAIN_CWL/tests",
    ):
        assert (await trs.get(v + path)).status == 200, path
    tool = await (await trs.get(f"{mount}/tools/{enc(BWA)}")).json()
    assert tool["url"] == str(trs.make_url(f"{mount}/tools/{enc(BWA)}"))
    fastqc = f"{mount}/tools/{enc('quay.io/demo-lab/fastqc')}/versions/0.12.1"
    assert (await trs.get(fastqc + "/containerfile")).status == 200
    wdl = f"{mount}/tools/{enc('#workflow/github.com/demo-lab/wgs-qc-wdl')}/versions/1.0.0"
    for path in ("/WDL/descriptor", "/PLAIN_WDL/descriptor", "/WDL/files"):
        assert (await trs.get(wdl + path)).status == 200, path
    assert (await trs.get(wdl + "/containerfile")).status == 404


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"id": BWA}, [BWA]),
        ({"id": f"#upstream/dockstore/{BWA}"}, [BWA]),
        ({"alias": "10.5281-ZENODO.8004312"}, [BWA]),
        (
            {"toolClass": "commandlinetool"},
            ["quay.io/demo-lab/fastqc", "quay.io/demo-lab/samtools-sort"],
        ),
        (
            {"descriptorType": "GALAXY"},
            ["#workflow/github.com/demo-lab/amplicon-qc-galaxy/amplicon-qc"],
        ),
        ({"registry": "docker.io"}, [NESTED]),
        ({"organization": "QUIRKY"}, [CHECKED, CHECKER, NESTED]),
        ({"name": "alpine"}, [NESTED]),
        ({"name": "checker"}, [CHECKER]),
        ({"toolname": "Nested"}, [NESTED]),
        ({"description": "CHECKS THE CHECKED"}, [CHECKER]),
        ({"author": "solo"}, [NESTED]),
        ({"checker": "true"}, [CHECKER]),
        ({"organization": "quirky", "checker": "false"}, [CHECKED, NESTED]),
        ({"organization": "quirky", "toolname": "nested"}, [NESTED]),
        ({"toolClass": "no such class"}, []),
    ],
)
async def test_filters_match_any_member_or_version(
    trs: Client, params: dict[str, str], expected: list[str]
) -> None:
    """Each /tools filter selects the tools described in the OpenAPI document, in id order."""
    got = await ids(trs, **params)
    if params.get("descriptorType") == "GALAXY":
        assert expected[0] in got and all("galaxy" in i or i.isdigit() for i in got)
        return
    assert got == sorted(expected)


async def test_filters_see_merged_members(trs: Client) -> None:
    """A tool merged from two upstreams matches the filters of either member."""
    by_alias = await ids(trs, alias=BWA)
    assert by_alias == [BWA]
    merged = await (await trs.get(f"{TRS}/tools/{enc(BWA)}")).json()
    assert {s["upstream"] for s in merged["sources"]} == {"dockstore", "workflowhub"}
    assert BWA in await ids(trs, organization=merged["organization"])


async def test_paging_walks_every_filtered_page_with_consistent_headers(trs: Client) -> None:
    """next_page/last_page/self_link/current_* and Link keep the filters; no next on the last."""
    everything = await ids(trs, toolClass="Workflow")
    assert len(everything) > 5
    seen: list[str] = []
    url: str | None = str(trs.make_url(f"{TRS}/tools?toolClass=Workflow&limit=2"))
    pages = 0
    while url is not None:
        r = await trs.session.get(url)
        assert r.status == 200
        page = [t["id"] for t in await r.json()]
        h = r.headers
        assert h["current_limit"] == "2" and h["current_offset"] == str(len(seen))
        assert "toolClass=Workflow" in h["self_link"] and "toolClass=Workflow" in h["last_page"]
        assert f'<{h["self_link"]}>; rel="self"' in h["Link"]
        assert f'<{h["last_page"]}>; rel="last"' in h["Link"]
        seen += page
        pages += 1
        url = h.get("next_page")
        if url is not None:
            assert "toolClass=Workflow" in url and f'<{url}>; rel="next"' in h["Link"]
        else:
            assert h["self_link"] == h["last_page"] and 'rel="next"' not in h["Link"]
    assert seen == everything and pages == (len(everything) + 1) // 2


async def test_numeric_offsets_give_the_same_rows_as_walking(trs: Client) -> None:
    """Any numeric offset, deep or past the end, answers the rows a walk would reach there."""
    everything = await ids(trs)
    for offset in range(len(everything) + 2):
        got = await ids(trs, offset=str(offset), limit="3")
        assert got == everything[offset : offset + 3], offset
    r = await trs.get(f"{TRS}/tools", params={"offset": "100000"})
    assert await r.json() == [] and "next_page" not in r.headers
    r = await trs.get(f"{TRS}/tools", params={"limit": "5000"})
    assert r.headers["current_limit"] == "1000"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"{TRS}/tools?limit=0", 400),
        (f"{TRS}/tools?limit=abc", 400),
        (f"{TRS}/tools?offset=-1", 400),
        (f"{TRS}/tools?offset=next", 400),
        (f"{TRS}/tools?checker=maybe", 400),
        (f"{TRS}/tools?descriptorType=COBOL", 400),
        (f"{TRS}/tools/nope", 404),
        (f"{TRS}/tools/nope/versions", 404),
        (f"{BWA_V[:-5]}9.9", 404),
        (f"{BWA_V}/COBOL/files", 404),
        (f"{BWA_V}/COBOL/descriptor", 404),
        (f"{BWA_V}/CWL/descriptor/nope.cwl", 404),
        (f"{BWA_V}/WDL/descriptor", 404),
        (f"{BWA_V}/CWL/descriptor/..%2F..%2Fetc%2Fpasswd", 400),
        (f"{BWA_V}/CWL/descriptor/tools/..%2F..%2F..%2Fmain.cwl", 400),
        (f"{BWA_V}/CWL/files?format=tar", 400),
        ("/elsewhere", 404),
        (f"{TRS}/", 404),
        ("/strict-2.0.0/ga4gh/trs/v2/nothing", 404),
    ],
)
async def test_every_error_is_trs_error_json(trs: Client, path: str, status: int) -> None:
    """Bad parameters, unknown ids, types, paths and routes answer {"code", "message"} JSON."""
    r = await trs.get(path)
    assert r.status == status, path
    assert r.content_type == "application/json", path
    body = await r.json()
    assert body["code"] == status and body["message"], path
    assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_wrong_method_is_405_json_with_allow(trs: Client) -> None:
    """POST, PUT and DELETE on a GET route answer 405 Error JSON naming the allowed methods."""
    for method in ("POST", "PUT", "DELETE"):
        r = await trs.request(method, f"{TRS}/tools")
        assert r.status == 405 and (await r.json())["code"] == 405
        assert set(r.headers["Allow"].split(", ")) == {"GET", "HEAD"}


@pytest.mark.parametrize(
    "spelling", ["PLAIN_CWL", "PLAIN-CWL", "plain-CWL", "plain_cwl", "Plain-Cwl"]
)
async def test_plain_types_in_every_spelling_answer_bare_text(trs: Client, spelling: str) -> None:
    """Every spelling of PLAIN_<type> answers text/plain with the descriptor's exact bytes."""
    wrapped = await (await trs.get(f"{BWA_V}/CWL/descriptor")).json()
    r = await trs.get(f"{BWA_V}/{spelling}/descriptor")
    assert r.status == 200 and r.content_type == "text/plain"
    body = await r.read()
    assert body.decode() == wrapped["content"]
    assert sha(body) == wrapped["checksum"][0]["checksum"]


@pytest.mark.parametrize("spelling", ["cwl", "Cwl", "CWL"])
async def test_types_are_read_in_any_case(trs: Client, spelling: str) -> None:
    """CWL, cwl and Cwl name the same descriptor type and answer the same FileWrapper: the
    primary descriptor's content, with the checksum of those bytes."""
    r = await trs.get(f"{BWA_V}/{spelling}/descriptor")
    assert r.status == 200 and r.content_type == "application/json"
    wrapper = await r.json()
    plain = await (await trs.get(f"{BWA_V}/PLAIN_CWL/descriptor")).read()
    assert wrapper["content"].encode() == plain and "cwlVersion" in wrapper["content"]
    assert wrapper["checksum"][0] == {"type": "sha-256", "checksum": sha(plain)}


@pytest.mark.parametrize(
    "form",
    [
        "tools/bwa_mem.cwl",
        "tools%2Fbwa_mem.cwl",
        "%2Ftools%2Fbwa_mem.cwl",
        "/tools/bwa_mem.cwl",
        "./tools/bwa_mem.cwl",
        "tools/../tools/bwa_mem.cwl",
    ],
)
async def test_relative_paths_in_every_form(trs: Client, form: str) -> None:
    """descriptor/{relative_path} finds a file however clients spell its path."""
    r = await trs.get(f"{BWA_V}/PLAIN_CWL/descriptor/{form}")
    assert r.status == 200, form
    assert (await r.text()).startswith("#!/usr/bin/env cwl-runner") or "cwlVersion" in (
        await r.text()
    )
    listing = await (await trs.get(f"{BWA_V}/CWL/files")).json()
    (entry,) = [f for f in listing if f["path"] == "tools/bwa_mem.cwl"]
    assert sha(await r.read()) == entry["checksum"]["checksum"]


async def test_imports_of_a_nested_primary_resolve_like_cwltool_asks(trs: Client) -> None:
    """A primary in workflows/: its sibling and ../ imports resolve from the encoded-path URL."""
    sibling = await trs.get(f"{NESTED_V}/PLAIN_CWL/descriptor/main.cwl")
    assert sibling.status == 200 and "class: Workflow" in await sibling.text()
    parent = await trs.get(f"{NESTED_V}/plain-CWL/types/greeting.yml")
    assert parent.status == 200 and "Greeting" in await parent.text()


@pytest.mark.parametrize("how", ["query", "accept"])
async def test_zip_holds_exactly_the_listed_bytes(trs: Client, how: str) -> None:
    """files?format=zip and Accept: application/zip give a zip whose entries match the listing's
    sha-256 checksums, primary descriptor included (what Toil checks)."""
    listing = await (await trs.get(f"{BWA_V}/CWL/files")).json()
    assert listing and all(f["checksum"]["type"] == "sha-256" for f in listing)
    if how == "query":
        r = await trs.get(f"{BWA_V}/CWL/files", params={"format": "zip"})
    else:
        r = await trs.get(f"{BWA_V}/CWL/files", headers={"Accept": "application/zip"})
    assert r.status == 200 and r.content_type == "application/zip"
    assert "attachment" in r.headers["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(await r.read()))
    assert {n: sha(archive.read(n)) for n in archive.namelist()} == {
        f["path"]: f["checksum"]["checksum"] for f in listing
    }
    (primary,) = [f for f in listing if f["file_type"] == "PRIMARY_DESCRIPTOR"]
    plain = await (await trs.get(f"{BWA_V}/PLAIN_CWL/descriptor")).read()
    assert archive.read(primary["path"]) == plain


async def test_checksums_are_sha256_of_the_bytes_served(trs: Client) -> None:
    """Every FileWrapper checksum is the lowercase hex sha-256 of its content's UTF-8 bytes."""
    wrappers = [
        await (await trs.get(f"{BWA_V}/CWL/descriptor")).json(),
        *await (await trs.get(f"{BWA_V}/CWL/tests")).json(),
        *await (await trs.get(f"{NESTED_V}/containerfile")).json(),
    ]
    for w in wrappers:
        (c,) = w["checksum"]
        assert c == {"checksum": sha(w["content"].encode()), "type": "sha-256"}
        assert c["checksum"] == c["checksum"].lower()


async def test_file_wrapper_url_points_at_the_upstream_original(trs: Client) -> None:
    """A FileWrapper's url is the upstream's, while its content is ours."""
    info = await (await trs.get(f"{TRS}/service-info")).json()
    dockstore = next(u["url"] for u in info["upstreams"] if u["name"] == "dockstore")
    wrapper = await (await trs.get(f"{BWA_V}/CWL/descriptor")).json()
    assert wrapper["url"].startswith(dockstore + "/tools/")
    assert wrapper["image_type"] == "CWL"


async def test_tests_endpoint_json_and_plain(trs: Client) -> None:
    """/tests lists test files as FileWrappers; PLAIN_ joins their contents with newlines."""
    wrappers = await (await trs.get(f"{BWA_V}/CWL/tests")).json()
    assert len(wrappers) == 1
    plain = await trs.get(f"{BWA_V}/PLAIN_CWL/tests")
    assert plain.content_type == "text/plain"
    assert await plain.text() == wrappers[0]["content"]


async def test_head_answers_wherever_get_does(trs: Client) -> None:
    """HEAD gives GET's status and headers without a body."""
    for path in (
        f"{TRS}/tools",
        f"{TRS}/tools/{enc(BWA)}",
        f"{BWA_V}/PLAIN_CWL/descriptor",
        f"{BWA_V}/CWL/files?format=zip",
        f"{TRS}/service-info",
        "/aggregator/v1/openapi.json",
        f"{TRS}/tools/nope",
    ):
        get = await trs.get(path, headers={"Accept-Encoding": "identity"})
        head = await trs.head(path, headers={"Accept-Encoding": "identity"})
        assert head.status == get.status, path
        assert head.headers["Content-Length"] == get.headers["Content-Length"], path
        assert head.headers.get("ETag") == get.headers.get("ETag"), path
        assert await head.read() == b""


async def test_etag_and_if_none_match_give_304(trs: Client) -> None:
    """A GET carries an ETag; sending it back answers 304 with no body; another tag answers 200."""
    r = await trs.get(f"{TRS}/tools/{enc(BWA)}")
    etag = r.headers["ETag"]
    again = await trs.get(f"{TRS}/tools/{enc(BWA)}", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["ETag"] == etag
    other = await trs.get(f"{TRS}/tools/{enc(BWA)}", headers={"If-None-Match": '"1-abc"'})
    assert other.status == 200
    listing = await trs.get(f"{TRS}/tools", headers={"If-None-Match": f'W/"x", {etag}'})
    assert listing.status == 200


async def test_cors_exposes_the_paging_headers(trs: Client) -> None:
    """GET answers allow any origin and expose the paging headers; preflights are answered."""
    r = await trs.get(f"{TRS}/tools", headers={"Origin": "https://example.org"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    exposed = {h.strip() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {
        "next_page",
        "last_page",
        "self_link",
        "current_offset",
        "current_limit",
        "Link",
        "ETag",
    } <= exposed
    pre = await trs.options(
        f"{TRS}/tools",
        headers={
            "Origin": "https://example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, if-none-match",
        },
    )
    assert pre.status == 204
    assert "GET" in pre.headers["Access-Control-Allow-Methods"]
    assert pre.headers["Access-Control-Allow-Headers"] == "authorization, if-none-match"


async def test_large_bodies_are_gzipped_when_accepted(trs: Client) -> None:
    """A large body is gzipped for clients that accept it and identical once decompressed;
    small bodies and clients without gzip get it plain."""
    plain = await trs.get(f"{TRS}/tools", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    body = await plain.read()
    zipped = await trs.get(
        f"{TRS}/tools", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["Vary"]
    assert gzip.decompress(await zipped.read()) == body
    assert zipped.headers["ETag"] != plain.headers["ETag"]
    small = await trs.get(f"{TRS}/toolClasses", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers


async def test_service_info_is_ga4gh_service_info_summarising_upstreams(trs: Client) -> None:
    """/service-info is type org.ga4gh/trs/2.0.1 and lists every upstream with its tool count."""
    info = await (await trs.get(f"{TRS}/service-info")).json()
    assert info["type"] == {"group": "org.ga4gh", "artifact": "trs", "version": "2.0.1"}
    assert {"id", "name", "organization", "version"} <= info.keys()
    counts = {u["name"]: u["tools"] for u in info["upstreams"]}
    assert counts == {"dockstore": 8, "workflowhub": 5, "quirky": 3}
    assert "3 upstream registries" in info["description"]


async def test_tool_classes_are_the_union_of_the_upstreams(trs: Client) -> None:
    """/toolClasses holds every class any upstream declares or uses, once each."""
    names = [c["name"] for c in await (await trs.get(f"{TRS}/toolClasses")).json()]
    assert names == ["CommandLineTool", "Notebook", "Service", "Workflow"]


async def test_every_tool_and_version_names_its_sources(trs: Client) -> None:
    """Tools and versions carry upstream, upstream id and url, first seen, last confirmed, stale."""
    for tool in await (await trs.get(f"{TRS}/tools")).json():
        assert tool["sources"], tool["id"]
        for s in tool["sources"]:
            assert {
                "upstream",
                "upstream_id",
                "upstream_url",
                "first_seen",
                "last_confirmed",
                "stale",
            } <= s.keys()
            assert s["stale"] is False
        for v in tool["versions"]:
            assert v["sources"] and all(
                s["upstream_url"].startswith("http") for s in v["sources"]
            ), (tool["id"], v["id"])


async def test_unknown_ids_resolve_qualified_and_version_ids_upstream(trs: Client) -> None:
    """A qualified id and an upstream version id (Dockstore's tool:name) reach the tool."""
    qualified = "#upstream/workflowhub/101"
    r = await trs.get(f"{TRS}/tools/{enc(qualified)}")
    assert r.status == 200 and (await r.json())["id"] == BWA
    r = await trs.get(f"{TRS}/tools/{enc(BWA)}/versions/{enc('1.2.0'.upper())}")
    assert r.status == 200


async def test_index_mode_file_endpoints_redirect_to_the_upstream(
    pool: Any, db_dsn: str, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """For an upstream harvested in index mode, file endpoints answer 307 to its own URLs."""
    from aggregator.app import create_app
    from aggregator.demo.registry import make_registry_app
    from tests.support import catalogue, config_for, cwl_tool, harvest

    upstream = await aiohttp_server(make_registry_app(catalogue([cwl_tool("t")])))
    config = config_for(db_dsn, {"up": upstream}, mode="index")
    assert (await harvest(pool, config))["up"].status == "succeeded"
    client = await aiohttp_client(create_app(config))
    base = str(upstream.make_url(f"{TRS}/tools/t/versions/1.0"))
    for tail in (
        "CWL/descriptor",
        "PLAIN_CWL/descriptor/tools%2Fstep.cwl",
        "CWL/files",
        "CWL/tests",
        "containerfile",
    ):
        r = await client.get(f"{TRS}/tools/t/versions/1.0/{tail}", allow_redirects=False)
        assert r.status == 307, tail
        assert r.headers["Location"].startswith(base + "/"), (tail, r.headers["Location"])
    followed = await client.get(f"{TRS}/tools/t/versions/1.0/PLAIN_CWL/descriptor")
    assert followed.status == 200 and "cwlVersion" in await followed.text()
