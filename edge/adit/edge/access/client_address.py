"""The visitor's address: the connection's peer, or, when the peer is one of the operator's
``--trusted-proxies``, the address that proxy says it was asked by (``X-Forwarded-For``).

Only a trusted peer's header counts: anyone can send ``X-Forwarded-For``, so believing it from
everyone would let a visitor choose their own country and pass ``ip`` rules. Of the header's
addresses the right-most one that is not itself a trusted proxy is the visitor (each proxy
appends the address it was asked by; what is left of that is the visitor's own say).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

__all__ = ["TrustedProxies", "parse_trusted_proxies"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Addresses of one X-Forwarded-For header looked at, at most (right to left).
_MAX_HOPS = 16


def parse_trusted_proxies(
    values: Iterable[str], flag: str = "--trusted-proxies"
) -> tuple[Network, ...]:
    """The networks of ``CIDR,CIDR...`` values; ValueError naming ``flag`` for a bad one."""
    networks: list[Network] = []
    for value in values:
        for raw in value.split(","):
            part = raw.strip()
            if not part:
                continue
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(
                    f"{flag}: {part!r} is not an address or CIDR range (like 10.0.0.0/8)"
                ) from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]  # [v6]:port
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]  # v4:port
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class TrustedProxies:
    """``(peer, request headers) → the visitor's address``."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self._networks = tuple(networks)

    def trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self._networks)

    def __call__(self, peer: str, headers: Sequence[tuple[bytes, bytes]]) -> str:
        if not self._networks:
            return peer
        address = _address(peer)
        if address is None or not self.trusted(address):
            return peer
        hops: list[str] = []
        for name, value in headers:
            if name.lower() == b"x-forwarded-for":
                hops += value.decode("latin-1").split(",")
        for hop in reversed(hops[-_MAX_HOPS:]):
            forwarded = _address(hop)
            if forwarded is None:
                return peer  # a garbled chain: the proxy itself is all that is known
            if not self.trusted(forwarded):
                return str(forwarded)
        return peer
