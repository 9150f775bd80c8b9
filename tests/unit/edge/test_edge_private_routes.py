"""The in-memory private route table: longest prefix per account and virtual network."""

from __future__ import annotations

import ipaddress
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from adit.edge.private_routes import PrivateRoute, PrivateRouteTable
from adit.protocol.cidr import IPAddress, IPNetwork

ACCOUNT = "a" * 32
OTHER = "b" * 32
VNET = uuid.uuid4()


def route(network: str, tunnel: uuid.UUID | None = None) -> PrivateRoute:
    return PrivateRoute(uuid.uuid4(), ipaddress.ip_network(network), tunnel or uuid.uuid4())


def table(*routes: tuple[str, uuid.UUID, PrivateRoute]) -> PrivateRouteTable:
    return PrivateRouteTable.build(1, {ACCOUNT: VNET, OTHER: uuid.uuid4()}, routes)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def reference(routes: list[PrivateRoute], address: IPAddress) -> PrivateRoute | None:
    """The rule as Cloudflare states it: of the routes holding the address, the longest
    prefix."""
    holding = [r for r in routes if r.network.version == address.version and address in r.network]
    return max(holding, key=lambda r: r.network.prefixlen, default=None)


def test_the_longest_prefix_wins_whatever_the_order_of_the_routes() -> None:
    wide, mid, narrow, host = (
        route("10.0.0.0/8"),
        route("10.1.0.0/16"),
        route("10.1.2.0/24"),
        route("10.1.2.3/32"),
    )
    for order in ((wide, mid, narrow, host), (host, narrow, mid, wide)):
        found = table(*((ACCOUNT, VNET, r) for r in order))
        assert found.find(ACCOUNT, ip("10.1.2.3")) == host
        assert found.find(ACCOUNT, ip("10.1.2.4")) == narrow
        assert found.find(ACCOUNT, ip("10.1.3.4")) == mid
        assert found.find(ACCOUNT, ip("10.2.3.4")) == wide
        assert found.find(ACCOUNT, ip("11.0.0.1")) is None
    everything = route("0.0.0.0/0")
    assert table((ACCOUNT, VNET, everything)).find(ACCOUNT, ip("203.0.113.9")) == everything


def test_ipv4_and_ipv6_are_apart_and_mapped_addresses_are_ipv4() -> None:
    v4, v6 = route("0.0.0.0/0"), route("2001:db8::/32")
    found = table((ACCOUNT, VNET, v4), (ACCOUNT, VNET, v6))
    assert found.find(ACCOUNT, ip("2001:db8:1::5")) == v6
    assert found.find(ACCOUNT, ip("2001:db9::5")) is None  # 0.0.0.0/0 holds no IPv6 address
    assert found.find(ACCOUNT, ip("::ffff:10.1.2.3")) == v4  # what a dual-stack socket reports
    assert found.find(ACCOUNT, ip("10.1.2.3")) == v4


def test_virtual_networks_are_separate_routing_tables() -> None:
    staging = uuid.uuid4()
    prod_route, staging_route = route("10.0.0.0/8"), route("10.0.0.0/8")
    found = table((ACCOUNT, VNET, prod_route), (ACCOUNT, staging, staging_route))
    assert found.find(ACCOUNT, ip("10.1.2.3")) == prod_route  # the account's default
    assert found.find(ACCOUNT, ip("10.1.2.3"), VNET) == prod_route
    assert found.find(ACCOUNT, ip("10.1.2.3"), staging) == staging_route
    assert found.find(ACCOUNT, ip("10.1.2.3"), uuid.uuid4()) is None
    # The longest prefix is looked for in the chosen network only, never across networks.
    narrow = route("10.1.0.0/16")
    found = table((ACCOUNT, VNET, prod_route), (ACCOUNT, staging, narrow))
    assert found.find(ACCOUNT, ip("10.1.2.3")) == prod_route


def test_accounts_never_see_each_others_routes() -> None:
    mine = route("10.0.0.0/8")
    found = table((ACCOUNT, VNET, mine))
    assert found.find(OTHER, ip("10.1.2.3")) is None
    assert found.find(OTHER, ip("10.1.2.3"), VNET) is None  # even naming my network's ID
    assert found.find("c" * 32, ip("10.1.2.3")) is None  # no default network at all
    assert PrivateRouteTable().find(ACCOUNT, ip("10.1.2.3")) is None


# Few distinct addresses (10.x.0.y, 2001:db8::x), so that routes overlap and nest often.
v4_addresses = st.integers(0, 2**16 - 1).map(
    lambda n: ipaddress.IPv4Address(0x0A000000 | (n >> 8) << 16 | (n & 0xFF))
)
v6_addresses = st.integers(0, 2**16 - 1).map(lambda n: ipaddress.IPv6Address(0x2001_0DB8 << 96 | n))
v4_networks = st.builds(
    lambda a, length: ipaddress.ip_network((a, length), strict=False),
    v4_addresses,
    st.integers(0, 32),
)
v6_networks = st.builds(
    lambda a, length: ipaddress.ip_network((a, length), strict=False),
    v6_addresses,
    st.sampled_from([0, 16, 32, 96, 112, 120, 124, 127, 128]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(v4_networks, v6_networks), max_size=16, unique=True),
    st.one_of(v4_addresses, v6_addresses),
)
def test_lookup_equals_the_brute_force_reference(
    networks: list[IPNetwork], address: IPAddress
) -> None:
    routes = [PrivateRoute(uuid.uuid4(), n, uuid.uuid4()) for n in networks]
    found = table(*((ACCOUNT, VNET, r) for r in routes))
    assert found.find(ACCOUNT, address) == reference(routes, address)
    assert len(found) == len(routes)


def test_a_lookup_costs_one_probe_per_prefix_length_in_use() -> None:
    probes: list[int] = []

    class Counting(dict[int, PrivateRoute]):
        def get(self, key: int, default: PrivateRoute | None = None) -> PrivateRoute | None:  # type: ignore[override]
            probes.append(key)
            return super().get(key, default)

    routes = [route(f"10.0.0.0/{length}") for length in range(8, 33)]
    found = table(*((ACCOUNT, VNET, r) for r in routes))
    vnet = found.vnets[(ACCOUNT, VNET)]
    counted = type(vnet)(v4=tuple((length, Counting(d)) for length, d in vnet.v4))
    assert counted.find(ip("11.0.0.1")) is None
    assert len(probes) == len(routes)
