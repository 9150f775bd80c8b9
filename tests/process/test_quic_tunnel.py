"""adit's connector and adit's edge over QUIC (PROTOCOL.md §5): everything HTTP/2 carries.

The connector runs as users run it (`adit tunnel run`, supervisor and workers), the edge as
`adit edge`, the origins are real servers on 127.0.0.1. ssh and scp of 50 MB over QUIC are in
test_access_tcp.py (parametrised by protocol); the unmodified cloudflared over QUIC is in
test_cloudflared_quic.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
from pathlib import Path

import pytest
import websockets.asyncio.client

from harness import (
    Account,
    Edge,
    Origin,
    Processes,
    create_tunnel,
    request,
    start_connector,
    write_config,
)

pytestmark = pytest.mark.process

HOST = "quic.example.test"
TEN_MB = 10 * 1024 * 1024


def _config(tmp_path: Path, origin: Origin, ws_origin: int) -> Path:
    return write_config(
        tmp_path / "config.yml",
        HOST,
        [{"path": "^/ws", "service": f"http://127.0.0.1:{ws_origin}"}, {"service": origin.url}],
    )


def _registered(text: str, protocol: str) -> None:
    lines = [line for line in text.splitlines() if "Registered tunnel connection" in line]
    assert lines and all(f"protocol={protocol}" in line for line in lines), text


def test_http_both_ways_streaming_and_websocket_over_quic(
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    ws_origin: int,
    tmp_path: Path,
) -> None:
    tunnel = create_tunnel(account, "quic", HOST)
    connector = start_connector(
        processes, tunnel, _config(tmp_path, origin, ws_origin), extra=["--protocol", "quic"]
    )
    _registered(connector.text(), "quic")
    assert "protocol=quic" in edge.proc.wait_for_log("Registered tunnel connection")

    reply = request(edge, HOST, path="/headers", headers=[("X-Dup", "1"), ("X-Dup", "2")])
    assert reply.status == 200
    assert [v for n, v in reply.headers if n == "X-Multi"] == ["one", "two"]
    assert [v for n, v in reply.headers if n == "Set-Cookie"] == ["a=1", "b=2"]
    upload = os.urandom(TEN_MB)
    echoed = request(edge, HOST, "POST", "/echo", body=upload, timeout=60)
    assert hashlib.sha256(echoed.body).digest() == hashlib.sha256(upload).digest()
    download = request(edge, HOST, path=f"/big/{TEN_MB}", timeout=60)
    assert download.status == 200 and len(download.body) == TEN_MB

    address, port = edge.http.rsplit(":", 1)
    conn = http.client.HTTPConnection(address, int(port), timeout=20)
    conn.request("GET", "/slow", headers={"Host": HOST})
    response = conn.getresponse()
    assert response.status == 200
    # The origin holds its second piece back until released: the first arrives before it.
    assert response.read1(64 * 1024) == b"first piece\n"
    origin.release_slow.set()
    assert response.read() == b"second piece\n"
    conn.close()

    async def talk() -> tuple[object, object]:
        async with websockets.asyncio.client.connect(
            f"ws://{HOST}/ws", host=address, port=int(port), open_timeout=10
        ) as ws:
            await ws.send("text over quic")
            text = await asyncio.wait_for(ws.recv(), 10)
            big = os.urandom(200_000)
            await ws.send(big)
            return text, await asyncio.wait_for(ws.recv(), 10) == big

    assert asyncio.run(talk()) == ("text over quic", True)


def test_auto_the_default_dials_quic_and_tunnel_info_says_so(
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    ws_origin: int,
    tmp_path: Path,
) -> None:
    tunnel = create_tunnel(account, "auto", HOST)
    connector = start_connector(processes, tunnel, _config(tmp_path, origin, ws_origin))
    assert "Initial protocol quic" in connector.text()
    _registered(connector.text(), "quic")
    assert request(edge, HOST, path="/headers").status == 200
    info = account.cli("tunnel", "info", "auto").stdout
    header, row = info.splitlines()[-2:]
    assert header.split()[-1] == "PROTOCOL"
    assert row.split()[-1] == "1xquic", info


def test_post_quantum_is_the_strict_hybrid_over_quic(
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    ws_origin: int,
    tmp_path: Path,
) -> None:
    tunnel = create_tunnel(account, "pq", HOST)
    connector = start_connector(
        processes, tunnel, _config(tmp_path, origin, ws_origin), extra=["--post-quantum"]
    )
    _registered(connector.text(), "quic")
    assert request(edge, HOST, path="/headers").status == 200
