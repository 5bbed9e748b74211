"""Properties of the pure merge: identity keys, components, versions."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.merge.engine import (
    Component,
    Node,
    Rules,
    VersionNode,
    conflict,
    identifying_keys,
    merge,
    merge_versions,
    signature,
)

UPSTREAMS = ("alpha", "beta", "gamma", "delta")
KEYS = (
    [("repo", f"github.com/org/r{i}") for i in range(3)]
    + [("repo", "github.com/org/mono#a"), ("repo", "github.com/org/mono#b")]
    + [("doi", f"10.48546/workflowhub.workflow.{i}") for i in range(2)]
    + [("uuid", f"{i:08x}-0000-0000-0000-000000000000") for i in range(2)]
    + [("alias", f"alias-{i}") for i in range(3)]
    + [("word", "variant calling")]
    + [("content", f"{i:064x}") for i in range(3)]
)


def with_roots(keys: set[tuple[str, str]]) -> frozenset[tuple[str, str]]:
    """A record naming a workflow path in a repository also names the repository."""
    roots = {("repo", v.partition("#")[0]) for k, v in keys if k == "repo" and "#" in v}
    return frozenset(keys | roots)


@st.composite
def node_sets(draw: Any) -> list[Node]:
    count = draw(st.integers(min_value=0, max_value=24))
    nodes = []
    for i in range(count):
        upstream = draw(st.sampled_from(UPSTREAMS))
        keys = with_roots(set(draw(st.lists(st.sampled_from(KEYS), max_size=3))))
        nodes.append(Node(i, upstream, UPSTREAMS.index(upstream) * 10, f"t{i}", keys))
    return nodes


@st.composite
def rule_sets(draw: Any, nodes: list[Node]) -> Rules:
    names = [n.qualified for n in nodes]
    if len(names) < 2:
        return Rules()
    pairs = st.lists(st.tuples(st.sampled_from(names), st.sampled_from(names)), max_size=3)
    always = [p for p in draw(pairs) if p[0] != p[1]]
    never = [
        p
        for p in draw(pairs)
        if p[0] != p[1] and tuple(sorted(p)) not in {tuple(sorted(a)) for a in always}
    ]
    return Rules.of(always, never)


@st.composite
def nodes_and_rules(draw: Any) -> tuple[list[Node], Rules]:
    nodes = draw(node_sets())
    return nodes, draw(rule_sets(nodes))


def canonical(components: list[Component]) -> list[tuple[Any, ...]]:
    return [
        (
            tuple(m.id for m in c.members),
            tuple(sorted((e.a, e.b, e.kind, e.value) for e in c.joins)),
        )
        for c in components
    ]


class TestComponents:
    """Merging upstream tools into components."""

    @given(nodes_and_rules(), st.randoms())
    def test_order_independent(self, case: tuple[list[Node], Rules], rnd: Any) -> None:
        """Shuffling the input never changes the components."""
        nodes, rules = case
        shuffled = list(nodes)
        rnd.shuffle(shuffled)
        assert canonical(merge(shuffled, rules=rules)) == canonical(merge(nodes, rules=rules))

    @given(nodes_and_rules())
    def test_never_loses_or_duplicates_a_tool(self, case: tuple[list[Node], Rules]) -> None:
        """Every node is in exactly one component."""
        nodes, rules = case
        members = [m.id for c in merge(nodes, rules=rules) for m in c.members]
        assert sorted(members) == sorted(n.id for n in nodes)

    @given(node_sets())
    def test_evidence_never_joins_what_it_must_not(self, nodes: list[Node]) -> None:
        """Without operator rules, no component holds two tools of one upstream or two
        records whose strong identifiers say they are different tools."""
        for c in merge(nodes):
            assert len({m.upstream for m in c.members}) == len(c.members)
            for x in c.members:
                for y in c.members:
                    assert conflict(signature(x.keys), signature(y.keys)) is None

    @given(nodes_and_rules())
    def test_never_rules_always_hold(self, case: tuple[list[Node], Rules]) -> None:
        """No component holds both records of a never pair, even when always pairs chain."""
        nodes, rules = case
        for c in merge(nodes, rules=rules):
            names = {m.qualified for m in c.members}
            assert not any(a in names and b in names for a, b in rules.never)

    @given(nodes_and_rules())
    def test_always_rules_join_unless_a_never_forbids(self, case: tuple[list[Node], Rules]) -> None:
        """Both records of an always pair are in one component, or the refusal names the
        operator's never rule."""
        nodes, rules = case
        comps = merge(nodes, rules=rules)
        where = {m.qualified: i for i, c in enumerate(comps) for m in c.members}
        for a, b in rules.always:
            if where[a] != where[b]:
                refused = comps[where[a]].refused
                assert any(e.kind == "operator" and e.reason for e in refused)

    @given(nodes_and_rules())
    def test_idempotent(self, case: tuple[list[Node], Rules]) -> None:
        """Merging the members of each component again gives the same component."""
        nodes, rules = case
        first = merge(nodes, rules=rules)
        identifying = identifying_keys(nodes)
        for c in first:
            again = merge(c.members, identifying=identifying, rules=rules)
            assert [[m.id for m in a.members] for a in again] == [[m.id for m in c.members]]

    @given(nodes_and_rules())
    def test_joins_explain_every_component(self, case: tuple[list[Node], Rules]) -> None:
        """A component of n members has n-1 joins, each on an identifying key both share or
        an operator's always pair."""
        nodes, rules = case
        identifying = identifying_keys(nodes)
        by_id = {n.id: n for n in nodes}
        for c in merge(nodes, rules=rules):
            assert len(c.joins) == len(c.members) - 1
            for e in c.joins:
                if e.kind == "operator":
                    pair = tuple(sorted((by_id[e.a].qualified, by_id[e.b].qualified)))
                    assert pair in rules.always
                    continue
                key = (e.kind, e.value)
                assert key in identifying
                assert key in by_id[e.a].keys and key in by_id[e.b].keys

    @given(node_sets())
    def test_identifying_keys_that_can_join_do(self, nodes: list[Node]) -> None:
        """Two tools sharing an identifying key are together unless joining their tools would
        put two tools of one upstream together or negative evidence stands between them (and
        that refusal is reported with its reason)."""
        identifying = identifying_keys(nodes)
        comps = merge(nodes)
        where = {m.id: i for i, c in enumerate(comps) for m in c.members}
        for a in nodes:
            for b in nodes:
                if a.id < b.id and (a.keys & b.keys & identifying) and where[a.id] != where[b.id]:
                    ca, cb = comps[where[a.id]], comps[where[b.id]]
                    assert any(
                        x.upstream == y.upstream or conflict(signature(x.keys), signature(y.keys))
                        for x in ca.members
                        for y in cb.members
                    )
                    assert all(e.reason for e in ca.refused + cb.refused)
                    assert ca.refused or cb.refused

    def test_weak_and_corroborating_keys_do_not_identify(self) -> None:
        """A common word and a monorepo's root never identify; a distinctive alias does."""
        nodes = [
            Node(1, "a", 1, "x", frozenset({("word", "variant calling"), ("alias", "abc-xyz1")})),
            Node(2, "b", 2, "y", frozenset({("word", "variant calling"), ("alias", "abc-xyz1")})),
            Node(3, "a", 1, "m1", frozenset({("repo", "github.com/o/m")})),
            Node(4, "b", 2, "m2", frozenset({("repo", "github.com/o/m")})),
            Node(
                5,
                "c",
                3,
                "m3",
                frozenset({("repo", "github.com/o/m"), ("repo", "github.com/o/m#w")}),
            ),
        ]
        assert identifying_keys(nodes) == {("alias", "abc-xyz1"), ("repo", "github.com/o/m#w")}
        assert [[m.id for m in c.members] for c in merge(nodes)] == [[3], [1, 2], [4], [5]]

    def test_a_generic_alias_does_not_chain_unrelated_tools(self) -> None:
        """An alias held by many tools of one upstream joins none of them."""
        generic = ("alias", "acme-variant-caller")
        nodes = [Node(i, "alpha", 1, f"a{i}", frozenset({generic})) for i in range(5)]
        nodes += [
            Node(10, "beta", 2, "b", frozenset({generic})),
            Node(11, "gamma", 3, "c", frozenset({generic})),
        ]
        assert all(len(c.members) == 1 for c in merge(nodes))
        assert len(merge(nodes, max_per_upstream=5)) == 5

    def test_primary_is_the_best_priority(self) -> None:
        """The member of best priority, then upstream name, is the primary."""
        k = frozenset({("uuid", "x")})
        nodes = [
            Node(1, "zeta", 5, "z", k),
            Node(2, "beta", 5, "b", k),
            Node(3, "alpha", 9, "a", k),
        ]
        (comp,) = merge(nodes)
        assert [m.id for m in comp.members] == [2, 1, 3]


@st.composite
def version_sets(draw: Any) -> tuple[Component, list[VersionNode]]:
    members = [Node(i, UPSTREAMS[i], i, f"t{i}") for i in range(draw(st.integers(1, 3)))]
    versions = []
    for i in range(draw(st.integers(0, 10))):
        member = draw(st.sampled_from(members))
        name = draw(st.sampled_from(["1.0", "2.0", "main"]))
        fingerprint = draw(st.sampled_from(["f1", "f2", None]))
        versions.append(VersionNode(i, member.id, name, name, i, fingerprint))
    unique: dict[tuple[int, str], VersionNode] = {}
    for v in versions:
        unique.setdefault((v.member, v.key), v)
    return Component(members), list(unique.values())


class TestVersions:
    """Joining the members' versions."""

    @given(version_sets())
    def test_never_loses_a_version_and_keys_are_unique(
        self, case: tuple[Component, list[VersionNode]]
    ) -> None:
        """Every upstream version is a source of exactly one served version; keys are unique."""
        component, versions = case
        merged, _ = merge_versions(component, versions)
        sources = Counter(s.id for m in merged for s in m.sources)
        assert sources == Counter(v.id for v in versions)
        assert len({m.key for m in merged}) == len(merged)

    @given(version_sets())
    def test_same_name_and_content_is_one_version(
        self, case: tuple[Component, list[VersionNode]]
    ) -> None:
        """Versions of one name with one known fingerprint are joined; others conflict."""
        component, versions = case
        merged, conflicts = merge_versions(component, versions)
        for m in merged:
            assert len({s.name for s in m.sources}) == 1
            assert len({s.member for s in m.sources}) == len(m.sources)
            if len(m.sources) > 1:
                assert m.sources[0].fingerprint is not None
                assert len({s.fingerprint for s in m.sources}) == 1
        conflicted = {k for c in conflicts for k in c.keys}
        assert conflicted == {m.key for m in merged if m.conflict}

    def test_conflicting_content_stays_reachable(self) -> None:
        """A second source with other content keeps its own, qualified key."""
        members = [Node(1, "dock", 1, "x"), Node(2, "hub", 2, "y")]
        versions = [
            VersionNode(10, 1, "1.0", "1.0", 0, "f1"),
            VersionNode(20, 2, "1.0", "1.0", 0, "f2"),
            VersionNode(21, 2, "2.0", "2.0", 1, "f3"),
        ]
        merged, conflicts = merge_versions(Component(members), versions)
        assert [(m.key, m.conflict) for m in merged] == [
            ("1.0", True),
            ("1.0~hub", True),
            ("2.0", False),
        ]
        assert conflicts[0].name == "1.0"


@settings(max_examples=25)
@given(nodes_and_rules())
def test_merge_of_a_closed_subset_matches_the_whole(case: tuple[list[Node], Rules]) -> None:
    """Merging one connected part alone, with the global identifying keys, gives the same
    components as merging everything (what the incremental merge relies on)."""
    nodes, rules = case
    identifying = identifying_keys(nodes)
    whole = merge(nodes, rules=rules)
    for comp in whole:
        # The closure of the component under identifying keys.
        part = {m.id for m in comp.members}
        changed = True
        while changed:
            changed = False
            for n in nodes:
                if n.id not in part and any(
                    n.keys & m.keys & identifying
                    or (tuple(sorted((n.qualified, m.qualified))) in rules.always)
                    for m in nodes
                    if m.id in part
                ):
                    part.add(n.id)
                    changed = True
        sub = merge([n for n in nodes if n.id in part], identifying=identifying, rules=rules)
        assert [tuple(m.id for m in c.members) for c in sub] == [
            tuple(m.id for m in c.members) for c in whole if {m.id for m in c.members} <= part
        ]
