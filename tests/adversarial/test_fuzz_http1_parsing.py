"""What the differential fuzzing of the edge's HTTP/1 parser found, shown on a real edge.

Each request here is one h11 reads differently from the edge as it was: a coding the edge does
not decode, an upgrade request carrying a body, a header value's trailing whitespace. The
raw-socket origin records exactly what reaches it. (The endless trailer line the fuzzing also
found is shown on the parser, tests/fuzz/test_http1_differential.py: on today's edge such
bytes never wake the handler, so the connection stalls before the parser is reached.)
"""

from __future__ import annotations

import pytest

from adversary import RawOrigin, Tenant, exchange, status_of
from harness import Edge

pytestmark = pytest.mark.process

HOST = b"app.example.test"


def _settled(edge: Edge, recorder: RawOrigin, seen: int) -> None:
    """A plain request reaches the origin after everything sent before it."""
    reply = exchange(
        edge.http, b"GET /after HTTP/1.1\r\nHost: " + HOST + b"\r\nConnection: close\r\n\r\n"
    )
    assert status_of(reply) == 200
    recorder.wait_for(lambda o: len(o.requests) == seen + 1, what="the request sent after")
    assert recorder.requests[-1].startswith(b"GET /after ")


@pytest.mark.parametrize(
    "request_bytes",
    [
        # llhttp takes a Transfer-Encoding list ending in chunked; the edge decoded the
        # chunks and forwarded a body whose gzip coding it had dropped (h11: 501).
        b"POST /upload HTTP/1.1\r\nHost: " + HOST + b"\r\nTransfer-Encoding: gzip, chunked"
        b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        # An upgrade request with a body: the edge refused it only after passing the request
        # on, so the origin was asked to upgrade and the body's bytes were lost.
        b"GET /ws HTTP/1.1\r\nHost: " + HOST + b"\r\nConnection: Upgrade\r\nUpgrade: websocket"
        b"\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Content-Length: 20\r\n\r\nGET /admin HTTP/1.1\r\n",
    ],
    ids=["gzip-chunked", "upgrade-with-body"],
)
def test_what_h11_refuses_never_reaches_the_origin(
    edge: Edge, tenant: Tenant, recorder: RawOrigin, request_bytes: bytes
) -> None:
    reply = exchange(edge.http, request_bytes)
    assert status_of(reply) == 400, reply[:200]
    _settled(edge, recorder, 0)
    assert len(recorder.requests) == 1  # only the request sent after


def test_header_values_reach_the_origin_without_whitespace(
    edge: Edge, tenant: Tenant, recorder: RawOrigin
) -> None:
    # RFC 9112 §5: the OWS around a field value is not part of it (llhttp kept it at the end).
    reply = exchange(
        edge.http,
        b"GET /ows HTTP/1.1\r\nHost: "
        + HOST
        + b"\r\nX-Probe: a b \t \r\nConnection: close\r\n\r\n",
    )
    assert status_of(reply) == 200
    recorder.wait_for(lambda o: len(o.requests) == 1, what="the request")
    lines = recorder.requests[0].split(b"\r\n")
    assert [line for line in lines if line.lower().startswith(b"x-probe:")] == [b"X-Probe: a b"]
