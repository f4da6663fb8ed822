"""Where a webhook may point: http or https, at public addresses only (unless BILLING_WEBHOOK_ALLOW_PRIVATE).

Checked twice: when a webhook is stored (its host resolved then) and at every connection (GuardedResolver, the
delivery client's resolver), so a name that later resolves elsewhere (DNS rebinding) reaches no private
address either.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from tornado.netutil import DefaultLoopResolver, Resolver

from billing.core.errors import ApiError

# host, port -> the addresses it resolves to
Resolve = Callable[[str, int], Awaitable[list[str]]]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def public(address: Address) -> bool:
    """A global unicast address: not loopback, private, link-local, unspecified, shared (100.64/10), reserved,
    documentation or multicast (an IPv4-mapped IPv6 address is judged as its IPv4 one)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def resolve(host: str, port: int) -> list[str]:
    """The addresses of a host name (or the literal address itself), by the system resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


async def check_url(url: str, allow_private: bool, lookup: Resolve = resolve) -> None:
    """ApiError webhook_url_not_allowed when the URL's host is or resolves to a non-public address (unless
    allowed), validation_error when it does not resolve. The URL's form is the request model's check."""
    if allow_private:
        return
    host, port = host_port(url)
    try:
        addresses = await lookup(host, port)
    except OSError as exc:
        raise ApiError(
            "validation_error", "Request is not valid", [{"field": "url", "message": f"host does not resolve: {exc}"}]
        ) from None
    refused = sorted({a for a in addresses if not public(ipaddress.ip_address(a.split("%", 1)[0]))})
    if refused or not addresses:
        raise ApiError(
            "webhook_url_not_allowed",
            f"{host} resolves to {', '.join(refused) or 'nothing'}: not a public address "
            "(BILLING_WEBHOOK_ALLOW_PRIVATE=true allows loopback, private and link-local ones)",
        )


class AddressNotAllowed(OSError):
    """A delivery's host resolved to no public address."""


class GuardedResolver(Resolver):
    """The delivery client's resolver: the system's answers, non-public addresses left out unless allowed."""

    def initialize(self, allow_private: bool = False, **kwargs: Any) -> None:
        self.allow_private = allow_private
        self.inner = DefaultLoopResolver()

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        found = await self.inner.resolve(host, port, family)
        if self.allow_private:
            return found
        kept = [(fam, addr) for fam, addr in found if public(ipaddress.ip_address(str(addr[0]).split("%", 1)[0]))]
        if not kept:
            raise AddressNotAllowed(f"{host} resolves to no public address")
        return kept

    def close(self) -> None:
        self.inner.close()
