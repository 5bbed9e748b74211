"""The console in a real headless Chromium: the flows people follow, hostile strings that must
stay text, accessibility (axe-core), keyboard use, and a screenshot of each page type."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.console_fixtures import AXE, HOSTILE_ID, HOSTILE_NAME, IMG, RTL, SCRIPT, screenshot
from tests.populated import BWA

_INJECTED = """() => {
  const bad = [];
  for (const el of document.querySelectorAll("*")) {
    for (const a of el.attributes) {
      if (/^on/i.test(a.name)) bad.push(el.tagName + " " + a.name);
      if (/^\\s*javascript:/i.test(a.value)) bad.push(el.tagName + " " + a.name + "=" + a.value);
    }
  }
  for (const s of document.querySelectorAll("script")) {
    if (!s.src && s.type !== "application/ld+json") bad.push("inline script");
  }
  for (const s of document.querySelectorAll("svg, img, iframe, object, embed")) {
    if (!s.closest("figure.chart")) bad.push(s.tagName);
  }
  return bad;
}"""


def _goto(page: Any, url: str) -> None:
    response = page.goto(url, wait_until="load")
    assert response is not None and response.status == 200, (url, response and response.status)


def _axe(p: Any, url: str) -> list[str]:
    """Serious or critical axe-core violations of the page at *url*."""
    _goto(p, url)
    p.add_script_tag(path=str(AXE))
    result = p.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_search_tool_version_file_raw(page: Any, live_origin: str, tmp_path: Path) -> None:
    """From the search box to a tool, one of its versions, a file, and the raw descriptor;
    each page links to its TRS JSON."""
    _goto(page, live_origin + "/")
    screenshot(page, "home", tmp_path)
    page.fill("#q", "bwa-mem-align")
    page.press("#q", "Enter")
    page.wait_for_url(re.compile(r"\?q=bwa-mem-align"))
    first = page.locator("ol.hits > li").first
    assert "exact match" not in first.inner_text() or "bwa" in first.inner_text().lower()
    screenshot(page, "search", tmp_path)
    page.locator("ol.hits a", has_text="bwa-mem-align").first.click()
    page.wait_for_url(re.compile(r"/tools/%23workflow"))
    assert page.locator("h1").inner_text() == "demo-lab/bwa-mem-align"
    assert page.locator("a.json", has_text="TRS JSON").get_attribute("href", timeout=0)
    jsonld = json.loads(page.locator('script[type="application/ld+json"]').text_content())
    assert jsonld["identifier"] == BWA and jsonld["@type"] == "ComputationalWorkflow"
    screenshot(page, "tool", tmp_path)

    page.locator("nav.tabs a", has_text="Why merged").click()
    page.wait_for_url(re.compile(r"tab=provenance"))
    assert "Why these records are one tool" in page.inner_text("main")
    screenshot(page, "tool-provenance", tmp_path)
    page.locator("nav.tabs a", has_text="Use it").click()
    page.wait_for_url(re.compile(r"tab=use"))
    assert "--add-ga4gh-tool-registry" in page.inner_text("main")
    assert "TOIL_TRS_ROOT=" in page.inner_text("main")
    screenshot(page, "tool-use", tmp_path)
    page.locator("nav.tabs a", has_text="Versions").click()
    page.wait_for_url(re.compile(r"tab=versions"))

    page.locator("main table a", has_text="1.2.0").first.click()
    page.wait_for_url(re.compile(r"/versions/1\.2\.0$"))
    trs_json = page.locator("a.json", has_text="TRS JSON").get_attribute("href")
    assert trs_json is not None and trs_json.endswith("/versions/1.2.0")
    assert page.locator("a[download]").count() >= 1
    screenshot(page, "version", tmp_path)

    page.locator("section.tree a", has_text=re.compile(r"\.cwl$")).first.click()
    page.wait_for_url(re.compile(r"/files\?type=CWL&path="))
    assert page.locator(".code .hl span[id^='L-']").count() > 3
    assert page.locator(".code .hl .nt, .code .hl .l").count() > 0  # YAML tokens coloured
    screenshot(page, "file", tmp_path)
    shown = page.locator(".code").inner_text()

    with page.expect_navigation():
        page.locator("a.raw").click()
    raw = page.locator("body").inner_text()
    assert "cwlVersion: v1.2" in raw
    assert raw.strip().splitlines()[0] in shown
    data = page.request.get(trs_json).json()
    assert data["id"] == "1.2.0"


def test_facet_filtering(page: Any, live_origin: str) -> None:
    """Facet links narrow the results to exactly the count they show, and undo themselves."""
    _goto(page, live_origin + "/")
    total = int(page.locator("#results-title").inner_text().split()[0])
    facet = page.locator("nav.facets section", has_text="Descriptor type").locator("a").first
    expected = int(facet.locator(".count").inner_text())
    facet.click()
    page.wait_for_url(re.compile(r"type="))
    assert int(page.locator("#results-title").inner_text().split()[0]) == expected <= total

    multi = page.locator("nav.facets a", has_text="in 2 or more registries")
    n = int(multi.locator(".count").inner_text())
    multi.click()
    page.wait_for_url(re.compile(r"multi=1"))
    hits = page.locator("ol.hits > li")
    assert hits.count() == min(n, 20) and n >= 1
    for i in range(hits.count()):
        assert hits.nth(i).locator(".label.src").count() >= 2

    _goto(page, live_origin + "/")
    only = page.locator("nav.facets section", has_text="Only in").locator("a").first
    name = only.locator("bdi").inner_text()
    only.click()
    page.wait_for_url(re.compile(r"only="))
    hits = page.locator("ol.hits > li")
    assert hits.count() >= 1
    for i in range(hits.count()):
        labels = hits.nth(i).locator(".label.src")
        assert labels.count() == 1 and labels.inner_text() == name
    page.locator("nav.facets a.chosen").first.click()
    page.wait_for_url(re.compile(r"^[^?]*/(\?)?$"))
    assert int(page.locator("#results-title").inner_text().split()[0]) == total


def test_upstream_to_run(page: Any, hostile_origin: str, tmp_path: Path) -> None:
    """The upstreams grid shows each state; an upstream's history charts its runs; a run
    shows its counts and error samples."""
    _goto(page, hostile_origin + "/upstreams")
    grid = page.locator("table.grid")
    assert grid.locator("tr", has_text="evil").locator(".state-healthy").count() == 1
    assert grid.locator("tr", has_text="dead").locator(".state-failing").count() == 1
    screenshot(page, "upstreams", tmp_path)
    grid.locator("a", has_text="dead").first.click()
    page.wait_for_url(re.compile(r"/upstreams/dead$"))
    assert page.locator("figure.chart svg rect.bar.run-failed").count() == 2
    screenshot(page, "upstream", tmp_path)
    page.locator("main table a").first.click()
    page.wait_for_url(re.compile(r"/upstreams/dead/runs/\d+$"))
    assert "failed" in page.locator("h1").inner_text()
    assert "HTTP 503" in page.locator("ol.samples").inner_text()
    screenshot(page, "run", tmp_path)
    assert page.evaluate(_INJECTED) == []


def test_hostile_strings_stay_text(page: Any, hostile_origin: str, tmp_path: Path) -> None:
    """Names, descriptions, aliases, authors and files full of markup, script, javascript: URLs
    and right-to-left overrides are shown as text: nothing runs, no handler or link is made,
    and nothing is wider than the window."""
    tool = hostile_origin + "/tools/" + quote(HOSTILE_ID, safe="")
    pages = [
        hostile_origin + "/",
        hostile_origin + "/?q=" + quote(SCRIPT),
        tool,
        tool + "?tab=versions",
        tool + "?tab=provenance",
        tool + "?tab=use",
        tool + "/versions/1.0",
        tool + "/versions/1.0/files?type=CWL&path=main.cwl",
    ]
    for url in pages:
        _goto(page, url)
        assert page.evaluate("() => window.__pwned") is None, url
        assert page.evaluate(_INJECTED) == [], url
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, (url, overflow)
    _goto(page, tool)
    assert page.locator("h1").inner_text() == HOSTILE_NAME
    assert page.locator("dd bdi", has_text="evil-org").count() >= 1
    assert page.locator("dd bdi", has_text="evil-org").first.inner_text() == RTL
    jsonld = json.loads(page.locator('script[type="application/ld+json"]').text_content())
    assert jsonld["name"] == HOSTILE_NAME and any(IMG in a for a in jsonld["alternateName"])
    screenshot(page, "hostile", tmp_path)


def test_accessibility_axe(browser: Any, live_origin: str, hostile_origin: str) -> None:
    """axe-core finds no serious or critical violation on any page type."""
    tool = live_origin + "/tools/" + quote(BWA, safe="")
    urls = [
        live_origin + "/?q=bwa&type=CWL",
        tool,
        tool + "?tab=versions",
        tool + "?tab=provenance",
        tool + "?tab=use",
        tool + "/versions/1.2.0",
        tool + "/versions/1.2.0/files?type=CWL&path=main.cwl",
        hostile_origin + "/upstreams",
        hostile_origin + "/upstreams/dead",
        hostile_origin + "/upstreams/dead/runs/4",
    ]
    # The page's own policy would refuse the injected axe script.
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    try:
        p = context.new_page()
        p.set_default_timeout(60_000)
        found = {url: _axe(p, url) for url in urls}
    finally:
        context.close()
    assert {u: v for u, v in found.items() if v} == {}


def test_keyboard_navigation(page: Any, live_origin: str) -> None:
    """Tab reaches the skip link first and it moves focus to the content; '/' focuses the
    search box; a result is reached with Tab and opened with Enter."""
    _goto(page, live_origin + "/")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"#main$"))
    page.keyboard.press("/")
    assert page.evaluate("() => document.activeElement.id") == "q"
    page.keyboard.type("fastqc")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"\?q=fastqc"))
    for _ in range(80):
        page.keyboard.press("Tab")
        href = page.evaluate("() => document.activeElement.getAttribute('href') || ''")
        if href.startswith("/tools/"):
            break
    else:
        raise AssertionError("Tab never reached a result")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/tools/"))
    assert page.locator("h1").inner_text() == "fastqc"
