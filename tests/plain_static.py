"""Serve a folder the way a plain static host does (``python -m http.server``), on loopback.

No TRS routing at all: ``/tools`` is a redirect to ``/tools/``, which is an HTML directory
listing; only ``/tools/index.json`` is the JSON. ``If-Modified-Since`` gives 304. Before
serving, :func:`copy_tree` rewrites the tree's absolute URLs to stand-in hosts on loopback, so a
harvest never leaves the machine.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

StandIn = Callable[[str], bytes | None]


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ARG002 - stdlib's signature
        self.requests.append(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}")


@contextlib.contextmanager
def serve_folder(folder: Path, host: str = "127.0.0.1") -> Iterator[tuple[str, list[str]]]:
    """Serve *folder* at ``http://host:<ephemeral port>``; yield that origin and the request
    log (``"GET /tools/index.json 200"``)."""
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        (host, 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def dead_origin(host: str = "127.0.0.3") -> str:
    """An origin nothing listens on: connections to it are refused."""
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    return f"http://{host}:{port}"


def copy_tree(
    source: Path,
    target: Path,
    hosts: dict[str, str],
    stand_in: StandIn | None = None,
) -> Path:
    """Copy *source* to *target*, replacing each URL prefix in *hosts* by its stand-in.

    When *stand_in* gives the bytes a stand-in host serves for a URL, the checksums the tree
    declares for that URL (in ToolFiles without inline content) are rewritten to match them.
    """
    shutil.copytree(source, target)

    def rewrite(value: Any) -> Any:
        if isinstance(value, str):
            for old, new in hosts.items():
                if value.startswith(old):
                    return new + value[len(old) :]
            return value
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        if isinstance(value, dict):
            out = {k: rewrite(v) for k, v in value.items()}
            url = out.get("path") if isinstance(out.get("path"), str) else None
            body = stand_in(url) if stand_in and url and "content" not in out else None
            if body is not None and isinstance(out.get("checksum"), dict):
                out["checksum"] = {"checksum": hashlib.sha256(body).hexdigest(), "type": "sha256"}
            return out
        return value

    for path in target.rglob("*.json"):
        path.write_bytes(orjson.dumps(rewrite(orjson.loads(path.read_bytes()))))
    return target
