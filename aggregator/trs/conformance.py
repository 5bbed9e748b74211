"""How well an upstream follows TRS: the figures kept per run and reported by ``probe``.

Every harvest run keeps, besides its counts, a conformance record::

    {"violations": 2, "conversions": 1, "dropped_fields": 0, "checksum_mismatches": 0,
     "paging_anomalies": 0, "fetch_errors": {"timeout": 3}, "problems": ["..."]}

*violations* are distinct ways the upstream broke the specification that we could read past
(a tool without a toolclass, no /service-info, an entry that could not be read), *conversions*
distinct pre-release (2.0.0 seed) or misspelt fields that were renamed, *dropped_fields*
distinct fields thrown away, *checksum_mismatches* files whose bytes do not hash to the
declared checksum, *paging_anomalies* listing pages that repeat tools or do not advance, and
*fetch_errors* every recorded error of the run by kind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

CATEGORIES: Final = (
    "violations",
    "conversions",
    "dropped_fields",
    "checksum_mismatches",
    "paging_anomalies",
)
ERROR_KINDS: Final = (
    "timeout",
    "connection",
    "rate_limited",
    "http_5xx",
    "http_4xx",
    "invalid_data",
    "checksum",
    "too_large",
    "paging",
    "other",
)
_HTTP_STATUS: Final = re.compile(r"\bHTTP (\d{3})\b")
_KEEP_PROBLEMS: Final = 20


def error_kind(message: str) -> str:
    """The kind of a recorded harvest error (one of ERROR_KINDS), from its message."""
    text = message.lower()
    if "checksum mismatch" in text:
        return "checksum"
    if "next_page" in text or "did not advance" in text:
        return "paging"
    status = _HTTP_STATUS.search(message)
    if status is not None:
        code = int(status.group(1))
        if code == 429:
            return "rate_limited"
        return "http_5xx" if code >= 500 else "http_4xx"
    if "timeout" in text or "timed out" in text or "too slow" in text:
        return "timeout"
    if "cannot connect" in text or "connection" in text:
        return "connection"
    if "over the limit" in text:
        return "too_large"
    if "malformed json" in text or "must be" in text or "did not answer" in text:
        return "invalid_data"
    if "has no id" in text or "neither id nor name" in text or "listing:" in text:
        return "invalid_data"
    return "other"


def quirk_category(quirk: str) -> str:
    """Which conformance category a reader's quirk (trs.parse.Quirks) belongs to."""
    text = quirk.lower()
    if "listed twice" in text or "page" in text:
        return "paging_anomalies"
    if "pre-release" in text or "instead of" in text or "is a number" in text:
        return "conversions"
    if "dropped" in text or "ignored" in text:
        return "dropped_fields"
    return "violations"


def run_conformance(quirks: Iterable[str], error_kinds: Mapping[str, int]) -> dict[str, Any]:
    """The conformance record of a run that saw *quirks* and errors of *error_kinds*."""
    record: dict[str, Any] = dict.fromkeys(CATEGORIES, 0)
    problems: list[str] = []
    for quirk in quirks:
        record[quirk_category(quirk)] += 1
        if len(problems) < _KEEP_PROBLEMS:
            problems.append(quirk)
    record["violations"] += error_kinds.get("invalid_data", 0)
    record["checksum_mismatches"] += error_kinds.get("checksum", 0)
    record["paging_anomalies"] += error_kinds.get("paging", 0)
    record["fetch_errors"] = {k: n for k, n in sorted(error_kinds.items()) if n}
    record["problems"] = problems
    return record


def trend(runs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Per category, whether the newest run has fewer (``improving``), more (``worsening``) or
    as many (``steady``) problems than the mean of the earlier ones in *runs* (newest first);
    ``unknown`` with fewer than two runs."""
    out: dict[str, str] = {}
    for category in CATEGORIES:
        values = [int(r.get(category, 0)) for r in runs]
        if len(values) < 2:
            out[category] = "unknown"
            continue
        earlier = sum(values[1:]) / (len(values) - 1)
        out[category] = (
            "improving" if values[0] < earlier else "worsening" if values[0] > earlier else "steady"
        )
    return out
