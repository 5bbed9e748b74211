"""What a harvest run hands the database, and what it reads back of the last publish.

Plain records (no I/O): the harvest builds them, ``db.publish`` stores them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class StagedFile:
    """One file of one version, as fetched (content None in index mode or when unfetched)."""

    descriptor_type: str
    path: str
    file_type: str
    url: str | None
    content: bytes | None = None
    sha256: str | None = None
    declared_sha256: str | None = None
    checksum_status: str = "not_fetched"
    #: Fields the upstream sent beyond TRS's: {"wrapper": {...}, "tool_file": {...}}.
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class StagedVersion:
    """One version of a tool, with its files."""

    key: str
    external_id: str
    position: int
    doc: dict[str, Any]
    files: list[StagedFile] = field(default_factory=list)


@dataclass(slots=True)
class StagedTool:
    """One listed tool of a run.

    *detailed* False: the listing confirmed the tool, its versions and files were not fetched
    (unchanged, or the fetch failed); publishing keeps what was there. *listing_hash* None
    makes the next run fetch the tool's details again.
    """

    external_id: str
    doc: dict[str, Any]
    doc_hash: str
    detailed: bool
    listing_hash: str | None = None
    versions: Sequence[StagedVersion] = ()


@dataclass(frozen=True, slots=True)
class KnownTool:
    """What was published for one tool: enough to tell whether its listing entry changed.

    Attributes:
        doc_hash: The hash of its published document.
        listing_hash: The hash of the listing entry it was published from, when that entry
            tells changes.
        fresh: Whether its details were fetched within ``harvest.revalidate_after``.
    """

    doc_hash: str
    listing_hash: str | None
    fresh: bool


@dataclass(frozen=True, slots=True)
class ListingPage:
    """One page of an upstream's /tools listing as read: its validators, next page and tools.

    Attributes:
        url: The page's URL, its query sorted (as the run asked for it).
        etag: The ETag it came with.
        last_modified: The Last-Modified it came with.
        next_page: The absolute URL of the next page, None on the last.
        tool_ids: The ids of the tools on it, in order.
        listing_hashes: The hash of each tool's entry, in the same order.
    """

    url: str
    etag: str | None
    last_modified: str | None
    next_page: str | None
    tool_ids: list[str]
    listing_hashes: list[str]
