"""trs-cli (elixir-cloud-aai), whose pydantic models forbid unknown fields, against the strict
profile: every read call it has validates."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import trs_cli

from tests.populated import NESTED


async def test_trs_cli_passes_every_read_call_on_the_strict_profile(
    live_origin: str, tmp_path: Path
) -> None:
    """service-info, toolClasses, tools, one tool, its versions, one version, descriptors (JSON,
    plain, by path), files (JSON and zip), tests, containerfiles and retrieve_files: each answer
    is one of trs-cli's models (never its Error model), with the bytes we serve."""
    from trs_cli.models import (
        FileWrapper,
        Service,
        Tool,
        ToolClass,
        ToolFile,
        ToolVersion,
    )

    origin = urlsplit(live_origin)
    client = trs_cli.TRSClient(
        uri=f"http://{origin.hostname}",
        port=origin.port,
        base_path="strict-2.0.0/ga4gh/trs/v2",
        use_http=True,
    )

    # trs-cli takes ids as they go into the URL: percent-encoded into one segment.
    tool_id = quote(NESTED, safe="")

    def calls() -> dict[str, Any]:
        version = "v1"
        out: dict[str, Any] = {
            "service_info": client.get_service_info(),
            "tool_classes": client.get_tool_classes(),
            "tools": client.get_tools(limit=5),
            "tool": client.get_tool(id=tool_id),
            "versions": client.get_versions(id=tool_id),
            "version": client.get_version(id=tool_id, version_id=version),
            "descriptor": client.get_descriptor(type="CWL", id=tool_id, version_id=version),
            "plain": client.get_descriptor(type="PLAIN_CWL", id=tool_id, version_id=version),
            "by_path": client.get_descriptor_by_path(
                type="CWL",
                path="tools/say.cwl",
                id=tool_id,
                version_id=version,
                encode_path=True,
            ),
            "files": client.get_files(type="CWL", id=tool_id, version_id=version),
            "zip": client.get_files(
                type="CWL",
                id=tool_id,
                version_id=version,
                format="zip",
                outfile=tmp_path / "files.zip",
            ),
            "tests": client.get_tests(type="CWL", id=tool_id, version_id=version),
            "containerfiles": client.get_containerfiles(id=tool_id, version_id=version),
        }
        # retrieve_files (deprecated in trs-cli) writes each path without creating its
        # directories: make them from the listing, as its users must.
        for f in out["files"] if isinstance(out["files"], list) else ():
            (tmp_path / "out" / f.path).parent.mkdir(parents=True, exist_ok=True)
        out["retrieved"] = client.retrieve_files(
            out_dir=tmp_path / "out", type="CWL", id=tool_id, version_id=version
        )
        return out

    got = await asyncio.to_thread(calls)
    assert isinstance(got["service_info"], Service)
    assert got["service_info"].type.artifact == "trs"
    assert all(isinstance(c, ToolClass) for c in got["tool_classes"])
    assert got["tools"] and all(isinstance(t, Tool) for t in got["tools"])
    assert isinstance(got["tool"], Tool) and got["tool"].id == NESTED
    assert all(isinstance(v, ToolVersion) for v in got["versions"])
    assert isinstance(got["version"], ToolVersion)
    assert isinstance(got["descriptor"], FileWrapper) and "class: Workflow" in (
        got["descriptor"].content or ""
    )
    # For PLAIN types trs-cli hands back the HTTP response itself.
    plain = got["plain"] if isinstance(got["plain"], str) else got["plain"].text
    assert "class: Workflow" in plain
    assert isinstance(got["by_path"], FileWrapper)
    assert "CommandLineTool" in (got["by_path"].content or "")
    files = got["files"]
    assert files and all(isinstance(f, ToolFile) for f in files)
    assert sorted(f.path for f in files) == [
        "Dockerfile",
        "tests/job.json",
        "tools/say.cwl",
        "types/greeting.yml",
        "workflows/main.cwl",
    ]
    assert (tmp_path / "files.zip").stat().st_size > 0
    assert got["tests"] and all(isinstance(t, FileWrapper) for t in got["tests"])
    assert got["containerfiles"] and all(isinstance(c, FileWrapper) for c in got["containerfiles"])
    out = tmp_path / "out"
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written, got["retrieved"]
    for path in written:
        assert not path.startswith("..")
    main = next(p for p in out.rglob("main.cwl"))
    assert (
        hashlib.sha256(main.read_bytes()).hexdigest() == hashlib.sha256(plain.encode()).hexdigest()
    )
