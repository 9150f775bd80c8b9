"""Issue 13 item 15: SIGTERM drains the edge. systemd sees STOPPING=1 at once, the listening
sockets close first (new visitors are refused), in-flight requests finish within the grace
period (keep-alive ones with ``Connection: close``), idle connections are closed, tunnel
connections go only after the requests ended; a second SIGTERM exits at once."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adversary import (
    RawOrigin,
    Tenant,
    closing_times,
    connect,
    delayed,
    hang,
    read_until_closed,
    status_of,
)
from harness import Edge, Processes, start_edge

pytestmark = pytest.mark.process


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.1)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def edge_env(tmp_path: Path, notify_socket: socket.socket) -> dict[str, str]:
    return {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "ADIT_EDGE_GRACE_PERIOD": "5s"}


@pytest.fixture
def edge(processes: Processes, edge_env: dict[str, str]) -> Edge:
    return start_edge(processes, env=edge_env)


def _notifications(sock: socket.socket) -> list[str]:
    got = []
    while True:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            return got


class _InFlight(threading.Thread):
    """One request on its own connection; keeps the whole reply."""

    def __init__(self, edge: Edge, host: str, *, keep_alive: bool = False) -> None:
        super().__init__(daemon=True)
        close = "" if keep_alive else "Connection: close\r\n"
        self.request = f"GET /slow HTTP/1.1\r\nHost: {host}\r\n{close}\r\n".encode()
        self.edge = edge
        self.reply = b""
        self.closed_after: float | None = None

    def run(self) -> None:
        with connect(self.edge.http, timeout=30) as sock:
            sock.sendall(self.request)
            started = time.monotonic()
            self.reply = read_until_closed(sock, 30)
            self.closed_after = time.monotonic() - started


def test_sigterm_lets_in_flight_requests_finish(
    edge: Edge, tenant: Tenant, recorder: RawOrigin, notify_socket: socket.socket
) -> None:
    recorder.responder = delayed(2.0)
    _notifications(notify_socket)  # READY=1
    # An idle keep-alive connection (served once before the origin turned slow).
    idle = connect(edge.http)
    recorder.responder = delayed(0.0)
    idle.sendall(f"GET /once HTTP/1.1\r\nHost: {tenant.hostname}\r\n\r\n".encode())
    assert status_of(idle.recv(65536)) == 200
    recorder.responder = delayed(2.0)
    flights = [_InFlight(edge, tenant.hostname) for _ in range(5)]
    kept = _InFlight(edge, tenant.hostname, keep_alive=True)
    for flight in [*flights, kept]:
        flight.start()
    recorder.wait_for(lambda o: sum(r.count(b"GET /slow") for r in o.requests) == 6)
    edge.proc.signal(signal.SIGTERM)
    stopping_at = time.monotonic()
    notes: list[str] = []
    while "STOPPING=1" not in notes and time.monotonic() - stopping_at < 5:
        notes += _notifications(notify_socket)
    assert "STOPPING=1" in notes
    # The listener is closed at once: a new visitor is refused.
    deadline = time.monotonic() + 2
    while True:
        try:
            connect(edge.http, timeout=1).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "the listener still accepts"
        time.sleep(0.05)
    # The idle keep-alive connection is closed without waiting for the others.
    assert closing_times([idle], 2)[0] is not None
    idle.close()
    for flight in [*flights, kept]:
        flight.join(20)
        assert status_of(flight.reply) == 200, flight.reply[:200]
    assert b"\r\nConnection: close\r\n" in kept.reply
    assert kept.closed_after is not None and kept.closed_after < 5
    assert edge.proc.wait(timeout=10) == 0
    log = edge.proc.text()
    assert log.index("shutting down") < log.rindex("closing tunnel connection")


def test_the_grace_period_bounds_the_drain(
    edge: Edge, tenant: Tenant, recorder: RawOrigin, edge_env: dict[str, str]
) -> None:
    recorder.responder = hang
    flight = _InFlight(edge, tenant.hostname)
    flight.start()
    recorder.wait_for(lambda o: len(o.connections) == 1)
    edge.proc.signal(signal.SIGTERM)
    started = time.monotonic()
    assert edge.proc.wait(timeout=20) == 0
    assert 4.5 < time.monotonic() - started < 9  # ADIT_EDGE_GRACE_PERIOD=5s
    flight.join(5)


def test_a_second_sigterm_exits_at_once(edge: Edge, tenant: Tenant, recorder: RawOrigin) -> None:
    recorder.responder = hang
    flight = _InFlight(edge, tenant.hostname)
    flight.start()
    recorder.wait_for(lambda o: len(o.connections) == 1)
    edge.proc.signal(signal.SIGTERM)
    edge.proc.wait_for_log("shutting down")
    time.sleep(0.3)
    edge.proc.signal(signal.SIGTERM)
    started = time.monotonic()
    edge.proc.wait(timeout=10)
    assert time.monotonic() - started < 2
    flight.join(5)
