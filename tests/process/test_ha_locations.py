"""HA over two edge locations: 4 connections spread 2+2, one location killed and restarted.

Both ``adit edge`` processes share one state directory (store and CA): the simplest correct
stand-in for the shared database a multi-node edge will use. Each has its own location name
and two tunnel listeners.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from harness import (
    Edge,
    Origin,
    Proc,
    Processes,
    create_tunnel,
    edge_args,
    login,
    request,
    start_connector,
    start_location,
    write_config,
)
from ports import free_port

pytestmark = pytest.mark.process

HOST = "ha.example.test"
REGISTERED = r"Registered tunnel connection tunnelID="
#: The HTTP/2 runs: a refused TCP dial is what these tests watch (QUIC:
#: test_quic_operations.py).
HTTP2 = ["--protocol", "http2"]


def _registered_indexes(edge_log: str) -> list[int]:
    return [int(i) for i in re.findall(REGISTERED + r"\S+ connIndex=(\d+)", edge_log)]


def _wait_registered(proc: Proc, count: int, timeout: float = 20.0) -> list[int]:
    proc.wait_for_log(REGISTERED, timeout=timeout, count=count)
    return _registered_indexes(proc.text())


def test_two_locations_one_killed_and_restarted(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    any_port = ["127.0.0.1:0", "127.0.0.1:0"]
    edge_a = start_location(processes, "edge-a", "a", any_port)
    # Location b is started again on its addresses: planned ports, outside the ephemeral
    # range, which another test's outgoing connection or QUIC socket may take meanwhile.
    planned = [f"127.0.0.1:{free_port('both')}" for _ in range(2)]
    edge_b = start_location(processes, "edge-b", "b", planned, edge_a)
    assert len(edge_a.tunnel) == 2 and len(edge_b.tunnel) == 2
    account = login(edge_a, tmp_path / "home")
    tunnel = create_tunnel(account, "ha", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    connector = start_connector(
        processes,
        tunnel,
        config,
        extra=[*HTTP2, *edge_args(edge_a, edge_b), "--ha-connections", "4", "--workers", "2"],
        wait=0,
    )

    # Spread 2+2: each location holds two of the four connections.
    in_a = _wait_registered(edge_a.proc, 2)
    in_b = _wait_registered(edge_b.proc, 2)
    assert sorted(in_a + in_b) == [0, 1, 2, 3], (in_a, in_b)
    assert len(in_a) == 2 and len(in_b) == 2
    connector_log = connector.text()
    assert "location=a" in connector_log and "location=b" in connector_log
    for edge in (edge_a, edge_b):
        assert request(edge, HOST, path="/echo-headers").status == 200

    # Location b dies at once (no GOAWAY): requests through location a never fail.
    edge_b.proc.popen.kill()
    edge_b.proc.popen.wait(timeout=10)
    failures = []
    for n in range(60):
        reply = request(edge_a, HOST, path=f"/echo-headers?n={n}", timeout=10)
        if reply.status != 200:
            failures.append((n, reply.status, reply.body[:200]))
    assert failures == []

    # Restarted on the same addresses, location b gets its two connections back.
    edge_b2 = start_location(processes, "edge-b2", "b", edge_b.tunnel, edge_a)
    assert edge_b2.tunnel == edge_b.tunnel
    back = _wait_registered(edge_b2.proc, 2, timeout=45)
    assert sorted(back) == sorted(in_b)
    assert request(edge_b2, HOST, path="/echo-headers").status == 200
    # Location a was never touched: still exactly its first two registrations.
    assert sorted(_registered_indexes(edge_a.proc.text())) == sorted(in_a)


def _refusing_port() -> socket.socket:
    """A bound, never listening socket: connecting to it is refused at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_a_refusing_address_never_spins(
    processes: Processes, edge: Edge, origin: Origin, tmp_path: Path
) -> None:
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "refused", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    refusing = _refusing_port()
    try:
        port = refusing.getsockname()[1]
        connector = start_connector(
            processes,
            tunnel,
            config,
            extra=[*HTTP2, "--edge", f"127.0.0.1:{port}", "--ha-connections", "1"],
            wait=0,
        )
        attempt = rf"failed to dial the edge at 127\.0\.0\.1:{port}"
        connector.wait_for_log(attempt, timeout=20)
        first = time.monotonic()
        # Watch a bounded window; the jittered backoff (0.5-1 s, 1-2 s, 2-4 s, 4-8 s, ...)
        # allows at most 5 attempts in any 12 s, a tight loop thousands.
        while time.monotonic() - first < 12.0:
            assert connector.popen.poll() is None, connector.text()
            time.sleep(0.5)
        attempts = len(re.findall(attempt, connector.text()))
        assert 3 <= attempts <= 5, connector.text()
        assert re.search(r"retrying in \d+\.\ds", connector.text())
    finally:
        refusing.close()
