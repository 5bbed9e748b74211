"""``trs-aggregator demo``: a private database, bundled demo upstreams, harvest, then serve."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Any, Literal

from aggregator.config import Config, UpstreamConfig
from aggregator.db.migrate import migrate
from aggregator.db.pool import ensure_database
from aggregator.demo.catalogues import DEMO_REGISTRIES, load_catalogue
from aggregator.demo.registry import make_registry_app
from aggregator.pgcluster import SERVER_OS_USER, LocalCluster, server_can_reach, shared_data_dir
from aggregator.service import cmd_harvest, running_site, serve_forever

DEMO_DATABASE = "trs_aggregator"
# How each bundled registry pages, so the demo shows both real-world styles.
_PAGING: dict[str, tuple[Literal["index", "page"], int]] = {
    "dockstore-demo": ("page", 3),
    "workflowhub-demo": ("index", 4),
}
_PRIORITY = {"dockstore-demo": 10, "workflowhub-demo": 20}


async def run_demo(config: Config, *, data_dir: Path, port: int | None) -> int:
    """Run the whole service on embedded defaults until Ctrl-C."""
    async with contextlib.AsyncExitStack() as stack:
        url = config.database.url
        if url is None:
            cluster = LocalCluster(demo_cluster_dir(data_dir))
            say(f"starting a private PostgreSQL cluster in {cluster.data_dir} …")
            admin = await asyncio.to_thread(cluster.start)
            stack.callback(cluster.stop)
            url = await ensure_database(admin, DEMO_DATABASE)
        applied = await migrate(url)
        if applied:
            say(f"applied migrations: {', '.join(applied)}")
        upstreams: list[UpstreamConfig] = []
        for name in DEMO_REGISTRIES:
            style, page_size = _PAGING.get(name, ("index", 5))
            app = make_registry_app(load_catalogue(name), offset_style=style, page_size=page_size)
            base = await stack.enter_async_context(running_site(app, "127.0.0.1", 0))
            upstreams.append(
                UpstreamConfig(
                    name=name,
                    url=f"{base}/ga4gh/trs/v2",
                    priority=_PRIORITY.get(name, 50),
                    schedule="every 10m",
                    page_size=page_size,
                )
            )
            say(f"demo upstream {name} at {base}/ga4gh/trs/v2")
        server = config.server if port is None else dataclasses.replace(config.server, port=port)
        demo = dataclasses.replace(
            config,
            database=dataclasses.replace(config.database, url=url),
            server=server,
            upstreams=(*upstreams, *(u for u in config.upstreams if u.name not in DEMO_REGISTRIES)),
        )
        status = await cmd_harvest(demo, [])
        if status:
            say("some upstreams failed to harvest; serving what there is")
        return await serve_forever(demo, api=True, worker=True, on_ready=announce)
    return 0  # pragma: no cover - the stack always returns above


def demo_cluster_dir(data_dir: Path) -> Path:
    """Where the demo's cluster lives: ``<data_dir>/pg``, unless PostgreSQL runs as another
    user (we are root) who cannot reach it, as in a checkout inside root's private home; then a
    directory of its own under /var/tmp, the same on every run from that checkout."""
    preferred = data_dir.resolve() / "pg"
    if server_can_reach(preferred):
        return preferred
    moved = shared_data_dir(preferred)
    say(
        f"{SERVER_OS_USER!r}, the user PostgreSQL runs as under root, cannot reach "
        f"{preferred}; the demo's cluster lives in {moved} instead"
    )
    return moved


def say(message: str) -> None:
    """A line for the person at the terminal."""
    print(message, file=sys.stderr, flush=True)


def announce(origin: str) -> None:
    """Print the URLs to try."""
    base = f"{origin}/ga4gh/trs/v2"
    example: Any = "%23workflow%2Fgithub.com%2Fnf-core%2Frnaseq"
    print(
        f"""
Console: {origin}/

trs-aggregator demo is serving the merged catalogue. Try:
  curl {base}/service-info
  curl {base}/toolClasses
  curl '{base}/tools?limit=5'
  curl {base}/tools/{example}
  curl {base}/tools/{example}/versions
Press Ctrl-C to stop.
""",
        flush=True,
    )
