"""Zones' RFC 2136 targets in the store, and the route writes the DNS code relies on."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from adit.edge.dns_update import DnsTarget
from adit.edge.store import (
    HostnameConflict,
    HostnameNotRouted,
    InvalidName,
    RouteChange,
    Store,
    ZoneNotFound,
)

TARGET = DnsTarget("127.0.0.1", 5353, "adit-edge", "hmac-sha256", b"k" * 32)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open_in(tmp_path / "state")
    yield s
    s.close()


def test_target_set_read_cleared_and_gone_with_its_zone(store: Store) -> None:
    account = store.create_account("acme")
    store.add_zone(account.tag, "example.com")
    with pytest.raises(ZoneNotFound):
        store.zone_dns.set("other.example.org", TARGET)
    with pytest.raises(InvalidName, match="hmac-md5"):
        store.zone_dns.set("example.com", DnsTarget("127.0.0.1", 53, "k", "hmac-md5", b"k" * 32))
    store.zone_dns.set("Example.COM.", TARGET)
    assert store.zone_dns.target("example.com") == TARGET
    assert store.zone_dns.zone_holding("*.a.example.com") == "example.com"
    assert store.zone_dns.clear("example.com") is True
    assert store.zone_dns.clear("example.com") is False
    store.zone_dns.set("example.com", TARGET)
    store.remove_zone("example.com")
    store.add_zone(account.tag, "example.com")
    assert store.zone_dns.target("example.com") is None  # the key went with the zone


def test_a_store_from_before_targets_gets_the_table(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Store.open_in(state).close()
    with sqlite3.connect(state / "adit-edge.sqlite3") as db:
        db.execute("DROP TABLE zone_dns_targets")
    store = Store.open_in(state)
    try:
        account = store.create_account("acme")
        store.add_zone(account.tag, "example.com")
        store.zone_dns.set("example.com", TARGET)
        assert store.zone_dns.target("example.com") == TARGET
    finally:
        store.close()


def test_plan_route_refuses_like_route_hostname_and_writes_nothing(store: Store) -> None:
    account = store.create_account("acme")
    store.add_zone(account.tag, "example.com")
    web = store.create_tunnel(account.tag, "web")
    api = store.create_tunnel(account.tag, "api")
    planned, zone = store.plan_route(account.tag, web.id, "App.example.com")
    assert (planned.hostname, planned.change, zone) == (
        "app.example.com",
        RouteChange.NEW,
        "example.com",
    )
    assert store.routes(account.tag) == []
    store.route_hostname(account.tag, web.id, "app.example.com")
    assert (
        store.plan_route(account.tag, web.id, "app.example.com")[0].change is RouteChange.UNCHANGED
    )
    with pytest.raises(HostnameConflict):
        store.plan_route(account.tag, api.id, "app.example.com")
    assert store.plan_route(account.tag, api.id, "app.example.com", overwrite=True)[0].change is (
        RouteChange.UPDATED
    )
    assert store.tunnel_hostnames(account.tag, web.id) == ["app.example.com"]


def test_unroute_drops_only_that_tunnels_route(store: Store) -> None:
    account = store.create_account("acme")
    store.add_zone(account.tag, "example.com")
    web = store.create_tunnel(account.tag, "web")
    api = store.create_tunnel(account.tag, "api")
    store.route_hostname(account.tag, web.id, "app.example.com")
    with pytest.raises(HostnameNotRouted):
        store.unroute_hostname(account.tag, api.id, "app.example.com")
    assert store.tunnel_for_hostname("app.example.com") is not None
    assert store.unroute_hostname(account.tag, web.id, "APP.example.com") == "app.example.com"
    assert store.tunnel_for_hostname("app.example.com") is None
    assert store.routes(account.tag) == []
