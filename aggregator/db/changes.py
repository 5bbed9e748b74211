"""Reading the change feed (``catalogue_changes``, written by the database at every publish)
and this instance's identity.

Changes are recorded by the trigger ``catalogue_state_capture`` of migration 0010 inside the
publishing transaction, from the catalogue rows that transaction touched, so every code path
that publishes feeds it. A cursor is the ``seq`` of the last change read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import asyncpg

    Conn = asyncpg.Connection[Any] | asyncpg.Pool[Any]


KINDS: Final = ("added", "changed", "removed", "merged", "split", "id_changed")


@dataclass(frozen=True, slots=True)
class Change:
    """One change of the merged catalogue."""

    seq: int
    generation: int
    at: dt.datetime
    kind: str
    tool_id: str
    related_ids: list[str]
    parts: list[str]
    digest: str | None

    def as_json(self) -> dict[str, Any]:
        """The change as the feed serves it."""
        out: dict[str, Any] = {
            "cursor": str(self.seq),
            "kind": self.kind,
            "id": self.tool_id,
            "generation": self.generation,
            "time": self.at.isoformat(),
        }
        if self.kind == "changed":
            out["parts"] = self.parts
        if self.kind == "merged":
            out["into"] = self.related_ids[0] if self.related_ids else None
        if self.kind == "split":
            out["into"] = self.related_ids
        if self.kind == "id_changed":
            out["previous_id"] = self.related_ids[0] if self.related_ids else None
        if self.digest is not None:
            out["digest"] = self.digest
        return out


@dataclass(frozen=True, slots=True)
class Page:
    """Changes after a cursor, or why they cannot be given.

    Attributes:
        changes: In commit order.
        head: The cursor of the newest change (0 when there is none).
        expired: Some change after the cursor has passed retention: read the catalogue again.
    """

    changes: list[Change]
    head: int
    expired: bool


async def instance_id(conn: Conn) -> str:
    """The stable id of this instance (made once per database, see migration 0010)."""
    value: str = await conn.fetchval("select aggregator_instance_id()")
    return value


async def read_changes(conn: Conn, since: int, limit: int, retention_s: float) -> Page:
    """Up to *limit* changes after cursor *since*, unless some have passed retention."""
    row = await conn.fetchrow(
        """select (select through from catalogue_changes_pruned) as pruned,
                  coalesce((select max(seq) from catalogue_changes), 0) as head,
                  exists (select 1 from catalogue_changes
                          where seq > $1 and at < now() - make_interval(secs => $2)) as old""",
        since,
        retention_s,
    )
    assert row is not None
    head = max(int(row["head"]), int(row["pruned"]))
    if since < row["pruned"] or row["old"] or since > head:
        return Page([], head, expired=True)
    rows = await conn.fetch(
        """select seq, generation, at, kind, tool_id, related_ids, parts, digest
           from catalogue_changes where seq > $1 order by seq limit $2""",
        since,
        limit,
    )
    return Page([Change(**dict(r)) for r in rows], head, expired=False)


async def head(conn: Conn) -> int:
    """The cursor of the newest change (0 when there is none)."""
    value = await conn.fetchval(
        """select greatest(coalesce((select max(seq) from catalogue_changes), 0),
                           (select through from catalogue_changes_pruned))"""
    )
    return int(value)


async def prune(conn: Conn, retention_s: float) -> int:
    """Delete changes past retention; return how many."""
    row = await conn.fetchrow(
        """with gone as (delete from catalogue_changes
                         where at < now() - make_interval(secs => $1) returning seq),
                moved as (update catalogue_changes_pruned
                          set through = greatest(through, (select max(seq) from gone))
                          where exists (select 1 from gone) returning through)
           select count(*) as n from gone""",
        retention_s,
    )
    assert row is not None
    return int(row["n"])


async def snapshot_digests(conn: Conn) -> dict[str, str]:
    """Every catalogue tool's digest as the feed announces it, computed afresh from the
    catalogue (the feed replayed from its start must give exactly this)."""
    await conn.execute(
        """create temporary table if not exists capture_ids (tool_id text primary key);
           truncate capture_ids;
           insert into capture_ids select id from catalogue_tools"""
    )
    rows = await conn.fetch(
        "select tool_id, md5(metadata || versions || files || sources) as digest "
        "from catalogue_parts()"
    )
    return {r["tool_id"]: r["digest"] for r in rows}
