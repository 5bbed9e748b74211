"""Properties of the pure merge: identity keys, components, versions."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.merge.engine import (
    Component,
    Node,
    VersionNode,
    identifying_keys,
    merge,
    merge_versions,
)
from aggregator.merge.identity import evidence, global_id, is_placeholder, normalise_alias

UPSTREAMS = ("alpha", "beta", "gamma", "delta")
KEYS = (
    [("id", f"src:github.com/org/r{i}") for i in range(4)]
    + [("alias", f"alias-{i}") for i in range(4)]
    + [("sha256", f"{i:064x}") for i in range(4)]
)


@st.composite
def node_sets(draw: Any) -> list[Node]:
    count = draw(st.integers(min_value=0, max_value=24))
    nodes = []
    for i in range(count):
        upstream = draw(st.sampled_from(UPSTREAMS))
        keys = frozenset(draw(st.lists(st.sampled_from(KEYS), max_size=3)))
        nodes.append(Node(i, upstream, UPSTREAMS.index(upstream) * 10, f"t{i}", keys))
    return nodes


def canonical(components: list[Component]) -> list[tuple[Any, ...]]:
    return [
        (
            tuple(m.id for m in c.members),
            tuple(sorted((e.a, e.b, e.kind, e.value) for e in c.joins)),
        )
        for c in components
    ]


class TestIdentity:
    """Normalisation of identity evidence."""

    def test_global_ids_normalise_across_spellings(self) -> None:
        """A Dockstore id, its GitHub URL and a bare path are one key; so are DOI spellings."""
        assert global_id("#workflow/github.com/Org/Repo") == "src:github.com/org/repo"
        assert global_id("https://github.com/org/repo.git") == "src:github.com/org/repo"
        assert global_id("github.com/org/repo/") == "src:github.com/org/repo"
        assert global_id("https://doi.org/10.5281/zenodo.123") == "doi:10.5281/zenodo.123"
        assert global_id("doi:10.5281/ZENODO.123") == "doi:10.5281/zenodo.123"
        assert global_id("10.5281-zenodo.123") == "doi:10.5281/zenodo.123"
        assert (
            global_id("324A6207-70bd-4a59-be2b-25001d1af9e3")
            == "uuid:324a6207-70bd-4a59-be2b-25001d1af9e3"
        )
        assert global_id("trs://dockstore.org/%23workflow%2Fx") == "trs:dockstore.org/#workflow/x"

    def test_local_ids_are_not_global(self) -> None:
        """Short local ids and names without a host are never global identifiers."""
        for local in (
            "1",
            "123",
            "samtools",
            "A1B2C3",
            "devteam~fastqc~fastqc",
            "github.com/org",
            "quay.io",
        ):
            assert global_id(local) is None, local

    def test_aliases_reject_numbers_and_placeholders(self) -> None:
        """Bare numbers, tiny strings and placeholder words are not aliases."""
        assert normalise_alias("  My   Tool ") == "my tool"
        for bad in ("", "12", "123456", "latest", "N/A", "ab"):
            assert normalise_alias(bad) is None, bad

    def test_placeholder_content_is_not_evidence(self) -> None:
        """Empty files and registries' placeholder texts carry no identity."""
        assert is_placeholder(0, b"")
        assert is_placeholder(40, b"Dockstore does not store binary files")
        assert not is_placeholder(500, b"cwlVersion: v1.2\nclass: Workflow\n")
        keys = evidence(
            "101",
            {"aliases": ["#workflow/github.com/a/b", "my-tool", "7"]},
            [("ab" * 32, 500, b"version 1.0"), ("cd" * 32, 3, b"x\n")],
        )
        assert keys == {("id", "src:github.com/a/b"), ("alias", "my-tool"), ("sha256", "ab" * 32)}


class TestComponents:
    """Merging upstream tools into components."""

    @given(node_sets(), st.randoms())
    def test_order_independent(self, nodes: list[Node], rnd: Any) -> None:
        """Shuffling the input never changes the components."""
        shuffled = list(nodes)
        rnd.shuffle(shuffled)
        assert canonical(merge(shuffled)) == canonical(merge(nodes))

    @given(node_sets())
    def test_never_loses_or_duplicates_a_tool(self, nodes: list[Node]) -> None:
        """Every node is in exactly one component."""
        members = [m.id for c in merge(nodes) for m in c.members]
        assert sorted(members) == sorted(n.id for n in nodes)

    @given(node_sets())
    def test_one_upstream_never_merges_with_itself(self, nodes: list[Node]) -> None:
        """No component holds two tools of one upstream."""
        for c in merge(nodes):
            assert len({m.upstream for m in c.members}) == len(c.members)

    @given(node_sets())
    def test_idempotent(self, nodes: list[Node]) -> None:
        """Merging the members of each component again gives the same component."""
        first = merge(nodes)
        identifying = identifying_keys(nodes)
        for c in first:
            again = merge(c.members, identifying=identifying)
            assert [[m.id for m in a.members] for a in again] == [[m.id for m in c.members]]

    @given(node_sets())
    def test_joins_explain_every_component(self, nodes: list[Node]) -> None:
        """A component of n members has n-1 joins, each on an identifying key both share."""
        identifying = identifying_keys(nodes)
        by_id = {n.id: n for n in nodes}
        for c in merge(nodes):
            assert len(c.joins) == len(c.members) - 1
            for e in c.joins:
                key = (e.kind, e.value)
                assert key in identifying
                assert key in by_id[e.a].keys and key in by_id[e.b].keys

    @given(node_sets())
    def test_identifying_keys_that_can_join_do(self, nodes: list[Node]) -> None:
        """Two tools sharing an identifying key are together unless joining their tools would
        put two tools of one upstream together (and that refusal is reported)."""
        identifying = identifying_keys(nodes)
        comps = merge(nodes)
        where = {m.id: i for i, c in enumerate(comps) for m in c.members}
        for a in nodes:
            for b in nodes:
                if a.id < b.id and (a.keys & b.keys & identifying) and where[a.id] != where[b.id]:
                    ca, cb = comps[where[a.id]], comps[where[b.id]]
                    assert {m.upstream for m in ca.members} & {m.upstream for m in cb.members}
                    assert ca.refused or cb.refused

    def test_a_generic_alias_does_not_chain_unrelated_tools(self) -> None:
        """An alias held by many tools of one upstream joins none of them."""
        generic = ("alias", "variant calling")
        nodes = [Node(i, "alpha", 1, f"a{i}", frozenset({generic})) for i in range(5)]
        nodes += [
            Node(10, "beta", 2, "b", frozenset({generic})),
            Node(11, "gamma", 3, "c", frozenset({generic})),
        ]
        assert all(len(c.members) == 1 for c in merge(nodes))
        assert len(merge(nodes, max_per_upstream=5)) == 5

    def test_primary_is_the_best_priority(self) -> None:
        """The member of best priority, then upstream name, is the primary."""
        k = frozenset({("id", "uuid:x")})
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
@given(node_sets())
def test_merge_of_a_closed_subset_matches_the_whole(nodes: list[Node]) -> None:
    """Merging one connected part alone, with the global identifying keys, gives the same
    components as merging everything (what the incremental merge relies on)."""
    identifying = identifying_keys(nodes)
    whole = merge(nodes)
    for comp in whole:
        # The closure of the component under identifying keys.
        part = {m.id for m in comp.members}
        changed = True
        while changed:
            changed = False
            for n in nodes:
                if n.id not in part and any(
                    n.keys & m.keys & identifying for m in nodes if m.id in part
                ):
                    part.add(n.id)
                    changed = True
        sub = merge([n for n in nodes if n.id in part], identifying=identifying)
        assert [tuple(m.id for m in c.members) for c in sub] == [
            tuple(m.id for m in c.members) for c in whole if {m.id for m in c.members} <= part
        ]
