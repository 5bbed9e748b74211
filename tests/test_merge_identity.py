"""Identity evidence: every spelling of an identifier, strong and weak kinds, content."""

from __future__ import annotations

import pytest

from aggregator.merge.content import carries_identity, information, normalise, normalised_sha256
from aggregator.merge.identity import classify, distinctive, evidence

REPO = ("repo", "github.com/org/repo")


class TestRepositories:
    """One repository, many spellings; the workflow path where the registry gives one."""

    @pytest.mark.parametrize(
        "spelling",
        [
            "https://github.com/Org/Repo",
            "http://github.com/org/repo/",
            "https://github.com/org/repo.git",
            "https://www.github.com/org/repo",
            "www.github.com/org/repo",
            "github.com/org/repo",
            "git@github.com:org/repo.git",
            "ssh://git@github.com/org/repo",
            "git+https://github.com/org/repo",
            "https://github.com/org/repo/tree/main",
            "https://github.com/org/repo/tree/develop/",
            "#workflow/github.com/org/repo",
        ],
    )
    def test_spellings_of_one_repository_are_one_key(self, spelling: str) -> None:
        """Scheme, www., .git, SSH and scp forms, case and a bare branch are spelling."""
        assert classify(spelling) == REPO

    @pytest.mark.parametrize(
        ("spelling", "key"),
        [
            (
                "https://github.com/org/repo/tree/main/workflows/x",
                "github.com/org/repo#workflows/x",
            ),
            (
                "https://github.com/org/repo/blob/v1.0/workflows/x/main.cwl",
                "github.com/org/repo#workflows/x",
            ),
            (
                "https://raw.githubusercontent.com/org/repo/main/workflows/x/main.nf",
                "github.com/org/repo#workflows/x",
            ),
            (
                "#workflow/github.com/galaxyproject/iwc/chipseq-pe",
                "github.com/galaxyproject/iwc#chipseq-pe",
            ),
            ("https://gitlab.com/grp/sub/repo/-/tree/main/wf", "gitlab.com/grp/sub/repo#wf"),
            ("https://gitlab.com/grp/sub/repo", "gitlab.com/grp/sub/repo"),
            ("https://bitbucket.org/org/repo/src/main/wf", "bitbucket.org/org/repo#wf"),
        ],
    )
    def test_workflow_paths(self, spelling: str, key: str) -> None:
        """A path inside the repository (a file's directory) is kept after '#'."""
        assert classify(spelling) == ("repo", key)

    def test_a_record_with_a_path_also_names_its_repository(self) -> None:
        """Holding the root too lets the merge see that a repository holds several workflows."""
        keys = evidence("#workflow/github.com/org/mono/a", {})
        assert keys == {("repo", "github.com/org/mono#a"), ("repo", "github.com/org/mono")}

    @pytest.mark.parametrize(
        ("value", "key"),
        [
            ("https://github.com/nf-core", ("cite", "github.com/nf-core")),
            ("https://nf-co.re/rnaseq", ("cite", "nf-co.re/rnaseq")),
            ("https://galaxyproject.org/", ("cite", "galaxyproject.org")),
            ("#tool/quay.io/biocontainers/samtools", ("cite", "quay.io/biocontainers/samtools")),
        ],
    )
    def test_organisation_project_and_image_urls_only_corroborate(
        self, value: str, key: tuple[str, str]
    ) -> None:
        """An organisation's or project's page or a container image is shared by many tools."""
        assert classify(value) == key


class TestIdentifiers:
    """DOIs, UUIDs, TRS URIs, bio.tools ids and namespaced cross-references."""

    @pytest.mark.parametrize(
        "spelling",
        [
            "10.5281/zenodo.123",
            "doi:10.5281/ZENODO.123",
            "DOI: 10.5281/zenodo.123",
            "https://doi.org/10.5281/zenodo.123",
            "http://dx.doi.org/10.5281/zenodo.123",
            "doi.org/10.5281/zenodo.123",
            "10.5281-zenodo.123",
        ],
    )
    def test_doi_spellings(self, spelling: str) -> None:
        """Every DOI spelling, Dockstore's dashed one included, is one key."""
        assert classify(spelling) == ("doi", "10.5281/zenodo.123")

    def test_workflowhub_dois_name_the_workflow_not_the_version(self) -> None:
        """Two versions' DOIs of one WorkflowHub workflow are one key."""
        assert classify("https://doi.org/10.48546/workflowhub.workflow.44.3") == (
            "doi",
            "10.48546/workflowhub.workflow.44",
        )
        assert classify("10.6084/m9.figshare.7") == ("doi", "10.6084/m9.figshare.7")

    def test_other_dois_are_citations(self) -> None:
        """A paper's DOI is cited by several tools: it corroborates only."""
        assert classify("doi.org/10.1038/s41587-020-0439-x") == (
            "cite",
            "doi:10.1038/s41587-020-0439-x",
        )

    def test_uuid_trs_biotools_and_xrefs(self) -> None:
        """Minted ids normalise; bio.tools ids in both spellings are one key."""
        assert classify("324A6207-70bd-4a59-be2b-25001d1af9e3") == (
            "uuid",
            "324a6207-70bd-4a59-be2b-25001d1af9e3",
        )
        assert classify("trs://Dockstore.org/%23workflow%2Fx") == (
            "trs",
            "dockstore.org/#workflow/x",
        )
        assert (
            classify("biotools:FastQC")
            == classify("https://bio.tools/fastqc")
            == (
                "biotools",
                "fastqc",
            )
        )
        assert classify("RRID:SCR_014583") == ("xref", "rrid:scr_014583")

    def test_biocontainers_identifiers_field_is_read(self) -> None:
        """Identifiers kept outside aliases (a list or one comma-separated string) count."""
        listed = evidence("fastqc", {"identifiers": ["biotools:fastqc", "doi:10.1093/x/y"]})
        joined = evidence("fastqc", {"identifiers": "biotools:fastqc, doi:10.1093/x/y"})
        assert listed == joined == {("biotools", "fastqc"), ("cite", "doi:10.1093/x/y")}

    @pytest.mark.parametrize("local", ["1", "123", "samtools", "A1B2C3", "devteam~fastqc~fastqc"])
    def test_local_ids_are_never_evidence(self, local: str) -> None:
        """Registries choose short local ids independently."""
        assert evidence(local, {}) == frozenset()


class TestAliases:
    """Plain aliases: distinctive ones join, generic ones only corroborate."""

    @pytest.mark.parametrize(
        "alias",
        [
            "variant calling",
            "rnaseq-pipeline",
            "1.2.0-beta",
            "v2.1",
            "fastqc",
            "hello world",
            "my-first-workflow",
            "nf-core/rnaseq",
            "gatk4 mutect2 somatic",
        ],
    )
    def test_generic_aliases_are_words(self, alias: str) -> None:
        """Analysis words, dictionary words and version-like strings never join alone."""
        assert not distinctive(alias)
        assert evidence("x", {"aliases": [alias]}) <= {("word", alias.lower())}

    @pytest.mark.parametrize("alias", ["ddbj-pitagora-sra2fastq", "kelmor tavisu"])
    def test_structured_rare_aliases_are_distinctive(self, alias: str) -> None:
        """Long aliases with two rare tokens join on their own."""
        assert distinctive(alias)
        assert evidence("x", {"aliases": [alias]}) == {("alias", alias)}


class TestContent:
    """Descriptor content: the normalised checksum and the information threshold."""

    CWL = (
        b"cwlVersion: v1.2\nclass: Workflow\ninputs:\n  reads_fastq: File\n  genome_index: "
        b"Directory\noutputs:\n  aligned_bam:\n    type: File\n    outputSource: sort/sorted\n"
        b"steps:\n  align:\n    run: tools/bwa_mem.cwl\n    in: {reads: reads_fastq, "
        b"index: genome_index}\n    out: [sam]\n  sort:\n    run: tools/samtools_sort.cwl\n"
        b"    in: {alignment: align/sam}\n    out: [sorted]\n"
    )

    def test_line_endings_and_trailing_whitespace_do_not_change_the_checksum(self) -> None:
        """CRLF, trailing blanks and a missing final newline are re-encoding, not change."""
        crlf = self.CWL.replace(b"\n", b"  \r\n") + b"\r\n"
        assert normalised_sha256(crlf) == normalised_sha256(self.CWL.rstrip(b"\n"))
        assert normalised_sha256(self.CWL) != normalised_sha256(self.CWL.replace(b"sort", b"srt"))
        assert normalise(b"\xff\xfe binary") == b"\xff\xfe binary"

    def test_a_real_workflow_carries_identity(self) -> None:
        """A parsed workflow that names its inputs, steps and tools passes the threshold."""
        assert information(self.CWL) >= 8
        assert carries_identity("main.cwl", information(self.CWL))

    @pytest.mark.parametrize(
        "skeleton",
        [
            b"cwlVersion: v1.2\nclass: Workflow\ninputs: []\noutputs: []\nsteps: []\n",
            b"version 1.0\n\nworkflow main {\n  input {\n  }\n  output {\n  }\n}\n",
            b"#!/usr/bin/env nextflow\nnextflow.enable.dsl = 2\nworkflow {\n}\n",
            (
                b"MIT License\n\nCopyright (c) 2024\n\nPermission is hereby granted, free of "
                b"charge, to any person obtaining a copy of this software and documentation"
            ),
            b"# My workflow\n\nThis README describes how to run the pipeline on your data.\n",
        ],
    )
    def test_boilerplate_and_prose_carry_no_identity(self, skeleton: bytes) -> None:
        """Skeletons score under the threshold; prose does not parse as a workflow."""
        assert not carries_identity("main.cwl", information(skeleton))

    @pytest.mark.parametrize("path", ["LICENSE", "licence.md", "README.md", "docs/CHANGELOG"])
    def test_a_licence_or_readme_listed_as_descriptor_is_not_identity(self, path: str) -> None:
        """Whatever it contains, a licence or README file says nothing about the workflow."""
        assert not carries_identity(path, information(self.CWL))

    def test_evidence_takes_content_keys(self) -> None:
        """Content checksums the caller found identity-carrying become content keys."""
        assert evidence("x", {}, ["ab" * 32]) == {("content", "ab" * 32)}


def test_classification_is_the_same_for_values_kept_and_not_kept() -> None:
    """Short values are classified once and kept; long ones every time; the key is the same."""
    from aggregator.merge import identity

    short = "https://github.com/Lab/Tool/tree/main/workflows/x"
    long = "https://github.com/Lab/Tool/tree/main/" + "/".join(["deep"] * 80)
    assert len(long) > identity.CLASSIFY_CACHED_LENGTH >= len(short)
    for value in (short, long, short, long):
        assert classify(value) == identity._classify(value)
    assert classify(long) == ("repo", "github.com/lab/tool#" + "/".join(["deep"] * 80))
