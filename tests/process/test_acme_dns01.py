"""DNS-01 for wildcard routes against a real pebble and a real BIND.

BIND (tests/bind.py) holds the zone and takes the edge's TSIG-signed updates; pebble's
``-dnsserver`` is that BIND, so the TXT record pebble checks is the one the edge wrote. curl
trusts only pebble's root: a page reached for ``a.example.test`` means the ``*.example.test``
certificate was chosen by SNI.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import bind
import dns_records
from acme_pebble import Pebble, start_pebble
from harness import (
    Account,
    Edge,
    Origin,
    Processes,
    Tunnel,
    create_tunnel,
    login,
    run_cli,
    start_connector,
    start_edge,
    write_config,
)
from ports import free_port

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(not bind.available(), reason="BIND (named, dig) is not installed"),
]

ZONE = "example.test"
#: A zone the account has, with no RFC 2136 target: its wildcard cannot be validated.
NO_DNS_ZONE = "nodns.test"


@pytest.fixture
def named() -> Iterator[bind.Bind]:
    with bind.running(ZONE) as server:
        yield server


def _status(edge: Edge, home: Path) -> dict[str, dict[str, object]]:
    out = run_cli(
        ["edge", "cert", "list", "--output", "json", "--state-dir", str(edge.state_dir)], home=home
    ).stdout
    return {row["hostname"]: row for row in json.loads(out)}


def _curl(root: Path, host: str, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "curl", "-sS", "--max-time", "10", "--cacert", str(root),
            "--resolve", f"{host}:{port}:127.0.0.1", *extra, f"https://{host}:{port}/",
        ],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip


def _wildcard_edge(
    processes: Processes,
    named: bind.Bind,
    tmp: Path,
    challenges: str = "tls-alpn-01,http-01",
    pebble_dns: int | None = None,
) -> tuple[Edge, Pebble, Path, int]:
    http_port, https_port = free_port(), free_port()
    pebble = start_pebble(
        processes, http_port=http_port, tls_port=https_port, dns_port=pebble_dns or named.port
    )
    root = pebble.root(tmp / "pebble-root.pem")
    edge = start_edge(
        processes,
        https=True,
        http_listen=f"127.0.0.1:{http_port}",
        https_listen=f"127.0.0.1:{https_port}",
        env={"ADIT_EDGE_PUBLIC_NAME": "edge.example.net"},
        extra=[
            "--acme-directory", pebble.directory,
            "--acme-ca-bundle", str(pebble.https_ca),
            # No dns-01 here: a wildcard uses it all the same (the only type CAs offer).
            "--acme-challenges", challenges,
        ],
    )  # fmt: skip
    return edge, pebble, root, https_port


def _zone_dns(edge: Edge, account: Account, named: bind.Bind, tmp: Path) -> None:
    key = named.key_file(tmp / "adit.key")
    run_cli(
        ["edge", "zone", "dns", ZONE, "--server", named.server, "--tsig-secret-file", str(key),
         "--state-dir", str(edge.state_dir)],
        home=account.home,
    )  # fmt: skip


def test_wildcard_certificate_by_dns01(
    processes: Processes, origin: Origin, named: bind.Bind, tmp_path: Path
) -> None:
    edge, pebble, root, https_port = _wildcard_edge(processes, named, tmp_path)
    account = login(edge, tmp_path / "home", zones=(ZONE, NO_DNS_ZONE))
    _zone_dns(edge, account, named, tmp_path)
    tunnel = create_tunnel(account, "web", f"*.{ZONE}")
    account.cli("tunnel", "route", "dns", "web", f"*.{NO_DNS_ZONE}")
    config = write_config(tmp_path / "config.yml", f"*.{ZONE}", [{"service": origin.url}])
    start_connector(processes, tunnel, config)

    log = edge.proc.wait_for_log(rf"certificate for \*\.{ZONE} issued by .*\(dns-01\)", 90)
    reply = _curl(root, f"a.{ZONE}", https_port)
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout == "hello /"
    # The ACME certificate's context speaks HTTP/2 as the edge CA's does.
    reply = _curl(root, f"b.{ZONE}", https_port, "--http2", "-w", " %{http_version}")
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout == "hello / 2", reply.stdout
    # The challenge's TXT record is gone from the zone (what dig still shows is the route's
    # wildcard CNAME, which covers the name once it holds nothing of its own).
    answers = named.dig(f"_acme-challenge.{ZONE}", "TXT")
    assert [a for a in answers if a.startswith('"')] == [], answers
    # The TXT really went through RFC 2136: added, then removed.
    assert f"adding an RR at '_acme-challenge.{ZONE}' TXT" in named.log
    assert f"deleting an RR at _acme-challenge.{ZONE} TXT" in named.log

    # The wildcard in the zone without a DNS server: no order, a clear status, said once.
    edge.proc.wait_for_log(rf"certificate for \*\.{NO_DNS_ZONE} not ordered", 30)
    time.sleep(12)  # past UNANSWERABLE_RECHECK: looked at again, not said again
    log = edge.proc.text()
    assert log.count(f"certificate for *.{NO_DNS_ZONE} not ordered") == 1
    assert f"adit edge zone dns {NO_DNS_ZONE} --server" in log
    assert NO_DNS_ZONE not in pebble.proc.text()
    status = _status(edge, account.home)
    assert status[f"*.{NO_DNS_ZONE}"]["last_error_kind"] == "no-dns-target"
    assert status[f"*.{NO_DNS_ZONE}"]["source"] == "edge-ca"
    assert status[f"*.{ZONE}"]["source"] == "acme"

    # adit tunnel info: cloudflared's output, then the hostnames' certificates.
    info = account.cli("tunnel", "info", "web").stdout
    head, _, section = info.partition("\nPUBLIC CERTIFICATES:\n")
    assert "NAME:     web" in head and "CONNECTOR ID" in head, info
    lines = section.splitlines()
    assert lines[0].split() == ["HOSTNAME", "SOURCE", "EXPIRES", "LAST", "ERROR"], info
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows.keys() == {f"*.{ZONE}", f"*.{NO_DNS_ZONE}"}, info
    issued = rows[f"*.{ZONE}"].split()
    assert issued[1] == "acme" and issued[2].endswith("Z") and issued[3] == "-", info
    skipped = rows[f"*.{NO_DNS_ZONE}"].split(maxsplit=3)
    assert skipped[1:3] == ["edge-ca", "-"], info
    assert skipped[3].startswith("no-dns-target: a wildcard needs DNS-01"), info


def test_dns01_first_is_used_for_a_plain_hostname(
    processes: Processes, origin: Origin, named: bind.Bind, tmp_path: Path
) -> None:
    host = f"www.{ZONE}"
    # tls-alpn-01 would work too (pebble's tlsPort is the edge's HTTPS port): dns-01 first wins.
    edge, _, root, https_port = _wildcard_edge(processes, named, tmp_path, "dns-01,tls-alpn-01")
    account = login(edge, tmp_path / "home", zones=(ZONE,))
    _zone_dns(edge, account, named, tmp_path)
    # Not create_tunnel: it would add www.example.test as a zone of its own, without a server.
    out = account.cli("tunnel", "create", "web").stdout
    match = re.search(r"with id ([0-9a-f-]{36})", out)
    assert match, out
    tunnel = Tunnel(
        account, "web", match.group(1), account.home / ".adit" / f"{match.group(1)}.json", host
    )
    account.cli("tunnel", "route", "dns", "web", host)
    start_connector(
        processes, tunnel, write_config(tmp_path / "config.yml", host, [{"service": origin.url}])
    )
    edge.proc.wait_for_log(rf"certificate for {host} issued by .*\(dns-01\)", 90)
    reply = _curl(root, host, https_port)
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout == "hello /"
    answers = named.dig(f"_acme-challenge.{host}", "TXT")
    assert [a for a in answers if a.startswith('"')] == [], answers


def test_failed_validation_removes_the_txt(
    processes: Processes, origin: Origin, named: bind.Bind, tmp_path: Path
) -> None:
    # pebble asks a DNS server that is not the zone's: it never sees the TXT, validation fails.
    elsewhere = free_port()
    with dns_records.serving({"nothing.invalid.": "x"}, port=elsewhere):
        edge, _, _, _ = _wildcard_edge(processes, named, tmp_path, pebble_dns=elsewhere)
        account = login(edge, tmp_path / "home", zones=(ZONE,))
        _zone_dns(edge, account, named, tmp_path)
        create_tunnel(account, "web", f"*.{ZONE}")
        edge.proc.wait_for_log(rf"certificate for \*\.{ZONE} not issued \(validation\)", 90)
    assert f"adding an RR at '_acme-challenge.{ZONE}' TXT" in named.log
    assert f"deleting an RR at _acme-challenge.{ZONE} TXT" in named.log
    answers = named.dig(f"_acme-challenge.{ZONE}", "TXT")
    assert [a for a in answers if a.startswith('"')] == [], answers
    assert _status(edge, account.home)[f"*.{ZONE}"]["last_error_kind"] == "validation"
