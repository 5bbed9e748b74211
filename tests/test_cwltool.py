"""cwltool, unmodified, resolves and validates harvested CWL workflows through the API."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from tests.populated import BWA, NESTED


async def cwltool_validate(origin: str, reference: str) -> tuple[int, str]:
    """Run ``cwltool --validate --add-ga4gh-tool-registry ORIGIN REFERENCE``."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cwltool",
        "--validate",
        "--add-ga4gh-tool-registry",
        origin,
        reference,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.parametrize("reference", [f"{BWA}:1.2.0", f"{NESTED}:v1"])
async def test_cwltool_validates_a_workflow_with_nested_relative_imports(
    live_origin: str, reference: str
) -> None:
    """cwltool finds the primary descriptor at /api/ga4gh/v2 and fetches every relative import
    (tools/, types/, ../ from a primary in a subdirectory) from us."""
    code, output = await cwltool_validate(live_origin, reference)
    assert code == 0, output
    assert f"{reference} is valid CWL" in output
    assert f"Resolved '{reference}' to '{live_origin}/api/ga4gh/v2/tools/" in output


async def test_cwltool_reports_an_unknown_tool(live_origin: str) -> None:
    """A reference we do not have fails to resolve (and cwltool says so) rather than validating."""
    code, output = await cwltool_validate(live_origin, "#workflow/github.com/no/such:1.0")
    assert code != 0
    assert "is valid CWL" not in output
