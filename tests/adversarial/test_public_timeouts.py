"""Issue 13 item 3: every wait of a public or API connection has a deadline, and the number of
connections per listener and per client address is capped; another tenant is served while one
client holds heads, bodies and idle sockets open. Small limits are set through ``ADIT_EDGE_*``."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from adversary import (
    RawOrigin,
    SteadyLoad,
    Tenant,
    closing_times,
    connect,
    exchange,
    hang,
    probe,
    raw_origin,
    read_until_closed,
    split_hostport,
    start_tenant,
    status_of,
    worker_pids,
)
from harness import Edge, Processes, start_edge

pytestmark = pytest.mark.process

OTHER_HOST = "other.example.test"
#: Small limits so that a test sees each one act within seconds.
LIMITS = {
    "ADIT_EDGE_HEADER_TIMEOUT": "1s",
    "ADIT_EDGE_KEEPALIVE_TIMEOUT": "1s",
    "ADIT_EDGE_BODY_TIMEOUT": "1s",
    "ADIT_EDGE_BODY_MIN_RATE": "1000",
    "ADIT_EDGE_RESPONSE_TIMEOUT": "2s",
}
#: Slack on top of a limit for the sweep's granularity and a busy machine.
SLACK = 3.0


@pytest.fixture
def edge_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The edge's ``ADIT_EDGE_*`` settings (a test may give its own with ``indirect``)."""
    return getattr(request, "param", LIMITS)


@pytest.fixture
def edge(processes: Processes, edge_env: dict[str, str]) -> Edge:
    return start_edge(processes, env=edge_env)


@pytest.fixture
def other(processes: Processes, edge: Edge) -> Iterator[Tenant]:
    """A second tenant whose requests must be answered throughout."""
    with raw_origin() as origin:
        yield start_tenant(processes, edge, "other", OTHER_HOST, origin.url)


def _head_start(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode()


def test_slow_heads_are_cut_while_another_tenant_is_served(
    edge: Edge, tenant: Tenant, other: Tenant
) -> None:
    edge_probe = probe(edge.proc)
    fds_before = edge_probe.fds()
    with SteadyLoad(edge, other.hostname, rate=10) as load:
        socks = [connect(edge.http) for _ in range(100)]
        try:
            for sock in socks:
                sock.sendall(_head_start(tenant.hostname))
            # One more byte of the head every 0.25 s: never a complete head.
            closed = closing_times(socks, 1 + SLACK + 3, trickle=b"a")
        finally:
            for sock in socks:
                sock.close()
    still_open = [i for i, t in enumerate(closed) if t is None]
    assert still_open == [], f"{len(still_open)} slow heads still open"
    assert max(t for t in closed if t is not None) < 1 + SLACK
    assert load.failures() == [], load.failures()[:3]
    edge_probe.wait_until(
        lambda p: p.close_wait() == 0 and p.fds() <= fds_before + 2, what="sockets released"
    )


def test_a_slow_head_gets_408(edge: Edge, tenant: Tenant) -> None:
    with connect(edge.http) as sock:
        sock.sendall(_head_start(tenant.hostname))
        reply = read_until_closed(sock, 1 + SLACK)
    assert status_of(reply) == 408


def test_idle_connections_are_closed(edge: Edge, tenant: Tenant, other: Tenant) -> None:
    edge_probe = probe(edge.proc)
    fds_before = edge_probe.fds()
    request = f"GET / HTTP/1.1\r\nHost: {tenant.hostname}\r\n\r\n".encode()
    with SteadyLoad(edge, other.hostname, rate=10) as load:
        socks = [connect(edge.http) for _ in range(200)]
        kept = [connect(edge.http) for _ in range(20)]
        try:
            for sock in kept:  # one request each, then idle on a keep-alive connection
                sock.sendall(request)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            closed = closing_times(socks + kept, 1 + SLACK + 3)
        finally:
            for sock in socks + kept:
                sock.close()
    assert [i for i, t in enumerate(closed) if t is None] == []
    assert max(t for t in closed if t is not None) < 1 + SLACK
    assert load.failures() == [], load.failures()[:3]
    edge_probe.wait_until(
        lambda p: p.close_wait() == 0 and p.fds() <= fds_before + 2, what="sockets released"
    )


def _upload_head(host: str, length: int) -> bytes:
    return f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n\r\n".encode()


def test_a_stalled_upload_gets_408_and_its_origin_request_ends(
    edge: Edge, tenant: Tenant, recorder: RawOrigin
) -> None:
    recorder.responder = hang
    with connect(edge.http) as sock:
        sock.sendall(_upload_head(tenant.hostname, 1000) + b"0123456789")
        started = time.monotonic()
        reply = read_until_closed(sock, 1 + SLACK + 3)
    assert status_of(reply) == 408, reply[:200]
    assert time.monotonic() - started < 1 + SLACK
    recorder.wait_for(lambda o: o.open_connections == 0, what="the origin request closed")


def test_an_upload_below_the_minimum_rate_is_cut(edge: Edge, tenant: Tenant) -> None:
    # One byte every 0.25 s never stalls for the 1 s body timeout, but 4 B/s is far below
    # the 1000 B/s minimum: the allowance runs out.
    with connect(edge.http) as sock:
        sock.sendall(_upload_head(tenant.hostname, 1000))
        closed = closing_times([sock], 1 + SLACK + 3, trickle=b"x")
    assert closed[0] is not None and closed[0] < 1 + SLACK


def test_no_response_in_time_gets_524(edge: Edge, tenant: Tenant, recorder: RawOrigin) -> None:
    recorder.responder = hang
    started = time.monotonic()
    reply = exchange(
        edge.http,
        f"GET /slow HTTP/1.1\r\nHost: {tenant.hostname}\r\n\r\n".encode(),
        timeout=2 + SLACK + 3,
    )
    assert status_of(reply) == 524, reply[:200]
    assert b"ray id: " in reply.lower()
    assert time.monotonic() - started < 2 + SLACK
    recorder.wait_for(lambda o: o.open_connections == 0, what="the origin request closed")


def test_a_frozen_connector_gets_524_in_time(edge: Edge, tenant: Tenant) -> None:
    workers = worker_pids(tenant.connector)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        reply = exchange(
            edge.http,
            f"GET / HTTP/1.1\r\nHost: {tenant.hostname}\r\n\r\n".encode(),
            timeout=2 + SLACK + 3,
        )
        elapsed = time.monotonic() - started
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    assert status_of(reply) == 524, reply[:200]
    assert elapsed < 2 + SLACK


def _tls_connect(address: str, source: str, ca: str) -> socket.socket:
    host, port = split_hostport(address.removeprefix("https://"))
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    raw = socket.create_connection((host, port), timeout=10, source_address=(source, 0))
    return context.wrap_socket(raw, server_hostname="localhost")


def test_the_api_listener_has_a_head_deadline_too(edge: Edge) -> None:
    sock = _tls_connect(edge.api_url, "127.0.0.1", str(edge.ca))
    with sock:
        sock.sendall(b"GET /client/v4/accounts HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        reply = read_until_closed(sock, 1 + SLACK + 3)
    assert status_of(reply) == 408


CAPS = {
    **LIMITS,
    "ADIT_EDGE_HEADER_TIMEOUT": "30s",
    "ADIT_EDGE_KEEPALIVE_TIMEOUT": "30s",
    "ADIT_EDGE_MAX_CONNECTIONS_PER_IP": "20",
}


@pytest.mark.parametrize("edge_env", [CAPS], indirect=True)
def test_connections_per_client_address_are_capped(
    edge: Edge, tenant: Tenant, other: Tenant
) -> None:
    edge_probe = probe(edge.proc)
    with SteadyLoad(edge, other.hostname, rate=10) as load:
        flood = [connect(edge.http, source="127.0.0.2") for _ in range(50)]
        api_flood = [_tls_connect(edge.api_url, "127.0.0.3", str(edge.ca)) for _ in range(30)]
        try:
            closed = closing_times(flood + api_flood, 2)
            refused = [i for i, t in enumerate(closed) if t is not None]
            assert len([i for i in refused if i < 50]) == 30
            assert len([i for i in refused if i >= 50]) == 10
            peers = {
                c.raddr.ip
                for c in edge_probe.process.net_connections(kind="tcp")
                if c.raddr and c.status == "ESTABLISHED"
            }
            assert {"127.0.0.2", "127.0.0.3"} <= peers
        finally:
            for sock in flood + api_flood:
                sock.close()
    assert load.failures() == [], load.failures()[:3]


@pytest.mark.parametrize("edge_env", [{**CAPS, "ADIT_EDGE_MAX_CONNECTIONS": "30"}], indirect=True)
def test_connections_per_listener_are_capped(edge: Edge, tenant: Tenant) -> None:
    sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    flood = [connect(edge.http, source=sources[i % 3]) for i in range(45)]
    try:
        closed = closing_times(flood, 2)
        assert len([t for t in closed if t is not None]) == 15
    finally:
        for sock in flood:
            sock.close()
    # Once the flood is gone the listener serves again.
    deadline = time.monotonic() + 10
    while True:
        reply = exchange(
            edge.http,
            f"GET / HTTP/1.1\r\nHost: {tenant.hostname}\r\nConnection: close\r\n\r\n".encode(),
        )
        if status_of(reply) == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status_of(reply) == 200
