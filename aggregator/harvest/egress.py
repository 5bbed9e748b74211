"""Where one upstream's harvest may send requests, and with which credentials.

An upstream's credentials go to its own origin only (scheme, host and port). API requests
(listing pages, ``next_page``, versions, descriptors) stay on that origin; redirects may also
lead to the operator's ``redirect_hosts``, and file URLs to any public host, both without
credentials. Hosts other than the upstream's own and those the operator listed in
``file_hosts`` or ``redirect_hosts`` are reached only at public addresses: the address check
happens when a name is resolved for the connection (``PublicResolver``), so the address
checked is the address connected to, and DNS rebinding cannot get around it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from aggregator.errors import UpstreamError

Purpose = Literal["api", "redirect", "file"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class Refused(UpstreamError):
    """The harvest may not fetch this URL (another origin, scheme or a non-public address)."""


class RefusedAddress(OSError):
    """A host name resolved only to addresses the harvest may not connect to."""


@dataclass(frozen=True, slots=True)
class Origin:
    """The scheme, host and port of a URL (default ports filled in, host lowercased)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin | None:
        """The origin of *url*; None when it is not an http(s) URL with a host."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            return None
        return cls(scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme])

    def __str__(self) -> str:
        return f"{self.scheme}://{_bracketed(self.host)}:{self.port}"


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a URL may be fetched and whether the upstream's credentials go with it.

    Attributes:
        credentials: Send the upstream's token (only to its own origin).
        trusted_host: The host is the upstream's own or one the operator listed, so any
            address it resolves to may be connected to; otherwise only public addresses.
    """

    credentials: bool
    trusted_host: bool


_OWN_ORIGIN: Final = Decision(credentials=True, trusted_host=True)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def is_public(address: IPAddress) -> bool:
    """Whether *address* is a public unicast address: not loopback, private, link-local,
    multicast, reserved or unspecified (an IPv4-mapped IPv6 address is judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _host_entries(entries: tuple[str, ...]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in entries:
        value = entry.strip().lower()
        names.add(value)
        with contextlib.suppress(ValueError):
            networks.append(ipaddress.ip_network(value.strip("[]"), strict=False))
    return frozenset(names), tuple(networks)


class EgressPolicy:
    """The rules for one upstream: *upstream_url* is its TRS base; *file_hosts* and
    *redirect_hosts* are the operator's allow-lists (host names, ``name:port``, IP addresses
    or networks such as ``10.0.0.0/8``)."""

    def __init__(
        self,
        upstream_url: str,
        *,
        file_hosts: tuple[str, ...] = (),
        redirect_hosts: tuple[str, ...] = (),
    ) -> None:
        origin = Origin.of(upstream_url)
        if origin is None:
            raise ValueError(f"not an http(s) URL: {upstream_url!r}")
        self.origin = origin
        # URLs that start with one of these are on the upstream's own origin, with nothing
        # between the authority and the path (no user-info): the usual case, told without
        # parsing (anything else is parsed below).
        authority = _bracketed(origin.host)
        self._own_prefixes = (f"{origin}/",) + (
            (f"{origin.scheme}://{authority}/",)
            if origin.port == _DEFAULT_PORTS[origin.scheme]
            else ()
        )
        self._file_names, self._file_networks = _host_entries(file_hosts)
        self._redirect_names, _ = _host_entries(redirect_hosts)

    def _listed(self, names: frozenset[str], o: Origin) -> bool:
        return o.host in names or f"{_bracketed(o.host)}:{o.port}" in names

    def decide(self, url: str, purpose: Purpose = "api") -> Decision:
        """Whether *url* may be fetched for *purpose*, and with the upstream's credentials.

        ``api``: only the upstream's own origin. ``redirect``: also the upstream's host on
        another scheme or port and ``redirect_hosts``. ``file``: any http(s) host. Raises
        Refused saying why not; a host that is neither the upstream's nor listed by the
        operator must also resolve to public addresses (see ``address_allowed``).
        """
        if url.startswith(self._own_prefixes):
            return _OWN_ORIGIN
        o = Origin.of(url)
        if o is None:
            raise Refused(f"refused {url!r}: only http(s) URLs are fetched", url=url)
        try:
            userinfo = urlsplit(url).username is not None
        except ValueError:
            userinfo = True
        if userinfo:
            raise Refused(f"refused a URL with user-info ({o}): credentials in URLs", url=url)
        if o == self.origin:
            return _OWN_ORIGIN
        own_host = o.host == self.origin.host
        if purpose == "api":
            raise Refused(
                f"refused {url}: it leaves the upstream's origin ({self.origin})", url=url
            )
        if purpose == "redirect":
            if own_host or self._listed(self._redirect_names, o):
                return Decision(credentials=False, trusted_host=True)
            raise Refused(f"redirect to another host ({url}) refused", url=url)
        trusted = (
            own_host or self._listed(self._file_names, o) or self._listed(self._redirect_names, o)
        )
        literal = _ip(o.host)
        if literal is not None and not trusted and not self.address_allowed(o.host, literal):
            raise Refused(
                f"refused {url}: {literal} is not a public address (allow it with file_hosts)",
                url=url,
            )
        return Decision(credentials=False, trusted_host=trusted)

    def address_allowed(self, host: str, address: IPAddress) -> bool:
        """Whether a connection for *host* may go to *address*."""
        if host.lower() == self.origin.host or host.lower() in self._file_names:
            return True
        if any(address in net for net in self._file_networks):
            return True
        return is_public(address)


class PublicResolver(AbstractResolver):
    """Resolves names like aiohttp's default resolver, keeping only the addresses *policy*
    allows for the name: a name resolving only to private addresses cannot be connected to."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of *host* the policy allows; RefusedAddress when there are none."""
        found = await self._inner.resolve(host, port, family)
        allowed = [
            r
            for r in found
            if (ip := _ip(r["host"])) is not None and self.policy.address_allowed(host, ip)
        ]
        if not allowed:
            addresses = ", ".join(sorted({r["host"] for r in found}))
            raise RefusedAddress(
                f"{host} resolves to no public address ({addresses}); allow it with file_hosts"
            )
        return allowed

    async def close(self) -> None:
        """Release the inner resolver."""
        await self._inner.close()
