"""Fetching the files of one tool version: descriptors, secondary files, tests, containerfiles."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

from aggregator.errors import InvalidUpstreamData, UpstreamError
from aggregator.harvest.client import UpstreamClient
from aggregator.harvest.hosts import FileHosts
from aggregator.trs.parse import read_file_wrapper, read_files_listing, sha256_hex
from aggregator.trs.paths import (
    UnsafePath,
    common_root,
    relative_to_root,
    safe_tree_path,
    tree_path,
)
from aggregator.trs.staged import StagedFile


def _is_url(path: str) -> bool:
    # Without a colon there is no scheme: most paths are answered without parsing.
    return ":" in path and urlsplit(path).scheme in ("http", "https")


def _encode_path(path: str) -> str:
    """Encode a relative path for ``descriptor/{relative_path}``.

    Paths that climb (``../x``) or start with ``/`` are sent fully encoded, the form Dockstore
    answers; others keep their slashes, which every server routes.
    """
    parts = path.split("/")
    if path.startswith("/") or ".." in parts:
        return quote(path, safe="")
    return quote(path, safe="/")


def _url_path(url: str) -> str:
    """The host name and decoded path of *url*: ``host/a/b.cwl``."""
    parts = urlsplit(url)
    return f"{(parts.hostname or '').lower()}/{unquote(parts.path).lstrip('/')}"


@dataclass(slots=True)
class TreeLayout:
    """How the paths an upstream lists for one version become paths of one relative tree.

    A path that is not a URL is the upstream's relative (or tree-rooted ``/a.cwl``) path. A URL
    path takes the ``target`` Yevis recorded for it in ``yevis-metadata.json`` (the file's
    place in the workflow) when there is one, else its host and URL path relative to the
    common root of every URL the version lists (on one host, the host is part of that root),
    so that relative imports between them still resolve.

    Attributes:
        targets: URL to Yevis target.
        root: The common directory of the URL paths without a target.
    """

    targets: dict[str, str] = field(default_factory=dict)
    root: str = ""

    @classmethod
    def of(cls, urls: Sequence[str], targets: Mapping[str, str]) -> TreeLayout:
        """The layout for a version listing *urls* (absolute URLs), with Yevis *targets*."""
        untargeted = [_url_path(u) for u in urls if u not in targets]
        directories = [posixpath.dirname(p) for p in untargeted]
        return cls(dict(targets), common_root(directories))

    def raw_path(self, path: str) -> str:
        """The path of the listed *path* in the tree, not yet normalised."""
        if not _is_url(path):
            return path
        target = self.targets.get(path)
        if target is not None:
            return target
        return relative_to_root(_url_path(path), self.root)


#: Where Yevis and gh-trs trees keep each version's file targets.
METADATA_FILES: Final = ("yevis-metadata.json", "gh-trs-config.json")


def yevis_targets(metadata: Any) -> dict[str, str]:
    """URL to target, for every file a ``yevis-metadata.json`` document lists."""
    out: dict[str, str] = {}
    workflow = metadata.get("workflow") if isinstance(metadata, Mapping) else None
    if not isinstance(workflow, Mapping):
        return out
    groups: list[Any] = [workflow.get("files")]
    testing = workflow.get("testing")
    if isinstance(testing, list):
        groups += [t.get("files") for t in testing if isinstance(t, Mapping)]
    for group in groups:
        for f in group if isinstance(group, list) else ():
            if (
                isinstance(f, Mapping)
                and isinstance(f.get("url"), str)
                and isinstance(f.get("target"), str)
                and f["target"]
            ):
                out.setdefault(f["url"], f["target"])
    return out


def _primary_listed(
    primary: Mapping[str, Any] | None,
    entry: Mapping[str, Any] | None,
    entries: Sequence[Mapping[str, Any]],
) -> str | None:
    """The primary descriptor's path as the upstream lists it: its ToolFile's, else its URL
    when the other files are listed by URL (Yevis), else the URL's file name."""
    if entry is not None:
        return str(entry["path"])
    if primary is None:
        return None
    url = primary["url"]
    if url and _is_url(url) and any(_is_url(e["path"]) for e in entries):
        return str(url)
    return posixpath.basename(urlsplit(url or "").path) or "descriptor"


class VersionFiles:
    """Collects the files of one version; fetch errors are reported through *on_error*.

    *previous* maps (descriptor type, path) to the sha256 published for that file: content
    that fails its declared checksum does not replace it. *hosts* fetches file contents at
    absolute URLs (on other hosts, failures are per file and never trip the upstream's
    breaker); without it they are fetched through *client*.
    """

    def __init__(
        self,
        client: UpstreamClient,
        version_url: str,
        on_error: Callable[[str], None],
        previous: Mapping[tuple[str, str], str] | None = None,
        hosts: FileHosts | None = None,
    ) -> None:
        self.client = client
        self.version_url = version_url
        self.on_error = on_error
        self.previous = previous or {}
        self.hosts = hosts
        self.files: dict[tuple[str, str], StagedFile] = {}
        # Containerfiles listed by /{type}/files: their content comes from /containerfile.
        self.containerfile_entries: list[dict[str, Any]] = []
        self._targets: dict[str, str] | None = None

    async def fetch_all(self, descriptor_types: list[str]) -> list[StagedFile]:
        """Fetch every type's files and tests, then the containerfile.

        Raises UpstreamError when a listing cannot be read (the version's files are then
        unknown); a single file that cannot be fetched is kept without content and reported.
        """
        for t in descriptor_types:
            await self._fetch_type(t)
        await self._fetch_containerfile()
        return list(self.files.values())

    async def _yevis_targets(self) -> dict[str, str]:
        """The targets of ``yevis-metadata.json`` (``gh-trs-config.json`` in gh-trs trees, the
        same document) next to the version, fetched once."""
        if self._targets is None:
            self._targets = {}
            for name in METADATA_FILES:
                try:
                    got = await self.client.get_json(f"{self.version_url}/{name}", ok_404=True)
                except UpstreamError as e:
                    self.on_error(f"{name}: {e}")
                    break
                if got is not None:
                    self._targets = yevis_targets(got[0])
                    break
        return self._targets

    def _tree_path(self, t: str, layout: TreeLayout, listed: str) -> str | None:
        """The canonical tree path of the *listed* path, or None (reported) when it would
        leave the tree."""
        try:
            return tree_path(layout.raw_path(listed))
        except UnsafePath as e:
            self.on_error(f"{t or 'containerfile'} {listed!r}: refused: {e}")
            return None

    async def _fetch_type(self, t: str) -> None:
        base = f"{self.version_url}/{quote(t, safe='')}"
        primary_got = await self.client.get_json(f"{base}/descriptor", ok_404=True)
        primary = read_file_wrapper(primary_got[0]) if primary_got else None
        listing_got = await self.client.get_json(f"{base}/files", ok_404=True)
        entries = read_files_listing(listing_got[0]) if listing_got else []
        primary_entry = next((e for e in entries if e["file_type"] == "PRIMARY_DESCRIPTOR"), None)
        primary_listed = _primary_listed(primary, primary_entry, entries)
        urls = [e["path"] for e in entries if _is_url(e["path"])]
        if primary_listed and _is_url(primary_listed):
            urls.append(primary_listed)
        targets = await self._yevis_targets() if urls else {}
        layout = TreeLayout.of(urls, targets)
        if primary is not None and primary_listed is not None:
            declared = primary["declared_sha256"] or (primary_entry or {}).get("declared_sha256")
            path = self._tree_path(t, layout, primary_listed)
            if path is not None:
                await self._add(
                    t,
                    path,
                    "PRIMARY_DESCRIPTOR",
                    url=primary["url"] or f"{base}/descriptor",
                    wrapper=primary,
                    declared=declared,
                    listing_extra=(primary_entry or {}).get("extra"),
                )
        for e in entries:
            path = self._tree_path(t, layout, e["path"])
            if path is None:
                continue
            if (t, path) in self.files:
                taken = self.files[(t, path)].url
                if _is_url(e["path"]) and taken not in (None, e["path"]):
                    self.on_error(f"{t} {e['path']}: its path {path!r} is taken by {taken}")
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
                    listing_extra=e["extra"],
                )
            else:
                url = f"{base}/descriptor/{_encode_path(e['path'])}"
                await self._add(
                    t,
                    path,
                    e["file_type"],
                    url=url,
                    wrapper_url=url,
                    declared=e["declared_sha256"],
                    listing_extra=e["extra"],
                )
        await self._fetch_tests(t, base, layout)

    async def _fetch_tests(self, t: str, base: str, layout: TreeLayout) -> None:
        """The test files of type *t* that ``/tests`` gives beyond those listed in ``/files``."""
        tests_got = await self.client.get_json(f"{base}/tests", ok_404=True)
        if tests_got and isinstance(tests_got[0], list):
            known = {f.sha256 for f in self.files.values() if f.file_type == "TEST_FILE"}
            for i, raw in enumerate(tests_got[0]):
                wrapper = read_file_wrapper(raw)
                content = wrapper["content"]
                if content is not None and sha256_hex(content.encode()) in known:
                    continue
                name = posixpath.basename(urlsplit(wrapper["url"] or "").path)
                test_url = wrapper["url"]
                test_path: str | None = None
                if test_url and (
                    test_url in layout.targets
                    or not _is_url(test_url)
                    or (layout.root and _url_path(test_url).startswith(layout.root + "/"))
                ):
                    test_path = safe_tree_path(layout.raw_path(test_url))
                if test_path is None:
                    test_path = safe_tree_path(f"tests/{name}") if name else None
                    test_path = test_path or f"tests/test-{i + 1}.json"
                if (t, test_path) not in self.files:
                    await self._add(
                        t,
                        test_path,
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
            path = listed.get("path") or safe_tree_path(name if i == 0 else f"{i}/{name}")
            await self._add(
                "",
                path or (f"Dockerfile-{i + 1}" if i else "Dockerfile"),
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
        listing_extra: dict[str, Any] | None = None,
    ) -> None:
        staged = StagedFile(t, path, file_type, url, declared_sha256=declared)
        self.files[(t, path)] = staged
        try:
            if wrapper_url is not None:
                got = await self.client.get_json(wrapper_url)
                assert got is not None
                wrapper = read_file_wrapper(got[0])
                staged.declared_sha256 = declared or wrapper["declared_sha256"]
            extra = {
                k: v
                for k, v in (
                    ("wrapper", (wrapper or {}).get("extra")),
                    ("tool_file", listing_extra),
                )
                if v
            }
            staged.extra = extra or None
            if wrapper is not None and wrapper["content"] is not None:
                content = wrapper["content"].encode("utf-8")
            else:
                fetch = raw_url or (wrapper or {}).get("url")
                if not fetch:
                    self.on_error(f"{t or 'containerfile'} {path}: no content and no url")
                    return
                if self.hosts is not None:
                    content = await self.hosts.fetch(fetch)
                else:
                    response = await self.client.get(
                        fetch, accept="text/plain, */*", purpose="file"
                    )
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
