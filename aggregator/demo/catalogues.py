"""The TRS catalogue type and the loader for the bundled demo registries under `data/`."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any, Final

DEMO_REGISTRIES: Final[tuple[str, ...]] = ("dockstore-demo", "workflowhub-demo")

DEFAULT_SERVICE_INFO: Final[Mapping[str, Any]] = {
    "id": "org.example.demo-trs",
    "name": "Demo TRS registry",
    "type": {"group": "org.ga4gh", "artifact": "trs", "version": "2.0.1"},
    "organization": {"name": "Example", "url": "https://example.org"},
    "version": "1.0.0",
}


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Immutable registry content: service-info, tool classes and tools (with versions/files).

    The plain dict form is `{"service_info", "tool_classes", "tools": [Tool + "versions":
    [ToolVersion + "files": {TYPE: [{path, file_type, content}]}, "containerfile": [...]]]}`.
    """

    service_info: Mapping[str, Any]
    tool_classes: tuple[Mapping[str, Any], ...]
    tools: tuple[Mapping[str, Any], ...]
    _by_id: dict[str, Mapping[str, Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id: dict[str, Mapping[str, Any]] = {}
        for tool in self.tools:
            tool_id = tool.get("id")
            if not isinstance(tool_id, str) or tool_id in by_id:
                raise ValueError(f"tool ids must be unique strings, got {tool_id!r}")
            by_id[tool_id] = tool
        object.__setattr__(self, "_by_id", by_id)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Catalogue:
        """Build a catalogue from its plain dict form (tool classes derived if absent)."""
        tools = tuple(data.get("tools") or ())
        classes = data.get("tool_classes")
        if classes is None:
            classes = list({str(t["toolclass"].get("id")): t["toolclass"] for t in tools}.values())
        service_info = dict(data.get("service_info") or DEFAULT_SERVICE_INFO)
        return cls(service_info, tuple(classes), tools)

    def tool(self, tool_id: str) -> Mapping[str, Any] | None:
        """Return the tool with this exact id, if any."""
        return self._by_id.get(tool_id)

    def to_dict(self) -> dict[str, Any]:
        """Return the plain dict form."""
        return {
            "service_info": dict(self.service_info),
            "tool_classes": list(self.tool_classes),
            "tools": list(self.tools),
        }


def as_catalogue(value: Catalogue | Mapping[str, Any]) -> Catalogue:
    """Accept a Catalogue or its plain dict form."""
    return value if isinstance(value, Catalogue) else Catalogue.from_dict(value)


def _data_dir(name: str) -> Traversable:
    if name not in DEMO_REGISTRIES:
        raise KeyError(f"unknown demo registry {name!r}; known: {', '.join(DEMO_REGISTRIES)}")
    return files(__package__ or "aggregator.demo") / "data" / name


def _read(root: Traversable, source: str, path: str) -> str:
    node = root / "files"  # one segment at a time: 3.11's MultiplexedPath takes no more
    for part in [*source.split("/"), *path.split("/")]:
        node = node / part
    return node.read_text(encoding="utf-8")


def _fill_version(root: Traversable, version: dict[str, Any]) -> None:
    """Replace the on-disk `source` reference of a version by inline file contents."""
    source = version.pop("source", None)
    for entries in version.get("files", {}).values():
        for entry in entries:
            if "content" not in entry:
                entry["content"] = _read(root, str(source), entry["path"])
    for entry in version.get("containerfile") or ():
        if "content" not in entry:
            entry["content"] = _read(root, str(source), entry["path"])


@functools.cache
def _load(name: str) -> dict[str, Any]:
    root = _data_dir(name)
    catalogue: dict[str, Any] = json.loads((root / "registry.json").read_text("utf-8"))
    for tool in catalogue.get("tools", ()):
        for version in tool.get("versions", ()):
            _fill_version(root, version)
    return catalogue


def load_catalogue(name: str) -> dict[str, Any]:
    """Return the named demo registry (one of DEMO_REGISTRIES) in the plain catalogue format.

    Each call returns a fresh deep copy, so callers may mutate it freely.
    """
    return copy.deepcopy(_load(name))
