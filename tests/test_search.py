"""GET /aggregator/v1/search over the populated catalogue: ranking, typos, filters, facets,
highlights, keyset paging, and user text that must never break the query parser."""

from __future__ import annotations

from typing import Any

import pytest

from aggregator.db import search as db_search
from aggregator.db.pool import create_pool
from tests.populated import CHECKED, TRS, Api

SEARCH = "/aggregator/v1/search"
#: Words every tool of the demo catalogue matches.
WORDS = db_search.SearchQuery(text="demo")


async def search(client: Api, status: int = 200, **params: str) -> dict[str, Any]:
    r = await client.get(SEARCH, params=params)
    body: dict[str, Any] = await r.json()
    assert r.status == status, body
    return body


async def tools_ids(client: Api, **params: str) -> set[str]:
    r = await client.get(f"{TRS}/tools", params=params)
    assert r.status == 200
    return {t["id"] for t in await r.json()}


async def test_name_ranks_first_and_is_highlighted(trs: Api) -> None:
    body = await search(trs, q="samtools sort")
    assert body["hits"][0]["id"] == "quay.io/demo-lab/samtools-sort"
    assert "<mark>" in body["hits"][0]["highlights"]["name"]
    assert body["hits"][0]["url"].endswith(f"{TRS}/tools/quay.io%2Fdemo-lab%2Fsamtools-sort")
    # A word only in descriptions finds the tool too, highlighted in its description.
    body = await search(trs, q="Bracken")
    hit = next(h for h in body["hits"] if h["name"].startswith("Metagenome"))
    assert "<mark>Bracken</mark>" in hit["highlights"]["description"]


async def test_names_outrank_descriptions(trs: Api) -> None:
    # "fastqc" is the name of one tool and appears in the descriptions of others.
    body = await search(trs, q="fastqc")
    assert body["hits"][0]["id"] == "quay.io/demo-lab/fastqc"
    assert body["total"] >= 1


async def test_typo_in_a_name_still_finds_it(trs: Api) -> None:
    for typo in ("samtols", "fastcq", "kraken2 brackn"):
        body = await search(trs, q=typo)
        names = [h["name"] for h in body["hits"]]
        assert body["total"] > 0, typo
        assert any(
            word in n.lower() for n in names[:3] for word in ("samtools", "fastqc", "kraken2")
        ), (typo, names)


async def test_filters_agree_with_tools_filters(trs: Api) -> None:
    everything = await search(trs, limit="100")
    assert {h["id"] for h in everything["hits"]} == await tools_ids(trs)
    for dtype in ("CWL", "WDL", "NFL", "SMK", "GALAXY"):
        body = await search(trs, descriptorType=dtype, limit="100")
        assert {h["id"] for h in body["hits"]} == await tools_ids(trs, descriptorType=dtype)
        assert everything["facets"]["descriptor_type"].get(dtype, 0) == body["total"]
    body = await search(trs, organization="DEMO-LAB", limit="100")
    assert {h["id"] for h in body["hits"]} == await tools_ids(trs, organization="demo-lab")
    body = await search(trs, toolClass="workflow", limit="100")
    assert {h["id"] for h in body["hits"]} == await tools_ids(trs, toolClass="Workflow")
    body = await search(trs, hasChecker="true")
    assert [h["id"] for h in body["hits"]] == [CHECKED]
    assert everything["facets_estimated"] is False
    assert everything["facets"]["has_checker"] == {
        "true": 1,
        "false": everything["total"] - 1,
    }


async def test_upstream_filter_and_facet(trs: Api) -> None:
    everything = await search(trs, limit="100")
    for name in ("dockstore", "workflowhub", "quirky"):
        body = await search(trs, upstream=name, limit="100")
        assert body["total"] == everything["facets"]["upstream"][name] > 0
        assert all(name in h["upstreams"] for h in body["hits"])
    # Merged tools count under each of their upstreams.
    both = await search(trs, q="bwa mem", upstream="workflowhub")
    assert "#workflow/github.com/demo-lab/bwa-mem-align" in [h["id"] for h in both["hits"]]
    # Facets follow the query and filters.
    cwl = await search(trs, descriptorType="CWL")
    assert set(cwl["facets"]["descriptor_type"]) >= {"CWL"}
    assert sum(cwl["facets"]["has_checker"].values()) == cwl["total"]
    bare = await search(trs, descriptorType="CWL", facets="false")
    assert "facets" not in bare and "facets_estimated" not in bare


async def test_keyset_pages_cover_every_hit_once(trs: Api) -> None:
    for params in ({}, {"q": "demo lab"}, {"q": "reads"}):
        first = await search(trs, limit="100", **params)
        seen: list[str] = []
        url: str | None = SEARCH + "?" + "&".join(f"{k}={v}" for k, v in params.items())
        url += ("&" if params else "") + "limit=2"
        while url:
            r = await trs.get(url)
            assert r.status == 200
            body = await r.json()
            seen += [h["id"] for h in body["hits"]]
            assert len(body["hits"]) <= 2
            url = body["next"]
            if url:
                assert r.headers["Link"] == f'<{url}>; rel="next"'
        assert seen == [h["id"] for h in first["hits"]], params
        assert len(seen) == first["total"]


@pytest.mark.parametrize(
    "text",
    [
        '"unterminated',
        "a & b | !c <-> (d",
        "'; drop table search_docs; --",
        "or and not -",
        ":*",
        "\x01control\x7f",
        "日本語 ワークフロー",
        "émoji 🧬 \u200b",
        "\ud800 lone surrogate",
        "x" * 5000,
        "the of and",
        "-",
        '""',
        "\\",
        "%_%",
    ],
)
async def test_user_text_never_breaks_the_parser(trs: Api, text: str) -> None:
    body = await search(trs, q=text)
    assert isinstance(body["total"], int)
    assert len(body["query"]) <= 200


async def test_bad_parameters_answer_400(trs: Api) -> None:
    for params in (
        {"q": "\x00nul"},
        {"cursor": "not-a-cursor"},
        {"cursor": "WzEsMl0"},  # [1,2]: not (score, id)
        {"limit": "0"},
        {"limit": "many"},
        {"hasChecker": "maybe"},
        {"descriptorType": "COBOL"},
    ):
        body = await search(trs, status=400, **params)
        assert body["code"] == 400 and body["message"]


async def test_openapi_documents_search(trs: Api) -> None:
    r = await trs.get("/aggregator/v1/openapi.json")
    doc = await r.json()
    params = {p["name"] for p in doc["paths"]["/search"]["get"]["parameters"]}
    assert params >= {"q", "upstream", "descriptorType", "toolClass", "organization"}


async def test_facets_past_the_limit_are_estimated(populated_dsn: str) -> None:
    pool = await create_pool(populated_dsn)
    try:
        # (A search with text: one without is counted exactly from the facet groups.)
        exact = await db_search.search(pool, WORDS, limit=5)
        assert not exact.facets_estimated
        assert sum(exact.facets["has_checker"].values()) == exact.total
        # Past the limit, the counts come from a sample of about that many hits, scaled.
        estimated = await db_search.search(pool, WORDS, limit=5, facet_exact_limit=4)
        assert estimated.facets_estimated
        assert estimated.total == exact.total
        assert [h.id for h in estimated.hits] == [h.id for h in exact.hits]
        assert estimated.facets["has_checker"], "the sample holds no hit"
        for name, counts in estimated.facets.items():
            assert set(counts) <= set(exact.facets[name]), name
            assert all(0 < n <= exact.total for n in counts.values()), name
        # Every hit has one has_checker value: scaled, the sample's counts add up to the total.
        assert abs(sum(estimated.facets["has_checker"].values()) - exact.total) <= 1
        # The sample is chosen by the hits' ids: the same search counts the same hits.
        again = await db_search.search(pool, WORDS, limit=5, facet_exact_limit=4)
        assert again.facets == estimated.facets
        # A limit the hits do not exceed counts exactly.
        same = await db_search.search(pool, WORDS, limit=5, facet_exact_limit=exact.total)
        assert not same.facets_estimated and same.facets == exact.facets
        # Without text the counts are exact whatever the limit.
        browse = await db_search.search(pool, db_search.SearchQuery(), limit=5, facet_exact_limit=4)
        assert not browse.facets_estimated
        assert sum(browse.facets["has_checker"].values()) == browse.total > 4
    finally:
        await pool.close()
