"""The file endpoints of a tool version: descriptors, relative paths, files (and zip), tests,
containerfiles. Each renders an Entry from one snapshot of the catalogue."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlsplit

import orjson

from aggregator.api.cache import Entry, make_entry
from aggregator.db import catalogue as db
from aggregator.db.catalogue import FileRow
from aggregator.errors import BadRequest, NotFound
from aggregator.trs import render
from aggregator.trs.model import CatalogueVersion
from aggregator.trs.parse import DescriptorType
from aggregator.trs.paths import UnsafePath, join, parent, safe_tree_path, tree_path

if TYPE_CHECKING:
    from aggregator.db.pool import Connection

#: Entries of a zip carry this timestamp, so the same files make the same bytes.
_ZIP_TIME: Final = (1980, 1, 1, 0, 0, 0)
_UNSAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._-]+")


def json_entry(data: Any, generation: int, **kwargs: Any) -> Entry:
    """A 200 JSON Entry."""
    return make_entry(200, orjson.dumps(data), "application/json", generation=generation, **kwargs)


def find_file(rows: Sequence[FileRow], requested: str, *, level: int = 0) -> FileRow:
    """The stored file *requested* names, in any of the spellings clients send.

    TRS reads ``descriptor/{relative_path}`` relative to the primary descriptor's directory;
    clients that take the paths of ``/files`` send them from the root of the tree. Both are
    tried, in that order, and ``a/b.cwl``, ``/a/b.cwl`` and ``./a/b.cwl`` are one path.

    *level* is how far above ``descriptor/`` the request URL was: cwltool resolves a primary
    descriptor's imports against ``…/{type}/descriptor/{encoded primary path}``, so
    ``../x.cwl`` arrives as ``…/{type}/x.cwl`` (level 1) and ``../../x.cwl`` as
    ``…/versions/{v}/x.cwl`` (level 2): those are read relative to the primary's directory
    that many levels up. A path that leaves the tool's file tree is refused.
    """
    if not requested.strip("/"):
        raise BadRequest("relative_path is empty")
    by_path: dict[str, FileRow] = {}
    for r in rows:
        p = safe_tree_path(r.path)
        if p is not None:
            by_path.setdefault(p, r)
    primary = next((r for r in rows if r.file_type == "PRIMARY_DESCRIPTOR"), None)
    primary_path = safe_tree_path(primary.path) if primary is not None else None
    start = parent(primary_path, 1) if primary_path else ""
    base = parent(start or "", level)
    candidates = ([join(base, requested)] if base is not None else []) + [requested]
    refusals = 0
    for candidate in candidates:
        try:
            found = by_path.get(tree_path(candidate))
        except UnsafePath:
            refusals += 1
            continue
        if found is not None:
            return found
    if refusals == len(candidates):
        raise BadRequest(f"relative_path {requested!r} leaves the tool's file tree")
    raise NotFound(f"no file {requested!r}")


def _served(rows: Sequence[FileRow]) -> list[FileRow]:
    """The files that can be served (their content is mirrored), one per path, a type's own
    file before a type-independent one."""
    out: dict[str, FileRow] = {}
    for r in sorted(rows, key=lambda r: r.descriptor_type == ""):
        path = safe_tree_path(r.path)
        if r.sha256 is not None and path is not None:
            out.setdefault(path, r)
    return list(out.values())


def _file_url(v: CatalogueVersion, t: DescriptorType, f: FileRow) -> str:
    """Where the upstream serves the original of *f*."""
    if f.url:
        return f.url
    base = render.upstream_version_url(v.served)
    if f.file_type == "CONTAINERFILE":
        return f"{base}/containerfile"
    return f"{base}/PLAIN_{t.name}/descriptor/{quote(f.path, safe='/')}"


def redirect_entry(v: CatalogueVersion, tail: str, query: str) -> Entry:
    """In index mode, file endpoints send clients to the upstream's own URL (*query* raw, as
    the client sent it); never to another origin than the upstream's."""
    target = f"{render.upstream_version_url(v.served)}/{tail}" + (f"?{query}" if query else "")
    base, there = urlsplit(v.served.upstream_base), urlsplit(target)
    if (there.scheme, there.netloc) != (base.scheme, base.netloc) or not target.isprintable():
        raise NotFound("this file's upstream URL is not on its upstream's origin")
    return make_entry(307, b"", "text/plain", generation=None, headers={"Location": target})


def _extra(f: FileRow, kind: str) -> dict[str, Any] | None:
    """The upstream's own fields of *f*'s FileWrapper or ToolFile (*kind*)."""
    found = (f.extra or {}).get(kind)
    return found if isinstance(found, dict) else None


def _is_text(content: bytes) -> bool:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def descriptor(
    conn: Connection,
    generation: int,
    v: CatalogueVersion,
    t: DescriptorType,
    relative: str | None,
    *,
    strict: bool,
    version_url: str | None = None,
    level: int = 0,
) -> Entry:
    """A descriptor (the primary, or the file at *relative*, *level* directories above
    ``descriptor/``: see find_file) as a FileWrapper, or the bare bytes for PLAIN types.

    A file that is not UTF-8 text has no ``content`` in its FileWrapper: its checksum is given,
    and its ``url`` is our PLAIN endpoint under *version_url* (our URL of the version), which
    serves its bytes.
    """
    rows = await db.fetch_files(
        conn, v.served.version_row_id, descriptor_type=t.name, with_content=False
    )
    if relative is None:
        primaries = [r for r in rows if r.file_type == "PRIMARY_DESCRIPTOR"]
        if not primaries:
            raise NotFound(f"version {v.key!r} has no {t.name} descriptor")
        found = primaries[0]
    else:
        found = find_file(rows, relative, level=level)
    matches = await db.fetch_files(
        conn, v.served.version_row_id, descriptor_type=t.name, path=found.path
    )
    f = matches[0] if matches else None
    if f is None or f.content is None:
        raise NotFound(f"the content of {found.path!r} is not mirrored")
    text = _is_text(f.content)
    if t.plain:
        content_type = "text/plain; charset=utf-8" if text else "application/octet-stream"
        return make_entry(200, f.content, content_type, generation=generation)
    url = _file_url(v, t, f)
    if not text and version_url is not None:
        url = f"{version_url}/PLAIN_{t.name}/descriptor/{quote(tree_path(f.path), safe='/')}"
    wrapper = render.file_wrapper(
        f.content,
        f.sha256,
        url,
        image_type=None if strict else t.name,
        extra=None if strict else _extra(f, "wrapper"),
    )
    return json_entry(wrapper, generation)


async def files(
    conn: Connection,
    generation: int,
    tool_id: str,
    v: CatalogueVersion,
    t: DescriptorType,
    *,
    want_zip: bool,
    strict: bool,
) -> Entry:
    """The ToolFiles of a version for one type, or all of them in a zip.

    Only mirrored files are listed, and the zip holds exactly those bytes, so every listed
    checksum can be checked against the archive.
    """
    rows = _served(
        await db.fetch_files(
            conn, v.served.version_row_id, descriptor_type=t.name, with_content=want_zip
        )
    )
    if not rows:
        raise NotFound(f"version {v.key!r} of {tool_id!r} has no {t.name} files")
    if not want_zip:
        return json_entry(
            [
                render.tool_file(
                    tree_path(r.path),
                    r.file_type,
                    r.sha256,
                    strict=strict,
                    extra=_extra(r, "tool_file"),
                )
                for r in rows
            ],
            generation,
            vary="Accept, Accept-Encoding",
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for r in rows:
            info = zipfile.ZipInfo(tree_path(r.path), date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, r.content or b"")
    stem = _UNSAFE_NAME.sub("_", f"{tool_id}-{v.key}-{t.name}").strip("_")
    return make_entry(
        200,
        buffer.getvalue(),
        "application/zip",
        generation=generation,
        vary="Accept",
        headers={"Content-Disposition": f'attachment; filename="{stem}.zip"'},
    )


async def tests(conn: Connection, generation: int, v: CatalogueVersion, t: DescriptorType) -> Entry:
    """The test files of a version for one type: FileWrappers, or their contents joined by
    newlines for PLAIN types."""
    found = _served(
        await db.fetch_files(
            conn, v.served.version_row_id, descriptor_type=t.name, file_types=["TEST_FILE"]
        )
    )
    if (
        not found
        and t.name not in (v.doc.get("descriptor_type") or ())
        and not (
            await db.fetch_files(
                conn, v.served.version_row_id, descriptor_type=t.name, with_content=False
            )
        )
    ):
        raise NotFound(f"version {v.key!r} has no {t.name} files")
    if t.plain:
        body = b"\n".join(r.content or b"" for r in found)
        return make_entry(200, body, "text/plain; charset=utf-8", generation=generation)
    return json_entry(
        [render.file_wrapper(r.content, r.sha256, _file_url(v, t, r)) for r in found], generation
    )


async def containerfiles(conn: Connection, generation: int, v: CatalogueVersion) -> Entry:
    """The container specifications of a version, each once."""
    rows = await db.fetch_files(conn, v.served.version_row_id, file_types=["CONTAINERFILE"])
    unique: dict[str, FileRow] = {}
    for r in rows:
        if r.sha256 is not None:
            unique.setdefault(r.sha256, r)
    if not unique:
        raise NotFound(f"version {v.key!r} has no containerfile")
    plain = DescriptorType("", plain=True)
    return json_entry(
        [render.file_wrapper(r.content, r.sha256, _file_url(v, plain, r)) for r in unique.values()],
        generation,
    )
