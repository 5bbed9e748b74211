"""The merge: upstream tools that share identifying evidence become one tool; their versions
are joined.

Pure and deterministic. The result depends only on the set of nodes, their keys and the
operator's rules, never on the order they are given in: operator ``always`` pairs are applied
first, then keys in order of strength and value, and within a key its holders in their sort
order (upstream priority, upstream name, upstream id). A join is refused, and reported, when
it would put two tools of one upstream together, when a member on one side and a member on the
other hold different strong identifiers of a kind a tool has only one of (negative evidence,
:func:`conflict`), or when the operator said ``never`` for a pair across the two sides.
``always`` pairs override the evidence (negative evidence and the one-upstream rule), not a
``never``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Final, NamedTuple

from aggregator.merge.identity import JOINING, Key

# Stronger evidence is applied first, so a weaker key cannot pre-empt a stronger join.
KIND_ORDER: Final = {
    "uuid": 0,
    "trs": 1,
    "doi": 2,
    "repo": 3,
    "biotools": 4,
    "content": 5,
    "xref": 6,
    "alias": 7,
}
QUALIFIED_PREFIX: Final = "#upstream/"
_WORKFLOWHUB: Final = "10.48546/workflowhub.workflow."
SAME_UPSTREAM: Final = "both tools come from one upstream"
OPERATOR_NEVER: Final = "operator rule: never"


# Node.order, read without building a tuple in Python for each comparison.
_ORDER: Final = attrgetter("priority", "upstream", "external_id")


def qualified_id(upstream: str, external_id: str) -> str:
    """The id that names one upstream record and cannot collide with a plain one."""
    return f"{QUALIFIED_PREFIX}{upstream}/{external_id}"


class Node(NamedTuple):
    """One upstream tool, as the merge sees it.

    A named tuple: a full merge makes a million of them, and a tuple is built three times
    faster than a frozen dataclass.
    """

    id: int
    upstream: str
    priority: int
    external_id: str
    keys: frozenset[Key] = frozenset()

    @property
    def order(self) -> tuple[int, str, str]:
        """Sort key: best priority first, then upstream name, then upstream id."""
        return (self.priority, self.upstream, self.external_id)

    @property
    def qualified(self) -> str:
        """The qualified id of this record."""
        return qualified_id(self.upstream, self.external_id)


@dataclass(frozen=True, slots=True)
class Rules:
    """The operator's merge rules: pairs of qualified ids always or never merged.

    Attributes:
        always: Pairs joined whatever the evidence says (unless a *never* pair forbids it).
        never: Pairs never in one tool, whatever joins them.
    """

    always: frozenset[tuple[str, str]] = frozenset()
    never: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def of(cls, always: Iterable[Sequence[str]] = (), never: Iterable[Sequence[str]] = ()) -> Rules:
        """Rules from pairs in any order."""
        return cls(
            frozenset(tuple(sorted(p)) for p in always),  # type: ignore[misc]
            frozenset(tuple(sorted(p)) for p in never),  # type: ignore[misc]
        )

    def names(self) -> set[str]:
        """Every qualified id the rules mention."""
        return {q for pair in self.always | self.never for q in pair}


@dataclass(frozen=True, slots=True)
class Edge:
    """Evidence between two members: *a* and *b* share key (*kind*, *value*); for a refused
    join, *reason* says why."""

    a: int
    b: int
    kind: str
    value: str
    reason: str = ""


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


@dataclass(frozen=True, slots=True)
class Signature:
    """The strong identifiers of one record that a tool has only one of."""

    repos: frozenset[str]
    paths: dict[str, frozenset[str]]
    workflowhub: frozenset[str]


def signature(keys: Iterable[Key]) -> Signature | None:
    """The negative-evidence signature of a record's *keys*; None when it has none."""
    repos: set[str] = set()
    paths: dict[str, set[str]] = defaultdict(set)
    hub: set[str] = set()
    for kind, value in keys:
        if kind == "repo":
            repo, _, path = value.partition("#")
            repos.add(repo)
            if path:
                paths[repo].add(path)
        elif kind == "doi" and value.startswith(_WORKFLOWHUB):
            hub.add(value)
    if not repos and not hub:
        return None
    return Signature(frozenset(repos), {r: frozenset(p) for r, p in paths.items()}, frozenset(hub))


def _has_signature(keys: Iterable[Key]) -> bool:
    """Whether *keys* give negative evidence (:func:`signature` is not None)."""
    return any(k == "repo" or (k == "doi" and v.startswith(_WORKFLOWHUB)) for k, v in keys)


def _compatible(x: str, y: str) -> bool:
    """Whether two workflow paths in one repository can name one workflow (one is the
    other, or ends with it: a Dockstore workflow name and a directory path)."""
    return x == y or x.endswith("/" + y) or y.endswith("/" + x)


def conflict(a: Signature | None, b: Signature | None) -> str | None:
    """Why two records are different tools by their strong identifiers, or None.

    Different repositories; the same repository with workflow paths on both sides that cannot
    name one workflow; different WorkflowHub workflows. (Zenodo and figshare DOIs give no
    negative evidence: a record may carry a concept DOI and another a version DOI.)
    """
    if a is None or b is None:
        return None
    if a.repos and b.repos and not a.repos & b.repos:
        return "different repositories: " + " vs ".join(
            ", ".join(sorted(s)) for s in (a.repos, b.repos)
        )
    for repo in sorted(a.repos & b.repos):
        pa, pb = a.paths.get(repo), b.paths.get(repo)
        if pa and pb and not any(_compatible(x, y) for x in pa for y in pb):
            return f"different workflows in {repo}: " + " vs ".join(
                ", ".join(sorted(s)) for s in (pa, pb)
            )
    if a.workflowhub and b.workflowhub and not a.workflowhub & b.workflowhub:
        return "different WorkflowHub workflows: " + " vs ".join(
            ", ".join(sorted(s)) for s in (a.workflowhub, b.workflowhub)
        )
    return None


def identifying_keys(nodes: Iterable[Node], *, max_per_upstream: int = 1) -> set[Key]:
    """The keys that identify: of a joining kind, held by at most *max_per_upstream* tools of
    any upstream, and, for a repository without a workflow path, of a repository in which no
    record names a workflow path (a monorepo's root says nothing about which workflow).

    A key many tools of one registry share (a generic alias, a template descriptor) says
    nothing about which of them another registry's tool is.
    """
    count: dict[tuple[Key, str], int] = defaultdict(int)
    pathed: set[str] = set()
    for n in nodes:
        for k in n.keys:
            if k[0] in JOINING:
                count[(k, n.upstream)] += 1
                if k[0] == "repo" and "#" in k[1]:
                    pathed.add(k[1].partition("#")[0])
    too_common = {k for (k, _), c in count.items() if c > max_per_upstream}
    return {
        k for (k, _) in count if k not in too_common and not (k[0] == "repo" and k[1] in pathed)
    }


def merge(
    nodes: Iterable[Node],
    *,
    identifying: set[Key] | None = None,
    max_per_upstream: int = 1,
    rules: Rules | None = None,
) -> list[Component]:
    """Merge *nodes* into components, sorted by their primary's order.

    *identifying* is the set of keys that count (computed from *nodes* when None; pass it in
    when *nodes* is a closed subset of a larger catalogue, whose counts decide). *rules* are
    the operator's always/never pairs, by qualified id.
    """
    ordered = sorted(nodes, key=_ORDER)
    if identifying is None:
        identifying = identifying_keys(ordered, max_per_upstream=max_per_upstream)
    joiner = _Joiner(ordered, rules or Rules())
    joiner.apply_always()
    holders: dict[Key, list[int]] = defaultdict(list)
    for i, n in enumerate(ordered):
        for k in n.keys:
            if k in identifying:
                holders[k].append(i)
    # A key of one holder joins nothing.
    shared = [k for k, held in holders.items() if len(held) > 1]
    for key in sorted(shared, key=lambda k: (KIND_ORDER.get(k[0], 9), k[1])):
        joiner.join_holders(key, holders[key])
    return joiner.components()


class _Joiner:
    """Union-find over the ordered records, refusing the joins the rules forbid."""

    def __init__(self, ordered: list[Node], rules: Rules) -> None:
        self.ordered = ordered
        self.rules = rules
        self.parent = list(range(len(ordered)))
        # Per root of more than one record (or with a refusal): its upstreams, joins, refusals.
        self.upstreams: dict[int, set[str]] = {}
        self.joins: dict[int, list[Edge]] = {}
        self.refused: dict[int, list[Edge]] = {}
        self.never: dict[int, set[int]] = defaultdict(set)
        self.index: dict[str, int] = {}
        if rules.always or rules.never:
            self.index = {n.qualified: i for i, n in enumerate(ordered)}
            for qa, qb in rules.never:
                if qa in self.index and qb in self.index:
                    self.never[self.index[qa]].add(self.index[qb])
                    self.never[self.index[qb]].add(self.index[qa])
        # Per root: the members that can block a join (with a signature or a never rule);
        # roots without any are absent. A record is looked at the first time a join involves
        # it, and signatures are recomputed when needed rather than kept: few joins are
        # attempted per record, and a million kept signatures cost more than they save.
        self.guarded: dict[int, list[int]] = {i: [i] for i in self.never}
        self.looked = bytearray(len(ordered))

    def find(self, i: int) -> int:
        """The root of *i*'s component."""
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def guards(self, root: int) -> list[int] | None:
        """The members of *root*'s component that can block a join."""
        guarded = self.guarded
        if not self.looked[root]:
            self.looked[root] = 1
            if root not in guarded and _has_signature(self.ordered[root].keys):
                guarded[root] = [root]
        return guarded.get(root)

    def upstreams_of(self, root: int) -> set[str]:
        """The upstreams of *root*'s component."""
        return self.upstreams.get(root) or {self.ordered[root].upstream}

    def blocker(self, ra: int, rb: int, *, forced: bool) -> str | None:
        """Why the components of roots *ra* and *rb* cannot be one, or None."""
        if not forced and not self.upstreams_of(ra).isdisjoint(self.upstreams_of(rb)):
            return SAME_UPSTREAM
        guards = self.guards
        ga, gb = guards(ra), guards(rb)
        if not ga or not gb:
            return None
        never = self.never
        if never and any(y in never.get(x, ()) for x in ga for y in gb):
            return OPERATOR_NEVER
        if not forced:
            ordered = self.ordered
            sb = [signature(ordered[y].keys) for y in gb]
            for x in ga:
                sa = signature(ordered[x].keys)
                for sig in sb:
                    reason = conflict(sa, sig)
                    if reason:
                        return reason
        return None

    def union(self, ra: int, rb: int, edge: Edge) -> None:
        """Make the components of roots *ra* and *rb* one, joined by *edge*."""
        keep, gone = min(ra, rb), max(ra, rb)
        moved = self.guarded.pop(gone, None)
        if moved:
            self.guarded.setdefault(keep, []).extend(moved)
        self.parent[gone] = keep
        upstreams = self.upstreams.get(keep)
        if upstreams is None:
            upstreams = self.upstreams[keep] = {self.ordered[keep].upstream}
        upstreams |= self.upstreams.pop(gone, set()) or {self.ordered[gone].upstream}
        joins = self.joins.setdefault(keep, [])
        joins += self.joins.pop(gone, ())
        joins.append(edge)
        if gone in self.refused:
            self.refused.setdefault(keep, []).extend(self.refused.pop(gone))

    def refuse(self, ia: int, ib: int, edge: Edge) -> None:
        """Report refused *edge* on both sides."""
        ra, rb = self.find(ia), self.find(ib)
        self.refused.setdefault(ra, []).append(edge)
        if rb != ra:
            self.refused.setdefault(rb, []).append(edge)

    def apply_always(self) -> None:
        """Join the operator's always pairs, unless a never pair forbids it."""
        for qa, qb in sorted(self.rules.always):
            ia, ib = self.index.get(qa), self.index.get(qb)
            if ia is None or ib is None or self.find(ia) == self.find(ib):
                continue
            a, b = self.ordered[ia].id, self.ordered[ib].id
            reason = self.blocker(self.find(ia), self.find(ib), forced=True)
            if reason:
                self.refuse(ia, ib, Edge(a, b, "operator", "always", reason))
            else:
                self.union(self.find(ia), self.find(ib), Edge(a, b, "operator", "always"))

    def join_holders(self, key: Key, members: list[int]) -> None:
        """Join each holder of *key* to the first earlier holder whose tool can take it;
        refuse only when none can."""
        ordered, find, blocker = self.ordered, self.find, self.blocker
        for pos, other in enumerate(members[1:], start=1):
            first_reason = ""
            for prior in members[:pos]:
                ra, rb = find(prior), find(other)
                if ra == rb:
                    break
                reason = blocker(ra, rb, forced=False)
                if reason:
                    first_reason = first_reason or reason
                    continue
                self.union(ra, rb, Edge(ordered[prior].id, ordered[other].id, *key))
                break
            else:
                edge = Edge(ordered[members[0]].id, ordered[other].id, *key, first_reason)
                self.refuse(members[0], other, edge)

    def components(self) -> list[Component]:
        """The components, sorted by their primary's order."""
        # A component first appears at its best-ordered member, its primary: the components
        # come out sorted by their primary's order.
        groups: dict[int, Component] = {}
        for i, n in enumerate(self.ordered):
            root = self.find(i)
            comp = groups.get(root)
            if comp is None:
                comp = groups[root] = Component(
                    [], self.joins.get(root, []), self.refused.get(root, [])
                )
            comp.members.append(n)
        return list(groups.values())


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
