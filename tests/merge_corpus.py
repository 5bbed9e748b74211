"""A labelled corpus for the merge: records of six registries with the true tool of each.

Shaped like Dockstore, WorkflowHub, two real Yevis trees (tests/data/realdata, Apache-2.0),
gh-trs and BioContainers, with the hard cases real catalogues have: repository URLs and DOIs in
every spelling, descriptors re-encoded (CRLF, trailing blanks), identifiers outside
``aliases``; generic aliases given to one tool in each registry, CWL/WDL skeletons and LICENSE
files as primary descriptors, forks with byte-identical descriptors, organisation and project
URLs and papers' DOIs shared by many tools, monorepos whose workflows point at the repository
root. Deterministic (seeded); ``truth`` names the real tool behind each record.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

REALDATA = Path(__file__).parent / "data" / "realdata"
LANGUAGES = ("CWL", "WDL", "NFL", "SMK", "GALAXY")
PRIORITY = {
    "dockstore": 10,
    "workflowhub": 20,
    "ddbj": 30,
    "manabuishii": 31,
    "ghtrs": 32,
    "biocontainers": 40,
}
ORGS = ("lab-alpha", "genomics-core", "bioinfo-unit", "seqlab", "cmg-group", "omics-hub")
GENERIC = ("variant calling", "RNA-seq", "1.0.0", "workflow", "Quality control", "pipeline")
PAPER = "https://doi.org/10.1038/s41587-020-0439-x"
ORG_URLS = ("https://github.com/nf-core", "https://nf-co.re", "https://galaxyproject.org/")


@dataclass
class Record:
    """One upstream record and the real tool behind it."""

    upstream: str
    external_id: str
    truth: str
    doc: dict[str, Any] = field(default_factory=dict)
    # (path, descriptor type, content) of each version's primary descriptor.
    descriptors: list[tuple[str, str, bytes]] = field(default_factory=list)


def _syllables(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("bcdfgklmnprstvz") + rng.choice("aeiou") for _ in range(n))


def descriptor(language: str, names: list[str], version: str) -> bytes:
    """A workflow in *language* whose steps and parameters are called *names*."""
    a, b, c, d, e, f = names[:6]
    if language == "CWL":
        text = (
            f"cwlVersion: v1.2\nclass: Workflow\nlabel: {a} {b}\ndoc: release {version}\n"
            f"inputs:\n  {c}_reads: File\n  {d}_index: Directory\n"
            f"outputs:\n  {e}_out:\n    type: File\n    outputSource: {b}/{f}\n"
            f"steps:\n  {a}:\n    run: tools/{a}.cwl\n    in: {{reads: {c}_reads}}\n"
            f"    out: [{f}]\n  {b}:\n    run: tools/{b}.cwl\n    in: {{x: {a}/{f}, "
            f"index: {d}_index}}\n    out: [{f}]\n"
        )
    elif language == "WDL":
        text = (
            f"version 1.0\n# release {version}\nworkflow {a}_{b} {{\n  input {{\n"
            f"    File {c}_reads\n    File {d}_ref\n  }}\n  call {e} {{ input: r = {c}_reads }}\n"
            f"  output {{ File {f}_vcf = {e}.out }}\n}}\n\ntask {e} {{\n  input {{ File r }}\n"
            f'  command <<< {a}-{b} --ref ~{{r}} > out >>>\n  output {{ File out = "out" }}\n}}\n'
        )
    elif language == "NFL":
        text = (
            f"// release {version}\nnextflow.enable.dsl = 2\nparams.{c}_reads = null\n"
            f"params.{d}_genome = null\n\nprocess {a.upper()} {{\n  input:\n  path {c}\n"
            f'  output:\n  path \'{e}.txt\'\n  script:\n  """\n  {a}-{b} $'
            f'{{{c}}} > {e}.txt\n  """\n}}\n\nworkflow {{\n  {a.upper()}(Channel.fromPath('
            f"params.{c}_reads))\n  {f}_report({a.upper()}.out)\n}}\n"
        )
    elif language == "SMK":
        text = (
            f"# release {version}\nconfigfile: 'config/{a}.yaml'\n\nrule all:\n"
            f"    input: '{e}/{f}.vcf'\n\nrule {a}_{b}:\n    input: '{c}/reads.fq'\n"
            f"    output: '{d}/aligned.bam'\n    shell: '{a} {b} {{input}} > {{output}}'\n\n"
            f"rule {e}_{f}:\n    input: '{d}/aligned.bam'\n    output: '{e}/{f}.vcf'\n"
            f"    shell: '{e}-caller {{input}} > {{output}}'\n"
        )
    else:
        doc = {
            "a_galaxy_workflow": "true",
            "format-version": "0.1",
            "name": f"{a} {b}",
            "annotation": f"release {version}",
            "steps": {
                "0": {"type": "data_input", "label": f"{c}_reads"},
                "1": {"type": "tool", "tool_id": f"toolshed/{d}/{e}", "label": f"{f}_step"},
            },
        }
        text = json.dumps(doc, indent=4) + "\n"
    return text.encode()


SKELETONS = (
    ("main.cwl", "CWL", b"cwlVersion: v1.2\nclass: Workflow\ninputs: []\noutputs: []\nsteps: []\n"),
    ("main.wdl", "WDL", b"version 1.0\n\nworkflow main {\n  input {\n  }\n  output {\n  }\n}\n"),
    (
        "LICENSE",
        "CWL",
        (
            b"MIT License\n\nCopyright (c) 2023 The authors\n\nPermission is hereby "
            b"granted, free of charge, to any person obtaining a copy of this software\n"
        ),
    ),
)
EXTENSION = {
    "CWL": "main.cwl",
    "WDL": "main.wdl",
    "NFL": "main.nf",
    "SMK": "Snakefile",
    "GALAXY": "workflow.ga",
}


def _repo_spelling(rng: random.Random, org: str, repo: str, path: str = "") -> str:
    """The repository URL as some registry writes it."""
    if path:
        return rng.choice(
            [
                f"https://github.com/{org}/{repo}/tree/main/{path}",
                f"https://github.com/{org}/{repo}/blob/v1.0/{path}/main.cwl",
            ]
        )
    return rng.choice(
        [
            f"https://github.com/{org}/{repo}",
            f"https://www.github.com/{org}/{repo}",
            f"http://github.com/{org.upper()}/{repo}/",
            f"https://github.com/{org}/{repo}.git",
            f"git@github.com:{org}/{repo}.git",
            f"ssh://git@github.com/{org}/{repo}",
            f"https://github.com/{org}/{repo}/tree/develop",
            f"www.github.com/{org}/{repo}",
        ]
    )


def _reencode(rng: random.Random, data: bytes) -> bytes:
    """The same text as another registry serves it."""
    how = rng.choice(["crlf", "trailing", "newline", "same"])
    if how == "crlf":
        return data.replace(b"\n", b"\r\n")
    if how == "trailing":
        return b"\n".join(line + b"  " if line else line for line in data.split(b"\n"))
    if how == "newline":
        return data.rstrip(b"\n")
    return data


def _real_records() -> list[Record]:
    """The real Yevis and gh-trs trees; the two shared workflows are labelled as one tool."""
    out = []
    same = {"677a5fd8-fe70-48f7-adb4-8842c6427ab6": "68c32f9c-bdaa-420c-879c-90b40d8bc4d5"}
    for folder, upstream in (
        ("ddbj+workflow-registry", "ddbj"),
        ("manabuishii+yevis-getting-started", "manabuishii"),
        ("suecharo+gh-trs", "ghtrs"),
    ):
        base = REALDATA / folder / "tools"
        for tool in json.loads((base / "index.json").read_text()):
            record = Record(upstream, tool["id"], "real:" + same.get(tool["id"], tool["id"]))
            record.doc = {k: tool[k] for k in ("aliases",) if k in tool}
            for v in tool.get("versions", []):
                for lang in v.get("descriptor_type") or []:
                    path = base / tool["id"] / "versions" / v["id"] / lang / "descriptor"
                    if (path / "index.json").is_file():
                        d = json.loads((path / "index.json").read_text())
                        name = d.get("url", "main").rsplit("/", 1)[-1]
                        record.descriptors.append((name, lang, d["content"].encode()))
            out.append(record)
    return out


def build(seed: int = 20261201, tools: int = 190) -> list[Record]:
    """The corpus."""
    rng = random.Random(seed)
    records = _real_records()
    real = {r.external_id: r for r in records}
    hub_ids = iter(range(100, 10_000))
    uuid_n = iter(range(1, 10_000))

    def uuid() -> str:
        return f"{next(uuid_n):08x}-aaaa-4bbb-8ccc-{rng.getrandbits(48):012x}"

    # Real workflows published again elsewhere: Dockstore from the repository, WorkflowHub
    # with the descriptor re-encoded.
    mutect = real["324a6207-70bd-4a59-be2b-25001d1af9e3"]
    records.append(
        Record(
            "dockstore",
            "#workflow/github.com/broadinstitute/gatk-mutect2",
            mutect.truth,
            {"aliases": ["324a6207-70bd-4a59-be2b-25001d1af9e3"]},
        )
    )
    for real_id in ("1cfc944d-1fa0-4833-956d-5240a85acedc", "eb668cce-4f38-4543-96ae-411af6aea734"):
        r = real[real_id]
        name, lang, content = r.descriptors[0]
        # A monorepo: Dockstore tells its workflows apart by name, WorkflowHub points at the root.
        records.append(
            Record(
                "dockstore",
                f"#workflow/github.com/gatk-workflows/seq-format-conversion/{name[:-4]}",
                r.truth,
                descriptors=[(name, lang, content)],
            )
        )
        records.append(
            Record(
                "workflowhub",
                str(next(hub_ids)),
                r.truth,
                {"aliases": ["https://github.com/gatk-workflows/seq-format-conversion"]},
                [(name, lang, _reencode(rng, content))],
            )
        )
    for real_id in ("756e9c19-ec2c-4b1a-b228-fc3ad1bce03e", "02cc8518-84ab-4742-afc5-da6389a4ad27"):
        # Other workflows of the same monorepo, in one registry only, pointing at its root.
        records.append(
            Record(
                "ghtrs" if real_id.startswith("7") else "biocontainers",
                str(next(hub_ids)),
                f"monorepo-only:{real_id}",
                {"aliases": ["git@github.com:gatk-workflows/seq-format-conversion.git"]},
            )
        )

    for t in range(tools):
        truth = f"wf{t}"
        org, repo = rng.choice(ORGS), f"{_syllables(rng, 3)}-{rng.choice(['seq', 'flow', 'pipe'])}"
        names = [_syllables(rng, 2) + "_" + _syllables(rng, 2) for _ in range(6)]
        lang = rng.choice(LANGUAGES)
        versions = ["1.0", "1.1", "2.0"][: rng.randint(1, 3)]
        contents = {v: descriptor(lang, names, v) for v in versions}
        zenodo = f"10.5281/zenodo.{rng.randint(10**6, 10**7)}" if rng.random() < 0.3 else None
        hub_n = next(hub_ids)
        where = rng.sample(["dockstore", "workflowhub", "yevis"], rng.randint(1, 3))
        distinct_alias = (
            f"{_syllables(rng, 3)} {_syllables(rng, 3)}" if rng.random() < 0.2 else None
        )
        for place in where:
            upstream = place
            doc: dict[str, Any] = {"aliases": []}
            held = rng.sample(versions, rng.randint(1, len(versions)))
            if upstream == "dockstore":
                ext = f"#workflow/github.com/{org}/{repo}"
                if zenodo:
                    doc["aliases"].append(zenodo.replace("/", "-"))
                descs = [(EXTENSION[lang], lang, contents[v]) for v in held]
            elif upstream == "workflowhub":
                ext = str(hub_n)
                doc["aliases"].append(_repo_spelling(rng, org, repo))
                doc["aliases"].append(
                    f"doi.org/10.48546/workflowhub.workflow.{hub_n}.{rng.randint(1, 3)}"
                )
                if zenodo:
                    doc["aliases"].append(f"doi.org/{zenodo}")
                descs = [(EXTENSION[lang], lang, _reencode(rng, contents[v])) for v in held]
            else:
                ext = uuid()
                upstream = rng.choice(["ddbj", "manabuishii"])
                if rng.random() < 0.5:
                    doc["aliases"].append(_repo_spelling(rng, org, repo))
                # A Yevis tree serves the latest release only; sometimes none of the others
                # hold it, and then only the repository (when given) tells.
                descs = [(EXTENSION[lang], lang, _reencode(rng, contents[versions[-1]]))]
            if distinct_alias:
                doc["aliases"].append(distinct_alias)
            if rng.random() < 0.15:
                doc["aliases"].append(PAPER)
            if rng.random() < 0.15:
                doc["aliases"].append(rng.choice(ORG_URLS))
            records.append(Record(upstream, ext, truth, doc, descs))
        if rng.random() < 0.12:
            # A fork: another organisation's repository, the same bytes at one version.
            fork = rng.choice([o for o in ORGS if o != org])
            records.append(
                Record(
                    "workflowhub",
                    str(next(hub_ids)),
                    f"{truth}-fork",
                    {"aliases": [f"https://github.com/{fork}/{repo}"]},
                    [(EXTENSION[lang], lang, contents[versions[0]])],
                )
            )

    # Monorepo workflows, each pointing at the repository root, in different registries.
    for i, upstream in enumerate(["dockstore", "workflowhub", "ddbj", "manabuishii"]):
        names = [_syllables(rng, 2) for _ in range(6)]
        ext = (
            f"#workflow/github.com/galaxyproject/iwc/{names[0]}"
            if upstream == "dockstore"
            else str(next(hub_ids))
            if upstream == "workflowhub"
            else uuid()
        )
        aliases = [] if upstream == "dockstore" else ["https://github.com/galaxyproject/iwc"]
        records.append(
            Record(
                upstream,
                ext,
                f"iwc{i}",
                {"aliases": aliases},
                [("wf.ga", "GALAXY", descriptor("GALAXY", names, "1"))],
            )
        )

    # One unrelated tool per registry with each generic alias, boilerplate descriptor, shared
    # organisation URL and cited paper.
    for upstream in ("dockstore", "workflowhub", "ddbj", "manabuishii", "ghtrs"):
        for i, alias in enumerate(GENERIC):
            skeleton = SKELETONS[i % len(SKELETONS)]
            records.append(
                Record(
                    upstream,
                    uuid() if upstream in ("ddbj", "manabuishii") else f"generic-{upstream}-{i}",
                    f"generic:{upstream}:{i}",
                    {"aliases": [alias, ORG_URLS[i % 3], PAPER]},
                    [skeleton],
                )
            )

    # BioContainers: software tools, their bio.tools ids kept in `identifiers`; Dockstore-style
    # tool records of some of them name bio.tools in their aliases.
    for i in range(40):
        name = f"{_syllables(rng, 2)}{rng.choice(['tools', 'seq', 'map', ''])}{i}"
        truth = f"bio:{name}"
        records.append(
            Record(
                "biocontainers",
                name,
                truth,
                {"identifiers": f"biotools:{name},doi:10.1093/bioinformatics/btp{i:03d}"},
            )
        )
        if i % 3 == 0:
            records.append(
                Record(
                    "dockstore",
                    f"#tool/quay.io/biocontainers/{name}",
                    truth,
                    {"aliases": [f"https://bio.tools/{name}"]},
                )
            )
        if i % 5 == 0:
            records.append(
                Record(
                    "workflowhub",
                    str(next(hub_ids)),
                    truth,
                    {"aliases": [f"biotools:{name.upper()}", "RNA-seq"]},
                )
            )
    return records


def pairs(groups: Iterator[list[int]] | list[list[int]]) -> set[tuple[int, int]]:
    """The unordered pairs of indices within each group."""
    return {(a, b) if a < b else (b, a) for g in groups for a, b in combinations(g, 2)}


def scores(records: list[Record], predicted: list[list[int]]) -> tuple[float, float, int, int]:
    """Pairwise precision and recall of *predicted* groups of record indices against the
    truth, with the numbers of true and predicted pairs."""
    by_truth: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_truth.setdefault(r.truth, []).append(i)
    true_pairs = pairs(list(by_truth.values()))
    got = pairs(predicted)
    hit = len(true_pairs & got)
    precision = hit / len(got) if got else 1.0
    recall = hit / len(true_pairs) if true_pairs else 1.0
    return precision, recall, len(true_pairs), len(got)
