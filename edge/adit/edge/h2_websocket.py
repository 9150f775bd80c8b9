"""WebSocket over HTTP/2 (RFC 8441) as the tunnel sees it: the HTTP/1.1 upgrade it stands for.

A visitor's extended CONNECT (``:method CONNECT``, ``:protocol websocket``) has no
``Upgrade``, ``Connection`` or ``Sec-WebSocket-Key`` (RFC 8441 §5: HTTP/2 has no connection
upgrade, and the stream itself proves the server speaks WebSocket). Connectors know only the
HTTP/1.1 form: cloudflared's origin proxy sets ``Connection``/``Upgrade``/``Sec-WebSocket-
Version`` itself but passes the request's ``Sec-WebSocket-Key`` on to the origin, which
needs one to answer 101. So the edge forwards the GET upgrade an HTTP/1.1 visitor would have
sent, with a key of its own, and answers the visitor ``:status 200`` without the origin's
``Sec-WebSocket-Accept`` (the proof of a key the visitor never sent).

Sans-IO: the caller brings the key's random bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

from adit.edge.http1_request import Request
from adit.edge.pages import ErrorPage
from adit.protocol.websocket import client_key

__all__ = [
    "UNSUPPORTED_PROTOCOL",
    "WEBSOCKET",
    "WEBSOCKET_REFUSED",
    "response_headers",
    "upgrade_accepted",
    "websocket_request",
]

#: The one ``:protocol`` the edge carries.
WEBSOCKET = b"websocket"

#: An extended CONNECT for another protocol (RFC 8441 leaves the refusal to the server;
#: RFC 9110 §15.6.2: the server does not support the functionality).
UNSUPPORTED_PROTOCOL = ErrorPage(
    501,
    "501",
    "Protocol not supported",
    "This edge carries only the websocket protocol over extended CONNECT (RFC 8441).",
)

#: The origin answered the upgrade with a 2xx but not as a WebSocket server: over HTTP/2 the
#: visitor would take any 2xx for the WebSocket's acceptance.
WEBSOCKET_REFUSED = ErrorPage(
    502,
    "502",
    "Bad gateway: the origin did not accept the WebSocket",
    "The origin answered the WebSocket request as an ordinary one (no Sec-WebSocket-Accept). "
    "The tunnel owner should check that this path's service speaks WebSocket.",
)

# Headers the origin's 101 carries that a 200 on an HTTP/2 stream cannot: the key's proof,
# and framing that belongs to the upgraded connection.
_NOT_FORWARDED = frozenset({"sec-websocket-accept", "content-length", "transfer-encoding"})
# What the visitor might send that the edge's own upgrade replaces.
_REPLACED = frozenset({b"sec-websocket-key", b"upgrade", b"connection"})


def websocket_request(connect: Request, nonce: bytes) -> Request:
    """The HTTP/1.1 upgrade request an extended CONNECT stands for; ``nonce``: 16 random
    bytes for its ``Sec-WebSocket-Key``."""
    request = Request()
    request.method = b"GET"
    request.target = connect.target
    request.host = connect.host
    request.http_version = connect.http_version
    request.keep_alive = True
    # The stream's DATA after the head are WebSocket frames, not a body.
    request.has_body = False
    request.upgrade = True
    headers = [(n, v) for n, v in connect.headers if n.lower() not in _REPLACED]
    headers += [
        (b"upgrade", WEBSOCKET),
        (b"connection", b"upgrade"),
        (b"sec-websocket-key", client_key(nonce).encode("ascii")),
    ]
    if not any(n.lower() == b"sec-websocket-version" for n, _ in headers):
        # RFC 8441 §5 has the client send it; cloudflared would set 13 anyway.
        headers.append((b"sec-websocket-version", b"13"))
    request.headers = headers
    return request


def upgrade_accepted(headers: Sequence[tuple[str, str]]) -> bool:
    """Whether the origin's answer accepted the upgrade. A connector answers 200 on the
    tunnel either way (cloudflared's HTTP/2 writer turns the origin's 101 into 200); what
    tells is the origin's ``Sec-WebSocket-Accept``, passed on with the 101's headers."""
    return any(name.lower() == "sec-websocket-accept" for name, _ in headers)


def response_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The origin's 101 headers as the visitor's 200 carries them (``Sec-WebSocket-Protocol``
    and ``-Extensions`` go on: the visitor's WebSocket negotiated them)."""
    return [(n, v) for n, v in headers if n.lower() not in _NOT_FORWARDED]
