"""``upstreams plan`` / ``apply``: the configured upstream list against the database's.

A plan is an apply that is rolled back: the changes are made in one transaction under the
merge lock, the catalogue is re-merged, the tools of the affected upstreams are compared before
and after, and the transaction is undone (plan) or committed and announced (apply). So the
consequences shown are the merge's own answer, not an estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import asyncpg
import structlog

from aggregator.config import Config, UpstreamConfig, upstream_from_table, upstream_table
from aggregator.db.generation import lock_catalogue
from aggregator.db.locks import lock_merge
from aggregator.db.merge import remerge
from aggregator.db.operations import (
    announce_upstreams_changed,
    catalogue_ids,
    count_records,
    fetch_merged_members,
    fetch_upstream_rows,
    remove_upstream,
)
from aggregator.db.upstreams import fetch_upstream_id, upsert_upstreams
from aggregator.errors import ConfigError

if TYPE_CHECKING:
    from aggregator.db.pool import Connection, Executor

log = structlog.get_logger()

# Keys a row written before configurations were stored in the database still tells.
_COLUMN_KEYS: Final = ("name", "url", "kind", "mode", "priority", "schedule", "enabled")
# Keys whose change re-merges the catalogue.
_MERGE_KEYS: Final = frozenset({"priority"})
_KEY_NOTES: Final = {
    "url": "the next harvest lists the new URL; records it no longer lists are tombstoned",
    "mode": "the next harvest fetches (mirror) or stops storing (index) file contents",
    "schedule": "the next harvest is due at once, then on the new schedule",
    "priority": "merged tools re-choose their primary source",
    "enabled": "scheduled harvests start or stop",
    "kind": "the next harvest reads the upstream as the new kind",
}


@dataclass(frozen=True, slots=True)
class UpstreamChange:
    """One upstream's change: ``add``, ``readd`` (its kept records return), ``remove`` or
    ``change`` (*keys*: each changed key with its old and new value)."""

    name: str
    action: str
    keys: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    records: int = 0

    def as_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "action": self.action,
            "keys": {k: {"old": o, "new": n} for k, (o, n) in self.keys.items()},
            "records": self.records,
        }


@dataclass(frozen=True, slots=True)
class Consequence:
    """What a change does to one merged tool.

    *kind* is ``disappears``, ``loses_source``, ``primary_changes``, ``id_changes``,
    ``gains_source`` or ``appears``; *detail* says how.
    """

    tool_id: str
    kind: str
    detail: str

    def as_json(self) -> dict[str, str]:
        """JSON form."""
        return {"tool_id": self.tool_id, "kind": self.kind, "detail": self.detail}


@dataclass(slots=True)
class Plan:
    """What applying a configuration does (or did)."""

    changes: list[UpstreamChange] = field(default_factory=list)
    consequences: list[Consequence] = field(default_factory=list)
    applied: bool = False
    generation: int | None = None

    @property
    def empty(self) -> bool:
        """Whether nothing would change."""
        return not self.changes

    def summary(self) -> str:
        """The plan's first line (``Plan: 1 to add, 2 to change, 0 to remove.`` and so on)."""
        n = {a: sum(c.action == a for c in self.changes) for a in ("add", "readd", "change")}
        removed = sum(c.action == "remove" for c in self.changes)
        tools = len({c.tool_id for c in self.consequences})
        return (
            f"{'Applied' if self.applied else 'Plan'}: {n['add'] + n['readd']} to add, "
            f"{n['change']} to change, {removed} to remove; {tools} tools affected."
        )

    def render(self) -> str:
        """The plan as text, Terraform style."""
        if self.empty:
            return "No changes. The database matches the configuration.\n"
        lines = ["Upstreams:"]
        for c in self.changes:
            if c.action == "add":
                lines.append(f'  + upstream "{c.name}" (added)')
            elif c.action == "readd":
                lines.append(
                    f'  + upstream "{c.name}" (added back: {c.records} kept records return)'
                )
            elif c.action == "remove":
                lines.append(
                    f'  - upstream "{c.name}" (removed: {c.records} records tombstoned, kept)'
                )
            else:
                lines.append(f'  ~ upstream "{c.name}"')
            for key, (old, new) in c.keys.items():
                note = _KEY_NOTES.get(key) if c.action == "change" else None
                old_text = "" if c.action != "change" else f"{_show(old)} -> "
                lines.append(
                    f"      {key}: {old_text}{_show(new)}" + (f"  # {note}" if note else "")
                )
        lines.append("")
        if self.consequences:
            lines.append("Catalogue:")
            marks = {
                "disappears": "-",
                "loses_source": "~",
                "primary_changes": "~",
                "id_changes": "~",
                "gains_source": "~",
                "appears": "+",
            }
            lines.extend(
                f'  {marks[q.kind]} tool "{q.tool_id}": {q.detail}' for q in self.consequences
            )
        else:
            lines.append("Catalogue: no merged tool changes.")
        lines.append("")
        lines.append(self.summary())
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict[str, Any]:
        """JSON form (the admin API's answer)."""
        return {
            "applied": self.applied,
            "generation": self.generation,
            "changes": [c.as_json() for c in self.changes],
            "consequences": [q.as_json() for q in self.consequences],
            "summary": self.summary(),
        }


def _show(value: Any) -> str:
    return (
        f'"{value}"'
        if isinstance(value, str)
        else repr(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def stored_upstream(row: asyncpg.Record) -> UpstreamConfig:
    """The configuration a database row holds."""
    if row["config"] is not None:
        return upstream_from_table(row["config"], f"upstreams[{row['name']}]")
    return UpstreamConfig(**{k: row[k] for k in _COLUMN_KEYS})


async def stored_upstreams(conn: Executor, *, removed: bool = False) -> list[UpstreamConfig]:
    """The upstreams the database holds (not removed ones, unless *removed*), by name."""
    return [stored_upstream(r) for r in await fetch_upstream_rows(conn, removed=removed)]


def _diff(
    old: UpstreamConfig, new: UpstreamConfig, *, known: Sequence[str] | None
) -> dict[str, tuple[Any, Any]]:
    a, b = upstream_table(old), upstream_table(new)
    keys = known if known is not None else list(b)
    return {k: (a[k], b[k]) for k in keys if a[k] != b[k]}


async def _changes(
    conn: Connection, desired: Sequence[UpstreamConfig], tombstone_after: int
) -> list[UpstreamChange]:
    rows = {r["name"]: r for r in await fetch_upstream_rows(conn, removed=True)}
    wanted = {u.name: u for u in desired}
    changes: list[UpstreamChange] = []
    for name, u in sorted(wanted.items()):
        row = rows.get(name)
        if row is None:
            keys = {k: (None, v) for k, v in upstream_table(u, defaults=False).items()}
            changes.append(UpstreamChange(name, "add", keys))
            continue
        known = None if row["config"] is not None else _COLUMN_KEYS
        keys = _diff(stored_upstream(row), u, known=known)
        if row["removed_at"] is not None:
            kept = await count_records(conn, row["id"])
            changes.append(UpstreamChange(name, "readd", keys, kept))
        elif keys:
            changes.append(UpstreamChange(name, "change", keys))
    for name, row in rows.items():
        if name not in wanted and row["removed_at"] is None:
            live = await count_records(conn, row["id"], live_after=tombstone_after)
            changes.append(UpstreamChange(name, "remove", records=live))
    return changes


@dataclass(slots=True)
class _Tool:
    primary: int
    members: dict[int, str]  # upstream tool id -> upstream name


async def _snapshot(
    conn: Connection, names: list[str], also: dict[str, _Tool] | None = None
) -> dict[str, _Tool]:
    """The merged tools with a member of upstreams *names*, or a member of a tool in *also*."""
    members = [m for t in (also or {}).values() for m in t.members]
    tools: dict[str, _Tool] = {}
    for r in await fetch_merged_members(conn, names, members):
        tool = tools.setdefault(r["tool_id"], _Tool(r["primary_member_id"], {}))
        tool.members[r["upstream_tool_id"]] = r["upstream"]
    return tools


def _consequences(
    before: dict[str, _Tool], after: dict[str, _Tool], ids_before: set[str]
) -> list[Consequence]:
    now_in = {m: tid for tid, t in after.items() for m in t.members}
    was_in = {m for t in before.values() for m in t.members}
    out: list[Consequence] = []
    for tid, tool in sorted(before.items()):
        kept = {m: now_in[m] for m in tool.members if m in now_in}
        if not kept:
            sources = ", ".join(sorted(set(tool.members.values())))
            out.append(Consequence(tid, "disappears", f"its only sources go: {sources}"))
            continue
        lost = sorted({u for m, u in tool.members.items() if m not in kept})
        if lost:
            out.append(Consequence(tid, "loses_source", f"loses source {', '.join(lost)}"))
        new_id = kept.get(tool.primary) or min(kept.values())
        if new_id != tid:
            out.append(Consequence(tid, "id_changes", f'its id becomes "{new_id}"'))
        new_primary = after[new_id].primary
        if new_primary != tool.primary:
            old_u = tool.members[tool.primary]
            new_u = after[new_id].members.get(new_primary, "?")
            out.append(
                Consequence(tid, "primary_changes", f"primary source changes: {old_u} -> {new_u}")
            )
    for tid, tool in sorted(after.items()):
        if set(tool.members) & was_in:
            continue
        if tid in ids_before:
            out.append(Consequence(tid, "gains_source", "gains sources again"))
        else:
            sources = ", ".join(sorted(set(tool.members.values())))
            out.append(Consequence(tid, "appears", f"served again from {sources}"))
    return out


async def plan_or_apply(
    conn: Connection,
    config: Config,
    desired: Sequence[UpstreamConfig] | None = None,
    *,
    apply: bool,
    source: Literal["config", "api"] = "config",
) -> Plan:
    """Compare *desired* (default: the configured upstreams) with the database; with *apply*,
    make it so and tell workers and API processes, else undo everything. *source* says who
    asks: the configuration file (``upstreams apply``) or the admin API.

    Raises ConfigError when *desired* names an upstream twice.
    """
    desired = list(config.upstreams if desired is None else desired)
    if len({u.name for u in desired}) != len(desired):
        raise ConfigError("upstreams", "an upstream is named twice")
    plan = Plan()
    transaction = conn.transaction()
    await transaction.start()
    try:
        await lock_merge(conn)
        await lock_catalogue(conn)
        tombstone_after = config.harvest.tombstone_after
        plan.changes = await _changes(conn, desired, tombstone_after)
        merging = [
            c.name
            for c in plan.changes
            if c.action in ("readd", "remove") or _MERGE_KEYS & set(c.keys)
        ]
        before = await _snapshot(conn, merging)
        ids_before: set[str] = set()
        if any(c.action == "readd" for c in plan.changes):
            ids_before = await catalogue_ids(conn)
        touched = [u for u in desired if u.name in {c.name for c in plan.changes}]
        await upsert_upstreams(conn, touched, source=source)
        for c in plan.changes:
            if c.action == "remove":
                upstream_id = await fetch_upstream_id(conn, c.name)
                assert upstream_id is not None
                await remove_upstream(conn, upstream_id, source=source)
        if merging:
            stats = await remerge(
                conn,
                tombstone_after=tombstone_after,
                max_per_upstream=config.merge.max_tools_per_upstream,
            )
            plan.generation = stats.generation
            plan.consequences = _consequences(
                before, await _snapshot(conn, merging, before), ids_before
            )
        if plan.changes:
            await announce_upstreams_changed(conn)
    except BaseException:
        await transaction.rollback()
        raise
    if apply:
        await transaction.commit()
        plan.applied = True
        log.info(
            "upstreams_applied",
            changes=[c.as_json() for c in plan.changes],
            consequences=len(plan.consequences),
        )
    else:
        await transaction.rollback()
        plan.generation = None
    return plan
