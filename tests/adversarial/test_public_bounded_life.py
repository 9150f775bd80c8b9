"""Issue 13 item 1: a request whose body breaks after its head was forwarded, or an upload the
client abandons, is answered (400 when nothing was sent yet), its tunnel stream is reset, and
its socket is closed: nothing is left in CLOSE-WAIT, the edge's descriptors come back."""

from __future__ import annotations

import time

import pytest

from adversary import (
    RawOrigin,
    SteadyLoad,
    Tenant,
    connect,
    exchange,
    probe,
    raw_origin,
    start_tenant,
    status_of,
)
from harness import Edge, Processes

pytestmark = pytest.mark.process

OTHER_HOST = "other.example.test"

_CHUNKED = "POST /upload HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"

#: Bodies llhttp rejects only once the head is parsed and forwarded.
BROKEN_BODIES = {
    "hex-prefixed size": (_CHUNKED, "0x5\r\nhi\r\n0\r\n\r\n"),
    "negative size": (_CHUNKED, "-5\r\nhello\r\n0\r\n\r\n"),
    "size with a space": (_CHUNKED, "5 \r\nhello\r\n0\r\n\r\n"),
    "size overflow": (_CHUNKED, "fffffffffffffffffffff\r\nhi\r\n0\r\n\r\n"),
    "data longer than its size": (_CHUNKED, "2\r\nhello\r\n0\r\n\r\n"),
    "coding other than chunked": (
        "POST /upload HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: gzip\r\n\r\n",
        "hello",
    ),
}


def _broken(name: str, host: str) -> bytes:
    head, body = BROKEN_BODIES[name]
    return (head.format(host=host) + body).encode()


@pytest.mark.parametrize("name", sorted(BROKEN_BODIES))
def test_a_body_that_breaks_gets_400_and_a_close(
    edge: Edge, tenant: Tenant, recorder: RawOrigin, name: str
) -> None:
    started = time.monotonic()
    reply = exchange(edge.http, _broken(name, tenant.hostname), timeout=10)
    assert status_of(reply) == 400, reply[:200]
    assert b"Connection: close\r\n" in reply
    assert time.monotonic() - started < 8, "the edge did not close the connection"
    # The origin saw the head, never a request that looked whole: its stream was reset and
    # the connector let go of the origin connection.
    recorder.wait_for(lambda o: o.open_connections == 0, what="the origin connection closed")


def test_broken_and_abandoned_uploads_leave_no_socket_behind(
    processes: Processes, edge: Edge, tenant: Tenant, recorder: RawOrigin
) -> None:
    edge_probe = probe(edge.proc)
    with raw_origin() as other_origin:
        other = start_tenant(processes, edge, "other", OTHER_HOST, other_origin.url)
        fds_before = edge_probe.fds()
        with SteadyLoad(edge, other.hostname, rate=10) as load:
            for _round in range(5):
                for name in sorted(BROKEN_BODIES):
                    with connect(edge.http) as sock:
                        sock.sendall(_broken(name, tenant.hostname))
                # An upload given up on part-way: 10 of 1000 bytes, then the client closes.
                for _ in range(4):
                    with connect(edge.http) as sock:
                        sock.sendall(
                            f"POST /upload HTTP/1.1\r\nHost: {tenant.hostname}\r\n"
                            "Content-Length: 1000\r\n\r\n0123456789".encode()
                        )
            time.sleep(1.0)  # the other tenant's requests go on meanwhile
            edge_probe.wait_until(
                lambda p: p.close_wait() == 0 and p.fds() <= fds_before + 2,
                timeout=10,
                what="no CLOSE-WAIT socket and the descriptors back",
            )
        assert load.failures() == [], load.failures()[:3]
        assert len(load.outcomes) >= 5
    recorder.wait_for(lambda o: o.open_connections == 0, what="every origin connection closed")
