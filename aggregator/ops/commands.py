"""The operator's commands: probe, upstreams plan|apply, pause, resume, token."""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
from typing import Any, Final

import orjson

from aggregator.config import Config
from aggregator.db import operations as ops_db
from aggregator.db.pool import connect
from aggregator.errors import ConfigError

COMMANDS: Final = ("probe", "upstreams", "pause", "resume", "token")


def actor() -> str:
    """Who runs this command, as the audit log names them."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


async def _audit(
    conn: Any,
    action: str,
    target: str | None,
    *,
    ok: bool,
    **detail: Any,
) -> None:
    await ops_db.audit(
        conn,
        actor=actor(),
        role=None,
        action=action,
        target=target,
        outcome="ok" if ok else "failed",
        detail=detail or None,
    )


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the operator's commands to the subparsers *sub*."""
    probe = sub.add_parser(
        "probe", parents=[common], help="examine a candidate upstream (stores nothing)"
    )
    probe.add_argument("url", help="the TRS base URL, e.g. https://example.org/ga4gh/trs/v2")
    probe.add_argument("--json", action="store_true", help="print one JSON object")
    probe.add_argument("--name", default=None, help="name for the suggested [[upstreams]] block")
    probe.add_argument(
        "--max-requests", type=int, default=60, help="most requests to send (default 60)"
    )
    probe.add_argument(
        "--time-limit", type=float, default=60.0, help="most seconds to spend (default 60)"
    )
    upstreams = sub.add_parser(
        "upstreams", parents=[common], help="compare or apply the configured upstream list"
    )
    action = upstreams.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("plan", "show what applying the configuration would change"),
        ("apply", "make the database match the configuration, live"),
    ):
        p = action.add_parser(name, parents=[common], help=text)
        p.add_argument("--json", action="store_true", help="print one JSON object")
    for name, text in (
        ("pause", "stop an upstream's scheduled harvests (persisted)"),
        ("resume", "restart an upstream's scheduled harvests"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("name", metavar="NAME")
    token = sub.add_parser("token", parents=[common], help="admin API tokens")
    token_action = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = token_action.add_parser(
        "create", parents=[common], help="create a token (printed once)"
    )
    create.add_argument("name", metavar="NAME")
    create.add_argument("--role", choices=ops_db.ROLES, required=True)
    revoke = token_action.add_parser("revoke", parents=[common], help="revoke a token")
    revoke.add_argument("name", metavar="NAME")
    token_action.add_parser("list", parents=[common], help="list tokens (never their secrets)")


async def run_command(args: argparse.Namespace, config: Config) -> int:
    """Run one of COMMANDS; return the exit status."""
    if args.command == "probe":
        from aggregator.ops.probe import probe  # noqa: PLC0415 - only probe needs it

        report = await probe(
            args.url,
            config,
            name=args.name,
            max_requests=args.max_requests,
            time_limit_s=args.time_limit,
        )
        if args.json:
            sys.stdout.write(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
            sys.stdout.write("\n")
        else:
            sys.stdout.write(report.render())
        return 0
    if config.database.url is None:
        raise ConfigError("database.url", "no database configured")
    conn = await connect(config.database.url)
    try:
        if args.command == "upstreams":
            return await _upstreams(conn, config, apply=args.action == "apply", json=args.json)
        if args.command in ("pause", "resume"):
            paused = args.command == "pause"
            changed = await ops_db.set_paused(conn, args.name, paused=paused, by=actor())
            await _audit(conn, args.command, args.name, ok=changed is not None)
            if changed is None:
                print(f"trs-aggregator: no upstream named {args.name!r}", file=sys.stderr)
                return 1
            state = "paused" if paused else "resumed"
            print(f"{args.name}: {state}" + ("" if changed else f" (it was already {state})"))
            return 0
        return await _token(conn, args)
    finally:
        await conn.close()


async def _upstreams(conn: Any, config: Config, *, apply: bool, json: bool) -> int:
    from aggregator.ops.upstreams import plan_or_apply  # noqa: PLC0415 - loads the merge

    plan = await plan_or_apply(conn, config, apply=apply)
    if apply:
        await _audit(conn, "apply", None, ok=True, **plan.as_json())
    if json:
        print(orjson.dumps(plan.as_json()).decode())
    else:
        sys.stdout.write(plan.render())
    return 0


async def _token(conn: Any, args: argparse.Namespace) -> int:
    if args.action == "list":
        for r in await ops_db.list_tokens(conn):
            state = f"revoked {r['revoked_at']:%Y-%m-%d}" if r["revoked_at"] else "live"
            used = f"{r['last_used_at']:%Y-%m-%d %H:%M}" if r["last_used_at"] else "never"
            print(f"{r['name']}\t{r['role']}\t{state}\tlast used {used}")
        return 0
    if args.action == "create":
        try:
            token = await ops_db.create_token(conn, args.name, args.role, created_by=actor())
        except ValueError as e:
            print(f"trs-aggregator: {e}", file=sys.stderr)
            return 1
        await _audit(conn, "token_create", args.name, ok=True, role=args.role)
        print(token)
        print(
            f"token {args.name!r} ({args.role}) created; it is shown only now. Send it as "
            "'Authorization: Bearer <token>'.",
            file=sys.stderr,
        )
        return 0
    revoked = await ops_db.revoke_token(conn, args.name)
    await _audit(conn, "token_revoke", args.name, ok=revoked)
    if not revoked:
        print(f"trs-aggregator: no live token named {args.name!r}", file=sys.stderr)
        return 1
    print(f"token {args.name!r} revoked")
    return 0
