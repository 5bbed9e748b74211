"""Identity evidence: which normalised keys say that two upstream tools are the same tool.

Three kinds of key:

- ``id``: a globally unique identifier seen as a tool id or an alias — a UUID, a DOI, a
  ``trs://`` URI, a URL, or a source path that starts with a host name
  (``#workflow/github.com/org/repo`` and ``https://github.com/org/repo`` are the same key).
- ``alias``: any other alias, normalised; short local ids (``1``, ``123``) are never evidence.
- ``sha256``: the checksum of a primary descriptor, unless the content is empty or a
  registry's placeholder text.

Local tool ids (``101``, ``samtools``, ``A1B2C3``) are never evidence: two registries can
choose the same one for different tools.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import unquote, urlsplit

Key = tuple[str, str]

_UUID: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_DOI: Final = re.compile(r"^(?:doi:|https?://(?:dx\.)?doi\.org/)?(10\.\d{4,9}/\S+)$")
# Dockstore stores a DOI alias with its slash replaced by a dash: 10.5281-zenodo.8004312.
_DASHED_DOI: Final = re.compile(r"^(10\.\d{4,9})-(\S+)$")
_ENTRY_PREFIX: Final = re.compile(r"^#(?:workflow|tool|service|notebook)/")
_HOST: Final = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)+(:\d+)?$")
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
# Texts registries serve instead of a file's content (Dockstore's LimitedSourceFileBuilder).
_PLACEHOLDER_CONTENT: Final = (
    b"Dockstore does not store binary files",
    b"Dockstore does not store files of this type over",
)
MIN_ALIAS_LENGTH: Final = 3
MIN_DESCRIPTOR_BYTES: Final = 16


def global_id(value: str) -> str | None:
    """The normalised form of *value* when it is a globally unique identifier, else None."""
    v = value.strip()
    low = v.lower()
    if _UUID.match(low):
        return f"uuid:{low}"
    doi = _DOI.match(low)
    if doi:
        return f"doi:{doi.group(1).rstrip('/')}"
    dashed = _DASHED_DOI.match(low)
    if dashed:
        return f"doi:{dashed.group(1)}/{dashed.group(2)}"
    parts = urlsplit(v)
    if parts.scheme == "trs" and parts.netloc:
        return f"trs:{parts.netloc.lower()}{unquote(parts.path).rstrip('/')}"
    if parts.scheme in ("http", "https") and parts.netloc:
        return _source_path(parts.netloc + unquote(parts.path))
    return _source_path(_ENTRY_PREFIX.sub("", v))


def _source_path(value: str) -> str | None:
    """``host/a/b`` with at least two segments after a real host name, lower-cased."""
    path = value.strip().strip("/").lower()
    path = path.removesuffix(".git")
    segments = [s for s in path.split("/") if s]
    if len(segments) < 3 or not _HOST.match(segments[0]):
        return None
    return "src:" + "/".join(segments)


def normalise_alias(value: str) -> str | None:
    """An alias as a key: trimmed, lower-cased, inner whitespace collapsed; None when it is
    too short, a placeholder word, or a bare number (a local id)."""
    v = " ".join(value.split()).lower()
    if len(v) < MIN_ALIAS_LENGTH or v in _PLACEHOLDER_WORDS or v.isdigit():
        return None
    return v


def is_placeholder(size: int, head: bytes) -> bool:
    """Whether a descriptor of *size* bytes starting with *head* carries no identity."""
    if size < MIN_DESCRIPTOR_BYTES or not head.strip():
        return True
    return any(head.lstrip().startswith(p) for p in _PLACEHOLDER_CONTENT)


def evidence(
    tool_id: str, doc: Mapping[str, Any], descriptors: Iterable[tuple[str, int, bytes]] = ()
) -> frozenset[Key]:
    """The identity keys of one upstream tool.

    *descriptors* are its primary descriptors as (sha256, size, first bytes).
    """
    keys: set[Key] = set()
    gid = global_id(tool_id)
    if gid:
        keys.add(("id", gid))
    aliases = doc.get("aliases")
    for alias in aliases if isinstance(aliases, list) else []:
        if not isinstance(alias, str):
            continue
        gid = global_id(alias)
        if gid:
            keys.add(("id", gid))
            continue
        norm = normalise_alias(alias)
        if norm:
            keys.add(("alias", norm))
    for sha, size, head in descriptors:
        if not is_placeholder(size, head):
            keys.add(("sha256", sha))
    return frozenset(keys)
