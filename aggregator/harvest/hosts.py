"""Files on hosts other than the upstream's own (Zenodo, raw GitHub …).

Static trees and some registries list file contents at absolute URLs on third-party hosts.
Those hosts fail independently of the upstream (Zenodo rate-limits and goes down), so their
failures are errors of single files: they never count toward the upstream's
``abort_after_failures``, never stop a tool's metadata and primary descriptor from being
published, and are retried on the next run (a tool with file errors is fetched again). After
:data:`GIVE_UP_AFTER` failures in a row on one host the run stops asking it, and the files left
are reported as skipped. Each run records, per host, how many files it fetched, failed and
skipped, and the last error.

No credentials are ever sent to these hosts, and which of them may be fetched at all is the
upstream's egress policy (``egress``): public addresses, or hosts the operator listed in
``file_hosts``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import structlog

from aggregator.config import UpstreamConfig
from aggregator.errors import UpstreamError, UpstreamUnavailable
from aggregator.harvest.client import Traffic, UpstreamClient
from aggregator.harvest.static import same_origin

log = structlog.get_logger()

#: Failures in a row (after retries) after which a run stops fetching from one host.
GIVE_UP_AFTER: Final = 3
#: Retries of one file on a third-party host: the next run is the real retry.
FILE_RETRIES: Final = 1


class HostGivenUp(UpstreamUnavailable):
    """The run stopped fetching from this host after it failed too many times in a row."""


@dataclasses.dataclass(slots=True)
class HostStats:
    """How one third-party host fared in one run."""

    fetched: int = 0
    failed: int = 0
    skipped: int = 0
    failures_in_a_row: int = 0
    last_error: str | None = None

    def summary(self) -> dict[str, Any]:
        """The run record's view."""
        return {
            "fetched": self.fetched,
            "failed": self.failed,
            "skipped": self.skipped,
            "last_error": self.last_error,
        }


class FileHosts:
    """Fetches file contents for one run of *upstream*, sending URLs on the upstream's own
    origin through *client* and every other URL through a client of its own."""

    def __init__(
        self, session: aiohttp.ClientSession, upstream: UpstreamConfig, client: UpstreamClient
    ) -> None:
        self.upstream = upstream
        self.client = client
        others = dataclasses.replace(
            upstream, abort_after_failures=0, retries=min(upstream.retries, FILE_RETRIES)
        )
        self.foreign_client = UpstreamClient(session, others, None, traffic=client.traffic)
        self.stats: dict[str, HostStats] = {}

    @property
    def traffic(self) -> Traffic:
        """Requests and bytes of the run, both clients together."""
        return self.client.traffic

    def is_foreign(self, url: str) -> bool:
        """Whether *url* is on a host other than the upstream's."""
        return not same_origin(url, self.upstream.url)

    async def fetch(self, url: str) -> bytes:
        """The bytes at *url*; raises UpstreamError (HostGivenUp once its host is given up)."""
        if not self.is_foreign(url):
            response = await self.client.get(url, accept="text/plain, */*", purpose="file")
            assert response is not None
            return response.body
        host = (urlsplit(url).hostname or "").lower()
        stats = self.stats.setdefault(host, HostStats())
        if stats.failures_in_a_row >= GIVE_UP_AFTER:
            stats.skipped += 1
            raise HostGivenUp(
                f"not fetched: {host} failed {stats.failures_in_a_row} times in a row in this "
                f"run (last: {stats.last_error})",
                url=url,
            )
        try:
            response = await self.foreign_client.get(url, accept="text/plain, */*", purpose="file")
        except UpstreamError as e:
            stats.failed += 1
            stats.last_error = str(e)
            if isinstance(e, UpstreamUnavailable):
                stats.failures_in_a_row += 1
                if stats.failures_in_a_row == GIVE_UP_AFTER:
                    log.warning("file_host_given_up", host=host, last_error=str(e))
            raise
        assert response is not None
        stats.fetched += 1
        stats.failures_in_a_row = 0
        return response.body

    async def close(self) -> None:
        """Release the connections of the client for other hosts."""
        await self.foreign_client.close()

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per host: files fetched, failed, skipped, the last error."""
        return {host: s.summary() for host, s in sorted(self.stats.items())}
