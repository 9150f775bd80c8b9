"""Virtual networks and IP routes in the store: Cloudflare's rules, and the lookup's upkeep."""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adit.edge import store as store_module
from adit.edge.private_networks import DEFAULT_VNET_COMMENT
from adit.edge.store import (
    InvalidName,
    IpRouteConflict,
    IpRouteNotFound,
    NetworkRefused,
    Store,
    TunnelDeleted,
    TunnelHasRoutes,
    TunnelNotFound,
    VirtualNetworkInUse,
    VirtualNetworkIsDefault,
    VirtualNetworkNameConflict,
    VirtualNetworkNotFound,
)
from adit.protocol.cidr import IPAddress


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open_in(tmp_path / "state")
    yield s
    s.close()


@pytest.fixture
def account(store: Store) -> str:
    return store.create_account("acme").tag


def test_the_default_network_is_made_on_demand_and_takes_routes_without_one(
    store: Store, account: str
) -> None:
    assert store.private.list_vnets(account) == []
    assert store.private.default_vnet_id(account) is None
    tunnel = store.create_tunnel(account, "t")
    route = store.private.add_route(account, "10.0.0.0/8", tunnel.id, comment="office")
    [default] = store.private.list_vnets(account)
    assert (default.name, default.comment, default.is_default) == (
        "default",
        DEFAULT_VNET_COMMENT,
        True,
    )
    assert route.virtual_network_id == default.id
    assert store.private.default_vnet(account) == default  # made once
    assert store.private_route(account, ip("10.9.8.7")) == tunnel.id
    assert store.private_route(account, ip("10.9.8.7"), default.id) == tunnel.id


def test_a_network_is_routed_once_per_virtual_network(store: Store, account: str) -> None:
    first, second = store.create_tunnel(account, "a"), store.create_tunnel(account, "b")
    store.private.add_route(account, "10.0.0.0/8", first.id)
    with pytest.raises(IpRouteConflict, match="already have a route defined for this exact IP"):
        store.private.add_route(account, "10.0.0.0/8", second.id)
    with pytest.raises(IpRouteConflict):
        store.private.add_route(account, "10.0.0.0/8", first.id)
    # The same network in another virtual network is what virtual networks are for.
    staging = store.private.create_vnet(account, "staging")
    store.private.add_route(account, "10.0.0.0/8", second.id, vnet_id=staging.id)
    assert store.private_route(account, ip("10.1.1.1")) == first.id
    assert store.private_route(account, ip("10.1.1.1"), staging.id) == second.id
    # Overlapping networks in one virtual network are allowed: the longest prefix wins.
    store.private.add_route(account, "10.1.0.0/16", second.id)
    store.private.add_route(account, "2001:db8::/32", second.id)
    assert store.private_route(account, ip("10.1.1.1")) == second.id
    assert store.private_route(account, ip("10.2.1.1")) == first.id
    assert store.private_route(account, ip("2001:db8::7")) == second.id
    assert store.private_route(account, ip("2001:db9::7")) is None


def test_a_deleted_route_frees_its_network(store: Store, account: str) -> None:
    tunnel = store.create_tunnel(account, "t")
    route = store.private.add_route(account, "192.168.0.0/24", tunnel.id)
    assert store.private_route(account, ip("192.168.0.1")) == tunnel.id
    deleted = store.private.delete_route(account, route.id)
    assert deleted.deleted_at is not None
    assert store.private_route(account, ip("192.168.0.1")) is None
    with pytest.raises(IpRouteNotFound, match="isn't routed"):
        store.private.delete_route(account, route.id)
    again = store.private.add_route(account, "192.168.0.0/24", tunnel.id)
    assert store.private_route(account, ip("192.168.0.1")) == tunnel.id
    assert [r.id for r in store.private.list_routes(account, is_deleted=True)] == [route.id]
    assert [r.id for r in store.private.list_routes(account, is_deleted=False)] == [again.id]
    assert len(store.private.list_routes(account)) == 2


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ("10.1.2.3/16", "host bits set: use 10.1.0.0/16 for the whole network, or 10.1.2.3/32"),
        ("10.0.0.0", "invalid CIDR address: 10.0.0.0"),
        ("10.0.0.0/33", "invalid CIDR address"),
        ("2001:db8::1/32", "use 2001:db8::/32"),
    ],
)
def test_networks_that_are_not_networks_are_refused(
    store: Store, account: str, network: str, message: str
) -> None:
    tunnel = store.create_tunnel(account, "t")
    with pytest.raises(NetworkRefused, match=message.replace(".", r"\.")):
        store.private.add_route(account, network, tunnel.id)
    assert store.private.list_routes(account) == []


def test_a_route_needs_a_live_tunnel_and_virtual_network_of_the_account(
    store: Store, account: str
) -> None:
    other = store.create_account("other").tag
    theirs = store.create_tunnel(other, "theirs")
    their_vnet = store.private.create_vnet(other, "their-net")
    mine = store.create_tunnel(account, "mine")
    with pytest.raises(TunnelNotFound):
        store.private.add_route(account, "10.0.0.0/8", uuid.uuid4())
    with pytest.raises(TunnelNotFound):
        store.private.add_route(account, "10.0.0.0/8", theirs.id)
    with pytest.raises(VirtualNetworkNotFound):
        store.private.add_route(account, "10.0.0.0/8", mine.id, vnet_id=their_vnet.id)
    gone = store.create_tunnel(account, "gone")
    store.delete_tunnel(account, gone.id)
    with pytest.raises(TunnelDeleted):
        store.private.add_route(account, "10.0.0.0/8", gone.id)
    with pytest.raises(InvalidName, match="at most 100"):
        store.private.add_route(account, "10.0.0.0/8", mine.id, comment="x" * 101)
    assert store.private.list_routes(account) == []


def test_accounts_never_see_each_others_routes(store: Store, account: str) -> None:
    other = store.create_account("other").tag
    tunnel = store.create_tunnel(account, "t")
    route = store.private.add_route(account, "10.0.0.0/8", tunnel.id)
    their_tunnel = store.create_tunnel(other, "t")
    store.private.add_route(other, "10.0.0.0/8", their_tunnel.id)  # their own space
    assert store.private_route(other, ip("10.1.1.1")) == their_tunnel.id
    assert store.private_route(other, ip("10.1.1.1"), route.virtual_network_id) is None
    assert store.private.get_route(other, route.id) is None
    assert [r.tunnel_id for r in store.private.list_routes(other)] == [their_tunnel.id]
    with pytest.raises(IpRouteNotFound):
        store.private.delete_route(other, route.id)
    with pytest.raises(VirtualNetworkNotFound):
        store.private.delete_vnet(other, route.virtual_network_id)
    with pytest.raises(VirtualNetworkNotFound):
        store.private.route_for_ip(other, ip("10.1.1.1"), route.virtual_network_id)
    assert store.private_route(account, ip("10.1.1.1")) == tunnel.id


def test_one_default_network_that_cannot_be_deleted_or_unset(store: Store, account: str) -> None:
    store.private.default_vnet(account)
    lab = store.private.create_vnet(account, "lab", "the lab", is_default=True)
    defaults = [v.name for v in store.private.list_vnets(account, is_default=True)]
    assert defaults == ["lab"]
    with pytest.raises(VirtualNetworkIsDefault, match="another virtual network the default"):
        store.private.update_vnet(account, lab.id, is_default=False)
    with pytest.raises(VirtualNetworkIsDefault, match="default virtual network"):
        store.private.delete_vnet(account, lab.id, force=True)
    [default] = store.private.list_vnets(account, name="default")
    updated = store.private.update_vnet(account, default.id, is_default=True, comment="back")
    assert (updated.is_default, updated.comment) == (True, "back")
    assert [v.name for v in store.private.list_vnets(account, is_default=True)] == ["default"]
    renamed = store.private.update_vnet(account, lab.id, name="lab2")
    assert renamed.name == "lab2" and not renamed.is_default
    with pytest.raises(VirtualNetworkNameConflict):
        store.private.update_vnet(account, lab.id, name="default")
    with pytest.raises(VirtualNetworkNameConflict):
        store.private.create_vnet(account, "lab2")


def test_the_default_network_decides_lookups_without_one(store: Store, account: str) -> None:
    tunnel_a, tunnel_b = store.create_tunnel(account, "a"), store.create_tunnel(account, "b")
    store.private.add_route(account, "10.0.0.0/8", tunnel_a.id)
    lab = store.private.create_vnet(account, "lab")
    store.private.add_route(account, "10.0.0.0/8", tunnel_b.id, vnet_id=lab.id)
    assert store.private_route(account, ip("10.0.0.1")) == tunnel_a.id
    store.private.update_vnet(account, lab.id, is_default=True)
    assert store.private_route(account, ip("10.0.0.1")) == tunnel_b.id
    assert store.private.route_for_ip(account, ip("10.0.0.1")) is not None


def test_a_virtual_network_in_use_is_deleted_only_with_force(store: Store, account: str) -> None:
    tunnel = store.create_tunnel(account, "t")
    lab = store.private.create_vnet(account, "lab")
    store.private.add_route(account, "10.0.0.0/8", tunnel.id, vnet_id=lab.id)
    with pytest.raises(VirtualNetworkInUse, match=r"10\.0\.0\.0/8.*--force"):
        store.private.delete_vnet(account, lab.id)
    assert store.private_route(account, ip("10.0.0.1"), lab.id) == tunnel.id
    deleted = store.private.delete_vnet(account, lab.id, force=True)
    assert deleted.deleted_at is not None
    assert store.private_route(account, ip("10.0.0.1"), lab.id) is None
    assert store.private.list_routes(account, is_deleted=False) == []
    assert [v.name for v in store.private.list_vnets(account, is_deleted=True)] == ["lab"]
    with pytest.raises(VirtualNetworkNotFound):
        store.private.add_route(account, "10.0.0.0/8", tunnel.id, vnet_id=lab.id)
    store.private.create_vnet(account, "lab")  # the name is free again
    empty = store.private.create_vnet(account, "empty")
    store.private.delete_vnet(account, empty.id)  # no routes: no force needed


def test_a_tunnel_with_routes_is_deleted_only_with_cascade(store: Store, account: str) -> None:
    tunnel = store.create_tunnel(account, "t")
    store.private.add_route(account, "10.0.0.0/8", tunnel.id)
    store.private.add_route(account, "fd00::/8", tunnel.id)
    with pytest.raises(TunnelHasRoutes, match=r"10\.0\.0\.0/8, fd00::/8.*-f"):
        store.delete_tunnel(account, tunnel.id)
    assert store.get_tunnel(account, tunnel.id).deleted_at is None  # type: ignore[union-attr]
    assert store.private_route(account, ip("10.0.0.1")) == tunnel.id
    store.delete_tunnel(account, tunnel.id, cascade=True)
    assert store.private_route(account, ip("10.0.0.1")) is None
    assert len(store.private.list_routes(account, is_deleted=True)) == 2
    plain = store.create_tunnel(account, "plain")
    store.delete_tunnel(account, plain.id)  # no routes: no cascade needed


def test_list_filters(store: Store, account: str) -> None:
    a, b = store.create_tunnel(account, "a"), store.create_tunnel(account, "b")
    lab = store.private.create_vnet(account, "lab")
    wide = store.private.add_route(account, "10.0.0.0/8", a.id, comment="wide")
    mid = store.private.add_route(account, "10.1.0.0/16", b.id, comment="mid")
    lab_mid = store.private.add_route(account, "10.1.0.0/16", b.id, vnet_id=lab.id)
    v6 = store.private.add_route(account, "2001:db8::/32", a.id)

    def ids(**filters: object) -> set[uuid.UUID]:
        return {r.id for r in store.private.list_routes(account, **filters)}  # type: ignore[arg-type]

    net = ipaddress.ip_network
    assert ids(network_subset=net("10.0.0.0/8")) == {wide.id, mid.id, lab_mid.id}
    assert ids(network_superset=net("10.1.2.0/24")) == {wide.id, mid.id, lab_mid.id}
    assert ids(network_superset=net("10.2.0.0/16")) == {wide.id}
    exact = net("10.1.0.0/16")
    assert ids(network_subset=exact, network_superset=exact) == {mid.id, lab_mid.id}
    assert ids(network_subset=exact, network_superset=exact, vnet_id=lab.id) == {lab_mid.id}
    assert ids(network_subset=net("::/0")) == {v6.id}
    assert ids(tunnel_id=a.id) == {wide.id, v6.id}
    assert ids(comment="mid") == {mid.id}
    assert ids(route_id=v6.id) == {v6.id}
    assert ids(existed_at=wide.created_at - datetime.timedelta(seconds=1)) == set()
    [shown] = store.private.list_routes(account, route_id=lab_mid.id)
    assert (shown.tunnel_name, shown.virtual_network_name) == ("b", "lab")


def test_get_by_ip_from_the_database_agrees_with_the_memory_table(
    store: Store, account: str
) -> None:
    tunnels = [store.create_tunnel(account, f"t{i}") for i in range(3)]
    networks = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "0.0.0.0/0", "fd00::/8", "fd00:1::/32"]
    for network, tunnel in zip(networks, itertools.cycle(tunnels), strict=False):
        store.private.add_route(account, network, tunnel.id)
    probes = ["10.1.2.3", "10.1.3.3", "10.2.0.1", "192.0.2.1", "fd00:1::1", "fd01::1", "::1"]
    for text in probes:
        from_db = store.private.route_for_ip(account, ip(text))
        from_memory = store.private_route(account, ip(text))
        assert (from_db.tunnel_id if from_db else None) == from_memory, text
    best = store.private.route_for_ip(account, ip("10.1.2.3"))
    assert best is not None and str(best.network) == "10.1.2.0/24"
    assert store.private.route_for_ip(account, ip("::1")) is None


def test_the_memory_table_follows_every_writer(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    other = Store(tmp_path / "s.db")  # a second process's view of the same database
    account = store.create_account("a").tag
    tunnel = store.create_tunnel(account, "t")
    store.private.add_route(account, "10.0.0.0/8", tunnel.id)
    assert store.private_route(account, ip("10.0.0.1")) == tunnel.id
    assert other.private_route(account, ip("10.0.0.1")) == tunnel.id  # first use loads
    # Another process's write shows once the store looks (the edge's watcher thread does).
    narrow = other.create_tunnel(account, "narrow")
    other.private.add_route(account, "10.0.0.0/24", narrow.id)
    assert store.private_route(account, ip("10.0.0.1")) == tunnel.id
    assert store.refresh_private_routes()
    assert store.private_route(account, ip("10.0.0.1")) == narrow.id
    assert not store.refresh_private_routes()  # nothing changed: one counter read
    # Writes that touch no IP route or virtual network leave the table alone...
    other.create_tunnel(account, "t3")
    assert not store.refresh_private_routes()
    # ...and so do hostname routes, which have their own counter.
    other.add_zone(account, "app.test")
    other.route_hostname(account, tunnel.id, "app.test")
    assert not store.refresh_private_routes()
    # A tunnel deleted elsewhere with its routes stops routing here.
    other.delete_tunnel(account, narrow.id, cascade=True)
    assert store.refresh_private_routes()
    assert store.private_route(account, ip("10.0.0.1")) == tunnel.id
    other.close()
    store.close()


def test_a_watcher_thread_follows_another_process(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    other = Store(tmp_path / "s.db")
    account = other.create_account("a").tag
    store.load_private_routes()
    store.watch_routes(0.02)
    tunnel = other.create_tunnel(account, "t")
    other.private.add_route(account, "172.16.0.0/12", tunnel.id)
    deadline = time.monotonic() + 5
    while store.private_route(account, ip("172.16.1.1")) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.private_route(account, ip("172.16.1.1")) == tunnel.id
    store.close()
    other.close()


def test_an_older_store_file_gains_the_tables(tmp_path: Path) -> None:
    path = tmp_path / store_module.STORE_FILE
    Store(path).close()
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TABLE ip_routes; DROP TABLE virtual_networks;"
        " DELETE FROM counters WHERE name = 'private_routes';"
    )
    db.close()
    store = Store(path)
    account = store.create_account("a").tag
    tunnel = store.create_tunnel(account, "t")
    store.private.add_route(account, "10.0.0.0/8", tunnel.id)
    assert store.private_route(account, ip("10.0.0.1")) == tunnel.id
    store.close()
