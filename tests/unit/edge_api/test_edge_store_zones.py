"""Zones and what may be routed: ownership (issue 13 item 16), names and secrets (item 18)."""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from adit.edge.store import (
    HostnameOutsideZones,
    HostnameRefused,
    InvalidName,
    RouteChange,
    Store,
    WeakSecret,
    ZoneNotFound,
    ZoneRefused,
    ZoneTaken,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open_in(tmp_path / "state")
    yield s
    s.close()


@pytest.mark.parametrize(
    "name",
    [
        "com",
        "test",
        "co.uk",
        "github.io",
        "kawasaki.jp",
        "localhost",
        "x.localhost",
        "*.example.com",
        "a..b",
        "-a.example.com",
        "ex ample.com",
        "",
    ],
)
def test_names_that_are_no_zones(store: Store, name: str) -> None:
    account = store.create_account("a").tag
    with pytest.raises(ZoneRefused):
        store.add_zone(account, name)


def test_a_zone_is_one_accounts_and_overlaps_no_other(store: Store) -> None:
    a = store.create_account("a").tag
    b = store.create_account("b").tag
    zone, created = store.add_zone(a, "Example.COM.")
    assert (zone.name, zone.account_tag, created) == ("example.com", a, True)
    assert store.add_zone(a, "example.com")[1] is False
    for overlapping in ("example.com", "x.example.com", "a.b.example.com"):
        with pytest.raises(ZoneTaken):
            store.add_zone(b, overlapping)
    store.add_zone(b, "example.org")
    with pytest.raises(ZoneTaken):
        store.add_zone(a, "sub.example.org")
    # Nested zones of one account are fine; a public suffix above them never.
    store.add_zone(a, "deep.example.com")
    assert [z.name for z in store.zones(a)] == ["deep.example.com", "example.com"]
    assert [z.name for z in store.zones()] == ["deep.example.com", "example.com", "example.org"]


def test_routes_lie_inside_the_accounts_zones(store: Store) -> None:
    a = store.create_account("a").tag
    b = store.create_account("b").tag
    ta = store.create_tunnel(a, "web")
    tb = store.create_tunnel(b, "web")
    store.add_zone(a, "example.com")
    for name in ("example.com", "x.example.com", "*.example.com", "*.x.example.com"):
        assert store.route_hostname(a, ta.id, name).change is RouteChange.NEW
    with pytest.raises(HostnameOutsideZones) as outside:
        store.route_hostname(a, ta.id, "example.org")
    assert "adit edge zone add" in str(outside.value)
    assert outside.value.zone == "example.org"
    with pytest.raises(HostnameOutsideZones) as outside:
        store.route_hostname(a, ta.id, "a.b.example.co.uk")
    assert outside.value.zone == "example.co.uk"  # what the admin would add
    assert f"--account {a} example.co.uk" in str(outside.value)
    for name in ("*.com", "com", "localhost", "*.localhost", "x.localhost", "*.co.uk"):
        with pytest.raises((HostnameRefused, HostnameOutsideZones)):
            store.route_hostname(a, ta.id, name)
    # Account b owns nothing: not even names nobody routes.
    for name in ("y.example.com", "*.example.com", "other.test"):
        with pytest.raises(HostnameOutsideZones):
            store.route_hostname(b, tb.id, name)


def test_a_route_made_before_zones_stays_its_owners(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    a = store.create_account("a").tag
    b = store.create_account("b").tag
    tb = store.create_tunnel(b, "web")
    # A store from before zones: b routed a name nobody's zone holds.
    legacy = sqlite3.connect(tmp_path / "s.db")
    with legacy:
        legacy.execute(
            "INSERT INTO routes VALUES ('*.legacy.example.com', ?, ?, '2026-01-01T00:00:00+00:00')",
            (b, str(tb.id)),
        )
    legacy.close()
    assert store.refresh_routes()
    assert store.tunnel_for_hostname("x.legacy.example.com") == (tb.id, b)
    # A zone over it cannot go to another account; to its owner it can.
    with pytest.raises(ZoneTaken, match="routed by another account"):
        store.add_zone(a, "example.com")
    store.add_zone(b, "example.com")
    store.close()


def test_removing_a_zone_takes_its_routes(store: Store) -> None:
    a = store.create_account("a").tag
    t = store.create_tunnel(a, "web")
    store.add_zone(a, "example.com")
    store.add_zone(a, "deep.example.com")
    for name in ("example.com", "*.example.com", "x.deep.example.com"):
        store.route_hostname(a, t.id, name)
    assert store.tunnel_for_hostname("www.example.com") == (t.id, a)
    # The routes another zone of the account still holds stay.
    assert store.remove_zone("example.com") == 2
    assert store.tunnel_for_hostname("www.example.com") is None
    assert store.tunnel_for_hostname("x.deep.example.com") == (t.id, a)
    with pytest.raises(ZoneNotFound):
        store.remove_zone("example.com")


def test_the_quick_tunnel_route_is_the_edges_own(store: Store) -> None:
    account = store.create_account("quick").tag
    tunnel = store.create_tunnel(account, "quick-1")
    assert store.route_quick_tunnel(account, tunnel.id, "abc123") == "abc123.localhost"
    assert store.tunnel_for_hostname("abc123.localhost") == (tunnel.id, account)
    for label in ("a.b", "", "*", "x y"):
        with pytest.raises((HostnameRefused, ValueError)):
            store.route_quick_tunnel(account, tunnel.id, label)


@pytest.mark.parametrize(
    "name", ["esc\x1b[2J", "a\nb", "\t", "nul\x00", "c1\x85", "rlo\u202e", "zw\u200b", "\ud800"]
)
def test_names_without_control_characters(store: Store, name: str) -> None:
    with pytest.raises(InvalidName):
        store.create_account(name)
    account = store.create_account("fine").tag
    with pytest.raises(InvalidName):
        store.create_tunnel(account, name)
    with pytest.raises(InvalidName):
        store.create_api_token(account, name)
    assert store.list_tunnels(account) == []


def test_names_may_be_any_printable_text(store: Store) -> None:
    account = store.create_account("Zoë & Søn — ünïcode 🚀").tag
    assert store.create_tunnel(account, "web (prod) #1").name == "web (prod) #1"
    with pytest.raises(InvalidName):
        store.create_tunnel(account, "x" * 256)
    with pytest.raises(InvalidName):
        store.create_account("")


@pytest.mark.parametrize(
    "secret", [bytes(32), b"\xff" * 32, b"ab" * 16, bytes(range(8)) * 4, bytes(64), b"short"]
)
def test_weak_secrets_are_refused(store: Store, secret: bytes) -> None:
    account = store.create_account("a").tag
    with pytest.raises(WeakSecret):
        store.create_tunnel(account, "weak", secret)
    tunnel = store.create_tunnel(account, "strong", bytes(range(32)))
    with pytest.raises(WeakSecret):
        store.rotate_tunnel_secret(account, tunnel.id, datetime.timedelta(1), secret)
