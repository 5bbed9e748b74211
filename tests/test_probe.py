"""``trs-aggregator probe``: a conformant and a sloppy registry, scored differently."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from aiohttp import web

from aggregator.config import upstream_from_table
from aggregator.demo.registry import REQUESTS, make_registry_app
from aggregator.ops.probe import probe
from tests.support import catalogue, cwl_tool
from tests.test_cli import run_cli

TRS = "/ga4gh/trs/v2"


def sloppy_registry() -> web.Application:
    """A registry that gets much wrong: no service-info or toolClasses, pre-release field names,
    no paging headers, limit ignored, ids not found when encoded, a wrong checksum."""
    tools = [
        {
            "id": f"#workflow/github.com/lab/wf{i}" + ("\x1b[2J" if i == 0 else ""),
            "toolname": f"wf{i}",
            "author": "Someone",
            "url": f"http://x/{i}",
            "versions": [{"name": "v1", "descriptor_type": ["CWL"], "url": "http://x"}],
        }
        for i in range(5)
    ]

    async def list_tools(request: web.Request) -> web.Response:
        return web.json_response(tools)

    async def descriptor(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "content": "cwlVersion: v1.0\n",
                "checksum": [{"type": "sha256", "checksum": "0" * 64}],
            }
        )

    app = web.Application()
    app.router.add_get(f"{TRS}/tools", list_tools)
    app.router.add_get(TRS + "/tools/{id}/versions/{v}/{t}/descriptor", descriptor)
    return app


async def test_probe_scores_a_conformant_and_a_sloppy_upstream_differently(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """The demo registry scores high with a mirror/auto suggestion; the sloppy one loses
    points for each fault, named in the report; both suggestions are valid config; the probe
    keeps within its request budget and stores nothing."""
    good = await aiohttp_server(
        make_registry_app(
            catalogue([cwl_tool(f"t{i}", versions=("1.0", "2.0")) for i in range(7)]), page_size=3
        )
    )
    bad = await aiohttp_server(sloppy_registry())
    cfg = tmp_path / "empty.toml"
    cfg.write_text("")

    r = await run_cli(tmp_path, "probe", str(good.make_url(TRS)), "--json", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["score"] >= 90, report["deductions"]
    assert report["schema_violations"] == {}
    findings = report["findings"]
    assert findings["service_info"]["trs_version"] == "2.0.1"
    assert findings["paging"]["next_page_advances"] is True
    assert findings["paging"]["numeric_offsets_honoured"] is True
    assert findings["conditional_requests"] == {
        "etag": True,
        "last_modified": False,
        "answers_304": True,
    }
    assert findings["checksums"]["correct"] >= 1 and findings["checksums"]["mismatch"] == 0
    assert findings["estimated_tools"] == 7
    block = report["upstream"]
    assert block["kind"] == "trs" and block["mode"] == "mirror"
    assert block["page_size"] == 3  # the server caps pages at 3
    assert report["requests"] <= 60
    upstream_from_table(block)  # a valid [[upstreams]] table
    served = len(good.app[REQUESTS])
    assert served == report["requests"]

    r = await run_cli(
        tmp_path, "probe", str(bad.make_url(TRS)), "--max-requests", "20", "--config", str(cfg)
    )
    assert r.returncode == 0, r.stderr
    text = r.stdout
    score = int(text.split("Score: ", 1)[1].split("/", 1)[0])
    assert score <= 60
    for reason in (
        "-10 no usable /service-info",
        "-5 no /toolClasses",
        "-5 no ETag or Last-Modified on /tools",
        "-10 a tool is not found by its percent-encoded id",
        "-5 pre-release (2.0.0) or misspelt field names",
        "-15 a sampled checksum does not match the content",
    ):
        assert reason in text, text
    assert "Tool.toolclass: required" in text
    assert "\x1b" not in text  # an upstream's control characters never reach the terminal
    block_text = text.split("Suggested configuration:", 1)[1]
    table = tomllib.loads(block_text)["upstreams"][0]
    assert table["change_detection"] == "fetch"
    upstream_from_table(table)
    again = await probe(str(bad.make_url(TRS)), max_requests=20)
    assert again.as_json()["score"] == score


async def test_every_run_keeps_conformance_figures_shown_with_their_trend(
    db_dsn: str, pool: Any, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """Harvesting the sloppy registry records its conversions and violations per run;
    /aggregator/v1/upstreams shows the last run's figures, recent runs and a trend."""
    from aggregator.app import create_app
    from aggregator.config import Config, DatabaseConfig, UpstreamConfig
    from tests.support import harvest

    bad = await aiohttp_server(sloppy_registry())
    config = Config(
        database=DatabaseConfig(url=db_dsn),
        upstreams=(UpstreamConfig(name="sloppy", url=str(bad.make_url(TRS)), mode="index"),),
    )
    for _ in range(2):
        assert (await harvest(pool, config))["sloppy"].status in ("succeeded", "partial")
    client = await aiohttp_client(create_app(config))
    body = await (await client.get("/aggregator/v1/upstreams/sloppy")).json()
    conformance = body["conformance"]
    last = conformance["last"]
    assert last["conversions"] == 2  # 'toolname', string author
    assert last["violations"] >= 1  # no toolclass
    assert "pre-release field 'toolname'" in last["problems"]
    assert [r["conversions"] for r in conformance["recent"]] == [2, 2]
    assert conformance["trend"]["conversions"] == "steady"
