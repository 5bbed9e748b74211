"""Identity evidence: the normalised keys that say whether two upstream tools are one tool.

Every key is ``(kind, value)``. The kinds, strongest first:

Strong (one shared key joins two tools):

- ``uuid``: a UUID (Yevis tool ids), lower-cased.
- ``trs``: a ``trs://host/id`` URI, host lower-cased, id percent-decoded.
- ``doi``: a DOI from a registrant that mints DOIs for software and workflows: Zenodo
  (``10.5281/zenodo.N``), WorkflowHub (``10.48546/workflowhub.workflow.N``, version suffix
  dropped), figshare (``10.6084/m9.figshare.N``). Dockstore mints through Zenodo.
- ``repo``: a source repository on a code host, ``host/owner/repo``; with the workflow's path
  inside it when the registry gives one, ``host/owner/repo#path`` (a record with a path holds
  both). See :func:`repository`.
- ``biotools``: a bio.tools id (``biotools:x``, ``https://bio.tools/x``).
- ``content``: the checksum of a primary descriptor's text after line-ending and
  trailing-whitespace normalisation, when the content carries identity
  (:mod:`aggregator.merge.content`).

Weak, joining alone only because distinctive:

- ``alias``: a plain alias that passes :func:`distinctive` (structured, rare words).
- ``xref``: a namespaced cross-reference minted for a piece of software (``RRID:SCR_…``,
  ``bioconda:…``, ``swh:1:…``).

Weak, corroborating only (shown in provenance beside a join, never the cause of one):

- ``word``: any other plain alias (a common analysis word, a version-like string).
- ``cite``: a DOI of another registrant (usually a paper), any other URL (an organisation's or
  project's page, a container image).

Local tool ids (``101``, ``samtools``, ``A1B2C3``) are never evidence: two registries can
choose the same one for different tools.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from wordfreq import zipf_frequency

from aggregator.merge.words import COMMON_WORDS

Key = tuple[str, str]

STRONG: Final = frozenset({"uuid", "trs", "doi", "repo", "biotools", "content"})
# Kinds that may join on their own; "word" and "cite" only corroborate.
JOINING: Final = STRONG | {"alias", "xref"}
CORROBORATING: Final = frozenset({"word", "cite"})

_UUID: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_DOI: Final = re.compile(
    r"^(?:doi:\s*|(?:https?://)?(?:dx\.)?doi\.org/|info:doi/)?(10\.\d{4,9}/\S+)$"
)
# Dockstore stores a DOI alias with its slash replaced by a dash: 10.5281-zenodo.8004312.
_DASHED_DOI: Final = re.compile(r"^(10\.\d{4,9})-(\S+)$")
_SOFTWARE_DOI: Final = re.compile(
    r"^10\.5281/zenodo\.\d+$|^10\.6084/m9\.figshare\.\d+(?:\.v\d+)?$"
    r"|^10\.48546/workflowhub\.workflow\.\d+(?:\.\d+)?$"
)
_WORKFLOWHUB_VERSION: Final = re.compile(r"^(10\.48546/workflowhub\.workflow\.\d+)\.\d+$")
_ENTRY_PREFIX: Final = re.compile(r"^#(?:workflow|tool|service|notebook)/")
_HOST: Final = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)+(:\d+)?$")
_SCP_GIT: Final = re.compile(r"^[\w.-]+@([\w.-]+):(.+)$")
_CODE_HOSTS: Final = frozenset(
    {"github.com", "gitlab.com", "bitbucket.org", "codeberg.org", "gitee.com", "git.sr.ht"}
)
_CODE_HOST_HINT: Final = re.compile(r"github|gitlab|bitbucket|codeberg|gitee|sr\.ht|(^|[/@])git\.")
# Hosts whose paths name a container image, which many tools share.
_IMAGE_HOSTS: Final = frozenset({"quay.io", "docker.io", "registry.hub.docker.com", "ghcr.io"})
_DESCRIPTOR_FILE: Final = re.compile(
    r"(?i)\.(cwl|wdl|nf|ga|smk|ya?ml|json|gxwf\.yml)$|^(snakefile|dockstore\.\w+)$"
)
_NAMESPACED: Final = re.compile(
    r"^(rrid:scr_\d{4,}|bioconda:[a-z0-9][\w.-]+|swh:1:\w{3}:[0-9a-f]{40})$"
)
_BIOTOOLS: Final = re.compile(r"^(?:biotools:|(?:https?://)?bio\.tools/)([a-z0-9][\w.-]*)/?$")
_VERSION_LIKE: Final = re.compile(r"^v?\d+([._-]\d+)*([._+-]?[a-z]+\d*)*$")
_TOKEN: Final = re.compile(r"[a-z0-9]+")
_PLACEHOLDER_WORDS: Final = frozenset(
    {
        "",
        "null",
        "none",
        "n/a",
        "na",
        "unknown",
        "tbd",
        "todo",
        "latest",
        "main",
        "master",
        "default",
        "test",
    }
)
MIN_ALIAS_LENGTH: Final = 3
# A plain alias joins alone only when it is at least this long, has at least two tokens and
# at least two of them are neither common words nor shorter than three characters.
DISTINCTIVE_MIN_LENGTH: Final = 10
DISTINCTIVE_MIN_RARE_TOKENS: Final = 2
# An English word at least this frequent (Zipf scale: log10 of uses per billion words; 3 is one
# use per million words) is common, whatever it means. wordfreq's small list holds exactly the
# words this frequent, and loads in a tenth of a second into 4 MB.
COMMON_ZIPF: Final = 3.0


# Values seen recently, classified: the records of one tool in several registries, and the
# records a full merge reads in a row, repeat them. Only short values are kept (an upstream
# chooses their length).
CLASSIFY_CACHED_LENGTH: Final = 256


def classify(value: str) -> Key | None:
    """The key *value* (an id, alias or identifier, as an upstream spells it) stands for."""
    if len(value) <= CLASSIFY_CACHED_LENGTH:
        return _classify_cached(value)
    return _classify(value)


def _classify(value: str) -> Key | None:
    v = value.strip()
    low = v.lower()
    if "." not in low and ":" not in low:
        # Not a DOI, URL, URI, host path or namespaced id: a plain alias or a local id.
        return ("uuid", low) if _UUID.match(low) else None
    if _UUID.match(low):
        return ("uuid", low)
    doi = _doi(low)
    if doi:
        if _SOFTWARE_DOI.match(doi):
            version = _WORKFLOWHUB_VERSION.match(doi)
            return ("doi", version.group(1) if version else doi)
        return ("cite", f"doi:{doi}")
    biotools = _BIOTOOLS.match(low)
    if biotools:
        return ("biotools", biotools.group(1))
    if _NAMESPACED.match(low):
        return ("xref", low)
    parts = urlsplit(v)
    if parts.scheme == "trs" and parts.netloc:
        return ("trs", f"{parts.netloc.lower()}{unquote(parts.path).rstrip('/')}")
    repo = repository(v) if _CODE_HOST_HINT.search(low) else None
    if repo:
        return ("repo", repo)
    if parts.scheme in ("http", "https") and parts.netloc:
        return ("cite", (parts.netloc + parts.path).lower().rstrip("/"))
    stripped = _ENTRY_PREFIX.sub("", v)
    segments = stripped.strip("/").split("/")
    if len(segments) >= 2 and _HOST.match(segments[0].lower()):
        return ("cite", stripped.strip("/").lower())
    return None


_classify_cached: Final = functools.lru_cache(maxsize=16384)(_classify)


def _doi(low: str) -> str | None:
    m = _DOI.match(low)
    if m:
        return m.group(1).rstrip("/")
    dashed = _DASHED_DOI.match(low)
    if dashed:
        return f"{dashed.group(1)}/{dashed.group(2)}"
    return None


def repository(value: str) -> str | None:
    """``host/owner/repo`` (``#path`` appended when a workflow path is given) for a repository
    URL in any common spelling, else None.

    Accepted: ``https://``/``http://``/``git+https://``/``ssh://git@`` URLs, ``git@host:o/r.git``,
    bare ``host/o/r``, Dockstore ids ``#workflow/host/o/r[/name]``, ``…/tree/<ref>[/<path>]``,
    ``…/blob/<ref>/<file>`` (the file's directory), ``raw.githubusercontent.com/o/r/<ref>/<file>``.
    Host, owner and repository are lower-cased; ``www.`` and ``.git`` are dropped.
    """
    v = value.strip()
    dockstore = v.startswith("#") and bool(_ENTRY_PREFIX.match(v))
    if dockstore:
        v = _ENTRY_PREFIX.sub("", v)
    scp = _SCP_GIT.match(v) if "://" not in v else None
    if scp:
        host, path = scp.group(1), scp.group(2)
    else:
        # scheme://[user@]host[:port]/path[?query][#fragment], or host/path without a scheme.
        after_scheme = v.split("://", 1)[-1]
        host, _, path = after_scheme.partition("/")
        host = host.rpartition("@")[2]
        path = unquote(path.split("?", 1)[0].split("#", 1)[0])
    host = host.lower().removeprefix("www.")
    segments = [s for s in path.split("/") if s]
    ref_path: list[str] = []
    if host == "raw.githubusercontent.com":
        host = "github.com"
        if len(segments) < 3:
            return None
        segments, ref_path = segments[:2], _directory(segments[3:])
    if not (host in _CODE_HOSTS or host.split(".", 1)[0] in ("gitlab", "git")):
        return None
    for marker in ("-", "tree", "blob", "src", "raw"):
        if marker in segments[2:]:
            at = segments.index(marker, 2)
            rest = segments[at + 1 :]
            kind = marker
            if marker == "-" and rest[:1] in (["tree"], ["blob"], ["raw"]):
                kind, rest = rest[0], rest[1:]
            segments = segments[:at]
            ref_path = _directory(rest[1:]) if kind in ("blob", "raw") else rest[1:]
            break
    if len(segments) < 2:
        return None
    # GitHub and Bitbucket have owner/repo; GitLab may nest groups, except in Dockstore ids,
    # whose third segment names a workflow in the repository.
    split = 2 if (host != "gitlab.com" or dockstore) else len(segments)
    repo, extra = segments[:split], segments[split:]
    repo[-1] = repo[-1].removesuffix(".git")
    base = "/".join([host] + [s.lower() for s in repo])
    path = "/".join(extra + ref_path).strip("/")
    return f"{base}#{path}" if path else base


def _directory(segments: list[str]) -> list[str]:
    """The directory of a file path (the path itself when it does not name a descriptor)."""
    if segments and _DESCRIPTOR_FILE.search(segments[-1]):
        return segments[:-1]
    return segments


def normalise_alias(value: str) -> str | None:
    """An alias as a key: trimmed, lower-cased, inner whitespace collapsed; None when it is
    too short, a placeholder word, or a bare number (a local id)."""
    v = " ".join(value.split()).lower()
    if len(v) < MIN_ALIAS_LENGTH or v in _PLACEHOLDER_WORDS or v.isdigit():
        return None
    return v


@functools.lru_cache(maxsize=65536)
def distinctive(alias: str) -> bool:
    """Whether a normalised plain alias may join two tools on its own.

    The documented test: not version-like, at least ``DISTINCTIVE_MIN_LENGTH`` characters, and
    at least ``DISTINCTIVE_MIN_RARE_TOKENS`` of its tokens (runs of letters and digits) are
    rare: three characters or more, not a number, not an analysis word
    (:data:`aggregator.merge.words.COMMON_WORDS`) and not a common English word (Zipf
    frequency of at least :data:`COMMON_ZIPF` in wordfreq's small English list).
    ``ddbj-pitagora-sra2fastq`` is; ``variant calling``, ``rnaseq-pipeline``, ``1.2.0-beta``
    and ``fastqc`` are not.
    """
    if len(alias) < DISTINCTIVE_MIN_LENGTH or _VERSION_LIKE.match(alias):
        return False
    rare = {t for t in _TOKEN.findall(alias) if _rare(t)}
    return len(rare) >= DISTINCTIVE_MIN_RARE_TOKENS


def _rare(token: str) -> bool:
    """A token that is neither short, a number, an analysis word nor a common English word."""
    return (
        len(token) >= 3
        and not token.isdigit()
        and token not in COMMON_WORDS
        and zipf_frequency(token, "en", wordlist="small") < COMMON_ZIPF
    )


def _identifiers(doc: Mapping[str, Any]) -> list[str]:
    """Identifier strings of a record: its ``aliases`` and BioContainers-style ``identifiers``
    (a list, or one string of comma- or space-separated values)."""
    out: list[str] = []
    for field in ("aliases", "identifiers"):
        raw = doc.get(field)
        if isinstance(raw, str):
            out += [s for s in re.split(r"[,\s]+", raw) if s]
        elif isinstance(raw, list):
            out += [s for s in raw if isinstance(s, str)]
    return out


def evidence(
    tool_id: str, doc: Mapping[str, Any], content_keys: Iterable[str] = ()
) -> frozenset[Key]:
    """The identity keys of one upstream tool.

    *content_keys* are the normalised checksums of its primary descriptors that carry identity
    (see :func:`aggregator.merge.content.carries_identity`).
    """
    keys: set[Key] = set()
    key = classify(tool_id)
    if key and key[0] != "cite":
        keys.add(key)
    for value in _identifiers(doc):
        key = classify(value)
        if key is None:
            norm = normalise_alias(value)
            if norm:
                key = ("alias" if distinctive(norm) else "word", norm)
        if key:
            keys.add(key)
    for kind, value in list(keys):
        if kind == "repo" and "#" in value:
            keys.add(("repo", value.split("#", 1)[0]))
    keys.update(("content", sha) for sha in content_keys)
    return frozenset(keys)
