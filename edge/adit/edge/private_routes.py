"""Private-network (IP) routes in memory: which tunnel serves a private address.

What the data plane asks per flow: "account A's client, on virtual network V (or the account's
default one), wants to reach 10.1.2.3: which tunnel?" The answer is Cloudflare's rule: the
routes of that virtual network only, longest prefix wins (``10.1.0.0/16`` over ``10.0.0.0/8``
for ``10.1.2.3``). Accounts never see each other's routes: a table is keyed by account tag and
virtual network, so another account's virtual network ID finds nothing.

A :class:`PrivateRouteTable` is an immutable snapshot. Each (account, virtual network) keeps,
per address family, one dict per prefix length present, keyed by the address's top bits; a
lookup probes those dicts from the longest length down, so it costs at most one dict probe per
distinct prefix length in use (33 for IPv4, 129 for IPv6 at worst), never a query. The store
rebuilds and swaps it as :mod:`adit.edge.live_table` describes.

IPv4-mapped IPv6 addresses (``::ffff:10.1.2.3``, what a dual-stack socket reports for an IPv4
peer) are looked up as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from adit.edge.database import Database
from adit.edge.live_table import LiveTable
from adit.protocol.cidr import IPAddress, IPNetwork

__all__ = [
    "PRIVATE_ROUTES_COUNTER",
    "LivePrivateRoutes",
    "PrivateRoute",
    "PrivateRouteTable",
]

#: The store's counter of changes to IP routes and virtual networks (a ``counters`` row).
PRIVATE_ROUTES_COUNTER = "private_routes"

#: Per prefix length, longest first: the routes keyed by their network's top ``length`` bits.
_Prefixes = tuple[tuple[int, Mapping[int, "PrivateRoute"]], ...]


class PrivateRoute(NamedTuple):
    """One live IP route: where a network of a virtual network goes."""

    route_id: uuid.UUID
    network: IPNetwork
    tunnel_id: uuid.UUID


@dataclass(frozen=True)
class _VnetRoutes:
    v4: _Prefixes = ()
    v6: _Prefixes = ()

    @classmethod
    def build(cls, routes: Iterable[PrivateRoute]) -> _VnetRoutes:
        by_family: dict[int, dict[int, dict[int, PrivateRoute]]] = {4: {}, 6: {}}
        for route in routes:
            net = route.network
            key = int(net.network_address) >> (net.max_prefixlen - net.prefixlen)
            by_family[net.version].setdefault(net.prefixlen, {})[key] = route
        return cls(
            v4=tuple(sorted(by_family[4].items(), reverse=True)),
            v6=tuple(sorted(by_family[6].items(), reverse=True)),
        )

    def find(self, ip: IPAddress) -> PrivateRoute | None:
        prefixes, bits = (self.v4, 32) if ip.version == 4 else (self.v6, 128)
        value = int(ip)
        for length, routes in prefixes:
            route = routes.get(value >> (bits - length))
            if route is not None:
                return route
        return None


@dataclass(frozen=True)
class PrivateRouteTable:
    """Every account's live IP routes; ``version`` is the store's counter it was built from."""

    version: int = -1
    #: The default virtual network of each account that has one.
    defaults: Mapping[str, uuid.UUID] = field(default_factory=dict)
    vnets: Mapping[tuple[str, uuid.UUID], _VnetRoutes] = field(default_factory=dict)
    size: int = 0

    @classmethod
    def build(
        cls,
        version: int,
        defaults: Mapping[str, uuid.UUID],
        routes: Iterable[tuple[str, uuid.UUID, PrivateRoute]],
    ) -> PrivateRouteTable:
        """A table of ``(account_tag, virtual_network_id, route)`` triples; at most one route
        per network of a virtual network (the store's rule)."""
        grouped: dict[tuple[str, uuid.UUID], list[PrivateRoute]] = {}
        for account_tag, vnet_id, route in routes:
            grouped.setdefault((account_tag, vnet_id), []).append(route)
        vnets = {key: _VnetRoutes.build(found) for key, found in grouped.items()}
        return cls(version, dict(defaults), vnets, sum(map(len, grouped.values())))

    def __len__(self) -> int:
        return self.size

    def find(
        self, account_tag: str, ip: IPAddress, vnet_id: uuid.UUID | None = None
    ) -> PrivateRoute | None:
        """The most specific route of the account's virtual network ``vnet_id`` (its default
        one when None) that holds ``ip``, or None."""
        if vnet_id is None:
            vnet_id = self.defaults.get(account_tag)
            if vnet_id is None:
                return None
        routes = self.vnets.get((account_tag, vnet_id))
        if routes is None:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return routes.find(ip)


def _load(db: sqlite3.Connection, version: int) -> PrivateRouteTable:
    defaults = {
        tag: uuid.UUID(vnet)
        for tag, vnet in db.execute(
            "SELECT account_tag, id FROM virtual_networks"
            " WHERE is_default = 1 AND deleted_at IS NULL"
        )
    }
    rows = db.execute(
        "SELECT r.account_tag, r.virtual_network_id, r.id, r.network, r.tunnel_id"
        " FROM ip_routes r JOIN tunnels t ON t.id = r.tunnel_id"
        " WHERE r.deleted_at IS NULL AND t.deleted_at IS NULL"
    ).fetchall()
    return PrivateRouteTable.build(
        version,
        defaults,
        (
            (
                tag,
                uuid.UUID(vnet),
                PrivateRoute(uuid.UUID(rid), ipaddress.ip_network(network), uuid.UUID(tid)),
            )
            for tag, vnet, rid, network, tid in rows
        ),
    )


class LivePrivateRoutes(LiveTable[PrivateRouteTable]):
    """The current :class:`PrivateRouteTable` of a store's database (:class:`LiveTable`)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db, PRIVATE_ROUTES_COUNTER, _load, "private routes")

    def find(
        self, account_tag: str, ip: IPAddress, vnet_id: uuid.UUID | None = None
    ) -> PrivateRoute | None:
        """:meth:`PrivateRouteTable.find` on the current table (loaded on first use)."""
        return self.current().find(account_tag, ip, vnet_id)
