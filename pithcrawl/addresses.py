"""Which network addresses a mirror nobody configured may make pithcrawl connect to.

Owns the predicate (`is_public_address`), the resolver that keeps only public addresses
at connect time (`PublicResolver`, against DNS rebinding) and the recognition of address
literals (which aiohttp connects to without a resolver). `fetch.client` applies them to
GETs for discovered mirrors; `mirrors` applies the predicate when a mirror is discovered.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

#: IPv6 ranges that carry an IPv4 address a gateway may deliver to a private network:
#: NAT64 (RFC 6052, 8215), 6to4, Teredo and the deprecated IPv4-compatible form.
_EMBEDS_IPV4 = tuple(
    ipaddress.ip_network(n)
    for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32", "::/96")
)


def is_public_address(address: str) -> bool:
    """A globally routable unicast address (not loopback, private, link-local, …, nor an
    IPv6 form that may carry traffic to an IPv4 address behind a gateway)."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and any(ip in net for net in _EMBEDS_IPV4):
        return False
    return ip.is_global and not ip.is_multicast


def literal_address(host: str | None) -> str | None:
    """`host` when it is an IP address literal (no name to resolve), else None."""
    text = (host or "").strip("[]")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return None
    return text


class PublicResolver(AbstractResolver):
    """aiohttp's resolver, keeping public addresses only.

    The check that a discovered mirror's name is public happens before the GET; this
    makes the connection itself unable to reach anything else (DNS rebinding)."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        public = [r for r in found if is_public_address(r["host"])]
        if not public:
            addresses = ", ".join(sorted({r["host"] for r in found}))
            # With an errno, aiohttp keeps the text (as strerror) in the error it raises.
            raise OSError(errno.EACCES, f"{host} resolves to no public address ({addresses})")
        return public

    async def close(self) -> None:
        await self._inner.close()
