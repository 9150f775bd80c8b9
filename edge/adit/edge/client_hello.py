"""What a TLS ClientHello offers for key exchange, read before OpenSSL sees it.

cloudflared --post-quantum offers X25519MLKEM768 alone; over HTTP/2 the edge's TLS is the
system OpenSSL's, and before 3.5 OpenSSL has no ML-KEM: it fails the handshake and the TLS
layer drops the connection without sending its alert, so the client sees a reset. Reading the
offer from the first bytes (peeked, not consumed) lets the edge answer such a client with the
alert and a reason instead. Only the parts needed are parsed; anything unexpected means "not
known", and the handshake then goes to OpenSSL as usual.
"""

from __future__ import annotations

__all__ = ["CLASSICAL_GROUPS", "HANDSHAKE_FAILURE_ALERT", "offered_groups"]

#: The named groups OpenSSL 3.0 can do (RFC 8446 §4.2.7, RFC 7919): x25519, x448, the NIST
#: curves and the finite-field groups.
CLASSICAL_GROUPS = frozenset({0x0017, 0x0018, 0x0019, 0x001D, 0x001E, *range(0x0100, 0x0105)})
#: A plaintext TLS alert record: fatal handshake_failure (no keys exist yet, RFC 8446 §6).
HANDSHAKE_FAILURE_ALERT = bytes([21, 3, 3, 0, 2, 2, 40])

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SUPPORTED_GROUPS = 0x000A


def offered_groups(data: bytes) -> frozenset[int] | None:
    """The ``supported_groups`` of the ClientHello at the start of ``data``; None when it is
    not (wholly) there or not a ClientHello."""
    if len(data) < 9 or data[0] != _HANDSHAKE or data[5] != _CLIENT_HELLO:
        return None
    end = min(len(data), 5 + int.from_bytes(data[3:5], "big"))
    at = 9 + 2 + 32  # record and handshake headers, legacy_version, random
    for width in (1, 2, 1):  # session id, cipher suites, compression methods
        if at + width > end:
            return None
        at += width + int.from_bytes(data[at : at + width], "big")
    if at + 2 > end:
        return None
    stop = min(end, at + 2 + int.from_bytes(data[at : at + 2], "big"))
    at += 2
    while at + 4 <= stop:
        kind = int.from_bytes(data[at : at + 2], "big")
        size = int.from_bytes(data[at + 2 : at + 4], "big")
        body = data[at + 4 : at + 4 + size]
        if len(body) < size:
            return None
        if kind == _SUPPORTED_GROUPS:
            if len(body) < 2:
                return None
            groups = body[2 : 2 + int.from_bytes(body[:2], "big")]
            return frozenset(
                int.from_bytes(groups[i : i + 2], "big") for i in range(0, len(groups) - 1, 2)
            )
        at += 4 + size
    return None


_SERVER_NAME = 0x0000
_ALPN = 0x0010


def hello_extensions(data: bytes) -> dict[int, bytes] | None:
    """The extensions (type → body) of the ClientHello at the start of ``data``; None when
    it is not (wholly) there or not a ClientHello."""
    if len(data) < 9 or data[0] != _HANDSHAKE or data[5] != _CLIENT_HELLO:
        return None
    end = 5 + int.from_bytes(data[3:5], "big")
    if len(data) < end:
        return None
    at = 9 + 2 + 32
    for width in (1, 2, 1):
        if at + width > end:
            return None
        at += width + int.from_bytes(data[at : at + width], "big")
    if at + 2 > end:
        return None
    stop = min(end, at + 2 + int.from_bytes(data[at : at + 2], "big"))
    at += 2
    out: dict[int, bytes] = {}
    while at + 4 <= stop:
        kind = int.from_bytes(data[at : at + 2], "big")
        size = int.from_bytes(data[at + 2 : at + 4], "big")
        body = data[at + 4 : at + 4 + size]
        if len(body) < size:
            return None
        out[kind] = body
        at += 4 + size
    return out


def server_name_and_alpn(data: bytes) -> tuple[str, tuple[str, ...]] | None:
    """The SNI host name (lower-case, "" without one) and the ALPN protocols a ClientHello
    offers; None when ``data`` holds no whole ClientHello."""
    extensions = hello_extensions(data)
    if extensions is None:
        return None
    name = ""
    sni = extensions.get(_SERVER_NAME, b"")
    # server_name_list: length(2), then entries of type(1) length(2) name.
    if len(sni) >= 5 and sni[2] == 0:
        size = int.from_bytes(sni[3:5], "big")
        name = sni[5 : 5 + size].decode("ascii", "replace").lower()
    protocols: list[str] = []
    alpn = extensions.get(_ALPN, b"")
    at, stop = 2, min(len(alpn), 2 + int.from_bytes(alpn[:2], "big")) if len(alpn) >= 2 else 0
    while at < stop:
        size = alpn[at]
        protocols.append(alpn[at + 1 : at + 1 + size].decode("ascii", "replace"))
        at += 1 + size
    return name, tuple(protocols)
