"""The key exchanges a ClientHello offers, read from its first bytes (edge/client_hello.py)."""

from __future__ import annotations

import contextlib
import ssl
import threading

import pytest

from adit.edge.client_hello import CLASSICAL_GROUPS, offered_groups


def _hello(groups: list[int], *, session_id: bytes = b"\x01" * 32) -> bytes:
    def vec(width: int, body: bytes) -> bytes:
        return len(body).to_bytes(width, "big") + body

    group_bytes = b"".join(g.to_bytes(2, "big") for g in groups)
    extensions = (
        (0x0000).to_bytes(2, "big") + vec(2, vec(2, b"\x00" + vec(2, b"h2.cftunnel.com")))
        + (0x000A).to_bytes(2, "big") + vec(2, vec(2, group_bytes))
    )  # fmt: skip
    body = (
        b"\x03\x03" + b"\x02" * 32 + vec(1, session_id) + vec(2, b"\x13\x01\x13\x02")
        + vec(1, b"\x00") + vec(2, extensions)
    )  # fmt: skip
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + vec(2, handshake)


def test_the_groups_of_cloudflareds_post_quantum_hello_are_read() -> None:
    assert offered_groups(_hello([0x11EC])) == frozenset({0x11EC})
    assert offered_groups(_hello([0x11EC, 0x0017])) == frozenset({0x11EC, 0x0017})
    assert not (offered_groups(_hello([0x11EC])) or frozenset()) & CLASSICAL_GROUPS


@pytest.mark.parametrize("cut", [0, 5, 9, 40, 80, 100])
def test_a_hello_not_wholly_there_is_not_judged(cut: int) -> None:
    hello = _hello([0x11EC])
    assert offered_groups(hello[: len(hello) - 1 - cut]) is None


def test_what_is_not_a_client_hello_is_not_judged() -> None:
    assert offered_groups(b"GET / HTTP/1.1\r\n\r\n") is None
    assert offered_groups(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") is None
    assert offered_groups(b"") is None


def test_pythons_own_hello_offers_groups_openssl_has() -> None:
    """A real ClientHello (OpenSSL's), captured from a socket pair: classical groups found."""
    import socket

    server, client = socket.socketpair()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    wrapped = context.wrap_socket(
        client, server_hostname="h2.cftunnel.com", do_handshake_on_connect=False
    )

    def handshake() -> None:
        with contextlib.suppress(ssl.SSLError, OSError):
            wrapped.do_handshake()

    thread = threading.Thread(target=handshake, daemon=True)
    thread.start()
    hello = server.recv(65536)
    server.close()
    thread.join(5)
    wrapped.close()
    groups = offered_groups(hello)
    assert groups is not None and groups & CLASSICAL_GROUPS
