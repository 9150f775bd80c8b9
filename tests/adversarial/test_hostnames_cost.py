"""Issue 13 item 2: a request's cost is proportional to its input, and bounded.

A ``Host`` of 32,000 one-letter labels (a 64 KB head) used to build every wildcard suffix of
the name and query the store once per label, on the event loop: over 10 s of every tenant's
routing frozen and RSS past 1 GB. Hostnames are validated first (RFC 1035: 253 bytes, 63 per
label, letters, digits, hyphens, underscores; else 400) and looked up in memory.
"""

from __future__ import annotations

import time

import pytest

from adversary import SteadyLoad, Tenant, exchange, probe, start_tenant, status_of
from harness import Edge, Origin, Processes

pytestmark = pytest.mark.process

MIB = 1 << 20


@pytest.fixture
def served(processes: Processes, edge: Edge, origin: Origin) -> Tenant:
    """A tenant in front of the harness's keep-alive origin (a SteadyLoad needs an origin
    that answers every request of a reused connection; RawOrigin answers one)."""
    return start_tenant(processes, edge, "steady", "steady.example.test", origin.url)


def _get(edge: Edge, host: str) -> bytes:
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    return exchange(edge.http, request, timeout=30)


def test_a_host_of_32000_labels_is_refused_without_stalling_anyone(
    edge: Edge, served: Tenant
) -> None:
    tenant = served
    edge_probe = probe(edge.proc)
    assert status_of(_get(edge, tenant.hostname)) == 200
    rss_before = edge_probe.rss()
    huge = ".".join(["a"] * 32_000)
    with SteadyLoad(edge, tenant.hostname, rate=10, timeout=5) as load:
        time.sleep(0.5)
        replies = [_get(edge, huge) for _ in range(3)]
        time.sleep(1.0)
    assert [status_of(r) for r in replies] == [400, 400, 400], replies[0][:300]
    assert load.outcomes, "the other tenant's load sent nothing"
    assert load.failures() == [], load.failures()[:3]
    grown = edge_probe.rss() - rss_before
    assert grown < 64 * MIB, f"edge RSS grew by {grown / MIB:.0f} MiB"


@pytest.mark.parametrize(
    "host",
    [
        "a" * 64 + ".example.test",  # a label longer than 63
        ".".join(["abc"] * 70),  # 279 characters
        "app..example.test",
        "app.example.test/evil",
        "app example.test",
    ],
)
def test_hosts_that_are_no_hostname_get_400(edge: Edge, tenant: Tenant, host: str) -> None:
    reply = _get(edge, host)
    assert status_of(reply) == 400, reply[:300]
    # The visitor's own bytes are not echoed back into the page.
    assert host.encode() not in reply
    assert status_of(_get(edge, tenant.hostname)) == 200
