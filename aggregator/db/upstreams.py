"""Upstream rows: the configured registries, kept in step with the config file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from aggregator.config import UpstreamConfig

UPSERT_UPSTREAM: Final = """
insert into upstreams (name, url, kind, mode, priority, schedule, source)
values ($1, $2, $3, $4, $5, $6, 'config')
on conflict (name) do update set
    url = excluded.url, kind = excluded.kind, mode = excluded.mode,
    priority = excluded.priority, schedule = excluded.schedule, source = 'config',
    updated_at = case
        when (upstreams.url, upstreams.kind, upstreams.mode, upstreams.priority, upstreams.schedule)
             is distinct from
             (excluded.url, excluded.kind, excluded.mode, excluded.priority, excluded.schedule)
        then now() else upstreams.updated_at end
returning id
"""


async def upsert_upstreams(conn: asyncpg.Connection[Any],
                           upstreams: Sequence[UpstreamConfig]) -> dict[str, int]:
    """Insert or update the configured *upstreams*; return their ids by name."""
    ids: dict[str, int] = {}
    for u in upstreams:
        ids[u.name] = await conn.fetchval(
            UPSERT_UPSTREAM, u.name, u.url, u.kind, u.mode, u.priority, u.schedule)
    return ids


async def save_service_info(conn: asyncpg.Connection[Any], upstream_id: int,
                            service_info: Any, tool_classes: list[dict[str, Any]] | None) -> None:
    """Store what the upstream said about itself; None leaves the previous value."""
    await conn.execute(
        """update upstreams set service_info = coalesce($2, service_info),
                                tool_classes = coalesce($3, tool_classes)
           where id = $1""",
        upstream_id, service_info, tool_classes)
