"""``trs-aggregator export DIR``: the merged catalogue as a static TRS tree.

The tree is what the API serves under ``/ga4gh/trs/v2``, one ``index.json`` per path (the
layout Yevis publishes; map ``<base>/<path>`` to ``DIR/<path>/index.json``): service-info,
toolClasses, the whole tool list, each tool, its versions, and per descriptor type the files
list, the descriptor and every file at ``…/{TYPE}/descriptor/{path}``, the tests, and the same
in ``PLAIN_{TYPE}`` form (bare contents). cwltool's spelling ``plain-CWL`` is a symlink to
``PLAIN_CWL``, and a plain file is also at ``…/PLAIN_{TYPE}/{path}``, where cwltool resolves
``../`` imports of a primary descriptor that is not at the root. Every document is rendered
by the API itself (served in-process on a loopback port), so the export is byte for byte what
the API answers.

``DIR`` is a symlink to a generation directory beside it (``DIR.export-<n>``); a run builds a
new generation and swaps the symlink atomically, so readers never see a half-written tree.
Files of tools the change feed says are unchanged since the last export are hard links to the
previous generation's; only changed tools are rendered again, and a rendered file whose bytes
did not change is linked, not rewritten. Tools that disappeared are not carried over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import orjson
import structlog
from aiohttp import web

from aggregator.app import create_app
from aggregator.config import Config
from aggregator.errors import AggregatorError
from aggregator.progress import NoProgress, Progress, TerminalProgress

log = structlog.get_logger()

TRS: Final = "/ga4gh/trs/v2"
STATE_SUFFIX: Final = ".export-state.json"
INDEX: Final = "index.json"
CONCURRENCY: Final = 8


class ExportError(AggregatorError):
    """The export cannot be written."""


@dataclass(slots=True)
class ExportStats:
    """What one export did."""

    tools: int = 0
    rendered_tools: int = 0
    written: int = 0
    linked: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)
    incremental: bool = False
    directory: str = ""


def safe_segments(value: str) -> list[str] | None:
    """*value* (a tool id or version key) as path segments on disk, or None when it cannot be
    one safely (empty, ``.``/``..`` segments, NUL, overlong, or colliding with index.json)."""
    segments = value.split("/")
    for s in segments:
        if s in ("", ".", "..", INDEX) or "\x00" in s or len(s.encode()) > 200 or s.startswith("."):
            return None
    return segments


class Tree:
    """The files of one generation being built: relative path -> bytes, written at once."""

    def __init__(self, root: Path, previous: Path | None, stats: ExportStats) -> None:
        self.root = root
        self.previous = previous
        self.stats = stats

    def put(self, segments: list[str], body: bytes) -> None:
        """Write *body* as ``<segments>/index.json`` (linked from the previous generation when
        the bytes are the same)."""
        rel = Path(*segments, INDEX)
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.previous is not None:
            old = self.previous / rel
            try:
                if old.is_file() and old.stat().st_size == len(body) and old.read_bytes() == body:
                    os.link(old, target)
                    self.stats.linked += 1
                    return
            except OSError:
                pass
        target.write_bytes(body)
        self.stats.written += 1

    def symlink(self, segments: list[str], to: str) -> None:
        """A relative symlink *segments* -> *to* (a sibling name)."""
        link = self.root.joinpath(*segments)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists() and not link.is_symlink():
            link.symlink_to(to)


def _version_key(version: dict[str, Any]) -> str | None:
    url = version.get("url")
    if isinstance(url, str) and "/versions/" in url:
        return unquote(urlsplit(url).path.rstrip("/").rsplit("/versions/", 1)[1])
    vid = version.get("id")
    return vid if isinstance(vid, str) else None


class Renderer:
    """Fetches documents from the in-process API and puts them in a Tree."""

    def __init__(self, session: aiohttp.ClientSession, origin: str, tree: Tree) -> None:
        self.session = session
        self.origin = origin
        self.tree = tree

    async def get(self, path: str) -> bytes | None:
        """The API's answer at *path* under the TRS base; None for a 404."""
        async with self.session.get(self.origin + TRS + path, allow_redirects=False) as r:
            if r.status == 404:
                return None
            if r.status != 200:
                raise ExportError(f"GET {TRS}{path} answered {r.status}: {await r.text()}")
            return await r.read()

    async def put(self, path: str, segments: list[str]) -> bytes | None:
        """Put the API's answer at *path* in the tree at *segments* (when there is one)."""
        body = await self.get(path)
        if body is not None:
            self.tree.put(segments, body)
        return body

    async def tool(self, tool_id: str) -> bool:
        """Render one tool and everything below it; False when it is not there or its id
        cannot be a path."""
        tseg = safe_segments(tool_id)
        if tseg is None:
            self.tree.stats.skipped.append(tool_id)
            return False
        base = f"/tools/{quote(tool_id, safe='')}"
        if await self.put(base, ["tools", *tseg]) is None:
            return False
        raw = await self.put(base + "/versions", ["tools", *tseg, "versions"])
        for version in orjson.loads(raw or b"[]"):
            key = _version_key(version)
            vseg = safe_segments(key) if key else None
            if key is None or vseg is None:
                self.tree.stats.skipped.append(f"{tool_id} version {key!r}")
                continue
            await self.version(
                f"{base}/versions/{quote(key, safe='')}",
                ["tools", *tseg, "versions", *vseg],
                version,
            )
        return True

    async def version(self, path: str, seg: list[str], version: dict[str, Any]) -> None:
        """Render one version: its document, containerfile, and per type its files."""
        await self.put(path, seg)
        await self.put(path + "/containerfile", [*seg, "containerfile"])
        types = version.get("descriptor_type") or []
        for t in types if isinstance(types, list) else []:
            if not isinstance(t, str) or safe_segments(t) is None:
                continue
            plain = f"PLAIN_{t}"
            listing = await self.put(f"{path}/{t}/files", [*seg, t, "files"])
            await self.put(f"{path}/{t}/descriptor", [*seg, t, "descriptor"])
            await self.put(f"{path}/{plain}/descriptor", [*seg, plain, "descriptor"])
            await self.put(f"{path}/{t}/tests", [*seg, t, "tests"])
            await self.put(f"{path}/{plain}/tests", [*seg, plain, "tests"])
            self.tree.symlink([*seg, f"plain-{t}"], plain)
            for f in orjson.loads(listing or b"[]"):
                fpath = f.get("path") if isinstance(f, dict) else None
                if not isinstance(fpath, str):
                    continue
                fseg = safe_segments(fpath.lstrip("/"))
                if fseg is None:
                    continue
                q = quote(fpath.lstrip("/"), safe="/")
                await self.put(f"{path}/{t}/descriptor/{q}", [*seg, t, "descriptor", *fseg])
                body = await self.put(
                    f"{path}/{plain}/descriptor/{q}", [*seg, plain, "descriptor", *fseg]
                )
                if body is not None and fseg[0] not in ("descriptor", "files", "tests"):
                    self.tree.put([*seg, plain, *fseg], body)


def _owned(rel: str, tool_ids: set[str]) -> bool:
    """Whether *rel* (a path in the tree) belongs to one of *tool_ids*."""
    if not rel.startswith("tools/"):
        return False
    rest = rel[len("tools/") :]
    return any(rest == f"{tid}/{INDEX}" or rest.startswith(f"{tid}/versions/") for tid in tool_ids)


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            p = Path(dirpath) / name
            yield p.relative_to(root).as_posix(), p


async def _changed_since(
    session: aiohttp.ClientSession, origin: str, cursor: str
) -> tuple[set[str], str] | None:
    """Tool ids the change feed names after *cursor*, and the new cursor; None when the feed
    cannot say (past retention)."""
    ids: set[str] = set()
    while True:
        async with session.get(
            f"{origin}/aggregator/v1/changes", params={"since": cursor, "limit": "5000"}
        ) as r:
            if r.status == 410:
                return None
            if r.status != 200:
                raise ExportError(f"the change feed answered {r.status}")
            body = await r.json()
        for c in body["changes"]:
            ids.add(c["id"])
            for key in ("previous_id",):
                if c.get(key):
                    ids.add(c[key])
            into = c.get("into")
            ids.update(into if isinstance(into, list) else [into] if into else [])
        cursor = body["cursor"]
        if not body["more"]:
            return ids, cursor


async def _all_tool_ids(session: aiohttp.ClientSession, origin: str) -> tuple[list[Any], list[str]]:
    tools: list[Any] = []
    offset = 0
    while True:
        async with session.get(
            f"{origin}{TRS}/tools", params={"offset": str(offset), "limit": "1000"}
        ) as r:
            if r.status != 200:
                raise ExportError(f"GET {TRS}/tools answered {r.status}")
            page = await r.json()
        tools += page
        if len(page) < 1000:
            return tools, [t["id"] for t in tools]
        offset += len(page)


async def export(  # noqa: PLR0915 - one export, step by step
    config: Config, directory: Path, *, public_url: str, progress: Progress | None = None
) -> ExportStats:
    """Write the catalogue under *directory* (see the module docstring)."""
    progress = progress or NoProgress()
    directory = directory.absolute()
    if directory.exists() and not directory.is_symlink():
        if any(directory.iterdir()):
            raise ExportError(
                f"{directory} is a non-empty directory, not an export: give a new path"
            )
        directory.rmdir()
    state_file = directory.with_name(directory.name + STATE_SUFFIX)
    state: dict[str, Any] = {}
    previous = directory.resolve() if directory.is_symlink() else None
    if previous is not None and state_file.is_file():
        state = orjson.loads(state_file.read_bytes())
    number = int(state.get("number", 0)) + 1
    new = directory.with_name(f"{directory.name}.export-{number}")
    if new.exists():
        shutil.rmtree(new)
    new.mkdir(parents=True)
    stats = ExportStats(directory=str(new))
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, public_url=public_url)
    )
    started = time.monotonic()
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        origin = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            # The cursor first: changes published while we render are read again next time.
            async with session.get(
                f"{origin}/aggregator/v1/changes", params={"since": "0", "limit": "1"}
            ) as r:
                head = (await r.json())["head"] if r.status == 200 else "0"
            changed = None
            if previous is not None and "cursor" in state:
                changed = await _changed_since(session, origin, str(state["cursor"]))
            tree = Tree(new, previous, stats)
            renderer = Renderer(session, origin, tree)
            for path, seg in (
                ("/service-info", ["service-info"]),
                ("/toolClasses", ["toolClasses"]),
            ):
                await renderer.put(path, seg)
            tools, ids = await _all_tool_ids(session, origin)
            tree.put(["tools"], orjson.dumps(tools))
            stats.tools = len(ids)
            if changed is not None and previous is not None:
                stats.incremental = True
                todo = [i for i in ids if i in changed[0]]
                owned = {"/".join(s) for i in changed[0] if (s := safe_segments(i))}
                for rel, old in _walk(previous):
                    if rel.count("/") < 2 or not rel.startswith("tools/") or _owned(rel, owned):
                        continue
                    target = new / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if old.is_symlink():
                        target.symlink_to(os.readlink(old))
                    elif not target.exists():
                        os.link(old, target)
                        stats.linked += 1
                head = changed[1] if int(changed[1]) > int(head) else head
            else:
                todo = ids
            semaphore = asyncio.Semaphore(CONCURRENCY)
            done = 0

            async def one(tool_id: str) -> None:
                nonlocal done
                async with semaphore:
                    await renderer.tool(tool_id)
                done += 1
                progress.update("export", tools=done, of=len(todo))

            await asyncio.gather(*(one(i) for i in todo))
            progress.done("export", "succeeded")
            stats.rendered_tools = len(todo)
    finally:
        await runner.cleanup()
    # Swap: readers follow the symlink to the old generation or the new one, never a mix.
    tmp = directory.with_name(directory.name + ".swap")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(new.name)
    os.replace(tmp, directory)
    state_file.write_bytes(orjson.dumps({"number": number, "cursor": head}))
    if previous is not None and previous != new and previous.exists():
        shutil.rmtree(previous)
    log.info(
        "export_finished",
        directory=str(directory),
        generation_dir=new.name,
        tools=stats.tools,
        rendered_tools=stats.rendered_tools,
        written=stats.written,
        linked=stats.linked,
        skipped=len(stats.skipped),
        incremental=stats.incremental,
        duration_ms=round((time.monotonic() - started) * 1000),
    )
    return stats


async def cmd_export(config: Config, directory: Path, *, public_url: str | None) -> int:
    """``trs-aggregator export DIR``: write the tree, print what was done."""
    origin = (public_url or config.server.public_url).rstrip("/")
    if not origin:
        raise ExportError("say where the tree will be served: --public-url or server.public_url")
    progress: Progress = TerminalProgress() if sys.stderr.isatty() else NoProgress()
    stats = await export(config, directory, public_url=origin, progress=progress)
    for _skipped in stats.skipped:
        pass
    return 0
