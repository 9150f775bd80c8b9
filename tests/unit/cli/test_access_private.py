"""``adit access --destination``'s client side without a network: the login it reads, where its
WebSocket goes, and how the edge's refusals read."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from adit.cli.access import AccessError, HandshakeRefused
from adit.cli.access_private import (
    PrivateAccount,
    check_destination,
    load_account,
    private_target,
    refusal_message,
)
from adit.credentials import OriginCert, write_origin_cert

ACCOUNT = PrivateAccount("https://edge.example:7843", "adit.id.secret", "acct", "CA PEM")


@pytest.mark.parametrize(
    ("api_url", "host_header", "path_start", "address", "port"),
    [
        (
            "https://edge.example:7843",
            "edge.example:7843",
            "/client/v4/accounts/acct/",
            "edge.example",
            7843,
        ),
        (
            "https://edge.example/client/v4",
            "edge.example",
            "/client/v4/accounts/acct/",
            "edge.example",
            443,
        ),
        ("https://[::1]:7843/", "[::1]:7843", "/client/v4/accounts/acct/", "::1", 7843),
        (
            "https://api.example/adit/",
            "api.example",
            "/adit/client/v4/accounts/acct/",
            "api.example",
            443,
        ),
    ],
)
def test_the_flow_goes_to_the_api_in_cert_pem(
    api_url: str, host_header: str, path_start: str, address: str, port: int
) -> None:
    account = PrivateAccount(api_url, "adit.id.secret", "acct", "CA PEM")
    target, headers = private_target(account, "tcp", "10.1.2.3:22", None)
    assert (target.host_header, target.address, target.port) == (host_header, address, port)
    assert target.path == f"{path_start}private/tcp?destination=10.1.2.3%3A22"
    assert target.tls and target.verify and target.ca_pem == "CA PEM"
    assert ("Authorization", "Bearer adit.id.secret") in headers


def test_a_virtual_network_and_an_ipv6_destination_travel_in_the_query() -> None:
    vnet = uuid.uuid4()
    target, _ = private_target(ACCOUNT, "udp", "[fd00::53]:53", vnet)
    assert target.path == (
        f"/client/v4/accounts/acct/private/udp?destination=%5Bfd00%3A%3A53%5D%3A53"
        f"&virtual_network_id={vnet}"
    )


def test_a_destination_that_is_no_address_is_told_before_anything_else() -> None:
    with pytest.raises(AccessError, match="names are not resolved"):
        check_destination("db.corp:5432")
    check_destination("10.1.2.3:5432")


def test_the_login_comes_from_cert_pem_or_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(AccessError, match="run `adit tunnel login` first"):
        load_account(str(tmp_path / "missing.pem"), None)
    cert = tmp_path / "cert.pem"
    write_origin_cert(
        cert,
        OriginCert("zone", "acct", "adit.id.secret", api_url="https://e:1", edge_ca_pem=""),
    )
    account = load_account(str(cert), None)
    assert (account.api_url, account.account_tag, account.api_token) == (
        "https://e:1",
        "acct",
        "adit.id.secret",
    )
    assert load_account(str(cert), "https://other:2").api_url == "https://other:2"
    assert "secret" not in repr(account)
    write_origin_cert(cert, OriginCert("zone", "acct", "adit.id.secret"))  # cloudflared's
    with pytest.raises(AccessError, match="names no adit edge API"):
        load_account(str(cert), None)


def _refused(status: int, message: str) -> HandshakeRefused:
    body = json.dumps({"success": False, "errors": [{"code": 1, "message": message}]})
    return HandshakeRefused(status, body.encode())


def test_refusals_read_as_the_edge_wrote_them() -> None:
    assert refusal_message(_refused(404, "no route for 10.9.9.9")) == "no route for 10.9.9.9 (404)"
    assert "run `adit tunnel login` again" in refusal_message(_refused(401, "Authentication error"))
    assert "bad handshake" in refusal_message(HandshakeRefused(502, b"<html>"))
