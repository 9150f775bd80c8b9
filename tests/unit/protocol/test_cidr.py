"""CIDR networks and addresses as users type them for IP routes (adit.protocol.cidr)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adit.protocol.cidr import (
    HostBitsSet,
    InvalidDestination,
    InvalidNetwork,
    parse_address,
    parse_destination,
    parse_network,
)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("10.1.0.0/16", "10.1.0.0/16"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("192.168.1.7/32", "192.168.1.7/32"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("2001:0db8:0000::/48", "2001:db8::/48"),
        ("::/0", "::/0"),
        ("fd00::1/128", "fd00::1/128"),
        ("10.0.0.0/008", "10.0.0.0/8"),  # Go's ParseCIDR takes leading zeros in the length
        ("10.0.0.0/00000008", "10.0.0.0/8"),
    ],
)
def test_networks_parse_to_one_spelling(text: str, canonical: str) -> None:
    assert parse_network(text).compressed == canonical


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.0",  # no prefix length: Go's ParseCIDR refuses, Python would take a /32
        "10.0.0.0/",
        "10.0.0.0/255.0.0.0",  # a netmask, not a length
        "10.0.0.0/33",
        "::/129",
        "10.0.0.0/-8",
        "10.0.0.0/+8",
        "10.0.0.0/８",  # a fullwidth digit
        "10.0.0.0/1000",
        "010.0.0.0/8",  # leading zeros in an IPv4 address
        "fe80::%eth0/64",
        "fe80::/64%eth0",
        "example.com/8",
        " 10.0.0.0/8",
        "",
    ],
)
def test_what_go_refuses_is_refused_in_go_words(text: str) -> None:
    with pytest.raises(InvalidNetwork) as caught:
        parse_network(text)
    assert not isinstance(caught.value, HostBitsSet)
    assert str(caught.value) == f"invalid CIDR address: {text}"


@pytest.mark.parametrize(
    ("text", "network", "single"),
    [
        ("10.1.2.3/16", "10.1.0.0/16", "10.1.2.3/32"),
        ("10.0.0.1/8", "10.0.0.0/8", "10.0.0.1/32"),
        ("2001:db8::1/32", "2001:db8::/32", "2001:db8::1/128"),
    ],
)
def test_host_bits_are_refused_naming_both_fixes(text: str, network: str, single: str) -> None:
    with pytest.raises(HostBitsSet) as caught:
        parse_network(text)
    assert str(caught.value) == (
        f"{text} has host bits set: use {network} for the whole network, or {single} for the "
        "one address"
    )
    assert caught.value.network == ipaddress.ip_network(network)


@given(st.ip_addresses(), st.integers(0, 128))
def test_a_network_parses_iff_its_host_bits_are_clear(address: object, length: int) -> None:
    assert isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
    length = min(length, address.max_prefixlen)
    text = f"{address}/{length}"
    network = ipaddress.ip_network(text, strict=False)
    if network.network_address == address:
        assert parse_network(text) == network
    else:
        with pytest.raises(HostBitsSet):
            parse_network(text)


def test_addresses_parse_as_go_parse_ip_takes_them() -> None:
    assert parse_address("10.1.2.3") == ipaddress.ip_address("10.1.2.3")
    assert parse_address("2001:DB8::1") == ipaddress.ip_address("2001:db8::1")
    for bad in ("10.1.2", "010.1.2.3", "fe80::1%eth0", "[::1]", "10.1.2.3/32", ""):
        with pytest.raises(ValueError, match=r"does not appear|is not an IP"):
            parse_address(bad)


# -- a flow's destination -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address", "port"),
    [
        ("10.1.2.3:22", "10.1.2.3", 22),
        ("127.0.0.1:65535", "127.0.0.1", 65535),
        ("[fd00::1]:53", "fd00::1", 53),
        ("[FD00:0::1]:1", "fd00::1", 1),
        ("[::ffff:10.1.2.3]:53", "10.1.2.3", 53),  # an IPv4 peer as a dual-stack socket has it
    ],
)
def test_destinations_are_an_address_and_a_port(text: str, address: str, port: int) -> None:
    assert parse_destination(text) == (ipaddress.ip_address(address), port)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("10.1.2.3", "is not IP:PORT"),
        ("fd00::1:22", "is not IP:PORT"),  # IPv6 without brackets is ambiguous
        ("db.corp:5432", "'db.corp' is not an IP address (names are not resolved)"),
        ("010.1.2.3:22", "is not an IP address"),
        ("[fe80::1%eth0]:22", "is not an IP address"),
        ("10.1.2.3:0", "no port from 1 to 65535"),
        ("10.1.2.3:65536", "no port from 1 to 65535"),
        ("10.1.2.3:+22", "no port from 1 to 65535"),
        ("10.1.2.3:２２", "no port from 1 to 65535"),  # fullwidth digits
        ("10.1.2.3:0000022", "no port from 1 to 65535"),
        ("10.1.2.3:", "no port from 1 to 65535"),
        ("0.0.0.0:22", "not one host's address"),
        ("[::]:22", "not one host's address"),
        ("224.0.0.251:5353", "not one host's address"),
        ("[ff02::fb]:5353", "not one host's address"),
        ("255.255.255.255:67", "not one host's address"),
        ("", "is not IP:PORT"),
    ],
)
def test_bad_destinations_are_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(InvalidDestination) as caught:
        parse_destination(text)
    assert says in str(caught.value)


@given(st.ip_addresses(), st.integers(1, 65535))
def test_every_unicast_address_and_port_round_trips(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    if address.is_unspecified or address.is_multicast or str(address) == "255.255.255.255":
        return
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return
    text = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    assert parse_destination(text) == (address, port)
