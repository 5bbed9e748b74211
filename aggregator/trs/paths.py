"""File paths inside a version's file tree: one canonical form, nothing that leaves the tree.

Every path we store, list, zip or serve went through :func:`tree_path`. Upstreams send paths as
``a/b.cwl``, ``/a/b.cwl`` (rooted at the tree, as Dockstore does), ``./a/b.cwl`` or
``a/x/../b.cwl``; all of these are ``a/b.cwl``. A path that would leave the tree, or that a
client could read as something other than a relative path, is refused with :class:`UnsafePath`:
``..`` above the root, a drive (``C:``), a scheme (``file:``), ``//host``, ``~``, a backslash,
NUL or another control character, and percent-encoded dots, slashes, backslashes or NULs
(which a later decoding would turn into one of the above).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from typing import Final

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_ENCODED: Final = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)
_PREFIX: Final = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*:|~)")


class UnsafePath(ValueError):
    """A path that is not a safe relative path inside a file tree."""


def tree_path(raw: str) -> str:
    """*raw* as a canonical relative path inside the tree (``a/b.cwl``); raise UnsafePath.

    The result has no leading or trailing ``/``, no empty, ``.`` or ``..`` segments, and is
    never empty.
    """
    if not isinstance(raw, str):
        raise UnsafePath(f"path is not a string: {raw!r}")
    if _CONTROL.search(raw):
        raise UnsafePath(f"path {raw!r} contains a control character")
    if "\\" in raw:
        raise UnsafePath(f"path {raw!r} contains a backslash")
    if _ENCODED.search(raw):
        raise UnsafePath(f"path {raw!r} contains a percent-encoded dot, slash or NUL")
    if raw.startswith("//"):
        raise UnsafePath(f"path {raw!r} names a host")
    parts: list[str] = []
    for segment in raw.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                raise UnsafePath(f"path {raw!r} leaves the file tree")
            parts.pop()
            continue
        parts.append(segment)
    if not parts:
        raise UnsafePath(f"path {raw!r} names no file")
    if _PREFIX.match(raw.lstrip("/")) or _PREFIX.match(parts[0]):
        raise UnsafePath(f"path {raw!r} starts with a drive, scheme or home directory")
    return "/".join(parts)


def safe_tree_path(raw: str) -> str | None:
    """:func:`tree_path` of *raw*, or None when it is unsafe."""
    try:
        return tree_path(raw)
    except UnsafePath:
        return None


def common_root(directories: Iterable[str]) -> str:
    """The deepest directory (``/``-separated, without a trailing ``/``) containing every one of
    *directories*; ``""`` when they share none."""
    split = [[p for p in d.split("/") if p] for d in directories]
    if not split:
        return ""
    first = split[0]
    depth = len(first)
    for other in split[1:]:
        depth = min(depth, len(other))
        for i in range(depth):
            if other[i] != first[i]:
                depth = i
                break
    return "/".join(first[:depth])


def relative_to_root(path: str, root: str) -> str:
    """*path* with the directory *root* taken off its front (both ``/``-separated)."""
    if not root:
        return path.lstrip("/")
    stripped = path.lstrip("/")
    prefix = root.strip("/") + "/"
    return stripped.removeprefix(prefix)


def parent(directory: str, levels: int = 1) -> str | None:
    """*directory* (``a/b/c``) *levels* up, or None above the root."""
    parts = [p for p in directory.split("/") if p]
    if levels > len(parts):
        return None
    return "/".join(parts[: len(parts) - levels])


def join(directory: str, path: str) -> str:
    """*path* read relative to *directory*, not yet normalised."""
    return posixpath.join(directory, path) if directory else path
