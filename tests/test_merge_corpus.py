"""The labelled corpus: pairwise precision and recall of the merge, engine and database."""

from __future__ import annotations

from collections import Counter
from typing import Any

import asyncpg
import pytest

from aggregator.db.merge import remerge
from aggregator.merge.content import carries_identity, information, normalised_sha256
from aggregator.merge.engine import Node, merge
from aggregator.merge.identity import evidence
from aggregator.trs.parse import sha256_hex
from tests.merge_corpus import PRIORITY, Record, build, scores

MIN_PRECISION = 1.0
MIN_RECALL = 0.98


def keys_of(record: Record) -> frozenset[tuple[str, str]]:
    """The record's evidence, as the database step computes it."""
    content = {
        normalised_sha256(data)
        for path, _, data in record.descriptors
        if carries_identity(path, information(data))
    }
    return evidence(record.external_id, record.doc, content)


def test_the_corpus_has_every_hard_case() -> None:
    """Six registries, about 520 records, and each class of hard case present."""
    records = build()
    assert 450 <= len(records) <= 650
    assert len({r.upstream for r in records}) == 6
    truths = Counter(r.truth for r in records)
    assert sum(1 for t in truths if t.endswith("-fork")) >= 5
    assert sum(1 for t in truths if t.startswith("generic:")) == 30
    assert sum(1 for t in truths if t.startswith("iwc")) == 4
    assert sum(1 for r in records if r.doc.get("identifiers")) == 40
    crlf = sum(1 for r in records for _, _, d in r.descriptors if b"\r\n" in d)
    assert crlf >= 10


def test_engine_precision_and_recall() -> None:
    """Pairwise over the corpus: no wrong join (precision 1.00), recall at least 0.98."""
    records = build()
    nodes = [
        Node(i, r.upstream, PRIORITY[r.upstream], r.external_id, keys_of(r))
        for i, r in enumerate(records)
    ]
    components = merge(nodes)
    precision, recall, true_pairs, predicted = scores(
        records, [[m.id for m in c.members] for c in components]
    )
    print(
        f"\nengine: {len(records)} records, {true_pairs} true pairs, {predicted} predicted, "
        f"precision {precision:.3f}, recall {recall:.3f}"
    )
    assert precision >= MIN_PRECISION
    assert recall >= MIN_RECALL
    # Forks sharing an identity-carrying descriptor with the original were refused, and the
    # refusal says why: the repositories differ (or the original's tool already holds a
    # record of the fork's upstream).
    forks = {i for i, r in enumerate(records) if r.truth.endswith("-fork")}
    refused = [e for c in components for e in c.refused if {e.a, e.b} & forks]
    assert {e.kind for e in refused} == {"content"}
    reasons = Counter(e.reason.split(":")[0] for e in refused)
    assert set(reasons) <= {"different repositories", "both tools come from one upstream"}
    assert reasons["different repositories"] >= 3


async def load(conn: asyncpg.Connection[Any] | asyncpg.Pool[Any], records: list[Record]) -> None:
    """Insert the corpus as published upstream records (one version per descriptor), queued
    for the merge as a publish queues them."""
    ids = {}
    for name, priority in PRIORITY.items():
        ids[name] = await conn.fetchval(
            """insert into upstreams (name, url, kind, mode, priority)
               values ($1, $2, 'trs', 'full', $3) returning id""",
            name,
            f"https://{name}.test/ga4gh/trs/v2",
            priority,
        )
    for r in records:
        doc = {"id": r.external_id, **r.doc}
        tool = await conn.fetchval(
            """insert into upstream_tools (upstream_id, external_id, doc, doc_hash)
               values ($1, $2, $3, 'x') returning id""",
            ids[r.upstream],
            r.external_id,
            doc,
        )
        await conn.execute("insert into merge_queue values ($1)", tool)
        for n, (path, lang, data) in enumerate(r.descriptors):
            version = await conn.fetchval(
                """insert into upstream_versions (upstream_tool_id, key, external_id, position, doc)
                   values ($1, $2, $2, $3, $4) returning id""",
                tool,
                f"v{n}",
                n,
                {"id": f"v{n}", "name": f"v{n}"},
            )
            sha = sha256_hex(data)
            await conn.execute(
                """insert into file_contents (sha256, content, size) values ($1, $2, $3)
                   on conflict do nothing""",
                sha,
                data,
                len(data),
            )
            await conn.execute(
                """insert into upstream_files (upstream_version_id, descriptor_type, path,
                       file_type, sha256, checksum_status)
                   values ($1, $2, $3, 'PRIMARY_DESCRIPTOR', $4, 'verified')""",
                version,
                lang,
                path,
                sha,
            )


@pytest.mark.parametrize(
    ("full", "slice_records"), [(False, None), (False, 7), (True, 7)], ids=["one", "sliced", "full"]
)
async def test_database_precision_and_recall(
    pool: asyncpg.Pool[Any], full: bool, slice_records: int | None
) -> None:
    """The database step (evidence from stored documents and descriptor bytes, closure,
    merge) publishes the engine's groups: precision 1.00, recall at least 0.98; served bytes
    keep their exact checksum beside the normalised one. The same when the merge is cut into
    slices of a few records (whole components each), incremental or full."""
    records = build()
    await load(pool, records)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("select 1 from catalogue_state for update")
        stats = await remerge(conn, tombstone_after=3, full=full, slice_records=slice_records)
    assert stats.slices > 1 if slice_records else stats.slices == 1
    rows = await pool.fetch(
        """select m.tool_id, u.name, t.external_id from catalogue_members m
           join upstream_tools t on t.id = m.upstream_tool_id
           join upstreams u on u.id = t.upstream_id"""
    )
    index = {(r.upstream, r.external_id): i for i, r in enumerate(records)}
    groups: dict[str, list[int]] = {}
    for row in rows:
        groups.setdefault(row["tool_id"], []).append(index[(row["name"], row["external_id"])])
    precision, recall, _, _ = scores(records, list(groups.values()))
    print(f"\ndatabase: precision {precision:.3f}, recall {recall:.3f}")
    assert precision >= MIN_PRECISION
    assert recall >= MIN_RECALL
    nodes = [
        Node(i, r.upstream, PRIORITY[r.upstream], r.external_id, keys_of(r))
        for i, r in enumerate(records)
    ]
    engine = sorted(sorted(m.id for m in c.members) for c in merge(nodes))
    assert sorted(sorted(g) for g in groups.values()) == engine
    crlf = await pool.fetchrow(
        """select sha256, normalised_sha256, content from file_contents
           where position('\\x0d0a'::bytea in content) > 0 limit 1"""
    )
    assert crlf["sha256"] == sha256_hex(bytes(crlf["content"]))
    assert crlf["normalised_sha256"] == normalised_sha256(bytes(crlf["content"]))
    assert crlf["normalised_sha256"] != crlf["sha256"]
