"""Operating the mirror: upstreams plan/apply, pause/resume, tokens and the admin API."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from aggregator.app import create_app
from aggregator.config import Config, DatabaseConfig, HarvestConfig, UpstreamConfig, load
from aggregator.db.operations import create_token
from aggregator.demo.registry import make_registry_app
from aggregator.harvest.runner import make_session
from aggregator.ops.live import LiveWorker
from aggregator.ops.upstreams import plan_or_apply
from tests.support import catalogue, cwl_tool, eventually, fetch, harvest, upstream_toml
from tests.test_cli import run_cli

TRS = "/ga4gh/trs/v2"
ADMIN = "/aggregator/v1/admin"
U1 = "0d5c3a8e-94a5-4a36-9d0c-3f2a6a0c6e11"


def registry(*tools: dict[str, Any], middlewares: Any = ()) -> web.Application:
    """A TRS registry serving *tools*."""
    return make_registry_app(catalogue(list(tools)), middlewares=list(middlewares))


def toml_config(dsn: str, upstreams: list[tuple[str, TestServer, dict[str, Any]]]) -> str:
    """A configuration document naming *upstreams* (name, server, extra keys)."""
    lines = ["[database]", f"url = {json.dumps(dsn)}", "pool_max = 4"]
    for name, server, extra in upstreams:
        lines += upstream_toml(name, server, **extra)
    return "\n".join(lines) + "\n"


def config_of(dsn: str, servers: dict[str, TestServer], **priorities: int) -> Config:
    """A Config of *servers*, with the given priorities."""
    ups = tuple(
        UpstreamConfig(
            name=n,
            url=str(s.make_url(TRS)),
            retries=0,
            timeout_s=5,
            priority=priorities.get(n, 100),
        )
        for n, s in servers.items()
    )
    return Config(
        database=DatabaseConfig(url=dsn, pool_max=4),
        harvest=HarvestConfig(request_poll="1s"),
        upstreams=ups,
    )


@pytest.fixture
async def two_registries(aiohttp_server: Any) -> dict[str, TestServer]:
    """Registry a: a tool shared with b (same UUID alias) and one of its own; b likewise."""
    a = await aiohttp_server(registry(cwl_tool("shared", aliases=[U1]), cwl_tool("only-a")))
    b = await aiohttp_server(registry(cwl_tool("shared-b", aliases=[U1]), cwl_tool("only-b")))
    c = await aiohttp_server(registry(cwl_tool("only-c")))
    return {"a": a, "b": b, "c": c}


async def catalogue_ids(dsn: str) -> set[str]:
    """The ids of the merged tools the API serves."""
    return {r["id"] for r in await fetch(dsn, "select id from catalogue_tools")}


async def test_plan_shows_each_kind_of_change_and_apply_makes_it_so(
    db_dsn: str, pool: asyncpg.Pool[Any], two_registries: dict[str, TestServer], tmp_path: Path
) -> None:
    """plan prints added, removed and changed upstreams (with keys) and what the catalogue
    loses; apply tombstones a removed upstream's records and a re-added one brings them back;
    plan after apply shows nothing; a priority change shows the primary source changing."""
    s = two_registries
    await harvest(pool, config_of(db_dsn, {"a": s["a"], "b": s["b"]}, a=10, b=20))
    before = await catalogue_ids(db_dsn)
    assert {"only-a", "only-b"} <= before and len(before) == 3
    shared = (before - {"only-a", "only-b"}).pop()

    cfg = tmp_path / "aggregator.toml"
    cfg.write_text(
        toml_config(db_dsn, [("a", s["a"], {"priority": 10}), ("b", s["b"], {"priority": 5})])
    )
    plan = await run_cli(tmp_path, "upstreams", "plan", "--config", str(cfg))
    assert plan.returncode == 0, plan.stderr
    assert '~ upstream "b"' in plan.stdout
    assert "priority: 20 -> 5" in plan.stdout
    assert f'~ tool "{shared}": primary source changes: a -> b' in plan.stdout
    assert "Plan: 0 to add, 1 to change, 0 to remove" in plan.stdout
    assert await catalogue_ids(db_dsn) == before  # planning changed nothing
    assert (await fetch(db_dsn, "select priority from upstreams where name = 'b'"))[0][
        "priority"
    ] == 20

    # a removed, c added, b's schedule changed.
    cfg.write_text(
        toml_config(
            db_dsn,
            [("b", s["b"], {"priority": 20, "schedule": "every 1h"}), ("c", s["c"], {})],
        )
    )
    plan = await run_cli(tmp_path, "upstreams", "plan", "--config", str(cfg))
    assert plan.returncode == 0, plan.stderr
    out = plan.stdout
    assert '+ upstream "c" (added)' in out
    assert '- upstream "a" (removed: 2 records tombstoned, kept)' in out
    assert 'schedule: "every 6h" -> "every 1h"' in out
    assert '- tool "only-a": its only sources go: a' in out
    assert f'~ tool "{shared}": loses source a' in out
    assert "Plan: 1 to add, 1 to change, 1 to remove; 2 tools affected." in out

    applied = await run_cli(tmp_path, "upstreams", "apply", "--json", "--config", str(cfg))
    assert applied.returncode == 0, applied.stderr
    body = json.loads(applied.stdout)
    assert body["applied"] is True
    assert {c["name"]: c["action"] for c in body["changes"]} == {
        "a": "remove",
        "b": "change",
        "c": "add",
    }
    ids = await catalogue_ids(db_dsn)
    assert "only-a" not in ids and "only-b" in ids
    kept = await fetch(
        db_dsn,
        "select count(*) from upstream_tools t join upstreams u on u.id = t.upstream_id "
        "where u.name = 'a'",
    )
    assert kept[0]["count"] == 2  # tombstoned, not deleted
    async with pool.acquire() as conn:
        again = await plan_or_apply(conn, load(cfg), apply=False)
    assert again.empty and "No changes." in again.render()

    # a comes back: its kept records return without a harvest.
    cfg.write_text(
        toml_config(
            db_dsn,
            [
                ("a", s["a"], {"priority": 10}),
                ("b", s["b"], {"priority": 20, "schedule": "every 1h"}),
                ("c", s["c"], {}),
            ],
        )
    )
    async with pool.acquire() as conn:
        readd = (await plan_or_apply(conn, load(cfg), apply=False)).render()
    assert '+ upstream "a" (added back: 2 kept records return)' in readd
    assert '+ tool "only-a": served again from a' in readd
    applied = await run_cli(tmp_path, "upstreams", "apply", "--config", str(cfg))
    assert applied.returncode == 0, applied.stderr
    assert "Applied: 1 to add" in applied.stdout
    assert {"only-a", "only-b", shared} <= await catalogue_ids(db_dsn)
    audit = await fetch(db_dsn, "select action, outcome, actor from audit_log order by id")
    assert [(r["action"], r["outcome"]) for r in audit] == [("apply", "ok"), ("apply", "ok")]
    assert audit[0]["actor"].startswith("cli:")


async def make_token(tmp_path: Path, dsn: str, name: str, role: str) -> str:
    """Create a token through the CLI; return it."""
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(toml_config(dsn, []))
    made = await run_cli(tmp_path, "token", "create", name, "--role", role, "--config", str(cfg))
    assert made.returncode == 0, made.stderr
    assert "shown only now" in made.stderr
    return made.stdout.strip()


async def test_tokens_roles_and_audit(
    db_dsn: str,
    pool: asyncpg.Pool[Any],
    two_registries: dict[str, TestServer],
    tmp_path: Path,
    aiohttp_client: Any,
) -> None:
    """No token or a wrong one is 401, an operator changing upstreams is 403 (TRS Error JSON);
    an operator pauses and resumes, an admin applies; tokens are stored hashed, every action
    is in the audit log, and a revoked token stops working. Reads stay public."""
    s = two_registries
    config = config_of(db_dsn, {"a": s["a"]})
    await harvest(pool, config)
    admin = await make_token(tmp_path, db_dsn, "deployer", "admin")
    async with pool.acquire() as conn:
        operator = await create_token(conn, "oncall", "operator")
    assert admin.startswith("trsa_") and admin != operator
    stored = await fetch(db_dsn, "select lookup, token_sha256 from api_tokens")
    assert all(admin not in (r["lookup"], r["token_sha256"]) for r in stored)

    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))

    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    r = await client.post(f"{ADMIN}/upstreams/a/pause")
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(await r.json()) == {"code", "message"}
    r = await client.post(f"{ADMIN}/upstreams/a/pause", headers=auth(admin[:-2] + "xx"))
    assert r.status == 401
    body = f'[[upstreams]]\nname = "c"\nurl = "{s["c"].make_url(TRS)}"\n'
    r = await client.post(f"{ADMIN}/upstreams/apply", data=body, headers=auth(operator))
    assert r.status == 403
    assert (await r.json())["code"] == 403

    r = await client.post(f"{ADMIN}/upstreams/a/pause", headers=auth(operator))
    assert r.status == 200 and (await r.json())["paused"] is True
    listed = await (await client.get("/aggregator/v1/upstreams/a")).json()  # public
    assert listed["state"] == "paused" and listed["paused_by"] == "token:oncall"
    r = await client.post(f"{ADMIN}/upstreams/a/resume", headers=auth(operator))
    assert r.status == 200
    r = await client.post(f"{ADMIN}/upstreams/nope/pause", headers=auth(operator))
    assert r.status == 404 and set(await r.json()) == {"code", "message"}

    # The admin plans, then applies, the document in the body: a and c.
    doc = toml_config(db_dsn, [("a", s["a"], {}), ("c", s["c"], {})])
    r = await client.post(f"{ADMIN}/upstreams/plan", data=doc, headers=auth(admin))
    assert r.status == 200, await r.text()
    planned = await r.json()
    assert planned["applied"] is False
    assert [(c["name"], c["action"]) for c in planned["changes"]] == [("c", "add")]
    r = await client.post(f"{ADMIN}/upstreams/apply", data=doc, headers=auth(admin))
    assert (await r.json())["applied"] is True
    r = await client.post(
        f"{ADMIN}/upstreams/apply",
        data='[[upstreams]]\nname = 1\nurl = "http://127.0.0.1/"\n',
        headers=auth(admin),
    )
    assert r.status == 400 and "upstreams[0].name" in (await r.json())["message"]
    # One upstream at a time: PUT changes c's priority, DELETE plans its removal.
    r = await client.put(
        f"{ADMIN}/upstreams/c",
        data=json.dumps({"url": str(s["c"].make_url(TRS)), "priority": 7}),
        headers={**auth(admin), "Content-Type": "application/json"},
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["changes"][0]["keys"]["priority"] == {"old": 100, "new": 7}
    r = await client.delete(f"{ADMIN}/upstreams/c?dry_run=true", headers=auth(admin))
    assert (await r.json())["changes"] == [
        {"name": "c", "action": "remove", "keys": {}, "records": 0}
    ]
    assert "c" in {
        r["name"]
        for r in await fetch(db_dsn, "select name from upstreams where removed_at is null")
    }
    r = await client.post(f"{ADMIN}/upstreams/c/harvest", headers=auth(operator))
    assert r.status == 202
    pending = await fetch(db_dsn, "select requested_by from harvest_requests")
    assert [p["requested_by"] for p in pending] == ["token:oncall"]
    r = await client.post(f"{ADMIN}/upstreams/c/cancel", headers=auth(operator))
    assert r.status == 409  # nothing running

    r = await client.get(f"{ADMIN}/audit?limit=100", headers=auth(operator))
    assert r.status == 200
    entries = await r.json()
    log = [(e["actor"], e["action"], e["outcome"], e["status"]) for e in entries]
    log.reverse()
    # The two refusals without a valid token share one record, which counts them.
    assert log[:3] == [
        ("cli:" + log[0][0].split(":", 1)[1], "token_create", "ok", None),
        ("anonymous", "pause", "refused", 401),
        ("token:oncall", "apply", "refused", 403),
    ]
    anonymous = entries[-2]["detail"]
    assert anonymous["count"] == 2 and anonymous["last_target"] == "a"
    assert anonymous["remote"] == "127.0.0.1"
    assert ("token:oncall", "pause", "ok", 200) in log
    assert ("token:deployer", "apply", "ok", 200) in log
    assert ("token:deployer", "apply", "failed", 400) in log
    assert ("token:oncall", "cancel", "failed", 409) in log
    assert (await client.get(f"{ADMIN}/audit")).status == 401

    cfg = tmp_path / "deployer.toml"
    revoked = await run_cli(tmp_path, "token", "revoke", "oncall", "--config", str(cfg))
    assert revoked.returncode == 0, revoked.stderr
    r = await client.post(f"{ADMIN}/upstreams/a/pause", headers=auth(operator))
    assert r.status == 401
    doc = await (await client.get("/aggregator/v1/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearerToken"]["scheme"] == "bearer"
    assert doc["paths"]["/admin/upstreams/plan"]["post"]["security"] == [{"bearerToken": []}]
    assert "403" in doc["paths"]["/admin/upstreams/{name}/pause"]["post"]["responses"]
    tokens = await fetch(db_dsn, "select name from api_tokens where revoked_at is not null")
    assert [t["name"] for t in tokens] == ["oncall"]


async def test_a_running_worker_follows_apply_pause_and_cancel(
    db_dsn: str,
    pool: asyncpg.Pool[Any],
    aiohttp_server: Any,
    aiohttp_client: Any,
    tmp_path: Path,
) -> None:
    """A worker started with upstream a harvests c once c is applied through the API, skips a
    paused upstream's scheduled runs, and stops a running harvest an operator cancels."""
    release = asyncio.Event()

    @web.middleware
    async def hold(request: web.Request, handler: Any) -> web.StreamResponse:
        if "/versions" in request.path:
            await release.wait()
        return await handler(request)

    a = await aiohttp_server(registry(cwl_tool("only-a")))
    c = await aiohttp_server(registry(cwl_tool("only-c")))
    slow = await aiohttp_server(registry(cwl_tool("slow"), middlewares=[hold]))
    config = config_of(db_dsn, {"a": a})
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    admin = await make_token(tmp_path, db_dsn, "ci", "admin")
    auth = {"Authorization": f"Bearer {admin}"}

    async def runs(name: str) -> list[asyncpg.Record]:
        return await fetch(
            db_dsn,
            "select r.status, r.error from harvest_runs r join upstreams u "
            "on u.id = r.upstream_id where u.name = $1 order by r.id",
            name,
        )

    async with make_session(config) as session:
        async with pool.acquire() as conn:
            from aggregator.db.upstreams import upsert_upstreams

            await upsert_upstreams(conn, config.upstreams)
        worker = LiveWorker(pool, session, config)
        await worker.start()
        try:
            await eventually(lambda: _finished(runs("a")))
            r = await client.put(
                f"{ADMIN}/upstreams/c", data=f'url = "{c.make_url(TRS)}"', headers=auth
            )
            assert r.status == 200, await r.text()
            await eventually(lambda: _finished(runs("c")))
            assert "only-c" in await catalogue_ids(db_dsn)

            r = await client.post(f"{ADMIN}/upstreams/c/pause", headers=auth)
            await eventually(lambda: _paused_in(worker, "c"))
            outcome = await worker.harvester.harvest(
                worker.config.upstream("c"), trigger="scheduled"
            )
            assert (outcome.status, outcome.error) == ("skipped", "paused")

            r = await client.put(
                f"{ADMIN}/upstreams/slow", data=f'url = "{slow.make_url(TRS)}"', headers=auth
            )
            assert r.status == 200
            await eventually(lambda: _running(runs("slow")))
            r = await client.post(f"{ADMIN}/upstreams/slow/cancel", headers=auth)
            assert r.status == 202, await r.text()
            done = await eventually(lambda: _finished(runs("slow")))
            assert done[-1]["status"] == "abandoned"
            assert done[-1]["error"] == "cancelled by token:ci"
        finally:
            release.set()
            await worker.stop()


async def _finished(rows: Any) -> list[asyncpg.Record] | None:
    got = await rows
    return got if got and got[-1]["status"] != "running" else None


async def _running(rows: Any) -> bool:
    got = await rows
    return bool(got) and got[-1]["status"] == "running"


async def _paused_in(worker: LiveWorker, name: str) -> bool:
    row = await worker.pool.fetchrow("select paused from upstreams where name = $1", name)
    return bool(row and row["paused"])


async def test_admin_bodies_are_read_whole_and_bounded(
    db_dsn: str, pool: asyncpg.Pool[Any], aiohttp_client: Any
) -> None:
    """A configuration body longer than one network chunk is read whole; one over 1 MiB is
    refused with 413; a body that is neither TOML nor JSON is 400 - each as TRS Error JSON."""
    config = config_of(db_dsn, {})
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    async with pool.acquire() as conn:
        token = await create_token(conn, "ci", "admin")
    auth = {"Authorization": f"Bearer {token}"}
    padding = "# padding\n" * 30_000  # ~300 KB of comments before the table
    doc = padding + '[[upstreams]]\nname = "far"\nurl = "http://127.0.0.1:9/ga4gh/trs/v2"\n'
    r = await client.post(f"{ADMIN}/upstreams/plan", data=io.BytesIO(doc.encode()), headers=auth)
    assert r.status == 200, await r.text()
    assert [c["name"] for c in (await r.json())["changes"]] == ["far"]
    r = await client.post(
        f"{ADMIN}/upstreams/plan", data=io.BytesIO(b"#" * (1024 * 1024 + 1)), headers=auth
    )
    assert r.status == 413 and (await r.json())["code"] == 413
    r = await client.post(f"{ADMIN}/upstreams/plan", data="[[upstreams", headers=auth)
    assert r.status == 400 and "TOML" in (await r.json())["message"]


async def test_pause_and_resume_from_the_command_line(
    db_dsn: str, pool: asyncpg.Pool[Any], two_registries: dict[str, TestServer], tmp_path: Path
) -> None:
    """``pause NAME`` persists the pause (scheduled runs are then skipped), ``resume NAME``
    lifts it, an unknown name exits 1; both are audited."""
    s = two_registries
    config = config_of(db_dsn, {"a": s["a"]})
    await harvest(pool, config)
    cfg = tmp_path / "agg.toml"
    cfg.write_text(toml_config(db_dsn, [("a", s["a"], {})]))
    paused = await run_cli(tmp_path, "pause", "a", "--config", str(cfg))
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == "a: paused"
    async with make_session(config) as session:
        from aggregator.harvest.runner import Harvester

        outcome = await Harvester(pool, session, config).harvest(
            config.upstreams[0], trigger="scheduled"
        )
    assert (outcome.status, outcome.error) == ("skipped", "paused")
    resumed = await run_cli(tmp_path, "resume", "a", "--config", str(cfg))
    assert resumed.stdout.strip() == "a: resumed"
    row = await fetch(db_dsn, "select paused, paused_by from upstreams where name = 'a'")
    assert (row[0]["paused"], row[0]["paused_by"]) == (False, None)
    missing = await run_cli(tmp_path, "pause", "nope", "--config", str(cfg))
    assert missing.returncode == 1 and "no upstream named 'nope'" in missing.stderr
    audit = await fetch(db_dsn, "select action, target, outcome from audit_log order by id")
    assert [tuple(r) for r in audit] == [
        ("pause", "a", "ok"),
        ("resume", "a", "ok"),
        ("pause", "nope", "failed"),
    ]


async def test_a_restart_keeps_admin_api_changes_unless_the_file_changed(
    db_dsn: str,
    pool: asyncpg.Pool[Any],
    two_registries: dict[str, TestServer],
    tmp_path: Path,
    aiohttp_client: Any,
) -> None:
    """A command starting with the configuration file leaves alone an upstream changed or
    removed through the admin API while the file's entry for it stays as it was (and says so);
    an edited entry wins; ``upstreams apply`` makes the whole file current."""
    s = two_registries
    config = config_of(db_dsn, {"a": s["a"], "b": s["b"]})
    await harvest(pool, config)
    cfg = tmp_path / "aggregator.toml"

    def write(priority_a: int) -> None:
        cfg.write_text(
            toml_config(db_dsn, [("a", s["a"], {"priority": priority_a}), ("b", s["b"], {})])
        )

    async def merge() -> str:
        done = await run_cli(tmp_path, "merge", "--config", str(cfg))
        assert done.returncode == 0, done.stderr
        return done.stderr

    async def state() -> dict[str, tuple[int, bool]]:
        rows = await fetch(db_dsn, "select name, priority, removed_at from upstreams")
        return {r["name"]: (r["priority"], r["removed_at"] is not None) for r in rows}

    write(priority_a=10)
    await merge()
    assert await state() == {"a": (10, False), "b": (100, False)}

    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    auth = {"Authorization": f"Bearer {await make_token(tmp_path, db_dsn, 'ci', 'admin')}"}
    r = await client.put(
        f"{ADMIN}/upstreams/a",
        data=json.dumps({"url": str(s["a"].make_url(TRS)), "priority": 7}),
        headers={**auth, "Content-Type": "application/json"},
    )
    assert r.status == 200, await r.text()
    r = await client.delete(f"{ADMIN}/upstreams/b", headers=auth)
    assert r.status == 200, await r.text()
    assert await state() == {"a": (7, False), "b": (100, True)}
    assert "only-b" not in await catalogue_ids(db_dsn)

    # The same file again: both admin changes stay, and the command says why.
    said = await merge()
    assert await state() == {"a": (7, False), "b": (100, True)}
    assert said.count("upstream_config_kept") == 2
    assert "only-b" not in await catalogue_ids(db_dsn)

    # The operator edits a's entry: the file wins for a; b's entry is unchanged, so b stays
    # removed.
    write(priority_a=20)
    await merge()
    assert await state() == {"a": (20, False), "b": (100, True)}

    # An explicit apply makes the whole file current: b comes back with its records.
    applied = await run_cli(tmp_path, "upstreams", "apply", "--config", str(cfg))
    assert applied.returncode == 0, applied.stderr
    assert await state() == {"a": (20, False), "b": (100, False)}
    assert "only-b" in await catalogue_ids(db_dsn)
