"""A tolerant reader of upstream TRS documents: normalise what real registries send."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import orjson

from aggregator.errors import InvalidUpstreamData
from aggregator.trs.model import DESCRIPTOR_TYPES, FILE_TYPES

_HEX64: Final = re.compile(r"^[0-9a-fA-F]{64}$")
_SHA256_NAMES: Final = {"sha256", "sha-256", "sha_256"}


@dataclass(frozen=True, slots=True)
class DescriptorType:
    """A ``{type}`` path parameter: the language and whether the PLAIN form was asked for."""

    name: str
    plain: bool


def parse_descriptor_type(raw: str) -> DescriptorType | None:
    """Read ``CWL``, ``PLAIN_CWL``, ``PLAIN-CWL``, ``plain-cwl`` … ; None when unknown."""
    value = raw.strip().upper().replace("-", "_")
    plain = value.startswith("PLAIN_")
    if plain:
        value = value[len("PLAIN_") :]
    if value == "NEXTFLOW":
        value = "NFL"
    elif value == "SNAKEMAKE":
        value = "SMK"
    elif value == "GXFORMAT2":
        value = "GALAXY"
    return DescriptorType(value, plain) if value in DESCRIPTOR_TYPES else None


def sha256_hex(data: bytes) -> str:
    """The lowercase hex sha256 of *data*."""
    return hashlib.sha256(data).hexdigest()


def declared_sha256(value: Any) -> str | None:
    """Find a sha256 among upstream checksums: a Checksum object, a list of them, or None.

    ``sha-256``, ``sha256`` and ``SHA256`` are the same; the hex is lower-cased.
    """
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, Mapping):
            continue
        kind = str(item.get("type", "")).strip().lower()
        checksum = item.get("checksum")
        if kind in _SHA256_NAMES and isinstance(checksum, str) and _HEX64.match(checksum):
            return checksum.lower()
    return None


@dataclass(slots=True)
class Quirks:
    """What an upstream got wrong, collected while reading (reported in the run record)."""

    items: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        """Note *message* once (at most 50 notes)."""
        if len(self.items) < 50 and message not in self.items:
            self.items.append(message)


def _id_string(value: Any) -> str | None:
    """An id as a string: a string as is, an integer (some servers send numbers) in decimal."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) else None


def listed_tool_id(raw: Any) -> str | None:
    """The id of a listed tool as read_tool reads it; None when it has no usable one."""
    tool_id = _id_string(raw.get("id")) if isinstance(raw, Mapping) else None
    return tool_id if tool_id is not None and tool_id.strip() else None


def read_tool(raw: Any, quirks: Quirks | None = None) -> dict[str, Any]:
    """Normalise one upstream Tool; raise InvalidUpstreamData when it has no usable id.

    Pre-release names (``toolname``, ``tool_class``, string ``author``) are mapped to their
    2.0.1 names and kept as sent; versions are read with read_version.
    """
    quirks = quirks if quirks is not None else Quirks()
    if not isinstance(raw, Mapping):
        raise InvalidUpstreamData(f"a tool must be a JSON object, not {type(raw).__name__}")
    doc = dict(raw)
    tool_id = listed_tool_id(doc)
    if tool_id is None:
        raise InvalidUpstreamData("a tool has no id")
    if not isinstance(doc["id"], str):
        quirks.add("tool id is a number, not a string")
    doc["id"] = tool_id
    if "toolclass" not in doc and isinstance(doc.get("tool_class"), Mapping):
        doc["toolclass"] = doc["tool_class"]
        quirks.add("'tool_class' instead of 'toolclass'")
    if "name" not in doc and isinstance(doc.get("toolname"), str):
        doc["name"] = doc["toolname"]
        quirks.add("pre-release field 'toolname'")
    author = doc["author"] if isinstance(doc.get("author"), str) else None
    if author is not None:
        quirks.add("pre-release string field Tool.author")
    if not isinstance(doc.get("toolclass"), Mapping):
        doc["toolclass"] = {"id": "", "name": "", "description": ""}
        quirks.add("tool without a toolclass")
    if not isinstance(doc.get("organization"), str):
        doc["organization"] = str(doc.get("organization") or "")
    if not isinstance(doc.get("aliases", []), list):
        doc["aliases"] = []
    versions = doc.get("versions")
    if versions is None:
        versions = []
    elif not isinstance(versions, list):
        raise InvalidUpstreamData(f"tool {tool_id!r}: 'versions' must be an array")
    doc["versions"] = [read_version(v, tool_id, quirks, author=author) for v in versions]
    return doc


def read_version(
    raw: Any, tool_id: str, quirks: Quirks | None = None, *, author: str | None = None
) -> dict[str, Any]:
    """Normalise one upstream ToolVersion; raise InvalidUpstreamData when it has no id."""
    quirks = quirks if quirks is not None else Quirks()
    if not isinstance(raw, Mapping):
        raise InvalidUpstreamData(f"tool {tool_id!r}: a version must be a JSON object")
    doc = dict(raw)
    vid = _id_string(doc.get("id"))
    if not vid:
        vid = doc.get("name") if isinstance(doc.get("name"), str) else None
        if not vid:
            raise InvalidUpstreamData(f"tool {tool_id!r}: a version has neither id nor name")
        quirks.add("version without an id")
    doc["id"] = vid
    if "is_production" not in doc and isinstance(doc.get("immutable"), bool):
        doc["is_production"] = doc["immutable"]
        quirks.add("pre-release field 'immutable'")
    if author is not None and "author" not in doc:
        doc["author"] = [author]
    if isinstance(doc.get("author"), str):
        doc["author"] = [doc["author"]]
    if isinstance(doc.get("verified_source"), str):
        doc["verified_source"] = [doc["verified_source"]]
    types = doc.get("descriptor_type") or []
    if not isinstance(types, list):
        types = [types]
    doc["descriptor_type"] = [str(t) for t in types]
    images = doc.get("images")
    if isinstance(images, list):
        doc["images"] = [_read_image(i) for i in images if isinstance(i, Mapping)]
    doc.pop("files", None)
    return doc


def _read_image(raw: Mapping[str, Any]) -> dict[str, Any]:
    image = dict(raw)
    if "checksum" not in image and isinstance(image.get("hashcode"), str):
        image["checksum"] = [{"checksum": image["hashcode"], "type": "sha-256"}]
    return image


def version_key(doc: Mapping[str, Any]) -> str:
    """The segment that names a version in URLs.

    Upstream ``url``s end in ``/versions/<segment>`` on conformant servers; Dockstore's ids are
    ``<tool id>:<name>`` while its URLs use the name; some static trees repeat the tool id as
    every version's id. The url's segment is the one the upstream routes on.
    """
    url = doc.get("url")
    if isinstance(url, str):
        path = urlsplit(url).path.rstrip("/")
        _, sep, last = path.rpartition("/versions/")
        if sep and last and "/" not in last:
            return unquote(last)
    return str(doc["id"])


def read_tool_classes(raw: Any) -> list[dict[str, Any]]:
    """Normalise a /toolClasses answer; anything that is not a list of objects is empty."""
    if not isinstance(raw, list):
        return []
    return [
        {
            "id": str(item.get("id", "")),
            "name": str(item["name"]),
            "description": str(item.get("description") or ""),
        }
        for item in raw
        if isinstance(item, Mapping) and item.get("name") is not None
    ]


def read_files_listing(raw: Any) -> list[dict[str, Any]]:
    """Normalise a ``/{type}/files`` answer into ToolFile dicts with path, file_type, checksum."""
    if not isinstance(raw, list):
        raise InvalidUpstreamData("a files listing must be an array")
    out = []
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("path"), str):
            continue
        file_type = item.get("file_type")
        out.append(
            {
                "path": item["path"],
                "file_type": file_type if file_type in FILE_TYPES else "OTHER",
                "declared_sha256": declared_sha256(item.get("checksum")),
                "extra": _extra(item, TOOL_FILE_FIELDS),
            }
        )
    return out


def read_file_wrapper(raw: Any) -> dict[str, Any]:
    """Normalise a FileWrapper: content (str or None), url (str or None), declared sha256."""
    if isinstance(raw, str):
        return {"content": raw, "url": None, "declared_sha256": None, "extra": None}
    if not isinstance(raw, Mapping):
        raise InvalidUpstreamData("a FileWrapper must be a JSON object")
    content = raw.get("content")
    url = raw.get("url")
    return {
        "content": content if isinstance(content, str) else None,
        "url": url if isinstance(url, str) and url else None,
        "declared_sha256": declared_sha256(raw.get("checksum")),
        "extra": _extra(raw, FILE_WRAPPER_FIELDS),
    }


#: The fields TRS gives a FileWrapper and a ToolFile; an upstream's others are kept as sent.
FILE_WRAPPER_FIELDS: Final = frozenset({"content", "checksum", "url", "image_type"})
TOOL_FILE_FIELDS: Final = frozenset({"path", "file_type", "checksum"})


def _extra(raw: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any] | None:
    """The fields of *raw* beyond *known* (nulls dropped), or None when there are none."""
    out = {k: v for k, v in raw.items() if k not in known and v is not None}
    return out or None


def doc_hash(doc: Any) -> str:
    """A stable hash of a JSON document (keys sorted), to tell changed records from unchanged."""
    return sha256_hex(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
