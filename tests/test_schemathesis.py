"""Schemathesis drives the official TRS 2.0.1 schema against the populated API."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)

from tests.populated import BWA, NESTED
from tests.trs_schema import TRS_201, openapi

#: Cases per operation and mount: random ids and paths mostly 404, so half the cases name real
#: tools and versions.
EXAMPLES = 25
#: (id, version_id) pairs that exist, with the descriptor types they have.
REAL = [
    {"id": BWA, "version_id": "1.2.0"},
    {"id": "#workflow/github.com/demo-lab/amplicon-qc-galaxy/amplicon-qc", "version_id": "1.0.1"},
    {"id": "#workflow/github.com/demo-lab/wgs-qc-wdl", "version_id": "main"},
    {"id": "quay.io/demo-lab/fastqc", "version_id": "0.12.1"},
    {"id": NESTED, "version_id": "v1"},
    {"id": BWA, "version_id": "1.2.0", "type": "PLAIN_CWL", "relative_path": "tools/bwa_mem.cwl"},
    {"id": NESTED, "version_id": "v1", "type": "CWL", "relative_path": "../types/greeting.yml"},
]
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]


def _operations() -> list[Any]:
    raw = copy.deepcopy(openapi(TRS_201))
    schema = schemathesis.openapi.from_dict(raw)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mount", ["/ga4gh/trs/v2", "/api/ga4gh/v2"])
def test_official_schema_finds_no_server_error_and_no_invalid_answer(
    live_origin: str, mount: str
) -> None:
    """Every operation of TRS 2.0.1, with generated and real parameters, answers without a
    server error, with a declared content type, and valid against the schema when declared."""
    operations = _operations()
    assert len(operations) == 11
    session = requests.Session()
    calls = 0
    for operation in operations:
        path_names = {p.name for p in operation.path_parameters}
        strategy = operation.as_strategy()
        if path_names:
            real = st.sampled_from(
                [{k: v for k, v in pair.items() if k in path_names} for pair in REAL]
            )
            strategy = st.one_of(
                strategy,
                real.flatmap(lambda fixed, op=operation: op.as_strategy(path_parameters=fixed)),
            )

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case: Any) -> None:
            nonlocal calls
            response = case.call(base_url=live_origin + mount, session=session)
            calls += 1
            case.validate_response(response, checks=CHECKS)
            (content_type,) = response.headers["content-type"]
            assert content_type.startswith(("application/json", "text/plain", "application/zip")), (
                response.text[:200]
            )
            if response.status_code >= 400:
                body = response.json()
                assert body["code"] == response.status_code and body["message"]

        check()
    assert calls >= len(operations) * EXAMPLES // 2
