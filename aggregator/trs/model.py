"""The catalogue as the API serves it: merged tools, their sources and versions (pure data)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

#: TRS 2.0.1's descriptor types; 2.0.0 knows the first three (DESCRIPTOR_TYPES_200).
DESCRIPTOR_TYPES: Final = ("CWL", "WDL", "NFL", "GALAXY", "SMK")
DESCRIPTOR_TYPES_200: Final = ("CWL", "WDL", "NFL")
FILE_TYPES: Final = (
    "TEST_FILE",
    "PRIMARY_DESCRIPTOR",
    "SECONDARY_DESCRIPTOR",
    "CONTAINERFILE",
    "OTHER",
)
IMAGE_TYPES: Final = ("Docker", "Singularity", "Conda")


@dataclass(frozen=True, slots=True)
class Source:
    """One upstream record behind a catalogue tool: where it came from and when."""

    member_id: int
    upstream: str
    upstream_id: str
    upstream_base: str
    mode: str
    first_seen: datetime
    last_confirmed: datetime
    tombstoned_at: datetime | None
    joined_by: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class VersionSource:
    """One upstream version behind a catalogue version."""

    version_row_id: int
    upstream: str
    upstream_id: str
    upstream_tool_id: str
    upstream_base: str
    key: str
    mode: str


@dataclass(frozen=True, slots=True)
class CatalogueVersion:
    """A version as served: the served source's document, and every source of it."""

    key: str
    doc: dict[str, Any]
    conflict: bool
    served: VersionSource
    sources: list[VersionSource]


@dataclass(frozen=True, slots=True)
class CatalogueTool:
    """A tool as served: the primary member's document, its sources, versions, conflicts."""

    id: str
    doc: dict[str, Any]
    sources: list[Source]
    versions: list[CatalogueVersion]
    conflicts: list[dict[str, Any]]

    @property
    def primary(self) -> Source:
        """The member whose fields are served."""
        return self.sources[0]
