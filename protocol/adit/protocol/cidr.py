"""IP networks and addresses as users type them for private-network routes.

One parser for the CLI (``adit tunnel route ip add 10.1.0.0/16 ...``) and the edge's API, so a
refusal reads the same from both. It accepts what Go's ``net.ParseCIDR`` and ``net.ParseIP``
accept, which is what cloudflared sends: an IPv4 or IPv6 address without a zone, a slash, a
decimal prefix length.

A private-network flow's destination (``adit access tcp --destination 10.1.2.3:22``, and the
edge's ``private/tcp?destination=``) is an address and a port, parsed here too
(:func:`parse_destination`): the same mistake reads the same on the client and the edge.

One deliberate difference: ``net.ParseCIDR`` clears host bits without a word (cloudflared turns
``10.1.2.3/16`` into a route for all of ``10.1.0.0/16``). A user who typed an address with a
prefix meant either the network or the one address; routing 65,536 addresses when one was
meant is worse than a refusal that names both fixes, so :class:`HostBitsSet` does.
"""

from __future__ import annotations

import ipaddress

from adit.protocol.hostnames import AddressError, split_host_port

__all__ = [
    "HostBitsSet",
    "IPAddress",
    "IPNetwork",
    "InvalidDestination",
    "InvalidNetwork",
    "parse_address",
    "parse_destination",
    "parse_network",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class InvalidNetwork(ValueError):
    """Not a CIDR network; ``str()`` is Go's wording (``invalid CIDR address: X``) or, for
    :class:`HostBitsSet`, the fix."""


class InvalidDestination(ValueError):
    """Not ``IP:PORT`` (a flow's destination); ``str()`` says what is wrong and what fits."""


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


_DESTINATION_FORM = "IP:PORT, e.g. 10.1.2.3:22 or [fd00::1]:22"


def parse_destination(text: str) -> tuple[IPAddress, int]:
    """A private-network flow's destination: an IP address (IPv6 in brackets) and a port from
    1 to 65535. Names are refused, not resolved: a route matches addresses, and the client
    side has no resolver of the private network to ask.

    Unspecified, multicast and broadcast addresses are refused too: no route should carry a
    connection to "any address" or to a group (the connector would dial its own host for
    ``0.0.0.0``). Raises :class:`InvalidDestination`.
    """
    try:
        host, port_text = split_host_port(text)
    except AddressError:
        raise InvalidDestination(f"destination {text!r} is not {_DESTINATION_FORM}") from None
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        raise InvalidDestination(f"destination {text!r} has no port from 1 to 65535")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise InvalidDestination(f"destination {text!r} has no port from 1 to 65535")
    try:
        address = parse_address(host)
    except ValueError:
        raise InvalidDestination(
            f"destination {text!r} is not {_DESTINATION_FORM}: {host!r} is not an IP address "
            "(names are not resolved)"
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # What a dual-stack socket reports for an IPv4 peer: the route and the dial are IPv4.
        address = address.ipv4_mapped
    if (
        address.is_unspecified
        or address.is_multicast
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise InvalidDestination(
            f"destination {text!r}: {address} is not one host's address (unspecified, "
            "multicast or broadcast)"
        )
    return address, port
