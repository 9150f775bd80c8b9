"""`adit access tcp|ssh` through the unmodified cloudflared as the connector, over a
self-hosted edge's HTTPS listener reached with the documented ``--edge`` and ``--cacert``.

cloudflared hands an origin only the first 16 KiB of each WebSocket message (its
``websocket.Conn.Read`` copies a whole message into a 16 KiB buffer): a client sending
larger messages loses bytes on upload, so a TCP echo stalls and scp fails its MAC check.
Here 10 MB go through a TCP echo and 50 MB through scp, both ways, with equal digests.

Needs ADIT_CLOUDFLARED; like the other cloudflared tests each re-runs itself in a network
namespace holding only loopback.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adversary import CLOUDFLARED, INSIDE_NETNS, rerun_in_private_netns, start_cloudflared
from harness import (
    Edge,
    Processes,
    adit_command,
    create_tunnel,
    login,
    pattern_bytes,
    start_edge,
    write_config,
)
from ports import free_port
from sshd import Sshd

pytestmark = pytest.mark.process

TCP_HOST = "echo.access.example.test"
SSH_HOST = "ssh.access.example.test"
TEN_MB = 10 * 1024 * 1024
FIFTY_MB = 50 * 1024 * 1024
PROTOCOLS = ["http2", "quic"]
TWINS = [
    "test_ten_megabytes_each_way_through_access_tcp",
    "test_fifty_megabyte_scp_through_access_ssh",
    "test_an_origin_cloudflared_cannot_reach_is_a_502",
]


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", TWINS)
def test_in_a_loopback_only_namespace(name: str, protocol: str) -> None:
    rerun_in_private_netns(f"{Path(__file__)}::{name}[{protocol}]", timeout=600)


@pytest.fixture
def tcp_echo() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1 (a thread per connection)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(120)
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        server.close()


def _edge_flags(edge: Edge) -> list[str]:
    """The documented way to a self-hosted edge: its HTTPS listener, trusting its CA."""
    return ["--edge", edge.https, "--cacert", str(edge.ca)]


def _connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 15
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=60)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace made by the test above")
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ten_megabytes_each_way_through_access_tcp(
    processes: Processes, tmp_path: Path, tcp_echo: int, protocol: str
) -> None:
    edge = start_edge(processes, https=True)
    tunnel = create_tunnel(login(edge, tmp_path / "home"), "echo", TCP_HOST)
    config = write_config(
        tmp_path / "config.yml", TCP_HOST, [{"service": f"tcp://127.0.0.1:{tcp_echo}"}]
    )
    start_cloudflared(processes, tunnel, config, edge, protocol=protocol)
    local = free_port()
    access = processes.start(
        "access",
        [
            *adit_command(),
            "access",
            "tcp",
            "--hostname",
            TCP_HOST,
            "--url",
            f"127.0.0.1:{local}",
            *_edge_flags(edge),
        ],
    )
    access.wait_for_log("Start Websocket listener")
    payload = pattern_bytes(TEN_MB)
    size = len(payload)
    received = hashlib.sha256()
    count = 0
    with _connect(local) as client:
        sender = threading.Thread(target=client.sendall, args=(payload,), daemon=True)
        sender.start()
        # Bounded: every recv waits at most the socket's 60 s, and each returns bytes or ends.
        while count < size:
            try:
                chunk = client.recv(1024 * 1024)
            except TimeoutError:
                break
            if not chunk:
                break
            received.update(chunk)
            count += len(chunk)
        sender.join(30)
    assert count == size, f"echoed {count} of {size} bytes\n{access.text()}"
    assert received.hexdigest() == hashlib.sha256(payload).hexdigest()


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace made by the test above")
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fifty_megabyte_scp_through_access_ssh(
    processes: Processes, tmp_path: Path, protocol: str
) -> None:
    sshd = Sshd(tmp_path, processes)
    edge = start_edge(processes, https=True)
    tunnel = create_tunnel(login(edge, tmp_path / "home"), "ssh", SSH_HOST)
    config = write_config(
        tmp_path / "config.yml", SSH_HOST, [{"service": f"ssh://127.0.0.1:{sshd.port}"}]
    )
    start_cloudflared(processes, tunnel, config, edge, protocol=protocol)
    proxy = shlex.join([*adit_command(), "access", "ssh", "--hostname", "%h", *_edge_flags(edge)])
    options = sshd.client_options(proxy)
    user = os.environ.get("USER") or "root"

    source = tmp_path / "fifty.bin"
    source.write_bytes(pattern_bytes(FIFTY_MB))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "copied.bin"
    result = subprocess.run(
        ["scp", "-q", *options, str(source), f"{user}@{SSH_HOST}:{dest}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest

    back = tmp_path / "back.bin"
    result = subprocess.run(
        ["scp", "-q", *options, f"{user}@{SSH_HOST}:{dest}", str(back)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace made by the test above")
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_origin_cloudflared_cannot_reach_is_a_502(
    processes: Processes, tmp_path: Path, protocol: str
) -> None:
    edge = start_edge(processes, https=True)
    tunnel = create_tunnel(login(edge, tmp_path / "home"), "closed", TCP_HOST)
    closed = free_port()  # nothing listens there
    config = write_config(
        tmp_path / "config.yml", TCP_HOST, [{"service": f"tcp://127.0.0.1:{closed}"}]
    )
    start_cloudflared(processes, tunnel, config, edge, protocol=protocol)
    result = subprocess.run(
        [*adit_command(), "access", "tcp", "--hostname", TCP_HOST, *_edge_flags(edge)],
        input=b"",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith(f"Error: the tunnel for {TCP_HOST} could not reach its origin (502")
    assert line.endswith(
        "check the connector's ingress rule for it and that the origin service runs"
    )
