"""A tunnel listener on port 0 serves TLS over TCP and QUIC over UDP on one port, whatever
else holds UDP ports.

The kernel picks the TCP port knowing nothing of UDP: when something else holds that port for
UDP, the edge binds both again elsewhere instead of failing to start (a suite that starts
hundreds of edges beside QUIC tests met this). In a private network namespace whose ephemeral
range is eight ports, seven held for UDP by the test, the one port left is where the edge
must end up.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from adversary import INSIDE_NETNS, rerun_in_private_netns
from harness import Processes, start_edge

pytestmark = pytest.mark.process

RANGE = (40000, 40007)
#: The one port of the range not held for UDP.
FREE = 40000


def test_in_a_namespace_with_a_small_port_range() -> None:
    rerun_in_private_netns(f"{Path(__file__)}::test_port_zero_finds_a_port_free_for_both")


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace of its twin")
def test_port_zero_finds_a_port_free_for_both(processes: Processes) -> None:
    Path("/proc/sys/net/ipv4/ip_local_port_range").write_text(f"{RANGE[0]} {RANGE[1]}\n")
    with contextlib.ExitStack() as held:
        for port in range(RANGE[0], RANGE[1] + 1):
            if port == FREE:
                continue
            udp = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            udp.bind(("127.0.0.1", port))
        edge = start_edge(processes)
        assert edge.tunnel == [f"127.0.0.1:{FREE}"], edge.proc.text()
        # QUIC holds the same port for UDP.
        edge_process = psutil.Process(edge.proc.popen.pid)
        udp_ports = {conn.laddr.port for conn in edge_process.net_connections(kind="udp")}
        assert FREE in udp_ports, udp_ports
        # The TCP listeners bound on the way were closed, not left accepting (the public and
        # API listeners, bound after, took ports of the range too).
        listening = {
            conn.laddr.port
            for conn in edge_process.net_connections(kind="tcp")
            if conn.status == psutil.CONN_LISTEN
        }
        others = {int(edge.http.rsplit(":", 1)[1]), urlsplit(edge.api_url).port}
        assert listening == {FREE, *others}, (listening, others)
