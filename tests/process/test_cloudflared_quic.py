"""The unmodified cloudflared over QUIC, its default protocol, against `adit edge` (§5).

Needs ADIT_CLOUDFLARED (a cloudflared built from its source, never committed). Like the HTTP/2
interop test, each test re-runs itself in a fresh network namespace holding only loopback, and
nothing leaves the machine. There a DNS server answers what Cloudflare publishes for
``protocol-v2.argotunnel.com`` (QUIC for everyone): the records that make cloudflared's default
``--protocol auto`` dial QUIC first, as it does on the internet (without them it starts with
HTTP/2).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets.asyncio.client

import dns_records
from adversary import CLOUDFLARED, INSIDE_NETNS, rerun_in_private_netns, start_cloudflared
from harness import (
    Account,
    Edge,
    Origin,
    Processes,
    adit_command,
    create_tunnel,
    login,
    request,
    start_edge,
    write_config,
)
from ports import free_port

pytestmark = pytest.mark.process

HOST = "quic.example.test"
TCP_HOST = "tcp.quic.example.test"
DOWN_HOST = "down.quic.example.test"
TEN_MB = 10 * 1024 * 1024
TWINS = [
    "test_quic_with_one_address_serves_http_websocket_and_tcp",
    "test_auto_with_one_address_dials_quic",
    "test_auto_with_four_addresses_dials_quic_on_each",
    "test_token_with_the_default_protocol_dials_quic",
    "test_post_quantum_strict_over_quic_and_a_clear_refusal_over_http2",
]


@pytest.fixture
def tcp_echo() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1 (a thread per connection)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
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
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    server.close()


def _config(tmp_path: Path, origin: Origin, ws_origin: int, tcp_port: int) -> Path:
    return write_config(
        tmp_path / "config.yml",
        HOST,
        [
            {"hostname": TCP_HOST, "service": f"tcp://127.0.0.1:{tcp_port}"},
            {"hostname": DOWN_HOST, "service": "http://127.0.0.1:1"},
            {"path": "^/ws", "service": f"http://127.0.0.1:{ws_origin}"},
            {"service": origin.url},
        ],
    )


def _registered_over_quic(text: str, count: int = 1) -> None:
    lines = [line for line in text.splitlines() if "Registered tunnel connection" in line]
    assert len(lines) >= count, text
    assert all("protocol=quic" in line for line in lines), lines


def _http_both_ways(edge: Edge, origin: Origin) -> None:
    reply = request(edge, HOST, path="/headers", headers=[("X-Dup", "1"), ("X-Dup", "2")])
    assert reply.status == 200
    assert [v for n, v in reply.headers if n == "X-Multi"] == ["one", "two"]
    assert [v for n, v in reply.headers if n == "Set-Cookie"] == ["a=1", "b=2"]
    upload = os.urandom(TEN_MB)
    echoed = request(edge, HOST, "POST", "/echo", body=upload, timeout=60)
    assert hashlib.sha256(echoed.body).digest() == hashlib.sha256(upload).digest()
    download = request(edge, HOST, path=f"/big/{TEN_MB}", timeout=60)
    assert download.status == 200
    assert len(download.body) == TEN_MB
    # A response streamed slowly arrives in pieces: the first before the origin sends more.
    address, port = edge.http.rsplit(":", 1)
    conn = http.client.HTTPConnection(address, int(port), timeout=20)
    conn.request("GET", "/slow", headers={"Host": HOST})
    response = conn.getresponse()
    assert response.status == 200
    assert response.read1(64 * 1024) == b"first piece\n"
    origin.release_slow.set()
    assert response.read() == b"second piece\n"
    conn.close()
    # An origin that is down: cloudflared's ConnectResponse error becomes the edge's 502.
    down = request(edge, DOWN_HOST, path="/")
    assert down.status == 502, down


def _websocket(edge: Edge) -> None:
    address, port = edge.http.rsplit(":", 1)

    async def talk() -> tuple[object, object]:
        async with websockets.asyncio.client.connect(
            f"ws://{HOST}/ws", host=address, port=int(port), open_timeout=10
        ) as ws:
            await ws.send("text over quic")
            text = await asyncio.wait_for(ws.recv(), 10)
            await ws.send(b"\x00binary\xff")
            return text, await asyncio.wait_for(ws.recv(), 10)

    assert asyncio.run(talk()) == ("text over quic", b"\x00binary\xff")


def _tcp(processes: Processes, edge: Edge) -> None:
    listen_port = free_port()
    processes.start(
        "access",
        [
            *adit_command(),
            "access",
            "tcp",
            "--hostname",
            TCP_HOST,
            "--url",
            f"127.0.0.1:{listen_port}",
            "--edge-url",
            f"http://{edge.http}",
        ],
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            client = socket.create_connection(("127.0.0.1", listen_port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with client:
        # Under 16 KiB: cloudflared keeps only that much of each WebSocket message.
        payload = os.urandom(12 * 1024)
        client.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = client.recv(65536)
            assert chunk, "the TCP echo through cloudflared ended early"
            got += chunk
        assert got == payload


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
@pytest.mark.parametrize("name", TWINS)
def test_in_a_loopback_only_namespace(name: str) -> None:
    rerun_in_private_netns(f"{Path(__file__)}::{name}", resolver=True)


inside = pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace of its twin")


@pytest.fixture(autouse=True)
def argotunnel_records() -> Iterator[None]:
    """Inside the namespace: Cloudflare's TXT records, which make ``auto`` start with QUIC."""
    if not INSIDE_NETNS:
        yield
        return
    with dns_records.serving():
        yield


@inside
def test_quic_with_one_address_serves_http_websocket_and_tcp(
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    ws_origin: int,
    tcp_echo: int,
    tmp_path: Path,
) -> None:
    tunnel = create_tunnel(account, "quic", HOST)
    account.cli("tunnel", "route", "dns", "quic", TCP_HOST)
    account.cli("tunnel", "route", "dns", "quic", DOWN_HOST)
    config = _config(tmp_path, origin, ws_origin, tcp_echo)
    cloudflared = start_cloudflared(processes, tunnel, config, edge, protocol="quic")
    _registered_over_quic(cloudflared.text())
    _http_both_ways(edge, origin)
    _websocket(edge)
    _tcp(processes, edge)
    cloudflared.signal(15)
    assert cloudflared.wait(timeout=30) == 0
    assert "Unregistered tunnel connection" in cloudflared.text()
    assert "connector unregistered" in edge.proc.text()


@inside
def test_auto_with_one_address_dials_quic(
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    ws_origin: int,
    tcp_echo: int,
    tmp_path: Path,
) -> None:
    tunnel = create_tunnel(account, "auto", HOST)
    config = _config(tmp_path, origin, ws_origin, tcp_echo)
    cloudflared = start_cloudflared(processes, tunnel, config, edge, protocol=None)
    _registered_over_quic(cloudflared.text())
    assert request(edge, HOST, path="/headers").status == 200
    _websocket(edge)


@inside
def test_auto_with_four_addresses_dials_quic_on_each(
    processes: Processes, origin: Origin, ws_origin: int, tcp_echo: int, tmp_path: Path
) -> None:
    edge = start_edge(processes, tunnel_listen=["127.0.0.1:0"] * 4)
    assert len(edge.tunnel) == 4
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "four", HOST)
    config = _config(tmp_path, origin, ws_origin, tcp_echo)
    cloudflared = start_cloudflared(
        processes, tunnel, config, edge, protocol=None, edges=edge.tunnel
    )
    cloudflared.wait_for_log("Registered tunnel connection", count=4, timeout=30)
    _registered_over_quic(cloudflared.text(), count=4)
    for _ in range(8):
        assert request(edge, HOST, path="/headers").status == 200


@inside
def test_token_with_the_default_protocol_dials_quic(
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    ws_origin: int,
    tcp_echo: int,
    tmp_path: Path,
) -> None:
    tunnel = create_tunnel(account, "token", HOST)
    token = account.cli("tunnel", "token", "token").stdout.strip()
    config = _config(tmp_path, origin, ws_origin, tcp_echo)
    cloudflared = start_cloudflared(processes, tunnel, config, edge, protocol=None, token=token)
    _registered_over_quic(cloudflared.text())
    assert request(edge, HOST, path="/headers").status == 200


@inside
def test_post_quantum_strict_over_quic_and_a_clear_refusal_over_http2(
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    ws_origin: int,
    tcp_echo: int,
    tmp_path: Path,
) -> None:
    tunnel = create_tunnel(account, "pq", HOST)
    config = _config(tmp_path, origin, ws_origin, tcp_echo)
    # Over QUIC the edge does X25519MLKEM768 itself: cloudflared's strict mode connects.
    strict = start_cloudflared(
        processes, tunnel, config, edge, protocol="quic", extra=["--post-quantum"]
    )
    _registered_over_quic(strict.text())
    assert request(edge, HOST, path="/headers").status == 200
    strict.signal(15)
    assert strict.wait(timeout=30) == 0
    # Over HTTP/2 TLS is OpenSSL 3.0's, which has no ML-KEM: a refusal that says why on the
    # edge, and a TLS alert (not a bare EOF) for cloudflared.
    refused = start_cloudflared(
        processes,
        tunnel,
        config,
        edge,
        protocol="http2",
        extra=["--post-quantum"],
        name="cloudflared-http2",
        wait=None,
    )
    edge.proc.wait_for_log("offers no key exchange this edge's TLS", timeout=30)
    refused.wait_for_log("handshake failure", timeout=30)
