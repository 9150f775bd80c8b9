"""The adversarial tools themselves: a request reaches the recorder byte for byte."""

from __future__ import annotations

import pytest

from adversary import RawOrigin, Tenant, exchange, probe, status_of
from harness import Edge

pytestmark = pytest.mark.process


def test_recorder_sees_the_request(edge: Edge, tenant: Tenant, recorder: RawOrigin) -> None:
    reply = exchange(
        edge.http,
        f"GET /x HTTP/1.1\r\nHost: {tenant.hostname}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status_of(reply) == 200
    recorder.wait_for(lambda o: len(o.requests) == 1, what="one request")
    assert recorder.requests[0].startswith(b"GET /x HTTP/1.1\r\n")
    edge_probe = probe(edge.proc)
    assert edge_probe.fds() > 0 and edge_probe.rss() > 0
