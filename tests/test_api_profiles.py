"""Both profiles validate against their official schema on every document they serve."""

from __future__ import annotations

from tests.populated import BWA, NESTED, STRICT, TRS, Api, enc
from tests.trs_schema import TRS_200, TRS_201, crawl, ref, validator


async def test_default_profile_is_valid_trs_201_everywhere(trs: Api) -> None:
    """Every document of the default profile validates against TRS 2.0.1, even where the
    upstream's own documents did not (wrong types, unknown enum values, nulls)."""
    seen = 0
    async for path, schema, doc in crawl(trs, TRS):
        errors = [e.message for e in validator(TRS_201, schema).iter_errors(doc)]
        assert not errors, (path, errors[:3])
        seen += 1
    info = await (await trs.get(f"{TRS}/service-info")).json()
    assert not list(validator(TRS_201, ref("Service")).iter_errors(info))
    assert seen > 100


async def test_strict_profile_emits_only_trs_200_fields(trs: Api) -> None:
    """Every document of the strict profile validates against TRS 2.0.0 with unknown fields
    forbidden everywhere, as client models that forbid extra fields read it."""
    seen = 0
    async for path, schema, doc in crawl(trs, STRICT, types_from=TRS):
        errors = [e.message for e in validator(TRS_200, schema, closed=True).iter_errors(doc)]
        assert not errors, (path, errors[:3])
        seen += 1
    assert seen > 100
    default = await (await trs.get(f"{TRS}/tools/{enc(BWA)}")).json()
    assert not validator(TRS_200, ref("Tool"), closed=True).is_valid(default)


async def test_strict_profile_drops_provenance_and_201_values(trs: Api) -> None:
    """The strict profile has no sources, no 2.0.1-only types or fields; the default has them."""
    galaxy = "#workflow/github.com/demo-lab/amplicon-qc-galaxy/amplicon-qc"
    default = await (await trs.get(f"{TRS}/tools/{enc(galaxy)}")).json()
    strict = await (await trs.get(f"{STRICT}/tools/{enc(galaxy)}")).json()
    assert "sources" in default and "sources" not in strict
    assert default["versions"][0]["descriptor_type"] == ["GALAXY"]
    assert strict["versions"][0]["descriptor_type"] == []
    assert "descriptor_type_version" in default["versions"][0]
    assert "descriptor_type_version" not in strict["versions"][0]
    assert strict["url"].startswith(str(trs.make_url(STRICT)))
    listing = await (await trs.get(f"{STRICT}/tools/{enc(BWA)}/versions/1.2.0/CWL/files")).json()
    assert all(set(f) == {"path", "file_type"} for f in listing)
    r = await trs.get(f"{STRICT}/tools/{enc(galaxy)}/versions/1.0.1/PLAIN_GALAXY/descriptor")
    assert r.status == 200


async def test_upstream_fields_of_the_wrong_type_are_conformed(trs: Api) -> None:
    """Numbers become strings, values outside an enum and nulls are dropped, extras are kept
    in the default profile only."""
    default = await (await trs.get(f"{TRS}/tools/{enc(NESTED)}")).json()
    strict = await (await trs.get(f"{STRICT}/tools/{enc(NESTED)}")).json()
    assert default["meta_version"] == "7" and "has_checker" not in default
    assert default["aliases"] == ["quirky-nested", "5"]
    assert default["license"] == "MIT" and "license" not in strict
    assert "description" not in default
    (version,) = default["versions"]
    assert version["descriptor_type"] == ["CWL"]
    assert version["author"] == ["Solo Author"] and version["name"] == "v1"
    assert version["images"] == [
        {"registry_host": "docker.io", "image_name": "library/alpine:3.19"}
    ]
    assert "is_production" not in version and "signed" not in version
