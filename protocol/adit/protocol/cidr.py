"""IP networks and addresses as users type them for private-network routes.

One parser for the CLI (``adit tunnel route ip add 10.1.0.0/16 ...``) and the edge's API, so a
refusal reads the same from both. It accepts what Go's ``net.ParseCIDR`` and ``net.ParseIP``
accept, which is what cloudflared sends: an IPv4 or IPv6 address without a zone, a slash, a
decimal prefix length.

One deliberate difference: ``net.ParseCIDR`` clears host bits without a word (cloudflared turns
``10.1.2.3/16`` into a route for all of ``10.1.0.0/16``). A user who typed an address with a
prefix meant either the network or the one address; routing 65,536 addresses when one was
meant is worse than a refusal that names both fixes, so :class:`HostBitsSet` does.
"""

from __future__ import annotations

import ipaddress

__all__ = [
    "HostBitsSet",
    "IPAddress",
    "IPNetwork",
    "InvalidNetwork",
    "parse_address",
    "parse_network",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class InvalidNetwork(ValueError):
    """Not a CIDR network; ``str()`` is Go's wording (``invalid CIDR address: X``) or, for
    :class:`HostBitsSet`, the fix."""


class HostBitsSet(InvalidNetwork):
    """An address with a prefix length (``10.1.2.3/16``) where a network was asked for."""

    def __init__(self, text: str, network: IPNetwork, address: IPAddress) -> None:
        super().__init__(
            f"{text} has host bits set: use {network} for the whole network, or "
            f"{address}/{address.max_prefixlen} for the one address"
        )
        self.network = network
        self.address = address


def parse_address(text: str) -> IPAddress:
    """An IPv4 or IPv6 address as ``net.ParseIP`` takes it (no zone, no brackets, no
    leading zeros in IPv4); :class:`ValueError` otherwise."""
    if "%" in text:  # Python takes a scope ("fe80::1%eth0"), Go does not
        raise ValueError(f"{text!r} is not an IP address")
    return ipaddress.ip_address(text)


def parse_network(text: str) -> IPNetwork:
    """The network ``text`` names (``10.1.0.0/16``, ``2001:db8::/32``), host bits clear.

    Raises :class:`InvalidNetwork` for anything ``net.ParseCIDR`` refuses (no prefix length, a
    netmask instead of one, a zone, a length beyond the family's) and :class:`HostBitsSet`
    for an address inside the network instead of the network's own.
    """
    address_text, slash, length = text.partition("/")
    # Go takes any number of leading zeros in the length; more than three digits after them
    # is never a length (and int() of a long string is slow).
    if not slash or not (length.isascii() and length.isdigit()) or len(length.lstrip("0")) > 3:
        raise InvalidNetwork(f"invalid CIDR address: {text}")
    try:
        address = parse_address(address_text)
    except ValueError:
        raise InvalidNetwork(f"invalid CIDR address: {text}") from None
    prefix = int(length)
    if prefix > address.max_prefixlen:
        raise InvalidNetwork(f"invalid CIDR address: {text}")
    network = ipaddress.ip_network((address, prefix), strict=False)
    if network.network_address != address:
        raise HostBitsSet(text, network, address)
    return network
