"""``trs-aggregator probe URL``: examine a candidate upstream before adding it; store nothing.

The probe sends at most *max_requests* requests within *time_limit_s* seconds: service-info,
toolClasses, two listing pages, an offset check, a conditional request, one tool by its
encoded id, and the versions, file listing and descriptors of a few sampled tools. It reports
what it saw, a conformance score and a suggested ``[[upstreams]]`` block.

Score (0-100): start at 100 and subtract, then clamp at 0 --

==============================================  ====
/tools does not answer a JSON array             100
no usable /service-info                          10
no /toolClasses                                   5
more tools than ``limit`` on a page               5
no ``next_page`` although more tools exist       10
a ``next_page`` that does not advance            15
numeric offsets not honoured                      5
no ETag / Last-Modified, or no 304 for it         5
a tool not found by its percent-encoded id       10
versions without ``meta_version``                 5
sampled files without a sha256 checksum           5
a sampled checksum that does not match           15
pre-release (2.0.0) or misspelt field names       5
each distinct TRS 2.0.1 schema violation     2 (≤ 30)
==============================================  ====
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Final
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import orjson
from multidict import CIMultiDict
from yarl import URL

from aggregator.config import UpstreamConfig, upstream_table
from aggregator.errors import InvalidUpstreamData
from aggregator.trs.parse import Quirks, declared_sha256, read_tool

MAX_BODY: Final = 8 * 1024 * 1024
SAMPLE_TOOLS: Final = 3
PAGE: Final = 100
RATE_HEADERS: Final = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
    "Retry-After",
)
_PAGING_HEADERS: Final = ("next_page", "last_page", "self_link", "current_offset", "current_limit")
_MAX_VIOLATION_PENALTY: Final = 30


class _OutOfBudget(Exception):
    """The probe's request or time budget is spent."""


@dataclass(slots=True)
class _Response:
    status: int
    url: str
    headers: CIMultiDict[str]
    body: bytes
    seconds: float

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


@dataclass(slots=True)
class ProbeReport:
    """What a probe found. *findings* holds each check's result; *deductions* the score's."""

    url: str
    findings: dict[str, Any] = field(default_factory=dict)
    deductions: list[tuple[int, str]] = field(default_factory=list)
    violations: Counter[str] = field(default_factory=Counter)
    suggestion: UpstreamConfig | None = None
    requests: int = 0
    seconds: float = 0.0
    incomplete: str | None = None

    def deduct(self, points: int, why: str) -> None:
        """Lower the score by *points*, saying *why*."""
        self.deductions.append((points, why))

    @property
    def score(self) -> int:
        """The conformance score (see the module docstring)."""
        penalty = sum(p for p, _ in self.deductions)
        penalty += min(_MAX_VIOLATION_PENALTY, 2 * len(self.violations))
        return max(0, 100 - penalty)

    def upstream_block(self) -> dict[str, Any]:
        """The suggested ``[[upstreams]]`` table."""
        if self.suggestion is None:
            return {}
        table = upstream_table(self.suggestion, defaults=False)
        for key in ("kind", "mode", "page_size", "change_detection", "concurrency", "schedule"):
            table[key] = getattr(self.suggestion, key)
        return table

    def as_json(self) -> dict[str, Any]:
        """The report as one JSON object (``--json``)."""
        return {
            "url": self.url,
            "score": self.score,
            "deductions": [{"points": p, "reason": w} for p, w in self.deductions],
            "schema_violations": dict(sorted(self.violations.items())),
            "findings": self.findings,
            "upstream": self.upstream_block(),
            "requests": self.requests,
            "seconds": round(self.seconds, 2),
            "incomplete": self.incomplete,
        }

    def render(self) -> str:
        """The report as text, ending with the suggested block."""
        f = self.findings
        lines = [f"Probe of {self.url}", ""]
        for key, value in f.items():
            if isinstance(value, dict):
                lines.append(f"{key}:")
                lines += [f"  {k}: {_text(v)}" for k, v in value.items()]
            else:
                lines.append(f"{key}: {_text(value)}")
        lines.append("")
        if self.violations:
            lines.append(f"TRS 2.0.1 schema violations in the sample ({self.violations.total()}):")
            lines += [f"  {n} x {k}" for k, n in self.violations.most_common()]
        else:
            lines.append("TRS 2.0.1 schema violations in the sample: none")
        if self.incomplete:
            lines.append(f"incomplete: {self.incomplete}")
        lines.append("")
        lines.append(f"Score: {self.score}/100")
        lines += [f"  -{p} {w}" for p, w in self.deductions]
        if self.violations:
            lines.append(
                f"  -{min(_MAX_VIOLATION_PENALTY, 2 * len(self.violations))} "
                f"{len(self.violations)} distinct schema violations"
            )
        lines += ["", f"({self.requests} requests, {self.seconds:.1f}s)", ""]
        lines.append("Suggested configuration:")
        lines.append("")
        lines.append("[[upstreams]]")
        lines += [f"{k} = {_toml(v)}" for k, v in self.upstream_block().items()]
        # What the upstream sent is printed: no control characters reach the terminal.
        return "\n".join(_printable(line) for line in lines) + "\n"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return "unknown" if value is None else str(value)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


@cache
def _components() -> dict[str, Any]:
    doc = orjson.loads(
        resources.files("aggregator.api").joinpath("schemas/trs-2.0.1.openapi.json").read_bytes()
    )
    components: dict[str, Any] = doc["components"]
    return components


@cache
def _validator(name: str) -> Any:
    return jsonschema.Draft4Validator(
        {"$ref": f"#/components/schemas/{name}", "components": _components()}
    )


def _check(report: ProbeReport, name: str, doc: Any) -> None:
    """Count *doc*'s violations of schema *name* by kind: ``Tool.toolclass: required``."""
    for error in _validator(name).iter_errors(doc):
        where = ".".join(str(p) for p in error.path if not isinstance(p, int))
        if error.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", error.message)
            where = ".".join(filter(None, [where, *missing[:1]]))
        report.violations[f"{name}{'.' + where if where else ''}: {error.validator}"] += 1


def _name_for(url: str) -> str:
    host = (urlsplit(url).hostname or "upstream").lower()
    name = re.sub(r"[^a-z0-9]+", "-", host.removeprefix("www.")).strip("-")
    return (name or "upstream")[:63]


class _Client:
    """GETs within the probe's budgets; bodies capped at MAX_BODY."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        report: ProbeReport,
        max_requests: int,
        deadline: float,
    ) -> None:
        self.session = session
        self.report = report
        self.max_requests = max_requests
        self.deadline = deadline
        self.latencies: list[float] = []
        self.bytes = 0

    async def get(self, url: str | URL, headers: dict[str, str] | None = None) -> _Response:
        if self.report.requests >= self.max_requests:
            raise _OutOfBudget(f"the request budget of {self.max_requests} is spent")
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _OutOfBudget("the time budget is spent")
        self.report.requests += 1
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=min(30.0, remaining))
        async with self.session.get(url, headers=headers, timeout=timeout, max_redirects=3) as r:
            body = await r.content.read(MAX_BODY + 1)
            seconds = time.monotonic() - started
            self.latencies.append(seconds)
            self.bytes += len(body)
            return _Response(r.status, str(r.url), CIMultiDict(r.headers), body[:MAX_BODY], seconds)


async def probe(
    url: str,
    config: Any = None,
    *,
    name: str | None = None,
    max_requests: int = 60,
    time_limit_s: float = 60.0,
    user_agent: str = "trs-aggregator-probe/0.1",
) -> ProbeReport:
    """Examine the TRS API at *url* within the budgets; return the report."""
    base = url.rstrip("/")
    report = ProbeReport(base)
    started = time.monotonic()
    if config is not None:
        user_agent = config.harvest.user_agent
    async with aiohttp.ClientSession(headers={"User-Agent": user_agent}) as session:
        client = _Client(session, report, max_requests, started + time_limit_s)
        state = _State()
        try:
            await _run(client, base, report, state)
        except _OutOfBudget as e:
            report.incomplete = str(e)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            report.incomplete = f"{type(e).__name__}: {e}".rstrip(": ")
            if "tools" not in report.findings:
                report.deduct(100, "/tools could not be read")
    report.seconds = time.monotonic() - started
    report.suggestion = _suggest(base, name or _name_for(base), report, state, client)
    return report


@dataclass(slots=True)
class _State:
    page_limit_honoured: bool = True
    page_cap: int | None = None
    total: int | None = None
    meta_version: bool = False
    files_ok: bool = False
    versions_per_tool: float = 1.0
    files_per_version: float = 1.0
    aggregator: bool = False
    rate_limit: float = 0.0


async def _run(client: _Client, base: str, report: ProbeReport, state: _State) -> None:
    f = report.findings
    info = await client.get(f"{base}/service-info")
    doc = info.json() if info.status == 200 else None
    if isinstance(doc, dict):
        _check(report, "Service", doc)
        service_type = doc.get("type")
        kind: dict[str, Any] = service_type if isinstance(service_type, dict) else {}
        organization = doc.get("organization")
        f["service_info"] = {
            "name": doc.get("name"),
            "organization": organization.get("name")
            if isinstance(organization, dict)
            else organization,
            "trs_version": kind.get("version"),
            "artifact": kind.get("artifact"),
        }
        state.aggregator = "trs-aggregator" in orjson.dumps(doc).decode().lower()
    else:
        f["service_info"] = f"not available (HTTP {info.status})"
        report.deduct(10, "no usable /service-info")
    classes = await client.get(f"{base}/toolClasses")
    body = classes.json() if classes.status == 200 else None
    if isinstance(body, list):
        f["tool_classes"] = [c.get("name") for c in body if isinstance(c, dict)]
        for c in body[:10]:
            _check(report, "ToolClass", c)
    else:
        f["tool_classes"] = f"not available (HTTP {classes.status})"
        report.deduct(5, "no /toolClasses")
    first = await client.get(URL(f"{base}/tools").with_query(limit=str(PAGE)))
    tools = first.json() if first.status == 200 else None
    if not isinstance(tools, list):
        f["tools"] = f"not a JSON array (HTTP {first.status})"
        report.deduct(100, "/tools does not answer a JSON array")
        return
    f["tools"] = f"{len(tools)} on the first page (limit {PAGE})"
    endpoints = {"service-info": info.status, "toolClasses": classes.status, "tools": 200}
    f["endpoints"] = endpoints
    await _paging(client, base, report, state, first, tools)
    await _validators(client, report, first)
    f["rate_limit_headers"] = {h: first.headers[h] for h in RATE_HEADERS if h in first.headers}
    limit = first.headers.get("X-RateLimit-Limit") or first.headers.get("RateLimit-Limit")
    if limit and limit.split(",")[0].strip().isdigit():
        per_window = int(limit.split(",")[0])
        state.rate_limit = max(1.0, per_window / 3600 if per_window > 100 else per_window / 60)
    quirks = Quirks()
    for raw in tools[:20]:
        _check(report, "Tool", raw)
        try:
            read_tool(raw, quirks)
        except InvalidUpstreamData:
            report.violations["Tool: unreadable"] += 1
    if quirks.items:
        f["read_past"] = list(quirks.items)
    if any("pre-release" in q or "instead of" in q for q in quirks.items):
        report.deduct(5, "pre-release (2.0.0) or misspelt field names")
    sample = [t for t in tools if isinstance(t, dict) and isinstance(t.get("id"), str | int)]
    if sample:
        await _ids(client, base, report, sample)
        await _sample(client, base, report, state, sample[:SAMPLE_TOOLS])


async def _paging(  # noqa: PLR0917, PLR0915 - one check of the paging, step by step
    client: _Client,
    base: str,
    report: ProbeReport,
    state: _State,
    first: _Response,
    tools: list[Any],
) -> None:
    f = report.findings
    headers = {h: first.headers[h] for h in _PAGING_HEADERS if h in first.headers}
    paging: dict[str, Any] = {"headers": sorted(headers)}
    f["paging"] = paging
    if len(tools) > PAGE:
        state.page_limit_honoured = False
        paging["limit_honoured"] = False
        report.deduct(5, f"more tools than limit={PAGE} on one page")
    total = first.headers.get("X-Total-Count")
    if total and total.isdigit():
        state.total = int(total)
    last = headers.get("last_page")
    if state.total is None and last:
        last_url = URL(urljoin(first.url, last))
        offset = last_url.query.get("offset", "")
        if offset.isdigit() and int(offset) > 0:
            got = await client.get(last_url)
            items = got.json() if got.status == 200 else None
            nxt = URL(urljoin(first.url, headers.get("next_page", ""))).query.get("offset")
            by_page = nxt == "1" and len(tools) > 1  # Dockstore: offset counts pages
            if isinstance(items, list):
                state.total = int(offset) * (len(tools) if by_page else 1) + len(items)
    next_page = headers.get("next_page")
    if next_page:
        paging["next_page_style"] = _offset_style(URL(urljoin(first.url, next_page)))
        state.page_cap = len(tools) if len(tools) < PAGE else None
        second = await client.get(urljoin(first.url, next_page))
        more = second.json() if second.status == 200 else None
        first_ids = {str(t.get("id")) for t in tools if isinstance(t, dict)}
        if isinstance(more, list) and more:
            ids = {str(t.get("id")) for t in more if isinstance(t, dict)}
            advances = not ids <= first_ids
            paging["next_page_advances"] = advances
            if not advances:
                report.deduct(15, "next_page does not advance")
        if state.total is None:
            state.total = len(tools) + (len(more) if isinstance(more, list) else 0)
            paging["size_is_lower_bound"] = True
    elif len(tools) >= PAGE:
        paging["next_page"] = "missing although the page is full"
        report.deduct(10, "no next_page although more tools exist")
        state.total = len(tools)
        paging["size_is_lower_bound"] = True
    else:
        state.total = state.total or len(tools)
    if len(tools) >= 2:
        probe_offset = await client.get(URL(f"{base}/tools").with_query(offset="1", limit="1"))
        answer = probe_offset.json() if probe_offset.status == 200 else None
        honoured = (
            isinstance(answer, list)
            and len(answer) == 1
            and isinstance(answer[0], dict)
            and isinstance(tools[1], dict)
            and answer[0].get("id") == tools[1].get("id")
        )
        paging["numeric_offsets_honoured"] = honoured
        if not honoured:
            report.deduct(5, "numeric offsets not honoured")
    f["estimated_tools"] = state.total


def _offset_style(url: URL) -> str:
    offset = url.query.get("offset")
    if offset is None:
        return "opaque (no offset parameter)"
    return "numeric offset" if offset.isdigit() else "opaque offset"


async def _validators(client: _Client, report: ProbeReport, first: _Response) -> None:
    etag = first.headers.get("ETag")
    modified = first.headers.get("Last-Modified")
    cond: dict[str, Any] = {"etag": etag is not None, "last_modified": modified is not None}
    report.findings["conditional_requests"] = cond
    if etag is None and modified is None:
        report.deduct(5, "no ETag or Last-Modified on /tools")
        return
    headers = {"If-None-Match": etag} if etag else {"If-Modified-Since": modified or ""}
    again = await client.get(first.url, headers=headers)
    cond["answers_304"] = again.status == 304
    if again.status != 304:
        report.deduct(5, "a conditional request for an unchanged page is not answered 304")


async def _ids(client: _Client, base: str, report: ProbeReport, sample: list[Any]) -> None:
    tool_id = str(sample[0]["id"])
    special = sorted({c for c in tool_id if c in "/#:?% "})
    r = await client.get(f"{base}/tools/{quote(tool_id, safe='')}")
    found = r.status == 200 and isinstance(r.json(), dict)
    report.findings["id_encoding"] = {
        "example": tool_id,
        "special_characters": special,
        "found_by_percent_encoded_id": found,
    }
    if not found:
        report.deduct(10, "a tool is not found by its percent-encoded id")


async def _sample(  # noqa: PLR0915 - one check of a sample of tools, step by step
    client: _Client, base: str, report: ProbeReport, state: _State, sample: list[Any]
) -> None:
    versions_seen = 0
    with_meta = 0
    files_checked = {"with_sha256": 0, "without": 0, "correct": 0, "mismatch": 0}
    report.findings["checksums"] = files_checked
    descriptor_files = 0
    version_count = 0
    for tool in sample:
        tool_url = f"{base}/tools/{quote(str(tool['id']), safe='')}"
        listing_response = await client.get(f"{tool_url}/versions")
        versions = (
            listing_response.json() if listing_response.status == 200 else tool.get("versions")
        )
        if not isinstance(versions, list):
            continue
        version_count += len(versions)
        for v in versions[:5]:
            if not isinstance(v, dict):
                continue
            _check(report, "ToolVersion", v)
            versions_seen += 1
            with_meta += v.get("meta_version") not in (None, "")
        first = next((v for v in versions if isinstance(v, dict)), None)
        if first is None:
            continue
        key = str(first.get("id") or first.get("name") or "")
        types = first.get("descriptor_type") or []
        if not key or not isinstance(types, list) or not types:
            continue
        version_url = f"{tool_url}/versions/{quote(key, safe='')}/{quote(str(types[0]), safe='')}"
        files = await client.get(f"{version_url}/files")
        listing = files.json() if files.status == 200 else None
        if isinstance(listing, list):
            state.files_ok = True
            descriptor_files += len(listing)
            for entry in listing[:10]:
                _check(report, "ToolFile", entry)
        descriptor = await client.get(f"{version_url}/descriptor")
        wrapper = descriptor.json() if descriptor.status == 200 else None
        if isinstance(wrapper, dict):
            _check(report, "FileWrapper", wrapper)
            declared = declared_sha256(wrapper.get("checksum"))
            content = wrapper.get("content")
            if declared is None:
                files_checked["without"] += 1
            else:
                files_checked["with_sha256"] += 1
                if isinstance(content, str):
                    actual = hashlib.sha256(content.encode("utf-8")).hexdigest()
                    files_checked["correct" if actual == declared else "mismatch"] += 1
    state.meta_version = versions_seen > 0 and with_meta == versions_seen
    report.findings["meta_version"] = f"{with_meta} of {versions_seen} sampled versions"
    if versions_seen and with_meta < versions_seen:
        report.deduct(5, "versions without meta_version")
    if files_checked["without"]:
        report.deduct(5, "sampled descriptors without a sha256 checksum")
    if files_checked["mismatch"]:
        report.deduct(15, "a sampled checksum does not match the content")
    if sample:
        state.versions_per_tool = max(1.0, version_count / len(sample))
    if version_count:
        state.files_per_version = max(1.0, descriptor_files / max(1, len(sample)))


def _suggest(
    base: str, name: str, report: ProbeReport, state: _State, client: _Client
) -> UpstreamConfig:
    total = state.total or 0
    latency = sorted(client.latencies)[len(client.latencies) // 2] if client.latencies else 0.5
    concurrency = 2 if state.rate_limit or latency > 2.0 else 4
    mirror = state.files_ok and total <= 50_000
    page_size = state.page_cap or PAGE
    per_tool = 1 + (state.versions_per_tool * (2 + state.files_per_version) if mirror else 0)
    requests = total / max(1, page_size) + total * per_tool
    estimate = requests * latency / concurrency
    if state.rate_limit:
        estimate = max(estimate, requests / state.rate_limit)
    report.findings["estimated_first_harvest"] = (
        f"{int(requests)} requests, about {_duration(estimate)} "
        f"of network time (median latency {latency * 1000:.0f} ms, concurrency {concurrency}; "
        "storing and merging add to it)"
    )
    kind = "aggregator" if state.aggregator else "trs"
    if not report.findings.get("paging", {}).get("headers") and not state.page_limit_honoured:
        kind = "static"
    parts = urlsplit(base)
    return UpstreamConfig(
        name=name,
        url=base,
        kind=kind,
        mode="mirror" if mirror else "index",
        page_size=page_size,
        change_detection="auto" if state.meta_version else "fetch",
        concurrency=concurrency,
        schedule="every 6h" if total < 10_000 else "every 24h",
        rate_limit=round(state.rate_limit, 2),
        allow_http=parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost"),
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
