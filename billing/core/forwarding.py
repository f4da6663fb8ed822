"""Who and where a request came from: X-Forwarded-* believed only from the proxies in BILLING_TRUSTED_PROXIES.

Tornado's `xheaders=True` believes these headers from any peer, so a client could claim any address or scheme.
Here they count only when the direct peer is a trusted proxy: X-Forwarded-For is walked from the right past
trusted proxies to the first address that is not one (the client as the outermost trusted proxy saw it);
X-Forwarded-Proto and X-Forwarded-Host are taken as the nearest (trusted) proxy set them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_settings import NoDecode
from tornado.httputil import HTTPServerRequest

Network = IPv4Network | IPv6Network
# Clients cache it for a year; no includeSubDomains: other hosts of the domain are not ours to decide.
HSTS_VALUE = "max-age=31536000"
TRUSTED_PROXIES_SETTING = "trusted_proxies"  # the tornado.web.Application setting make_app fills
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
_SCHEMES = frozenset({"http", "https"})


def parse_trusted_proxies(value: Any) -> Any:
    """ "10.0.0.0/8, 127.0.0.1, ::1" -> networks; empty -> (). A bad entry (or host bits set) is refused."""
    if not isinstance(value, str):
        return value
    networks = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ip_network(entry))
        except ValueError as exc:
            raise ValueError(
                f"BILLING_TRUSTED_PROXIES: {entry!r} is not an IP address or CIDR network ({exc})"
            ) from exc
    return tuple(networks)


# The setting's type: a comma-separated string in the environment, a tuple of networks in Settings.
TrustedProxies = Annotated[tuple[Network, ...], NoDecode, BeforeValidator(parse_trusted_proxies)]


def _address(text: str) -> IPv4Address | IPv6Address | None:
    try:
        address = ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return address


def _trusted(address: IPv4Address | IPv6Address | None, networks: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in networks)


def _last(values: str) -> str:
    return values.rsplit(",", 1)[-1].strip()


@dataclass(frozen=True, slots=True)
class Origin:
    """The believed client address, scheme and host of one request."""

    remote_ip: str
    scheme: str
    host: str

    @property
    def https(self) -> bool:
        return self.scheme == "https"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"


def request_origin(request: HTTPServerRequest, networks: tuple[Network, ...]) -> Origin:
    """The request's Origin: its own peer, protocol and Host unless the peer is a trusted proxy."""
    peer = request.remote_ip or ""
    if not networks or not _trusted(_address(peer), networks):
        return Origin(peer, request.protocol, request.host)
    headers = request.headers
    client = peer
    for hop in reversed(headers.get("X-Forwarded-For", "").split(",")):
        address = _address(hop)
        if address is None:  # an unparsable hop: nothing left of it can be believed
            break
        client = str(address)
        if not _trusted(address, networks):
            break
    scheme = request.protocol
    forwarded_scheme = _last(headers.get("X-Forwarded-Proto", "")).lower()
    if scheme != "https" and forwarded_scheme in _SCHEMES:
        scheme = forwarded_scheme
    host = request.host
    forwarded_host = _last(headers.get("X-Forwarded-Host", ""))
    if _HOST.fullmatch(forwarded_host):
        host = forwarded_host
    return Origin(client, scheme, host)
