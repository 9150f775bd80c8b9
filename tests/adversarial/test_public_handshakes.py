"""Connections that never finish their TLS handshake count against the listener's caps.

The HTTPS and API listeners cap connections per listener and per client address
(``--max-connections``, ``--max-connections-per-ip``). A client that connects and sends no
ClientHello holds a socket until the handshake timeout; before, such connections were not
counted at all (the caps applied once TLS was up), so one address could hold as many as it
could open in ten seconds. Now a connection beyond the caps is closed as soon as it is
accepted, whether its handshake is done or not.
"""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from adversary import connect, read_until_closed, split_hostport, status_of
from harness import Processes, start_edge

pytestmark = pytest.mark.process

CAP = 4


def _closed_soon(sock: socket.socket, within: float = 3.0) -> bool:
    """Whether the edge closed ``sock`` (EOF or reset) within ``within`` seconds."""
    started = time.monotonic()
    read_until_closed(sock, timeout=within)
    return time.monotonic() - started < within


def _silent(address: str, count: int) -> list[socket.socket]:
    """``count`` connections that never send a byte (no ClientHello)."""
    return [connect(address) for _ in range(count)]


@pytest.mark.parametrize("listener", ["https", "api"])
def test_a_silent_handshake_beyond_the_cap_is_closed_at_once(
    processes: Processes, listener: str
) -> None:
    edge = start_edge(
        processes,
        https=True,
        env={"ADIT_EDGE_MAX_CONNECTIONS_PER_IP": str(CAP), "ADIT_EDGE_HEADER_TIMEOUT": "60s"},
    )
    address = edge.https if listener == "https" else edge.api_url.removeprefix("https://")
    held = _silent(address, CAP)
    try:
        time.sleep(0.3)  # all of them accepted and waiting for their handshakes
        extra = connect(address)
        with extra:
            assert _closed_soon(extra), "a connection beyond the per-address cap was kept"
        for sock in held:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)  # still open, still waiting
        # Another address is not held up by this one's connections.
        host, port = split_hostport(address)
        context = ssl.create_default_context(cafile=str(edge.ca))
        context.check_hostname = False
        with (
            socket.create_connection(
                (host, port), timeout=10, source_address=("127.0.0.2", 0)
            ) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET / HTTP/1.1\r\nHost: nobody.example.test\r\nConnection: close\r\n\r\n")
            assert status_of(read_until_closed(tls)) in (401, 404)
    finally:
        for sock in held:
            sock.close()
