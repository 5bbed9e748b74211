"""What real clients do, step by step: Toil's TRS resolver, Galaxy's import by URL, and our
own OpenAPI document describing what they read."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import zipfile
from urllib.parse import quote

import jsonschema

from tests.populated import BWA, NESTED, Api, enc


async def test_toil_resolves_a_workflow_by_version_name_and_verified_zip(trs: Api) -> None:
    """Under /api/ga4gh/trs/v2, versions found by name, a checksum on every ToolFile, and a zip
    (Accept: application/zip, identity) holding a primary file with the listed hash."""
    root = "/api/ga4gh/trs/v2"
    tool = await (await trs.get(f"{root}/tools/{quote(NESTED, safe='')}")).json()
    versions = {v["name"]: v for v in tool["versions"]}
    assert "CWL" in versions["v1"]["descriptor_type"]
    files_url = f"{root}/tools/{quote(NESTED, safe='')}/versions/{quote('v1', safe='')}/CWL/files"
    listing = await (await trs.get(files_url)).json()
    for f in listing:
        assert f["checksum"]["type"] == "sha-256" and len(f["checksum"]["checksum"]) == 64
    (primary,) = [f for f in listing if f["file_type"] == "PRIMARY_DESCRIPTOR"]
    r = await trs.get(
        files_url + "?format=zip",
        headers={"Accept-Encoding": "identity", "Accept": "application/zip"},
    )
    assert r.status == 200 and "Content-Encoding" not in r.headers
    archive = zipfile.ZipFile(io.BytesIO(await r.read()))
    candidates = [
        n
        for n in archive.namelist()
        if posixpath.basename(n) == posixpath.basename(primary["path"])
        and hashlib.sha256(archive.read(n)).hexdigest() == primary["checksum"]["checksum"]
    ]
    assert candidates == [primary["path"]]


async def test_galaxy_imports_a_version_by_its_trs_url(trs: Api) -> None:
    """GET …/ga4gh/trs/v2/tools/{id}/versions/{v} then its GALAXY descriptor: a .ga JSON."""
    galaxy = "#workflow/github.com/demo-lab/amplicon-qc-galaxy/amplicon-qc"
    version_url = str(trs.make_url(f"/ga4gh/trs/v2/tools/{enc(galaxy)}/versions/1.0.1"))
    version = await (await trs.get(version_url)).json()
    assert version["url"] == version_url and version["descriptor_type"] == ["GALAXY"]
    wrapper = await (await trs.get(version_url + "/GALAXY/descriptor")).json()
    workflow = json.loads(wrapper["content"])
    assert workflow.get("a_galaxy_workflow") == "true" or "steps" in workflow


async def test_our_openapi_document_describes_what_we_serve(trs: Api) -> None:
    """/aggregator/v1/openapi.json is TRS 2.0.1 plus our extensions, and a tool we serve
    validates against its Tool schema with unknown fields forbidden at the top level."""
    r = await trs.get("/aggregator/v1/openapi.json")
    assert r.status == 200 and r.headers["ETag"]
    doc = await r.json()
    assert doc["openapi"].startswith("3.0")
    assert "/tools/{id}/provenance" in doc["paths"] and "/tools" in doc["paths"]
    assert [s["url"] for s in doc["servers"]] == [
        "/ga4gh/trs/v2",
        "/api/ga4gh/trs/v2",
        "/api/ga4gh/v2",
    ]
    schemas = doc["components"]["schemas"]
    tool_schema = {
        **schemas["Tool"],
        "additionalProperties": False,
        "components": doc["components"],
    }
    tool_schema["properties"] = {**tool_schema["properties"]}
    tool = await (await trs.get(f"/ga4gh/trs/v2/tools/{enc(BWA)}")).json()
    jsonschema.Draft4Validator(tool_schema).validate(tool)
    assert "Link" in doc["paths"]["/tools"]["get"]["responses"]["200"]["headers"]
    filters = {p["name"]: p["description"] for p in doc["paths"]["/tools"]["get"]["parameters"]}
    assert "case-insensitive" in filters["organization"] and "keyset" in filters["offset"]


def _nullable(node: object) -> object:
    """OpenAPI 3.0 ``nullable`` as JSON Schema understands it."""
    if isinstance(node, dict):
        out = {k: _nullable(v) for k, v in node.items()}
        if out.pop("nullable", False) and "type" in out:
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


async def test_provenance_answers_as_our_openapi_document_says(trs: Api) -> None:
    """/aggregator/v1/tools/{id}/provenance validates against the Provenance schema we
    publish, and names both members of a merged tool with the evidence that joined them."""
    doc = await (await trs.get("/aggregator/v1/openapi.json")).json()
    schema = _nullable({"$ref": "#/components/schemas/Provenance", "components": doc["components"]})
    r = await trs.get(f"/aggregator/v1/tools/{enc(BWA)}/provenance")
    assert r.status == 200
    record = await r.json()
    jsonschema.Draft4Validator(schema).validate(record)
    assert {m["upstream"] for m in record["members"]} == {"dockstore", "workflowhub"}
    assert any(m["joined_by"] for m in record["members"])
