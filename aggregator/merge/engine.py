"""The merge: upstream tools that share evidence become one tool; their versions are joined.

Pure and deterministic. The result depends only on the set of nodes and their keys, never on
the order they are given in: keys are processed in sorted order, and within a key its nodes in
their sort order (upstream priority, upstream name, upstream id). Two tools of one upstream are
never merged: an edge that would put them together is refused and reported.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from aggregator.merge.identity import Key

# Stronger evidence is applied first, so a weaker key cannot pre-empt a stronger join.
KIND_ORDER: Final = {"id": 0, "sha256": 1, "alias": 2}


@dataclass(frozen=True, slots=True)
class Node:
    """One upstream tool, as the merge sees it."""

    id: int
    upstream: str
    priority: int
    external_id: str
    keys: frozenset[Key] = frozenset()

    @property
    def order(self) -> tuple[int, str, str]:
        """Sort key: best priority first, then upstream name, then upstream id."""
        return (self.priority, self.upstream, self.external_id)


@dataclass(frozen=True, slots=True)
class Edge:
    """Evidence between two members: *a* and *b* share key (*kind*, *value*)."""

    a: int
    b: int
    kind: str
    value: str


@dataclass(slots=True)
class Component:
    """A merged tool: its members (best first), the joins that made it, the refused joins."""

    members: list[Node]
    joins: list[Edge] = field(default_factory=list)
    refused: list[Edge] = field(default_factory=list)

    @property
    def primary(self) -> Node:
        """The member whose fields are served."""
        return self.members[0]


def identifying_keys(nodes: Iterable[Node], *, max_per_upstream: int = 1) -> set[Key]:
    """The keys that identify: those held by at most *max_per_upstream* tools of any upstream.

    A key many tools of one registry share (a generic alias, a template descriptor) says
    nothing about which of them another registry's tool is.
    """
    count: dict[tuple[Key, str], int] = defaultdict(int)
    for n in nodes:
        for k in n.keys:
            count[(k, n.upstream)] += 1
    too_common = {k for (k, _), c in count.items() if c > max_per_upstream}
    return {k for (k, _) in count} - too_common


def merge(
    nodes: Iterable[Node], *, identifying: set[Key] | None = None, max_per_upstream: int = 1
) -> list[Component]:
    """Merge *nodes* into components, sorted by their primary's order.

    *identifying* is the set of keys that count (computed from *nodes* when None; pass it in
    when *nodes* is a closed subset of a larger catalogue, whose counts decide).
    """
    ordered = sorted(nodes, key=lambda n: n.order)
    if identifying is None:
        identifying = identifying_keys(ordered, max_per_upstream=max_per_upstream)
    parent = list(range(len(ordered)))
    upstreams: list[set[str]] = [{n.upstream} for n in ordered]
    joins: list[list[Edge]] = [[] for _ in ordered]
    refused: list[list[Edge]] = [[] for _ in ordered]

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    holders: dict[Key, list[int]] = defaultdict(list)
    for i, n in enumerate(ordered):
        for k in n.keys:
            if k in identifying:
                holders[k].append(i)
    for key in sorted(holders, key=lambda k: (KIND_ORDER.get(k[0], 9), k[1])):
        members = holders[key]
        for rank, other in enumerate(members[1:], start=1):
            # Join the first earlier holder whose tool can take it; refuse only when none can.
            for prior in members[:rank]:
                ra, rb = find(prior), find(other)
                if ra == rb:
                    break
                if upstreams[ra] & upstreams[rb]:
                    continue
                keep, gone = min(ra, rb), max(ra, rb)
                parent[gone] = keep
                upstreams[keep] |= upstreams[gone]
                joins[keep] += joins[gone] + [Edge(ordered[prior].id, ordered[other].id, *key)]
                refused[keep] += refused[gone]
                break
            else:
                edge = Edge(ordered[members[0]].id, ordered[other].id, *key)
                refused[find(members[0])].append(edge)
                refused[find(other)].append(edge)
    groups: dict[int, Component] = {}
    for i, n in enumerate(ordered):
        root = find(i)
        comp = groups.get(root)
        if comp is None:
            comp = groups[root] = Component([], joins[root], refused[root])
        comp.members.append(n)
    return sorted(groups.values(), key=lambda c: c.primary.order)


@dataclass(frozen=True, slots=True)
class VersionNode:
    """One upstream version of a member.

    *fingerprint* identifies its content (its descriptors' paths and checksums); None when
    the content is not known (an index-mode upstream).
    """

    id: int
    member: int
    key: str
    name: str
    position: int
    fingerprint: str | None


@dataclass(slots=True)
class MergedVersion:
    """A version as served: its key, the source served, all sources, whether in conflict."""

    key: str
    served: VersionNode
    sources: list[VersionNode]
    position: int
    conflict: bool = False


@dataclass(slots=True)
class VersionConflict:
    """Versions of one name whose content differs (or cannot be compared)."""

    name: str
    keys: list[str]
    reason: str


def merge_versions(
    component: Component, versions: Sequence[VersionNode]
) -> tuple[list[MergedVersion], list[VersionConflict]]:
    """Join the members' versions: the same name with the same content is one version with
    several sources; the same name with other content stays a separate, reachable version
    and is reported. Keys clash only by accident and are then qualified as
    ``<key>~<upstream>``."""
    rank = {m.id: i for i, m in enumerate(component.members)}
    upstream_of = {m.id: m.upstream for m in component.members}
    by_name: dict[str, list[list[VersionNode]]] = {}
    for v in sorted(versions, key=lambda v: (rank[v.member], v.position, v.key)):
        groups = by_name.setdefault(v.name, [])
        for g in groups:
            head = g[0]
            if (
                head.member != v.member
                and v.fingerprint is not None
                and head.fingerprint == v.fingerprint
                and all(x.member != v.member for x in g)
            ):
                g.append(v)
                break
        else:
            groups.append([v])
    merged: list[MergedVersion] = []
    conflicts: list[VersionConflict] = []
    taken: set[str] = set()
    for name, groups in by_name.items():
        entries = []
        for g in groups:
            head = g[0]
            key = head.key
            if key in taken:
                key = f"{head.key}~{upstream_of[head.member]}"
                n = 2
                while key in taken:
                    key = f"{head.key}~{upstream_of[head.member]}~{n}"
                    n += 1
            taken.add(key)
            entries.append(MergedVersion(key, head, g, head.position))
        merged += entries
        if len(groups) > 1 and len({upstream_of[g[0].member] for g in groups}) > 1:
            unknown = any(g[0].fingerprint is None for g in groups)
            for e in entries:
                e.conflict = True
            conflicts.append(
                VersionConflict(
                    name,
                    [e.key for e in entries],
                    "content unknown" if unknown else "different content under one name",
                )
            )
    merged.sort(key=lambda m: (rank[m.served.member], m.position, m.key))
    for i, m in enumerate(merged):
        m.position = i
    return merged, conflicts
