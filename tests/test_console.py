"""The console over HTTP: ranking, facets, paging limits, errors as pages, headers, caching,
page weight, and "use it" snippets that work when pasted."""

from __future__ import annotations

import html
import json
import re
import shlex
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from aggregator.api.cache import RESPONSE_CACHE
from aggregator.console.render import ASSETS, CSP
from tests.populated import BWA
from tests.test_cwltool import cwltool_validate

TOOL = "/tools/" + quote(BWA, safe="")
PAGES = [
    "/",
    "/?q=bwa&type=CWL",
    TOOL,
    TOOL + "?tab=versions",
    TOOL + "?tab=provenance",
    TOOL + "?tab=use",
    TOOL + "/versions/1.2.0",
    TOOL + "/versions/1.2.0/files?type=CWL&path=main.cwl",
    "/upstreams",
    "/upstreams/dockstore",
    "/upstreams/dockstore/runs/{last}",
]


async def _get(origin: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(origin + path, **kwargs) as r,
    ):
        return r.status, dict(r.headers), await r.text()


def _hits(page: str) -> list[str]:
    """The tool ids of the results, in order."""
    return [html.unescape(m) for m in re.findall(r'<p class="id"><code><bdi>(.*?)</bdi>', page)]


def _total(page: str) -> int:
    m = re.search(r'<h2 id="results-title">\s*(\d+) tool', page)
    return int(m.group(1)) if m else 0


def _facet_count(page: str, param: str, value: str) -> int:
    m = re.search(
        rf'href="/\?{param}={re.escape(quote(value))}"[^>]*><bdi>{re.escape(value)}</bdi> '
        r'<span class="count">(\d+)',
        page,
    )
    assert m, (param, value)
    return int(m.group(1))


@pytest.mark.parametrize("path", PAGES)
async def test_pages_are_strict_and_light(live_origin: str, path: str) -> None:
    """Every page type: 200 HTML under a strict CSP, no inline script, style or handler, and
    with its assets under 200 KB."""
    if "{last}" in path:
        _, _, upstream = await _get(live_origin, "/upstreams/dockstore")
        path = path.format(last=re.search(r"/runs/(\d+)", upstream).group(1))
    status, headers, body = await _get(live_origin, path)
    assert status == 200, body
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    scripts = re.findall(r"<script\b([^>]*)>", body)
    assert all("src=" in s or 'type="application/ld+json"' in s for s in scripts), scripts
    assert not re.search(r"<[^>]+\sstyle=", body)
    assert not re.search(r"<[^>]+\son[a-z]+=", body)
    assets = sum(len(a.entry.body) for a in ASSETS.values())
    assert len(body.encode()) + assets < 200 * 1024


async def test_exact_name_and_id_rank_first(live_origin: str) -> None:
    """A tool's exact name, a member's native id, and the merged id each put that tool first,
    marked as an exact match; a name that starts with the words ranks above a description
    that mentions them."""
    _, _, page = await _get(live_origin, "/?q=fastqc")
    assert _hits(page)[0] == "quay.io/demo-lab/fastqc" and "exact match" in page
    _, _, page = await _get(live_origin, "/?q=samtools")
    hits = _hits(page)
    assert hits[0] == "quay.io/demo-lab/samtools-sort" and BWA in hits[1:]
    assert "exact match" not in page
    _, _, page = await _get(live_origin, "/?q=101")
    assert _hits(page)[0] == BWA
    _, _, page = await _get(live_origin, "/?q=" + quote(BWA))
    assert _hits(page)[0] == BWA
    _, _, page = await _get(live_origin, "/?q=no-such-words-anywhere")
    assert _total(page) == 0 and "No tools" in page


async def test_facet_counts_match_filtered_results(live_origin: str) -> None:
    """Each facet value's count is the number of results once it is chosen; the filters
    combine, and "only in" and "in 2 or more registries" partition by source count."""
    _, _, home = await _get(live_origin, "/")
    total = _total(home)
    for param, value in (("type", "CWL"), ("upstream", "workflowhub"), ("org", "quirky")):
        n = _facet_count(home, param, value)
        _, _, page = await _get(live_origin, f"/?{param}={quote(value)}")
        assert _total(page) == n > 0, (param, value)
    multi = int(re.search(r'href="/\?multi=1"[^>]*>.*?class="count">(\d+)', home).group(1))
    only = sum(_facet_count(home, "only", u) for u in ("dockstore", "workflowhub", "quirky"))
    assert multi + only == total
    _, _, both = await _get(live_origin, "/?type=CWL&multi=1")
    assert _total(both) <= min(multi, _facet_count(home, "type", "CWL"))
    _, _, page = await _get(live_origin, "/?only=quirky")
    assert 'class="label src"><bdi>dockstore' not in page


async def test_paging_has_a_hard_cap_and_bad_input_is_a_page(live_origin: str) -> None:
    """Past the cap, a malformed page number, an unknown tab, tool, upstream or run: an HTML
    page with the right status and the same headers."""
    for path, status in (
        ("/?page=51", 400),
        ("/?page=0", 400),
        ("/?page=two", 400),
        ("/tools/no-such-tool", 404),
        (TOOL + "?tab=nope", 400),
        (TOOL + "/versions/none", 404),
        (TOOL + "/versions/1.2.0/files?type=CWL&path=../../etc/passwd", 400),
        (TOOL + "/versions/1.2.0/files?type=CWL", 400),
        ("/upstreams/nobody", 404),
        ("/upstreams/dockstore/runs/x1", 400),
        ("/upstreams/dockstore/runs/999999", 404),
        ("/upstreams/dockstore?before=-3", 400),
        ("/static/console.0000.css", 404),
    ):
        got, headers, body = await _get(live_origin, path)
        assert got == status, (path, body)
        assert headers["Content-Security-Policy"] == CSP, path
    _, _, body = await _get(live_origin, "/?page=51")
    assert "narrow the search" in body and "<!doctype html>" in body


async def test_pages_are_cached_per_generation(own_trs: TestClient[Any, Any]) -> None:
    """A page is rendered once: the second answer comes from the cache (same ETag, 304 on
    revalidation, gzip when accepted); a stale source shows a badge."""
    cache = own_trs.server.app[RESPONSE_CACHE]
    r1 = await own_trs.get(TOOL)
    body = await r1.text()
    assert r1.status == 200 and len(cache) >= 1 and "badge ok" in body
    r2 = await own_trs.get(TOOL, headers={"Accept-Encoding": "gzip"})
    assert r2.headers["Content-Encoding"] == "gzip" and await r2.text() == body
    r3 = await own_trs.get(TOOL, headers={"If-None-Match": r1.headers["ETag"]})
    assert r3.status == 304

    pool = own_trs.server.app[RESPONSE_CACHE].pool
    await pool.execute("update upstream_tools set last_confirmed = now() - interval '30 days'")
    bumped = await pool.fetchval(
        "update catalogue_state set generation = generation + 1 returning generation"
    )
    cache.set_generation(bumped)  # as a publish would: the next answer is rendered anew
    stale = await (await own_trs.get(TOOL)).text()
    assert ">stale<" in stale


async def test_static_assets_are_fingerprinted(live_origin: str) -> None:
    """The stylesheet (with the highlighting colours) and script are served under their hash,
    cacheable for ever."""
    for name in ("console.css", "console.js"):
        status, headers, body = await _get(live_origin, ASSETS[name].url)
        assert status == 200 and "immutable" in headers["Cache-Control"]
        assert len(body) > 100
    _, _, css = await _get(live_origin, ASSETS["console.css"].url)
    assert ".hl .nt" in css


async def test_jsonld_and_snippets_on_the_use_tab(live_origin: str) -> None:
    """The tool page carries Bioschemas JSON-LD; its cwltool snippet, pasted, resolves and
    validates the workflow through this service."""
    _, _, page = await _get(live_origin, TOOL + "?tab=use")
    block = re.search(r'<script type="application/ld\+json">(.*?)</script>', page, re.DOTALL)
    assert block is not None
    data = json.loads(block.group(1))
    assert data["identifier"] == BWA and data["@context"] == "https://schema.org"
    assert data["isBasedOn"] == f"{live_origin}/ga4gh/trs/v2/tools/{quote(BWA, safe='')}"
    snippets = [html.unescape(s) for s in re.findall(r"<pre><code>(.*?)</code></pre>", page)]
    cwl = next(s for s in snippets if s.startswith("cwltool "))
    toil = next(s for s in snippets if s.startswith("TOIL_TRS_ROOT="))
    assert toil.startswith(f"TOIL_TRS_ROOT={live_origin} toil-cwl-runner '{BWA}:1.2.0'")
    args = shlex.split(cwl)
    assert args[:2] == ["cwltool", "--add-ga4gh-tool-registry"] and args[-1] == "job.yml"
    code, output = await cwltool_validate(args[2], args[3])
    assert code == 0, output
    assert "is valid CWL" in output


async def test_half_typed_names_and_typos_find_the_tool(live_origin: str) -> None:
    """The search reads the full-text index: the start of a name finds the tool, so does a
    name with a typo; every word must match."""
    _, _, page = await _get(live_origin, "/?q=fastq")
    assert _hits(page)[0] == "quay.io/demo-lab/fastqc" and "exact match" not in page
    _, _, page = await _get(live_origin, "/?q=samtols")
    assert "quay.io/demo-lab/samtools-sort" in _hits(page)
    _, _, page = await _get(live_origin, "/?q=" + quote("fastqc no-such-word-anywhere"))
    assert _total(page) == 0
