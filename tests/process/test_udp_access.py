"""UDP end to end through the client, where things go wrong: `adit access udp` → the edge →
a QUIC tunnel connection → the connector (adit's, datagram v2 and v3, and the unmodified
cloudflared with ``-F support_datagram_v3_2``) → a UDP server on 127.0.0.1.

test_private_network.py carries 10,000 datagrams over adit's connector (v2, v3) and
cloudflared's default (v2); here cloudflared's v3 carries them too, and each connector meets
what it must refuse without going down, the reason reaching whoever can act on it: a datagram
too large (dropped at the edge, counted in the flow's log line), a destination port nobody
listens on (v2: the connector's words reach the client; v3: its failed-flows counter), and a
flow beyond ``--max-active-flows`` (refused, its reason printed by the client).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import dns_records
from adversary import CLOUDFLARED, INSIDE_NETNS, cloudflared_metrics, rerun_in_private_netns
from harness import (
    Account,
    Edge,
    Proc,
    Processes,
    Tunnel,
    adit_command,
    create_tunnel,
    login,
    start_connector,
    start_edge,
    write_config,
)
from ports import free_port

pytestmark = pytest.mark.process

HOST = "udp.example.test"
DATAGRAMS = 10_000
WINDOW = 64
#: The edge's idle timeout of private UDP flows, sent to the connector too: a v3 flow the
#: client is done with (v3 cannot say "closed") leaves the connector this soon.
EDGE_UDP_IDLE = "3s"
V3 = ["-F", "support_datagram_v3_2"]


@dataclass
class Echo:
    port: int
    received: list[bytes] = field(default_factory=list)


@pytest.fixture
def echo() -> Iterator[Echo]:
    """A UDP echo server on 127.0.0.1 that remembers what it got."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()
    server = Echo(int(sock.getsockname()[1]))

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65536)
            except TimeoutError:
                continue
            server.received.append(data)
            sock.sendto(data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server
    stop.set()
    thread.join(5)
    sock.close()


@pytest.fixture
def udp_edge(processes: Processes) -> Edge:
    return start_edge(processes, env={"ADIT_EDGE_PRIVATE_UDP_IDLE_TIMEOUT": EDGE_UDP_IDLE})


@pytest.fixture
def udp_account(udp_edge: Edge, tmp_path: Path) -> Account:
    return login(udp_edge, tmp_path / "home")


def _tunnel(account: Account, tmp_path: Path) -> tuple[Tunnel, Path]:
    tunnel = create_tunnel(account, "udp", HOST)
    out = account.cli("tunnel", "route", "ip", "add", "127.0.0.1/32", "udp").stdout
    assert "Successfully added route for 127.0.0.1/32" in out
    return tunnel, write_config(tmp_path / "config.yml", HOST, [{"service": "http_status:404"}])


def _free_udp_port() -> int:
    return free_port("udp")


def _access(
    processes: Processes, account: Account, destination: str, name: str
) -> tuple[int, Proc]:
    """`adit access udp` for ``destination``: its local port once it listens, and it."""
    local = _free_udp_port()
    proc = processes.start(
        name,
        [
            *adit_command(),
            "access",
            "udp",
            "--destination",
            destination,
            "--listen",
            f"127.0.0.1:{local}",
        ],
        env={"HOME": str(account.home)},
    )
    proc.wait_for_log("Start private UDP listener")
    return local, proc


def _client(port: int) -> socket.socket:
    """A client of the access listener: a socket of its own, so a client address of its own
    (a flow of its own)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(10)
    return sock


def _metric(proc: Proc, line: str, timeout: float = 30.0) -> None:
    """Until ``line`` is a whole line of the connector's /metrics."""
    address = cloudflared_metrics(proc)
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        if line in text.splitlines():
            return
        if time.monotonic() > deadline:
            udp = [s for s in text.splitlines() if s.startswith("cloudflared_udp")]
            raise AssertionError(f"{line!r} not on {proc.name}'s /metrics: {udp}")
        time.sleep(0.2)


def _echo_many(port: int) -> tuple[int, int]:
    """:data:`DATAGRAMS` numbered datagrams, :data:`WINDOW` unanswered at most (a lull of 2 s
    writes the unanswered ones off as lost); (sent, echoed back intact)."""
    received: set[int] = set()
    with _client(port) as sock:
        sock.settimeout(2.0)
        sent = 0
        outstanding: set[int] = set()
        while sent < DATAGRAMS or outstanding:
            while sent < DATAGRAMS and len(outstanding) < WINDOW:
                sock.send(sent.to_bytes(4, "big") + bytes(range(256)) * 3)
                outstanding.add(sent)
                sent += 1
            try:
                data = sock.recv(65536)
            except TimeoutError:
                outstanding.clear()
                continue
            number = int.from_bytes(data[:4], "big")
            if data[4:] == bytes(range(256)) * 3:
                received.add(number)
            outstanding.discard(number)
    return sent, len(received)


def _what_goes_wrong(
    processes: Processes,
    edge: Edge,
    account: Account,
    connector: Proc,
    echo: Echo,
    *,
    v3: bool,
    number: str,
) -> None:
    """The scenario, for a connector started with ``--max-active-flows 1``; ``number``
    formats a metric's value as its Prometheus client does."""
    # A port nobody listens on: the connector's socket fails at the first datagram.
    closed = _free_udp_port()
    nowhere, client = _access(processes, account, f"127.0.0.1:{closed}", "access-nowhere")
    with _client(nowhere) as sock:
        sock.send(b"anyone there?")
        if v3:
            # v3 has no message for it: the connector counts the failed flow.
            _metric(connector, f'cloudflared_udp_failed_flows{{conn_index="0"}} {number.format(1)}')
        else:
            # v2: the connector's unregisterUdpSession says why, and the client prints it.
            text = client.wait_for_log(r"the UDP flow ended: read udp 127\.0\.0\.1:\d+->")
            assert f"->127.0.0.1:{closed}: read: connection refused" in text
    # Its session is gone from the connector: the one allowed flow is free again.
    if v3:
        active = 'cloudflared_udp_active_flows{conn_index="0"}'
    else:
        active = "cloudflared_udp_active_sessions"
    _metric(connector, f"{active} {number.format(0)}")

    local, access = _access(processes, account, f"127.0.0.1:{echo.port}", "access-echo")
    with _client(local) as first, _client(local) as second:
        first.send(b"first")
        assert first.recv(65536) == b"first"
        # Larger than a datagram may be (1280): dropped at the edge, the flow goes on.
        first.send(os.urandom(1300))
        first.send(b"after")
        assert first.recv(65536) == b"after"
        assert echo.received == [b"first", b"after"]
        # A second client address is a second flow: one more than the connector allows.
        second.send(b"second")
        refused = access.wait_for_log(r"UDP flow for 127\.0\.0\.1:\d+: .*too many active flows")
        print([line for line in refused.splitlines() if "too many active flows" in line])
        assert "opened no UDP flow" in refused
        # The first flow still works, and nothing of the refused one reached the origin.
        first.send(b"still")
        assert first.recv(65536) == b"still"
        assert b"second" not in echo.received
    edge.proc.wait_for_log(r"private flow refused: no UDP flow: .*too many active flows")
    # The client's end closes its flow; the edge logs what it dropped.
    access.signal(15)
    edge.proc.wait_for_log(r"private flow closed .* datagrams up=\d+ down=\d+ dropped=1 ")
    # Through all of it nobody went down.
    assert connector.popen.poll() is None, connector.text()
    assert edge.proc.popen.poll() is None, edge.proc.text()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("v3", [False, True], ids=["v2", "v3"])
def test_adit_refuses_what_it_must_and_stays_up(
    udp_edge: Edge,
    udp_account: Account,
    processes: Processes,
    echo: Echo,
    tmp_path: Path,
    v3: bool,
) -> None:
    tunnel, config = _tunnel(udp_account, tmp_path)
    features = V3 if v3 else []
    connector = start_connector(
        processes,
        tunnel,
        config,
        extra=["--protocol", "quic", *features, "--max-active-flows", "1"],
    )
    _what_goes_wrong(processes, udp_edge, udp_account, connector, echo, v3=v3, number="{}.0")


# -- the unmodified cloudflared, datagram v3 --------------------------------------------------


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
def test_cloudflared_v3_in_a_loopback_only_namespace() -> None:
    name = "test_cloudflared_v3_carries_ten_thousand_and_refuses_what_it_must"
    rerun_in_private_netns(f"{Path(__file__)}::{name}", timeout=600, resolver=True)


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace of its twin")
@pytest.mark.timeout(300)
def test_cloudflared_v3_carries_ten_thousand_and_refuses_what_it_must(
    udp_edge: Edge, udp_account: Account, processes: Processes, echo: Echo, tmp_path: Path
) -> None:
    tunnel, config = _tunnel(udp_account, tmp_path)
    with dns_records.serving():  # cloudflared's start-up look-ups, answered at once
        cloudflared = processes.start(
            "cloudflared",
            [
                CLOUDFLARED,
                "tunnel",
                "--no-autoupdate",
                "--config",
                str(config),
                "--edge",
                udp_edge.tunnel[0],
                "--cacert",
                str(udp_edge.ca),
                "--protocol",
                "quic",
                "--no-prechecks",
                "--metrics",
                "127.0.0.1:0",
                "--grace-period",
                "1s",
                "run",
                "--credentials-file",
                str(tunnel.credentials),
                *V3,
                "--max-active-flows",
                "1",
                tunnel.id,
            ],
        )
        cloudflared.wait_for_log("Registered tunnel connection", timeout=30)
        local, access = _access(processes, udp_account, f"127.0.0.1:{echo.port}", "access-many")
        sent, echoed = _echo_many(local)
        print(f"cloudflared v3: {sent} sent, {echoed} echoed, {sent - echoed} lost")
        assert sent == DATAGRAMS and echoed >= DATAGRAMS * 95 // 100
        # A v3-only family: cloudflared runs datagram v3.
        _metric(cloudflared, 'cloudflared_udp_total_flows{conn_index="0"} 1')
        access.signal(15)  # its flow ends; the connector's idles out
        _metric(cloudflared, 'cloudflared_udp_active_flows{conn_index="0"} 0')
        echo.received.clear()
        _what_goes_wrong(processes, udp_edge, udp_account, cloudflared, echo, v3=True, number="{}")
