"""The edge store: hashed tokens, account isolation, tunnels, routes, secrets."""

from __future__ import annotations

import hmac
import sqlite3
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adit.edge import store as store_module
from adit.edge.store import (
    AccountNotFound,
    HostnameConflict,
    HostnameOutsideZones,
    RouteChange,
    Store,
    TunnelDeleted,
    TunnelNameConflict,
)
from adit.protocol.hostnames import InvalidHostname

SECRET = bytes(range(32))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open_in(tmp_path / "state")
    yield s
    s.close()


def test_file_mode_and_wal(tmp_path: Path) -> None:
    s = Store.open_in(tmp_path / "state")
    path = tmp_path / "state" / store_module.STORE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    s.close()
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_account_tag_is_32_hex(store: Store) -> None:
    account = store.create_account("acme")
    assert len(account.tag) == 32
    int(account.tag, 16)
    assert store.get_account(account.tag) == account


def test_token_is_stored_only_as_hash(store: Store, tmp_path: Path) -> None:
    account = store.create_account("acme")
    issued = store.create_api_token(account.tag, "laptop")
    assert issued.token not in repr(issued)
    raw = (tmp_path / "state" / store_module.STORE_FILE).read_bytes()
    secret = issued.token.rsplit(".", 1)[1]
    assert secret.encode() not in raw
    assert store.authenticate(issued.token) == account.tag


def test_token_compare_is_constant_time(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    account = store.create_account("acme")
    issued = store.create_api_token(account.tag)
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    assert store.authenticate(issued.token) == account.tag
    assert store.authenticate(issued.token + "x") is None
    assert store.authenticate("adit.0000000000000000.nope") is None
    assert len(calls) == 3


@pytest.mark.parametrize("bad", ["", "adit", "adit..", "Bearer x", "x.y.z"])
def test_malformed_tokens_fail(store: Store, bad: str) -> None:
    store.create_api_token(store.create_account("a").tag)
    assert store.authenticate(bad) is None


def test_revoked_token_fails(store: Store) -> None:
    issued = store.create_api_token(store.create_account("a").tag)
    assert store.revoke_api_token(issued.token_id)
    assert store.authenticate(issued.token) is None
    assert not store.revoke_api_token(issued.token_id)


def test_token_for_unknown_account(store: Store) -> None:
    with pytest.raises(AccountNotFound):
        store.create_api_token("0" * 32)


def test_account_isolation(store: Store) -> None:
    a = store.create_account("a").tag
    b = store.create_account("b").tag
    ta = store.create_tunnel(a, "web")
    # The same name is fine in another account.
    tb = store.create_tunnel(b, "web")
    assert store.get_tunnel(b, ta.id) is None
    assert [t.id for t in store.list_tunnels(b)] == [tb.id]
    assert store.list_tunnels(b, tunnel_id=ta.id) == []
    with pytest.raises(store_module.TunnelNotFound):
        store.delete_tunnel(b, ta.id)
    store.add_zone(a, "example.com")
    with pytest.raises(store_module.TunnelNotFound):
        store.route_hostname(b, ta.id, "x.example.com")
    store.route_hostname(a, ta.id, "a.example.com")
    with pytest.raises(HostnameOutsideZones):
        store.route_hostname(b, tb.id, "a.example.com", overwrite=True)
    assert store.routes(b) == []
    assert not store.verify_tunnel_secret(ta.id, b, ta.secret)


def test_tunnel_names_unique_among_live(store: Store) -> None:
    a = store.create_account("a").tag
    first = store.create_tunnel(a, "web")
    with pytest.raises(TunnelNameConflict):
        store.create_tunnel(a, "web")
    store.delete_tunnel(a, first.id)
    with pytest.raises(TunnelDeleted):
        store.delete_tunnel(a, first.id)
    second = store.create_tunnel(a, "web")
    assert second.id != first.id
    assert len(second.secret) == 32
    assert [t.id for t in store.list_tunnels(a, is_deleted=False)] == [second.id]
    assert [t.id for t in store.list_tunnels(a, is_deleted=True)] == [first.id]
    assert len(store.list_tunnels(a)) == 2


def test_list_filters(store: Store) -> None:
    a = store.create_account("a").tag
    for name in ("web-1", "web-2", "db"):
        store.create_tunnel(a, name)
    assert {t.name for t in store.list_tunnels(a, name_prefix="web")} == {"web-1", "web-2"}
    assert {t.name for t in store.list_tunnels(a, exclude_prefix="web")} == {"db"}
    assert [t.name for t in store.list_tunnels(a, name="db")] == ["db"]


def test_routes_and_wildcards(store: Store) -> None:
    a = store.create_account("a").tag
    t1 = store.create_tunnel(a, "one")
    t2 = store.create_tunnel(a, "two")
    store.add_zone(a, "example.com")
    assert store.route_hostname(a, t1.id, "App.Example.com.").change is RouteChange.NEW
    assert store.route_hostname(a, t1.id, "app.example.com").change is RouteChange.UNCHANGED
    with pytest.raises(HostnameConflict):
        store.route_hostname(a, t2.id, "app.example.com")
    assert store.route_hostname(a, t2.id, "app.example.com", overwrite=True).change is (
        RouteChange.UPDATED
    )
    store.route_hostname(a, t1.id, "*.example.com")
    assert store.tunnel_for_hostname("app.example.com") == (t2.id, a)
    assert store.tunnel_for_hostname("APP.example.com.") == (t2.id, a)
    assert store.tunnel_for_hostname("other.example.com") == (t1.id, a)
    assert store.tunnel_for_hostname("deep.other.example.com") == (t1.id, a)
    assert store.tunnel_for_hostname("example.com") is None
    assert store.tunnel_for_hostname("example.org") is None
    store.delete_tunnel(a, t2.id)
    assert store.tunnel_for_hostname("app.example.com") == (t1.id, a)


def test_verify_tunnel_secret(store: Store) -> None:
    a = store.create_account("a").tag
    t = store.create_tunnel(a, "one", SECRET)
    assert store.verify_tunnel_secret(t.id, a, SECRET)
    assert not store.verify_tunnel_secret(t.id, a, SECRET[:31])
    assert not store.verify_tunnel_secret(uuid.uuid4(), a, SECRET)
    store.delete_tunnel(a, t.id)
    assert not store.verify_tunnel_secret(t.id, a, SECRET)


def test_routes_are_served_from_memory_and_follow_every_writer(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    other = Store(tmp_path / "s.db")  # a second process's view of the same database
    account = store.create_account("a")
    store.add_zone(account.tag, "app.test")
    tunnel = store.create_tunnel(account.tag, "t")
    store.route_hostname(account.tag, tunnel.id, "app.test")
    assert store.tunnel_for_hostname("app.test") == (tunnel.id, account.tag)
    # A write through this store changes the table at once.
    store.delete_tunnel(account.tag, tunnel.id)
    assert store.tunnel_for_hostname("app.test") is None
    # Another process's write shows once the store looks (the edge's watcher thread does).
    second = other.create_tunnel(account.tag, "t2")
    other.route_hostname(account.tag, second.id, "app.test")
    assert store.tunnel_for_hostname("app.test") is None
    assert store.refresh_routes()
    assert store.tunnel_for_hostname("app.test") == (second.id, account.tag)
    assert not store.refresh_routes()  # nothing changed: one counter read
    # Writes that do not touch routes leave the table alone.
    other.create_tunnel(account.tag, "t3")
    other.create_api_token(account.tag)
    assert not store.refresh_routes()
    other.close()
    store.close()


def test_a_watcher_thread_follows_another_process(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    other = Store(tmp_path / "s.db")
    account = other.create_account("a")
    other.add_zone(account.tag, "app.test")
    store.load_routes()
    store.watch_routes(0.02)
    tunnel = other.create_tunnel(account.tag, "t")
    other.route_hostname(account.tag, tunnel.id, "app.test")
    deadline = time.monotonic() + 5
    while store.tunnel_for_hostname("app.test") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.tunnel_for_hostname("app.test") == (tunnel.id, account.tag)
    store.close()
    other.close()


def test_hostnames_are_checked_before_any_lookup(store: Store) -> None:
    with pytest.raises(InvalidHostname):
        store.tunnel_for_hostname(".".join(["a"] * 32_000))
    with pytest.raises(InvalidHostname):
        store.tunnel_for_hostname("a b")
    with pytest.raises(InvalidHostname):
        store.tunnel_for_hostname("bücher.example")  # a Host carries the A-label
    assert store.tunnel_for_hostname("unrouted.example") is None
