"""A registry answering with Dockstore's own integration-test fixtures (tests/data/dockstore).

The fixtures give the listing, one tool, the tool classes, both files listings and a descriptor
with Dockstore's extension fields; what they lack (the version of ``quay.io/test_org/test6``
they all name, ``fakeName``, and the contents of the files they list) is made up here, plainly:
each file's content is ``<path> content`` with its sha-256 declared, as Dockstore declares it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web

FIXTURES: Final = Path(__file__).parent / "data" / "dockstore"
BASE: Final = "/api/ga4gh/trs/v2"
TEST6: Final = "quay.io/test_org/test6"
VERSION: Final = "fakeName"
WDL_PRIMARY: Final = b"version 1.0\nworkflow test6 {}\n"


def fixture(name: str) -> Any:
    """A fixture file, parsed."""
    return orjson.loads((FIXTURES / name).read_bytes())


def made_up(path: str) -> bytes:
    """The content this registry serves for a listed file the fixtures give no content for."""
    return WDL_PRIMARY if path.lstrip("/") == "Dockstore.wdl" else f"{path} content\n".encode()


def _wrapper(request: web.Request, path: str, content: bytes) -> dict[str, Any]:
    return {
        "checksum": [{"checksum": hashlib.sha256(content).hexdigest(), "type": "sha-256"}],
        "content": content.decode(),
        "dockstore_absolute_path": "/" + path.lstrip("/"),
        "dockstore_self_url": str(request.url),
        "url": f"https://raw.githubusercontent.com/test/test6/fakeReference/{path.lstrip('/')}",
    }


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def make_dockstore_app() -> web.Application:
    """Serve the fixtures under ``/api/ga4gh/trs/v2`` as Dockstore would."""
    version_url = f"{BASE}/tools/{{id}}/versions/{{version}}"

    async def tools(request: web.Request) -> web.Response:
        return _json(fixture("v2/tools.json"))

    async def tool(request: web.Request) -> web.Response:
        if request.match_info["id"] != TEST6:
            raise web.HTTPNotFound
        return _json(fixture("v2/toolsId.json"))

    async def versions(request: web.Request) -> web.Response:
        if request.match_info["id"] != TEST6:
            return _json([])
        origin = f"{request.scheme}://{request.host}"
        return _json(
            [
                {
                    "id": f"{TEST6}:{VERSION}",
                    "name": VERSION,
                    "url": f"{origin}{BASE}/tools/quay.io%2Ftest_org%2Ftest6/versions/{VERSION}",
                    "descriptor_type": ["CWL", "WDL"],
                    "meta_version": "2020-01-01 00:00:00.0",
                    "verified": False,
                }
            ]
        )

    def check(request: web.Request) -> str:
        if request.match_info["id"] != TEST6 or request.match_info["version"] != VERSION:
            raise web.HTTPNotFound
        kind = request.match_info.get("type", "").upper()
        if kind not in ("", "CWL", "WDL"):
            raise web.HTTPNotFound
        return kind

    async def files(request: web.Request) -> web.Response:
        return _json(fixture("cwlFiles.json" if check(request) == "CWL" else "wdlFiles.json"))

    async def descriptor(request: web.Request) -> web.Response:
        kind = check(request)
        path = request.match_info.get("path")
        if kind == "CWL" and (path is None or path.lstrip("/") == "Dockstore.cwl"):
            return _json(fixture("descriptorJsonWithSelfUrl.json"))
        return _json(_wrapper(request, path or "/Dockstore.wdl", made_up(path or "Dockstore.wdl")))

    async def tests(request: web.Request) -> web.Response:
        check(request)
        return _json([])

    async def containerfile(request: web.Request) -> web.Response:
        check(request)
        return _json([_wrapper(request, "/Dockerfile", made_up("Dockerfile"))])

    async def not_found(request: web.Request) -> web.Response:
        return _json({"code": 404, "message": "not found"}, status=404)

    async def tool_classes(request: web.Request) -> web.Response:
        return _json(fixture("toolClasses.json"))

    app = web.Application()
    app.router.add_get(f"{BASE}/toolClasses", tool_classes)
    app.router.add_get(f"{BASE}/service-info", not_found)
    app.router.add_get(f"{BASE}/tools", tools)
    app.router.add_get(f"{BASE}/tools/{{id}}", tool)
    app.router.add_get(f"{BASE}/tools/{{id}}/versions", versions)
    app.router.add_get(f"{version_url}/containerfile", containerfile)
    app.router.add_get(f"{version_url}/{{type}}/files", files)
    app.router.add_get(f"{version_url}/{{type}}/tests", tests)
    app.router.add_get(f"{version_url}/{{type}}/descriptor", descriptor)
    app.router.add_get(f"{version_url}/{{type}}/descriptor/{{path:.+}}", descriptor)
    return app
