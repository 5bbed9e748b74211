"""``/aggregator/v1/admin/``: plan, apply, pause, resume, harvest now, cancel, audit.

Every request needs ``Authorization: Bearer <token>`` (``trs-aggregator token create``):
``operator`` tokens may pause, resume, harvest, cancel and read the audit log, ``admin``
tokens may also plan and change upstreams. Every action, refused ones included, is recorded
in the audit log.
"""

from __future__ import annotations

import tomllib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg
import orjson
from aiohttp import web

from aggregator.api.middleware import error_response
from aggregator.config import UpstreamConfig, from_dict, upstream_from_table
from aggregator.db import operations as ops_db
from aggregator.db.upstreams import request_harvest
from aggregator.errors import ConfigError
from aggregator.keys import CONFIG, DB_POOL
from aggregator.ops.upstreams import plan_or_apply, stored_upstreams

PREFIX: Final = "/aggregator/v1/admin"
MAX_BODY: Final = 1024 * 1024
DEFAULT_AUDIT: Final = 50
MAX_AUDIT: Final = 500

Result = tuple[int, Any, dict[str, Any]]  # status, body, audit detail
Action = Callable[[web.Request, ops_db.Token], Awaitable[Result]]


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _token(request: web.Request) -> ops_db.Token | None:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    return await ops_db.verify_token(request.app[DB_POOL], presented.strip())


def action(name: str, role: str) -> Callable[[Action], Callable[[web.Request], Awaitable[Any]]]:
    """Wrap *name*'s handler: authenticate, check *role*, run, audit the outcome."""

    def wrap(handler: Action) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def run(request: web.Request) -> web.Response:
            pool = request.app[DB_POOL]
            target = request.match_info.get("name")
            token = await _token(request)

            async def record(outcome: str, status: int, detail: Any = None) -> None:
                await ops_db.audit(
                    pool,
                    actor=f"token:{token.name}" if token else "anonymous",
                    role=token.role if token else None,
                    action=name,
                    target=target,
                    outcome=outcome,
                    status=status,
                    detail=detail,
                )

            if token is None:
                await ops_db.audit_anonymous_refusal(
                    pool, action=name, target=target, remote=request.remote
                )
                response = error_response(401, "a valid bearer token is required")
                response.headers["WWW-Authenticate"] = 'Bearer realm="trs-aggregator admin"'
                return response
            if not token.allows(role):
                await record("refused", 403)
                return error_response(403, f"this needs the {role} role; the token is {token.role}")
            try:
                status, body, detail = await handler(request, token)
            except _Refused as e:
                await record("failed", e.status, {"error": e.message})
                return error_response(e.status, e.message)
            await record("ok", status, detail)
            return web.Response(
                status=status, body=orjson.dumps(body), content_type="application/json"
            )

        run.__doc__ = handler.__doc__
        return run

    return wrap


async def _document(request: web.Request) -> dict[str, Any]:
    """The request body: a TOML or JSON document."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _Refused(413, f"the body is over {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY:
            raise _Refused(413, f"the body is over {MAX_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        if request.content_type == "application/json":
            data = orjson.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (orjson.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise _Refused(400, f"the body is not a valid TOML or JSON document: {e}") from None
    if not isinstance(data, dict):
        raise _Refused(400, "the body must be a TOML document or a JSON object")
    return data


async def _run_plan(
    request: web.Request, desired: list[UpstreamConfig] | None, *, apply: bool
) -> Result:
    try:
        async with request.app[DB_POOL].acquire() as conn:
            plan = await plan_or_apply(
                conn, request.app[CONFIG], desired, apply=apply, source="api"
            )
    except ConfigError as e:
        raise _Refused(400, str(e)) from None
    body = plan.as_json()
    return 200, body, {"changes": body["changes"], "summary": body["summary"]}


async def _desired_from_body(request: web.Request) -> list[UpstreamConfig]:
    data = await _document(request)
    try:
        return list(from_dict({"upstreams": data.get("upstreams", [])}).upstreams)
    except ConfigError as e:
        raise _Refused(400, str(e)) from None


@action("plan", "admin")
async def plan(request: web.Request, _token: ops_db.Token) -> Result:
    """POST /admin/upstreams/plan: what applying the configuration in the body would do."""
    return await _run_plan(request, await _desired_from_body(request), apply=False)


@action("apply", "admin")
async def apply(request: web.Request, _token: ops_db.Token) -> Result:
    """POST /admin/upstreams/apply: make the upstream list the one in the body, live."""
    return await _run_plan(request, await _desired_from_body(request), apply=True)


@action("put_upstream", "admin")
async def put_upstream(request: web.Request, _token: ops_db.Token) -> Result:
    """PUT /admin/upstreams/{name}: add or change one upstream (its table in the body);
    ``?dry_run=true`` only plans."""
    name = request.match_info["name"]
    table = await _document(request)
    table = {**table, "name": name}
    try:
        upstream = upstream_from_table(table, f"upstreams[{name}]")
    except ConfigError as e:
        raise _Refused(400, str(e)) from None
    current = await stored_upstreams(request.app[DB_POOL])
    desired = [u for u in current if u.name != name] + [upstream]
    return await _run_plan(request, desired, apply=not _dry_run(request))


@action("remove_upstream", "admin")
async def delete_upstream(request: web.Request, _token: ops_db.Token) -> Result:
    """DELETE /admin/upstreams/{name}: remove one upstream (its records are tombstoned, kept);
    ``?dry_run=true`` only plans."""
    name = request.match_info["name"]
    current = await stored_upstreams(request.app[DB_POOL])
    if name not in {u.name for u in current}:
        raise _Refused(404, f"no upstream named {name!r}")
    desired = [u for u in current if u.name != name]
    return await _run_plan(request, desired, apply=not _dry_run(request))


def _dry_run(request: web.Request) -> bool:
    return request.query.get("dry_run", "").lower() in ("1", "true", "yes")


async def _pause(request: web.Request, token: ops_db.Token, *, paused: bool) -> Result:
    name = request.match_info["name"]
    async with request.app[DB_POOL].acquire() as conn:
        changed = await ops_db.set_paused(conn, name, paused=paused, by=f"token:{token.name}")
    if changed is None:
        raise _Refused(404, f"no upstream named {name!r}")
    return 200, {"name": name, "paused": paused, "changed": changed}, {"changed": changed}


@action("pause", "operator")
async def pause(request: web.Request, token: ops_db.Token) -> Result:
    """POST /admin/upstreams/{name}/pause: stop its scheduled harvests until resumed."""
    return await _pause(request, token, paused=True)


@action("resume", "operator")
async def resume(request: web.Request, token: ops_db.Token) -> Result:
    """POST /admin/upstreams/{name}/resume: schedule its harvests again."""
    return await _pause(request, token, paused=False)


@action("harvest", "operator")
async def harvest_now(request: web.Request, token: ops_db.Token) -> Result:
    """POST /admin/upstreams/{name}/harvest: ask a worker to harvest it now."""
    name = request.match_info["name"]
    current = {u.name for u in await stored_upstreams(request.app[DB_POOL])}
    if name not in current:
        raise _Refused(404, f"no upstream named {name!r}")
    async with request.app[DB_POOL].acquire() as conn:
        ids = await request_harvest(conn, [name], requested_by=f"token:{token.name}")
    return 202, {"name": name, "request_id": ids[name]}, {"request_id": ids[name]}


@action("cancel", "operator")
async def cancel(request: web.Request, token: ops_db.Token) -> Result:
    """POST /admin/upstreams/{name}/cancel: ask the worker running its harvest to stop it."""
    name = request.match_info["name"]
    async with request.app[DB_POOL].acquire() as conn:
        run_id = await ops_db.request_cancel(conn, name, by=f"token:{token.name}")
    if run_id is None:
        raise _Refused(409, f"no harvest of {name!r} is running")
    return 202, {"name": name, "run_id": run_id}, {"run_id": run_id}


def _limit(request: web.Request) -> tuple[int, int | None]:
    try:
        limit = int(request.query.get("limit") or DEFAULT_AUDIT)
        before = int(request.query["before"]) if request.query.get("before") else None
    except ValueError:
        raise _Refused(400, "limit and before must be integers") from None
    if not 1 <= limit <= MAX_AUDIT:
        raise _Refused(400, f"limit must be between 1 and {MAX_AUDIT}")
    return limit, before


@action("audit", "operator")
async def audit_log(request: web.Request, _token: ops_db.Token) -> Result:
    """GET /admin/audit: admin actions, newest first (``limit``, ``before`` an id)."""
    limit, before = _limit(request)
    try:
        rows = await ops_db.list_audit(request.app[DB_POOL], limit=limit, before=before)
    except asyncpg.DataError:
        raise _Refused(400, "before is out of range") from None
    return (
        200,
        [
            {
                "id": r["id"],
                "at": r["at"].isoformat(),
                "actor": r["actor"],
                "role": r["role"],
                "action": r["action"],
                "target": r["target"],
                "outcome": r["outcome"],
                "status": r["status"],
                "detail": r["detail"],
            }
            for r in rows
        ],
        {"limit": limit},
    )


def add_routes(app: web.Application) -> None:
    """Mount the admin API."""
    r = app.router
    r.add_post(PREFIX + "/upstreams/plan", plan)
    r.add_post(PREFIX + "/upstreams/apply", apply)
    r.add_put(PREFIX + "/upstreams/{name}", put_upstream)
    r.add_delete(PREFIX + "/upstreams/{name}", delete_upstream)
    r.add_post(PREFIX + "/upstreams/{name}/pause", pause)
    r.add_post(PREFIX + "/upstreams/{name}/resume", resume)
    r.add_post(PREFIX + "/upstreams/{name}/harvest", harvest_now)
    r.add_post(PREFIX + "/upstreams/{name}/cancel", cancel)
    r.add_get(PREFIX + "/audit", audit_log)


def _err(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _operation(
    summary: str,
    op_id: str,
    role: str,
    ok: str,
    *,
    body: bool = False,
    status: str = "200",
    name: bool = True,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "description": f"Needs a bearer token of role `{role}`"
        + (" or `admin`" if role == "operator" else "")
        + ". Recorded in the audit log.",
        "operationId": op_id,
        "tags": ["admin"],
        "security": [{"bearerToken": []}],
        "responses": {
            status: {
                "description": ok,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "400": _err("The body or a parameter is invalid."),
            "401": _err("No token, or not a live one."),
            "403": _err("The token's role does not allow this."),
        },
    }
    if name:
        op["parameters"] = [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
        ]
        op["responses"]["404"] = _err("No such upstream.")
    if body:
        op["requestBody"] = {
            "description": "A configuration document (TOML, or JSON with "
            "`Content-Type: application/json`); only its `upstreams` are read.",
            "content": {
                "application/toml": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
        op["responses"]["413"] = _err("The body is over 1 MiB.")
    return op


def describe(doc: dict[str, Any]) -> None:
    """Add the admin API and its security scheme to the OpenAPI document *doc*."""
    doc.setdefault("components", {}).setdefault("securitySchemes", {})["bearerToken"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from `trs-aggregator token create NAME --role admin|operator`.",
    }
    plan_text = "The plan: upstream changes and their consequences for merged tools."
    paths = {
        "/upstreams/plan": {
            "post": _operation(
                "What applying the configuration in the body would change",
                "adminPlan",
                "admin",
                plan_text,
                body=True,
                name=False,
            )
        },
        "/upstreams/apply": {
            "post": _operation(
                "Make the upstream list the configuration in the body, live",
                "adminApply",
                "admin",
                plan_text,
                body=True,
                name=False,
            )
        },
        "/upstreams/{name}": {
            "put": _operation(
                "Add or change one upstream (`?dry_run=true` plans only)",
                "adminPutUpstream",
                "admin",
                plan_text,
                body=True,
            ),
            "delete": _operation(
                "Remove one upstream; its records are tombstoned, kept "
                "(`?dry_run=true` plans only)",
                "adminDeleteUpstream",
                "admin",
                plan_text,
            ),
        },
        "/upstreams/{name}/pause": {
            "post": _operation(
                "Stop the upstream's scheduled harvests", "adminPause", "operator", "Paused."
            )
        },
        "/upstreams/{name}/resume": {
            "post": _operation(
                "Restart the upstream's scheduled harvests", "adminResume", "operator", "Resumed."
            )
        },
        "/upstreams/{name}/harvest": {
            "post": _operation(
                "Ask a worker to harvest the upstream now",
                "adminHarvest",
                "operator",
                "Requested.",
                status="202",
            )
        },
        "/upstreams/{name}/cancel": {
            "post": _operation(
                "Ask the worker running the upstream's harvest to cancel it",
                "adminCancel",
                "operator",
                "Cancel requested.",
                status="202",
            )
        },
        "/audit": {
            "get": _operation(
                "Admin actions, newest first (`limit`, `before`)",
                "adminAudit",
                "operator",
                "Audit records.",
                name=False,
            )
        },
    }
    paths["/upstreams/{name}/cancel"]["post"]["responses"]["409"] = _err("Nothing is running.")
    for path, item in paths.items():
        doc["paths"][f"/admin{path}"] = {"servers": [{"url": "/aggregator/v1"}], **item}
