"""The official TRS schemas (tests/vendor) as JSON Schema validators, and a crawler that
fetches every document one base path serves, each with the schema it must satisfy."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.populated import Api, enc

VENDOR = Path(__file__).parent / "vendor"
TRS_201 = VENDOR / "trs-2.0.1.bundled.openapi.yaml"
TRS_200 = VENDOR / "trs-2.0.0.openapi.yaml"


@cache
def openapi(path: Path) -> dict[str, Any]:
    """The parsed OpenAPI document at *path*."""
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


def _closed(node: Any) -> Any:
    """*node* with ``additionalProperties: false`` on every object schema that lists
    properties: what a client whose models forbid unknown fields accepts."""
    if isinstance(node, dict):
        out = {k: _closed(v) for k, v in node.items()}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(node, list):
        return [_closed(v) for v in node]
    return node


def validator(
    path: Path, schema: Mapping[str, Any], *, closed: bool = False
) -> jsonschema.protocols.Validator:
    """A validator of *schema* (which may ``$ref`` the document's components)."""
    components = copy.deepcopy(openapi(path)["components"])
    root = {**schema, "components": _closed(components) if closed else components}
    return jsonschema.Draft4Validator(root)


def ref(name: str) -> dict[str, Any]:
    """A schema naming component *name*."""
    return {"$ref": f"#/components/schemas/{name}"}


def array(name: str) -> dict[str, Any]:
    """A schema of an array of component *name*."""
    return {"type": "array", "items": ref(name)}


async def crawl(
    api: Api, mount: str, *, types_from: str | None = None
) -> AsyncIterator[tuple[str, dict[str, Any], Any]]:
    """Every JSON document under *mount*: (path, expected schema, document).

    Descriptor types are taken from the versions served under *types_from* (default: *mount*),
    so a profile that hides some types is still asked for them.
    """

    async def get(path: str) -> Any:
        r = await api.get(path)
        assert r.status == 200, (path, r.status, await r.text())
        assert r.content_type == "application/json", path
        return await r.json()

    yield f"{mount}/toolClasses", array("ToolClass"), await get(f"{mount}/toolClasses")
    tools = await get(f"{mount}/tools")
    yield f"{mount}/tools", array("Tool"), tools
    for tool in tools:
        t = f"{mount}/tools/{enc(tool['id'])}"
        yield t, ref("Tool"), await get(t)
        yield t + "/versions", array("ToolVersion"), await get(t + "/versions")
        for version in tool["versions"]:
            v = f"{t}/versions/{enc(version['id'])}"
            yield v, ref("ToolVersion"), await get(v)
            source = (await get(v.replace(mount, types_from, 1))) if types_from else version
            if version.get("containerfile"):
                yield v + "/containerfile", array("FileWrapper"), await get(v + "/containerfile")
            for kind in source.get("descriptor_type") or ():
                yield (
                    f"{v}/{kind}/descriptor",
                    ref("FileWrapper"),
                    await get(f"{v}/{kind}/descriptor"),
                )
                listing = await get(f"{v}/{kind}/files")
                yield f"{v}/{kind}/files", array("ToolFile"), listing
                yield f"{v}/{kind}/tests", array("FileWrapper"), await get(f"{v}/{kind}/tests")
                for f in listing:
                    if f["file_type"] != "CONTAINERFILE":
                        path = f"{v}/{kind}/descriptor/{enc(f['path'])}"
                        yield path, ref("FileWrapper"), await get(path)
