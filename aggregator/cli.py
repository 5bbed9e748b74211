"""The ``trs-aggregator`` command: migrate | harvest | serve | worker | run | demo."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from aggregator import __version__, redact
from aggregator import config as config_mod
from aggregator.db.outage import is_unavailable, unavailable
from aggregator.errors import AggregatorError, ConfigError
from aggregator.logs import configure_logging
from aggregator.ops.commands import COMMANDS as OPS_COMMANDS
from aggregator.ops.commands import add_commands, run_command
from aggregator.pgcluster import ClusterError, PgBinariesNotFound
from aggregator.processes import api_processes, run_loop, serve_processes
from aggregator.service import (
    cmd_harvest,
    cmd_merge,
    cmd_migrate,
    cmd_request_harvest,
    serve_forever,
)

COMMANDS = (
    "migrate",
    "harvest",
    "merge",
    "export",
    "serve",
    "worker",
    "run",
    "demo",
    *OPS_COMMANDS,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; ``--config`` is accepted before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="TOML configuration (default: config/aggregator.toml if present, "
        "else built-in defaults)",
    )
    common.add_argument(
        "--log-json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log JSON lines even on a terminal",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug detail"
    )
    parser = argparse.ArgumentParser(
        prog="trs-aggregator",
        parents=[common],
        description="A federated aggregator and mirror for GA4GH TRS registries.",
    )
    parser.add_argument("--version", action="version", version=f"trs-aggregator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("migrate", parents=[common], help="apply the database migrations")
    harvest = sub.add_parser(
        "harvest", parents=[common], help="harvest upstreams now, in the foreground"
    )
    harvest.add_argument(
        "names", nargs="*", metavar="NAME", help="upstreams to harvest (default: every enabled one)"
    )
    harvest.add_argument(
        "--queue",
        action="store_true",
        help="ask the running workers to harvest now, through the database, "
        "instead of harvesting in this process",
    )
    merge = sub.add_parser(
        "merge", parents=[common], help="re-merge the catalogue now (after a priority change)"
    )
    merge.add_argument(
        "--full",
        action="store_true",
        help="re-merge every upstream record, not only the changed ones",
    )
    export = sub.add_parser(
        "export", parents=[common], help="write the catalogue as a static TRS tree"
    )
    export.add_argument(
        "directory", type=Path, metavar="DIR", help="the tree (a symlink swapped atomically)"
    )
    export.add_argument(
        "--public-url",
        default=None,
        metavar="URL",
        help="the origin the tree will be served at, under /ga4gh/trs/v2 "
        "(default: server.public_url)",
    )
    serving = argparse.ArgumentParser(add_help=False)
    serving.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="API processes sharing the port (default: server.workers; 0: one per CPU)",
    )
    sub.add_parser("serve", parents=[common, serving], help="serve the TRS API")
    sub.add_parser("worker", parents=[common], help="harvest upstreams on their schedules")
    sub.add_parser(
        "run", parents=[common, serving], help="serve and harvest on schedule, in one service"
    )
    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="run on embedded defaults: a private database and demo upstreams",
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data/demo"),
        help="where the demo keeps its PostgreSQL cluster (default: data/demo)",
    )
    demo.add_argument("--port", type=int, default=None, help="API port (default 8080)")
    add_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    try:
        config = config_mod.load(getattr(args, "config", None))
    except ConfigError as e:
        print(f"trs-aggregator: config error: {e}", file=sys.stderr)
        return 2
    redact.register(os.environ.get(u.token_env) for u in config.upstreams if u.token_env)
    interactive = sys.stderr.isatty() and args.command in (
        "harvest",
        "migrate",
        "demo",
        "probe",
        "export",
    )
    configure_logging(
        json=True if getattr(args, "log_json", False) else None,
        level=logging.DEBUG
        if verbose
        else (logging.WARNING if interactive and not verbose else logging.INFO),
    )
    try:
        if args.command == "demo":
            from aggregator.demo.run import run_demo  # noqa: PLC0415 - only the demo needs it

            return asyncio.run(run_demo(config, data_dir=args.data_dir, port=args.port))
        if args.command in OPS_COMMANDS:
            return asyncio.run(run_command(args, config))
        if config.database.url is None:
            raise ConfigError(  # noqa: TRY301 - reported like every other config error below
                "database.url",
                f"no database configured; set [database] url or {config_mod.DATABASE_URL_ENV}",
            )
        if args.command in ("harvest", "worker", "run") and not getattr(args, "queue", False):
            config_mod.check_tokens(config, getattr(args, "names", ()))
        if args.command == "migrate":
            return asyncio.run(cmd_migrate(config))
        if args.command == "harvest" and args.queue:
            return asyncio.run(cmd_request_harvest(config, args.names))
        if args.command == "harvest":
            # What the imports made lives as long as the process: keep it out of the
            # collector's full passes, which a large crawl would otherwise pay for again and
            # again.
            gc.freeze()
            return run_loop(cmd_harvest(config, args.names))
        if args.command == "merge":
            return asyncio.run(cmd_merge(config, full=args.full))
        if args.command == "export":
            from aggregator.export import cmd_export  # noqa: PLC0415 - only export needs it

            return asyncio.run(cmd_export(config, args.directory, public_url=args.public_url))
        if args.command == "worker":
            gc.freeze()  # as for harvest
            return run_loop(serve_forever(config, api=False, worker=True))
        harvest = args.command == "run"
        processes = api_processes(config, args.workers)
        if processes == 1:
            return run_loop(serve_forever(config, api=True, worker=harvest))
        return serve_processes(config, processes, harvest=harvest)
    except ConfigError as e:
        print(f"trs-aggregator: config error: {e}", file=sys.stderr)
        return 2
    except (AggregatorError, OSError, asyncpg.PostgresError, ClusterError, PgBinariesNotFound) as e:
        print(f"trs-aggregator: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if not is_unavailable(e):
            raise
        print(f"trs-aggregator: {unavailable(e)}", file=sys.stderr)
        return 1
