"""Descriptor content as identity: the normalised checksum, and how much a descriptor says.

The same workflow is re-encoded on its way between registries (CRLF for LF, a trailing newline
added, trailing blanks), so content is compared by :func:`normalised_sha256`: the sha-256 of
the text with line endings made LF, trailing whitespace of every line removed and trailing
blank lines dropped. The served bytes and their sha-256 stay exactly the upstream's.

Content identifies a tool only when it carries identity (:func:`carries_identity`): its file
is not a licence, README or other prose; it parses as a workflow language (CWL or Galaxy as a
YAML/JSON document of that language, WDL, Nextflow or Snakemake by their block structure); and
its :func:`information` — the distinct names it uses beyond the language's own keywords and
boilerplate — reaches :data:`MIN_INFORMATION`. A CWL or WDL skeleton, a ``nextflow.config``
stub or a LICENSE file listed as the primary descriptor never joins two tools.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Final

import yaml

MIN_INFORMATION: Final = 8
_NOT_DESCRIPTORS: Final = re.compile(
    r"(?i)^(licen[cs]e|copying|readme|changelog|changes|notice|authors|contributing|citation)"
    r"(\.[\w.]+)?$|\.(md|txt|rst|html?|pdf|png|jpe?g|svg)$"
)
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
_WDL: Final = re.compile(r"^\s*(workflow|task)\s+\w+\s*\{", re.MULTILINE)
_NEXTFLOW: Final = re.compile(
    r"^\s*(process\s+\w+\s*\{|workflow(\s+\w+)?\s*\{|include\s*\{)", re.MULTILINE
)
_SNAKEMAKE: Final = re.compile(r"^(rule|checkpoint)\s+\w+\s*:", re.MULTILINE)
_HASH_COMMENT: Final = re.compile(r"(?m)(^|\s)#.*$")
_SLASH_COMMENT: Final = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
# The languages' keywords and the boilerplate every descriptor of them repeats.
_KEYWORD_TEXT: Final = """
    cwlVersion class Workflow CommandLineTool ExpressionTool Operation inputs outputs steps run
    out type string File Directory int long float double boolean null Any array record enum
    doc label id requirements hints baseCommand arguments stdout stderr stdin outputBinding
    inputBinding glob position prefix outputSource source default format secondaryFiles
    valueFrom scatter scatterMethod dotproduct when linkMerge SubworkflowFeatureRequirement
    ScatterFeatureRequirement InlineJavascriptRequirement StepInputExpressionRequirement
    MultipleInputFeatureRequirement DockerRequirement dockerPull ResourceRequirement
    SchemaDefRequirement InitialWorkDirRequirement ShellCommandRequirement coresMin ramMin
    namespaces schemas graph items fields name version workflow task call input output
    command runtime docker memory cpu disks meta parameter_meta import scatter Int Float
    Boolean String Array Map Pair Object true false select_first defined length then else
    process script shell exec when emit tuple val path env stdout publishDir container
    conda tag label cpus memory time params include from main take nextflow enable dsl
    rule checkpoint shell conda container resources threads log benchmark params wildcards
    expand config input output message wrapper localrules ruleorder configfile envmodules
    a_galaxy_workflow annotation creator format_version steps tool_id tool_version tool_state
    input_connections post_job_actions workflow_outputs position uuid errors content_id
    tool_shed_repository changeset_revision owner tool_shed inputs outputs label name left top
    data_input data_collection_input parameter_input subworkflow class GalaxyWorkflow
    license release tags report markdown readme
"""
_KEYWORDS: Final = frozenset(_KEYWORD_TEXT.split())


def normalise(data: bytes) -> bytes:
    """*data* with LF line endings, no trailing whitespace per line and one final newline
    (binary data that is not UTF-8 comes back unchanged)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return ("\n".join(lines) + "\n").encode() if lines else b""


def normalised_sha256(data: bytes) -> str:
    """The sha-256 of :func:`normalise` (*data*), as 64 hex digits."""
    return hashlib.sha256(normalise(data)).hexdigest()


def information(data: bytes) -> int:
    """How many distinct names a descriptor uses beyond its language's keywords; 0 when it
    does not parse as a workflow language."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return 0
    names = _document_names(text)
    if names is None:
        names = _script_names(text)
    if names is None:
        return 0
    return len(names - _KEYWORDS)


def carries_identity(path: str, info: int) -> bool:
    """Whether a primary descriptor at *path* with *info* (:func:`information`) identifies
    the tool it belongs to."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return info >= MIN_INFORMATION and not _NOT_DESCRIPTORS.search(name)


def _document_names(text: str) -> set[str] | None:
    """The names in a CWL or Galaxy document (YAML or JSON); None when it is not one."""
    load = json.loads if text.lstrip().startswith("{") else _load_yaml
    try:
        doc = load(text)
    except (ValueError, yaml.YAMLError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    if not ({"cwlVersion", "class", "$graph", "a_galaxy_workflow", "steps"} & set(doc)):
        return None
    names: set[str] = set()
    _walk(doc, names, 0)
    return names


def _walk(node: Any, names: set[str], depth: int) -> None:
    if depth > 64:
        return
    if isinstance(node, dict):
        for k, v in node.items():
            names.update(_NAME.findall(str(k)))
            _walk(v, names, depth + 1)
    elif isinstance(node, list):
        for v in node:
            _walk(v, names, depth + 1)
    elif isinstance(node, str):
        names.update(_NAME.findall(node))


def _script_names(text: str) -> set[str] | None:
    """The names in a WDL, Nextflow or Snakemake script, comments removed; None when it has
    none of their blocks."""
    if _WDL.search(text) or _SNAKEMAKE.search(text):
        body = _HASH_COMMENT.sub("", text)
    elif _NEXTFLOW.search(text):
        body = _SLASH_COMMENT.sub("", text)
    else:
        return None
    return set(_NAME.findall(body))


_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(text: str) -> Any:
    """*text* as YAML, with the safe loader (the C one when PyYAML has it)."""
    return yaml.load(text, _Loader)  # noqa: S506 - _Loader is SafeLoader or CSafeLoader
