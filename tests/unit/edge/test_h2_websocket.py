"""RFC 8441's extended CONNECT as the HTTP/1.1 upgrade the tunnel carries (sans-IO)."""

from __future__ import annotations

import base64

from adit.edge.h2_websocket import response_headers, upgrade_accepted, websocket_request
from adit.edge.header_policy import is_websocket_upgrade
from adit.edge.http1_request import Request


def _connect(*headers: tuple[bytes, bytes]) -> Request:
    request = Request()
    request.method = b"CONNECT"
    request.target = b"/chat?room=1"
    request.host = b"app.example.test"
    request.http_version = "2"
    request.has_body = True
    request.headers = list(headers)
    return request


def test_an_extended_connect_becomes_a_get_upgrade_with_a_key_of_the_edges() -> None:
    nonce = bytes(range(16))
    upgrade = websocket_request(
        _connect(
            (b"sec-websocket-version", b"13"),
            (b"sec-websocket-protocol", b"chat"),
            (b"sec-websocket-key", b"visitor's own"),
        ),
        nonce,
    )
    assert (upgrade.method, upgrade.target, upgrade.host) == (
        b"GET",
        b"/chat?room=1",
        b"app.example.test",
    )
    assert upgrade.upgrade and not upgrade.has_body
    assert is_websocket_upgrade(upgrade.headers)
    keys = [v for n, v in upgrade.headers if n == b"sec-websocket-key"]
    assert keys == [base64.b64encode(nonce)]
    assert (b"sec-websocket-protocol", b"chat") in upgrade.headers
    assert [v for n, v in upgrade.headers if n == b"sec-websocket-version"] == [b"13"]


def test_a_missing_version_is_13() -> None:
    upgrade = websocket_request(_connect(), bytes(16))
    assert (b"sec-websocket-version", b"13") in upgrade.headers


def test_the_visitor_gets_the_101s_headers_without_the_accept() -> None:
    headers = [
        ("Sec-Websocket-Accept", "x"),
        ("Sec-WebSocket-Protocol", "chat"),
        ("Content-Length", "0"),
    ]
    assert upgrade_accepted(headers)
    assert not upgrade_accepted([("Content-Type", "text/html")])
    assert response_headers(headers) == [("Sec-WebSocket-Protocol", "chat")]
