"""Fetching the files of one tool version: descriptors, secondary files, tests, containerfiles."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from aggregator.errors import InvalidUpstreamData, UpstreamError
from aggregator.harvest.client import UpstreamClient
from aggregator.trs.parse import read_file_wrapper, read_files_listing, sha256_hex
from aggregator.trs.staged import StagedFile


def _is_url(path: str) -> bool:
    return urlsplit(path).scheme in ("http", "https")


def _encode_path(path: str) -> str:
    """Encode a relative path for ``descriptor/{relative_path}``.

    Paths that climb (``../x``) or start with ``/`` are sent fully encoded, the form Dockstore
    answers; others keep their slashes, which every server routes.
    """
    parts = path.split("/")
    if path.startswith("/") or ".." in parts:
        return quote(path, safe="")
    return quote(path, safe="/")


def relative_to(url: str, base_dir: str | None) -> str:
    """A file's served path: *url* relative to *base_dir* when it lies below it, else the url."""
    if base_dir and url.startswith(base_dir):
        rest = unquote(url[len(base_dir) :])
        if rest and not rest.startswith("/"):
            return rest
    return url


class VersionFiles:
    """Collects the files of one version; fetch errors are reported through *on_error*.

    *previous* maps (descriptor type, path) to the sha256 published for that file: content
    that fails its declared checksum does not replace it.
    """

    def __init__(
        self,
        client: UpstreamClient,
        version_url: str,
        on_error: Callable[[str], None],
        previous: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        self.client = client
        self.version_url = version_url
        self.on_error = on_error
        self.previous = previous or {}
        self.files: dict[tuple[str, str], StagedFile] = {}
        # Containerfiles listed by /{type}/files: their content comes from /containerfile.
        self.containerfile_entries: list[dict[str, Any]] = []

    async def fetch_all(self, descriptor_types: list[str]) -> list[StagedFile]:
        """Fetch every type's files and tests, then the containerfile.

        Raises UpstreamError when a listing cannot be read (the version's files are then
        unknown); a single file that cannot be fetched is kept without content and reported.
        """
        for t in descriptor_types:
            await self._fetch_type(t)
        await self._fetch_containerfile()
        return list(self.files.values())

    async def _fetch_type(self, t: str) -> None:
        base = f"{self.version_url}/{quote(t, safe='')}"
        primary_got = await self.client.get_json(f"{base}/descriptor", ok_404=True)
        primary = read_file_wrapper(primary_got[0]) if primary_got else None
        listing_got = await self.client.get_json(f"{base}/files", ok_404=True)
        entries = read_files_listing(listing_got[0]) if listing_got else []
        primary_entry = next((e for e in entries if e["file_type"] == "PRIMARY_DESCRIPTOR"), None)
        base_dir: str | None = None
        primary_path: str | None = None
        if primary_entry is not None:
            primary_path = primary_entry["path"]
        elif primary is not None:
            primary_path = posixpath.basename(urlsplit(primary["url"] or "").path) or "descriptor"
        if primary_path and _is_url(primary_path):
            base_dir = primary_path.rsplit("/", 1)[0] + "/"
        elif (
            primary is not None
            and primary["url"]
            and _is_url(primary["url"])
            and entries
            and all(_is_url(e["path"]) for e in entries)
        ):
            base_dir = primary["url"].rsplit("/", 1)[0] + "/"
        if primary is not None and primary_path is not None:
            declared = primary["declared_sha256"] or (primary_entry or {}).get("declared_sha256")
            await self._add(
                t,
                relative_to(primary_path, base_dir),
                "PRIMARY_DESCRIPTOR",
                url=primary["url"] or f"{base}/descriptor",
                wrapper=primary,
                declared=declared,
            )
        for e in entries:
            path = relative_to(e["path"], base_dir)
            if (t, path) in self.files:
                continue
            if e["file_type"] == "CONTAINERFILE" and not _is_url(e["path"]):
                self.containerfile_entries.append({**e, "path": path})
                continue
            if _is_url(e["path"]):
                await self._add(
                    t,
                    path,
                    e["file_type"],
                    url=e["path"],
                    raw_url=e["path"],
                    declared=e["declared_sha256"],
                )
            else:
                url = f"{base}/descriptor/{_encode_path(e['path'])}"
                await self._add(
                    t, path, e["file_type"], url=url, wrapper_url=url, declared=e["declared_sha256"]
                )
        tests_got = await self.client.get_json(f"{base}/tests", ok_404=True)
        if tests_got and isinstance(tests_got[0], list):
            known = {f.sha256 for f in self.files.values() if f.file_type == "TEST_FILE"}
            for i, raw in enumerate(tests_got[0]):
                wrapper = read_file_wrapper(raw)
                content = wrapper["content"]
                if content is not None and sha256_hex(content.encode()) in known:
                    continue
                name = posixpath.basename(urlsplit(wrapper["url"] or "").path)
                path = relative_to(wrapper["url"], base_dir) if wrapper["url"] else ""
                if not path or _is_url(path):
                    path = f"tests/{name}" if name else f"tests/test-{i + 1}.json"
                if (t, path) not in self.files:
                    await self._add(
                        t,
                        path,
                        "TEST_FILE",
                        url=wrapper["url"],
                        wrapper=wrapper,
                        declared=wrapper["declared_sha256"],
                    )

    async def _fetch_containerfile(self) -> None:
        got = await self.client.get_json(f"{self.version_url}/containerfile", ok_404=True)
        if got is None:
            return
        raw = got[0] if isinstance(got[0], list) else [got[0]]
        known = {f.sha256 for f in self.files.values() if f.file_type == "CONTAINERFILE"}
        for i, item in enumerate(raw):
            try:
                wrapper = read_file_wrapper(item)
            except InvalidUpstreamData as e:
                self.on_error(f"containerfile {i}: {e}")
                continue
            content = wrapper["content"]
            if content is not None and sha256_hex(content.encode()) in known:
                continue
            listed = self.containerfile_entries[i] if i < len(self.containerfile_entries) else {}
            name = posixpath.basename(urlsplit(wrapper["url"] or "").path) or "Dockerfile"
            path = listed.get("path") or (name if i == 0 else f"{i}/{name}")
            await self._add(
                "",
                path,
                "CONTAINERFILE",
                url=wrapper["url"],
                wrapper=wrapper,
                declared=wrapper["declared_sha256"] or listed.get("declared_sha256"),
            )

    async def _add(
        self,
        t: str,
        path: str,
        file_type: str,
        *,
        url: str | None,
        declared: str | None,
        wrapper: dict[str, Any] | None = None,
        wrapper_url: str | None = None,
        raw_url: str | None = None,
    ) -> None:
        staged = StagedFile(t, path, file_type, url, declared_sha256=declared)
        self.files[(t, path)] = staged
        try:
            if wrapper_url is not None:
                got = await self.client.get_json(wrapper_url)
                assert got is not None
                wrapper = read_file_wrapper(got[0])
                staged.declared_sha256 = declared or wrapper["declared_sha256"]
            if wrapper is not None and wrapper["content"] is not None:
                content = wrapper["content"].encode("utf-8")
            else:
                fetch = raw_url or (wrapper or {}).get("url")
                if not fetch:
                    self.on_error(f"{t or 'containerfile'} {path}: no content and no url")
                    return
                response = await self.client.get(fetch, accept="text/plain, */*", purpose="file")
                assert response is not None
                content = response.body
        except UpstreamError as e:
            self.on_error(f"{t or 'containerfile'} {path}: {e}")
            return
        staged.content = content
        staged.sha256 = sha256_hex(content)
        if staged.declared_sha256 is None:
            staged.checksum_status = "undeclared"
        elif staged.declared_sha256 == staged.sha256:
            staged.checksum_status = "verified"
        else:
            kept = self.previous.get((t, path))
            self.on_error(
                f"{t or 'containerfile'} {path}: checksum mismatch (declared "
                f"{staged.declared_sha256[:12]}…, content {staged.sha256[:12]}…)"
                + ("; kept the content published before" if kept else "")
            )
            if kept:
                # Not trusted: publishing keeps the earlier content and its checksum status.
                staged.content = staged.sha256 = None
                staged.checksum_status = "not_fetched"
            else:
                staged.checksum_status = "mismatch"
