"""``route dns`` writes real DNS records: a real BIND ``named`` takes RFC 2136 updates signed
with TSIG from a real ``adit edge``, driven by the real CLI; ``dig`` reads what BIND holds."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sqlite3
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import bind
from adit.edge.dns01 import remove_challenge, set_challenge
from adit.edge.dns_update import DnsTarget
from adit.edge.route_dns import PublishedEdge, RouteRecords
from adit.edge.store import Store, StoreBusy
from harness import Account, Edge, Processes, login, run_cli, start_edge

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(not bind.available(), reason="BIND (named, dig) is not installed"),
]

ZONE = "example.com"
PUBLIC_NAME = "edge.example.net"
PUBLIC_V4 = "192.0.2.10"
PUBLIC_V6 = "2001:db8::10"


@pytest.fixture
def named() -> Iterator[bind.Bind]:
    with bind.running(ZONE) as server:
        yield server


@pytest.fixture
def dns_edge(processes: Processes) -> Edge:
    return start_edge(
        processes,
        env={
            "ADIT_EDGE_PUBLIC_NAME": PUBLIC_NAME,
            "ADIT_EDGE_PUBLIC_ADDRESS": f"{PUBLIC_V4} {PUBLIC_V6}",
        },
    )


def _admin(edge: Edge, home: Path, *args: str, check: bool = True) -> str:
    result = run_cli(["edge", *args, "--state-dir", str(edge.state_dir)], home=home, check=check)
    return result.stdout + result.stderr


def _zone_dns(
    edge: Edge, account: Account, named: bind.Bind, key: Path, *flags: str, check: bool = True
) -> str:
    return _admin(
        edge, account.home, "zone", "dns", ZONE, "--server", named.server,
        "--tsig-secret-file", str(key), *flags, check=check,
    )  # fmt: skip


def _routes(edge: Edge, account: Account) -> list[str]:
    store = Store.open_in(edge.state_dir)
    try:
        return [host for host, _ in store.routes(account.tag)]
    finally:
        store.close()


def _route(account: Account, *args: str, check: bool = True) -> tuple[int, str]:
    result = account.cli("tunnel", "route", "dns", *args, check=check)
    return result.returncode, result.stdout + result.stderr


def test_route_dns_creates_overwrites_and_removes_records(
    dns_edge: Edge, named: bind.Bind, tmp_path: Path
) -> None:
    account = login(dns_edge, tmp_path / "home", zones=(ZONE,))
    out = _zone_dns(dns_edge, account, named, named.key_file(tmp_path / "adit.key"))
    assert f"DNS updates to {named.server} with TSIG key {bind.KEY_NAME}" in out
    account.cli("tunnel", "create", "web")

    code, out = _route(account, "web", f"app.{ZONE}")
    assert code == 0, out
    assert f"Added CNAME app.{ZONE} which will route to this tunnel" in out
    assert named.dig(f"app.{ZONE}", "CNAME") == [f"{PUBLIC_NAME}."]
    code, out = _route(account, "web", f"app.{ZONE}")
    assert f"app.{ZONE} is already configured to route to your tunnel" in out

    # Another record at the name: refused without -f, and neither record nor route changes.
    code, out = _route(account, "web", f"taken.{ZONE}", check=False)
    assert code == 1
    assert "An A, AAAA, or CNAME record with that host already exists" in out
    assert "192.0.2.99" in out and "--overwrite-dns" in out
    assert named.dig(f"taken.{ZONE}", "A") == ["192.0.2.99"]
    assert f"taken.{ZONE}" not in _routes(dns_edge, account)
    code, out = _route(account, "--overwrite-dns", "web", f"taken.{ZONE}")
    assert code == 0, out
    assert named.dig(f"taken.{ZONE}", "CNAME") == [f"{PUBLIC_NAME}."]
    assert "192.0.2.99" not in named.dig(f"taken.{ZONE}", "A")

    # The apex cannot be a CNAME: A and AAAA of the edge's public addresses.
    code, out = _route(account, "web", ZONE)
    assert code == 0, out
    assert f"Added A/AAAA records {ZONE} which will route to this tunnel" in out
    assert named.dig(ZONE, "A") == [PUBLIC_V4]
    assert named.dig(ZONE, "AAAA") == [PUBLIC_V6]
    assert named.dig(ZONE, "SOA")  # the zone's own records stay

    # Deleting a route removes its record, and only its record.
    code, out = _route(account, "--delete", "web", f"app.{ZONE}")
    assert code == 0, out
    assert named.dig(f"app.{ZONE}", "CNAME") == []
    assert f"app.{ZONE}" not in _routes(dns_edge, account)
    assert named.dig(f"taken.{ZONE}", "CNAME") == [f"{PUBLIC_NAME}."]

    # A wildcard route is a wildcard record.
    code, out = _route(account, "web", f"*.{ZONE}")
    assert f"Added CNAME *.{ZONE} which will route to this tunnel" in out
    assert named.dig(f"*.{ZONE}", "CNAME") == [f"{PUBLIC_NAME}."]

    # Deleting the tunnel removes the records of all its routes.
    account.cli("tunnel", "delete", "web")
    assert named.dig(f"*.{ZONE}", "CNAME") == []
    assert named.dig(f"taken.{ZONE}", "CNAME") == []
    assert named.dig(ZONE, "A") == []
    assert named.dig(ZONE, "AAAA") == []
    assert _routes(dns_edge, account) == []
    log = dns_edge.proc.text()
    assert f"DNS record taken.{ZONE} removed at {named.server}" in log
    assert named.secret not in log


def test_zone_remove_removes_its_routes_records(
    dns_edge: Edge, named: bind.Bind, tmp_path: Path
) -> None:
    account = login(dns_edge, tmp_path / "home", zones=(ZONE,))
    _zone_dns(dns_edge, account, named, named.key_file(tmp_path / "adit.key"))
    account.cli("tunnel", "create", "web")
    _route(account, "web", f"app.{ZONE}")
    assert named.dig(f"app.{ZONE}", "CNAME") == [f"{PUBLIC_NAME}."]
    out = _admin(dns_edge, account.home, "zone", "remove", ZONE)
    assert f"zone {ZONE} removed with 1 route" in out
    assert named.dig(f"app.{ZONE}", "CNAME") == []
    assert named.dig(f"taken.{ZONE}", "A") == ["192.0.2.99"]


def test_dns_failures_leave_no_route_and_name_the_server(
    dns_edge: Edge, named: bind.Bind, tmp_path: Path
) -> None:
    account = login(dns_edge, tmp_path / "home", zones=(ZONE,))
    wrong = base64.b64encode(b"not the key of that server 1234").decode()
    wrong_key = named.key_file(tmp_path / "wrong.key", wrong)
    # The admin is told at once (the server is asked for the zone's SOA with the key)...
    out = _zone_dns(dns_edge, account, named, wrong_key, check=False)
    assert f"DNS server {named.server}" in out and "BADSIG" in out, out
    assert "nothing was saved" in out
    assert "dns=" not in _admin(dns_edge, account.home, "zone", "list")
    # ...and a key saved anyway fails the route, with no route left behind.
    _zone_dns(dns_edge, account, named, wrong_key, "--no-check")
    account.cli("tunnel", "create", "web")

    code, out = _route(account, "web", f"app.{ZONE}", check=False)
    assert code == 1
    assert f"DNS server {named.server}" in out and "BADSIG" in out, out
    assert _routes(dns_edge, account) == []
    assert named.dig(f"app.{ZONE}", "CNAME") == []

    # A key the server knows but lets update nothing: REFUSED.
    reader = named.key_file(tmp_path / "reader.key", named.other_secret, bind.OTHER_KEY_NAME)
    _zone_dns(dns_edge, account, named, reader)
    code, out = _route(account, "web", f"app.{ZONE}", check=False)
    assert code == 1
    assert f"DNS server {named.server}" in out and "REFUSED" in out, out
    assert _routes(dns_edge, account) == []

    # The right key works; then BIND goes away: a clear error, no route.
    key = named.key_file(tmp_path / "adit.key")
    _zone_dns(dns_edge, account, named, key)
    _route(account, "web", f"ok.{ZONE}")
    named.stop()
    code, out = _route(account, "web", f"down.{ZONE}", check=False)
    assert code == 1
    assert f"DNS server {named.server}" in out and "could not be reached" in out, out
    assert _routes(dns_edge, account) == [f"ok.{ZONE}"]
    # Deleting a route while its server is down changes nothing: the same command can be
    # run again once the server is back.
    code, out = _route(account, "--delete", "web", f"ok.{ZONE}", check=False)
    assert code == 1
    assert "could not be reached" in out, out
    assert _routes(dns_edge, account) == [f"ok.{ZONE}"]

    # The secret is in no log, no CLI or API answer, no admin listing.
    listing = _admin(dns_edge, account.home, "zone", "list")
    assert f"dns={named.server} key={bind.KEY_NAME}" in listing
    api = urllib.request.Request(
        f"{dns_edge.api_url}/adit/v1/edge", headers={"Authorization": f"Bearer {account.token}"}
    )
    context = ssl.create_default_context(cafile=str(dns_edge.ca))
    context.check_hostname = False
    with urllib.request.urlopen(api, context=context, timeout=10) as reply:
        answer = reply.read().decode()
    assert json.loads(answer)["success"]
    for text in (out, listing, answer, dns_edge.proc.text()):
        assert named.secret not in text
        assert named.other_secret not in text
        assert wrong not in text
    assert oct((dns_edge.state_dir / "adit-edge.sqlite3").stat().st_mode & 0o777) == "0o600"

    # Zones without a target behave as before: routes in the store only.
    _admin(dns_edge, account.home, "zone", "dns", ZONE, "--clear")
    _route(account, "web", f"down.{ZONE}")
    assert f"down.{ZONE}" in _routes(dns_edge, account)


def test_zone_dns_flags_refuse_bad_input(dns_edge: Edge, named: bind.Bind, tmp_path: Path) -> None:
    account = login(dns_edge, tmp_path / "home", zones=(ZONE,))
    key = named.key_file(tmp_path / "adit.key")
    out = _admin(
        dns_edge, account.home, "zone", "dns", ZONE, "--server", "ns1.example.com:53",
        "--tsig-secret-file", str(key), check=False,
    )  # fmt: skip
    assert "--server" in out and "not an IP address" in out
    bad = tmp_path / "bad.key"
    bad.write_text("not base64 !!\n")
    out = _admin(
        dns_edge, account.home, "zone", "dns", ZONE, "--server", named.server,
        "--tsig-secret-file", str(bad), check=False,
    )  # fmt: skip
    assert "--tsig-secret-file" in out and "base64" in out
    out = _admin(
        dns_edge, account.home, "zone", "dns", "other.example.org", "--server", named.server,
        "--tsig-secret-file", str(key), check=False,
    )  # fmt: skip
    assert "no zone other.example.org" in out
    out = _admin(
        dns_edge, account.home, "zone", "dns", ZONE, "--server", named.server,
        "--tsig-secret-file", str(key), "--tsig-name", "two words", check=False,
    )  # fmt: skip
    assert "--tsig-name" in out and "no TSIG key name" in out
    assert not re.search(r"Traceback", out)


def test_edge_refuses_a_bad_public_name_or_address(tmp_path: Path) -> None:
    for flag, value in (("--public-address", "edge.example.net"), ("--public-name", "a b")):
        result = run_cli(
            ["edge", "--state-dir", str(tmp_path / "state"), flag, value],
            home=tmp_path,
            check=False,
        )
        assert result.returncode == 255  # adit's usage errors, as cloudflared's
        assert f"Invalid value for {flag}" in result.stderr and "Traceback" not in result.stderr


def test_dns01_seam_sets_and_removes_txt(named: bind.Bind, tmp_path: Path) -> None:
    store = Store.open_in(tmp_path / "state")
    try:
        account = store.create_account("acme")
        store.add_zone(account.tag, ZONE)
        store.zone_dns.set(
            ZONE,
            DnsTarget(
                "127.0.0.1", named.port, bind.KEY_NAME, tsig_secret=base64.b64decode(named.secret)
            ),
        )
        apex, wildcard = (
            "digest-for-the-apex-0123456789abcdefghijklm",
            "digest-for-the-wildcard-0123",
        )

        async def scenario() -> None:
            assert await set_challenge(store, ZONE, apex) == f"_acme-challenge.{ZONE}"
            await set_challenge(store, f"*.{ZONE}", wildcard)
            assert named.dig(f"_acme-challenge.{ZONE}", "TXT") == sorted(
                [f'"{apex}"', f'"{wildcard}"']
            )
            await remove_challenge(store, ZONE, apex)
            assert named.dig(f"_acme-challenge.{ZONE}", "TXT") == [f'"{wildcard}"']
            await remove_challenge(store, f"*.{ZONE}", wildcard)
            assert named.dig(f"_acme-challenge.{ZONE}", "TXT") == []

        asyncio.run(scenario())
    finally:
        store.close()


def test_removal_takes_what_was_written_after_the_public_name_changed(
    named: bind.Bind, tmp_path: Path
) -> None:
    store = Store.open_in(tmp_path / "state")
    try:
        account = store.create_account("acme")
        store.add_zone(account.tag, ZONE)
        store.zone_dns.set(
            ZONE,
            DnsTarget(
                "127.0.0.1", named.port, bind.KEY_NAME, tsig_secret=base64.b64decode(named.secret)
            ),
        )
        tunnel = store.create_tunnel(account.tag, "web")

        async def scenario() -> None:
            before = RouteRecords(store, PublishedEdge("old-edge.example.net"))
            await before.route(account.tag, tunnel.id, f"a.{ZONE}", overwrite=False)
            await before.route(account.tag, tunnel.id, f"b.{ZONE}", overwrite=False)
            assert named.dig(f"a.{ZONE}", "CNAME") == ["old-edge.example.net."]
            after = RouteRecords(store, PublishedEdge("new-edge.example.net"))
            await after.unroute(account.tag, tunnel.id, f"a.{ZONE}")
            assert named.dig(f"a.{ZONE}", "CNAME") == []
            hostnames = store.tunnel_hostnames(account.tag, tunnel.id)
            store.delete_tunnel(account.tag, tunnel.id)
            assert await after.forget(hostnames) == []
            assert named.dig(f"b.{ZONE}", "CNAME") == []
            assert store.zone_dns.records(f"b.{ZONE}") is None

        asyncio.run(scenario())
    finally:
        store.close()


def test_a_route_the_store_could_not_write_or_drop_keeps_dns_as_it_was(
    named: bind.Bind, tmp_path: Path
) -> None:
    store = Store.open_in(tmp_path / "state", write_timeout=0.3)
    try:
        account = store.create_account("acme")
        store.add_zone(account.tag, ZONE)
        store.zone_dns.set(
            ZONE,
            DnsTarget(
                "127.0.0.1", named.port, bind.KEY_NAME, tsig_secret=base64.b64decode(named.secret)
            ),
        )
        tunnel = store.create_tunnel(account.tag, "web")
        records = RouteRecords(store, PublishedEdge(PUBLIC_NAME))
        # Another process (an admin command, a second edge) holds the store's write lock.
        other = sqlite3.connect(tmp_path / "state" / "adit-edge.sqlite3", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreBusy):
                asyncio.run(records.route(account.tag, tunnel.id, f"app.{ZONE}", overwrite=False))
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert named.dig(f"app.{ZONE}", "CNAME") == []
        assert store.routes(account.tag) == []

        # The same for a route's removal: its record comes back when the route stays.
        asyncio.run(records.route(account.tag, tunnel.id, f"app.{ZONE}", overwrite=False))
        other = sqlite3.connect(tmp_path / "state" / "adit-edge.sqlite3", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreBusy):
                asyncio.run(records.unroute(account.tag, tunnel.id, f"app.{ZONE}"))
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert [h for h, _ in store.routes(account.tag)] == [f"app.{ZONE}"]
        assert named.dig(f"app.{ZONE}", "CNAME") == [f"{PUBLIC_NAME}."]
    finally:
        store.close()
