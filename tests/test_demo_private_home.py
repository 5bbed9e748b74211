"""``demo`` from a checkout in a private directory (root's home is mode 0700)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from aggregator.pgcluster import LocalCluster, server_can_reach, shared_data_dir
from tests.test_cli import demo_session, kill, start_demo


async def test_demo_starts_from_a_checkout_in_a_private_home(tmp_path: Path) -> None:
    """With the default data dir inside a 0700 directory, demo serves the merged catalogue: as
    root its cluster moves where the postgres user can reach it, and demo says where."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    checkout = home / "trs-aggregator"
    checkout.mkdir()
    preferred = checkout / "data" / "demo" / "pg"
    as_root = os.geteuid() == 0
    assert server_can_reach(preferred) is not as_root
    log = tmp_path / "demo.log"
    proc: asyncio.subprocess.Process | None = None
    moved = shared_data_dir(preferred) if as_root else None
    cluster = LocalCluster(moved or preferred)
    try:
        proc = await start_demo(checkout, log)
        await asyncio.wait_for(demo_session(proc, log), 120)
        said = log.read_text()
        assert f"starting a private PostgreSQL cluster in {cluster.data_dir}" in said, said
        if moved is not None:
            assert f"cannot reach {preferred}" in said
        assert cluster.initialized and not cluster.is_running()
    finally:
        if proc is not None:
            await kill(proc)
        try:
            cluster.stop()
        finally:
            if moved is not None:
                shutil.rmtree(moved.parent, ignore_errors=True)
