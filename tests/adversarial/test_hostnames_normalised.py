"""Issue 13 item 9: the edge and the connector have one idea of a hostname.

The edge routed ``Host: RAW.EXAMPLE.COM`` and ``raw.example.com.`` to the tunnel, but the
connector's ingress matched case-sensitively and kept the trailing dot, so those requests hit
the catch-all. Both sides now compare names in the one spelling
``adit.protocol.hostnames.normalize_hostname`` gives.
"""

from __future__ import annotations

import pytest

from adversary import RawOrigin, exchange, start_tenant, status_of
from harness import Edge, Processes

pytestmark = pytest.mark.process

HOST = "raw.example.com"


@pytest.mark.parametrize(
    "spelling",
    ["raw.example.com", "RAW.EXAMPLE.COM", "raw.example.com.", "Raw.Example.Com.:80"],
)
def test_every_spelling_reaches_the_rule(
    processes: Processes, edge: Edge, recorder: RawOrigin, spelling: str
) -> None:
    # A rule for raw.example.com and a 404 catch-all (write_config adds it).
    start_tenant(processes, edge, "raw", HOST, recorder.url)
    request = f"GET /x HTTP/1.1\r\nHost: {spelling}\r\nConnection: close\r\n\r\n".encode()
    reply = exchange(edge.http, request)
    assert status_of(reply) == 200, reply[:300]
    recorder.wait_for(lambda o: len(o.requests) == 1, what="the request at the rule's origin")
    # The origin sees the visitor's Host as it was sent: only matching is normalised.
    assert f"\r\nHost: {spelling}\r\n".encode() in recorder.requests[0]
