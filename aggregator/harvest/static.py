"""Reading a static TRS tree (Yevis, gh-trs) from any plain static host.

A static tree holds one ``index.json`` per TRS path (``tools/index.json``,
``tools/{id}/versions/{v}/CWL/files/index.json`` …), as GitHub Pages, S3, nginx or
``python -m http.server`` serve them. None of those hosts answers ``/tools`` with that file
(they answer a directory listing, an HTML page or a redirect), so every request for a path under
the configured base URL is turned into a request for ``<path>/index.json``; when that is missing
the path itself is tried (a host that rewrites TRS paths to their files). Requests are built
from the configured base, never from the tree's own ``url`` fields, which name the host it was
published for. Paging parameters are dropped: ``tools/index.json`` is the whole listing. An
answer that is HTML (a host's "not found" page served with status 200, a directory listing) is
a 404.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from aggregator.errors import UpstreamHTTPError
from aggregator.harvest.client import Response, UpstreamClient, Validators
from aggregator.harvest.egress import Purpose

INDEX: Final = "index.json"


def _is_html(response: Response) -> bool:
    content_type = response.headers.get("Content-Type", "").lower()
    if "html" in content_type:
        return True
    head = response.body[:256].lstrip().lower()
    return head.startswith((b"<!doctype", b"<html", b"<head", b"<body"))


class StaticTreeClient(UpstreamClient):
    """An UpstreamClient that reads TRS paths below the upstream's base as a static tree."""

    def tree_urls(self, url: str) -> list[str] | None:
        """The URLs to try for the TRS document at *url*, best first; None when *url* is not a
        TRS path of this tree (a file on another host, or a file such as
        ``yevis-metadata.json`` inside it)."""
        base = self.upstream.url.rstrip("/")
        plain = url.split("?", 1)[0].split("#", 1)[0]
        if plain != base and not plain.startswith(base + "/"):
            return None
        path = plain[len(base) :].strip("/")
        segments = path.split("/")
        # A JSON file of the tree (``yevis-metadata.json``) is read as it is; but a descriptor
        # route's relative path may end in .json too (``…/descriptor/tests/job.json``), and
        # that is a TRS path with its own index.json.
        if segments[-1].endswith(".json") and "descriptor" not in segments[:-1]:
            return None
        stem = f"{base}/{path}" if path else base
        return [f"{stem}/{INDEX}", stem]

    async def get(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        accept: str = "application/json",
        ok_404: bool = False,
        validators: Validators | None = None,
        purpose: Purpose = "api",
    ) -> Response | None:
        """GET the tree's document for *url* (see the module docstring); other URLs as they
        are."""
        candidates = self.tree_urls(url)
        if candidates is None:
            return await super().get(
                url,
                params=params,
                accept=accept,
                ok_404=ok_404,
                validators=validators,
                purpose=purpose,
            )
        for candidate in candidates:
            response = await super().get(
                candidate, accept=accept, ok_404=True, validators=validators, purpose=purpose
            )
            if response is not None and (response.not_modified or not _is_html(response)):
                return response
        if ok_404:
            return None
        tried = " or ".join(candidates)
        raise UpstreamHTTPError(f"HTTP 404 from {tried}", url=candidates[0], status=404)


def same_origin(url: str, base: str) -> bool:
    """Whether *url* is served by the host (scheme, name and port) of *base*."""
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme.lower(), a.netloc.lower()) == (b.scheme.lower(), b.netloc.lower())
