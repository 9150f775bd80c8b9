"""A request travels eyeball → `adit edge` → tunnel → `adit tunnel run` → origin and back."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import signal
import socket
import ssl
import threading
from pathlib import Path

import pytest
import websockets.asyncio.client

from harness import (
    Account,
    Edge,
    Origin,
    Proc,
    Processes,
    Tunnel,
    create_tunnel,
    pattern_bytes,
    request,
    start_connector,
    write_config,
)

pytestmark = pytest.mark.process

HOST = "app.example.test"
TEN_MB = 10 * 1024 * 1024


@pytest.fixture
def tunnel(account: Account) -> Tunnel:
    return create_tunnel(account, "web", HOST)


@pytest.fixture
def connector(
    processes: Processes, tunnel: Tunnel, origin: Origin, ws_origin: int, tmp_path: Path
) -> Proc:
    config = write_config(
        tmp_path / "config.yml",
        HOST,
        [
            {"path": "^/ws", "service": f"http://127.0.0.1:{ws_origin}"},
            {"path": "^/down", "service": "http://127.0.0.1:1"},
            {"service": origin.url},
        ],
    )
    return start_connector(processes, tunnel, config)


def test_get_and_post_ten_megabytes_both_ways(edge: Edge, connector: Proc) -> None:
    reply = request(edge, HOST, path=f"/big/{TEN_MB}")
    assert reply.status == 200
    assert hashlib.sha256(reply.body).digest() == hashlib.sha256(pattern_bytes(TEN_MB)).digest()

    upload = pattern_bytes(TEN_MB)[::-1]
    reply = request(edge, HOST, "POST", "/echo", body=upload)
    assert reply.status == 200
    assert hashlib.sha256(reply.body).hexdigest() == hashlib.sha256(upload).hexdigest()

    reply = request(edge, HOST, "POST", "/sha", body=upload)
    assert reply.body.decode() == hashlib.sha256(upload).hexdigest()


def test_slow_response_reaches_the_client_in_pieces(
    edge: Edge, connector: Proc, origin: Origin
) -> None:
    address, port = edge.http.rsplit(":", 1)
    conn = http.client.HTTPConnection(address, int(port), timeout=20)
    conn.request("GET", "/slow", headers={"Host": HOST})
    response = conn.getresponse()
    assert response.status == 200
    # The origin holds back its second piece until we release it: the first must arrive first.
    first = response.read1(64 * 1024)
    assert first == b"first piece\n"
    assert not origin.release_slow.is_set()
    origin.release_slow.set()
    rest = response.read()
    assert rest == b"second piece\n"
    conn.close()


def test_repeated_and_mixed_case_headers_are_preserved(
    edge: Edge, connector: Proc, origin: Origin
) -> None:
    reply = request(
        edge,
        HOST,
        path="/headers",
        headers=[
            ("X-Request-CamelCase", "A"),
            ("X-Dup", "1"),
            ("X-Dup", "2"),
            ("X-Latin-Request", "na\xefve"),  # one byte 0xEF: header bytes are not text
        ],
    )
    assert reply.status == 200
    assert [v for n, v in reply.headers if n == "X-Multi"] == ["one", "two"]
    assert ("X-CamelCase-Header", "Kept") in reply.headers
    assert [v for n, v in reply.headers if n == "Set-Cookie"] == ["a=1", "b=2"]
    assert ("X-Latin", "caf\xe9") in reply.headers
    seen = [tuple(pair) for pair in json.loads(reply.body)]
    assert ("X-Request-CamelCase", "A") in seen
    assert [v for n, v in seen if n == "X-Dup"] == ["1", "2"]
    assert ("X-Latin-Request", "na\xefve") in seen
    names = {n.lower() for n, _ in seen}
    assert {"x-forwarded-for", "x-forwarded-proto", "cf-connecting-ip", "cf-ray"} <= names
    assert ("Host", HOST) in seen


def test_websocket_echo_text_and_binary(edge: Edge, connector: Proc) -> None:
    address, port = edge.http.rsplit(":", 1)

    async def talk() -> tuple[object, object]:
        async with websockets.asyncio.client.connect(
            f"ws://{HOST}/ws", host=address, port=int(port), open_timeout=10
        ) as ws:
            await ws.send("hello, tunnel")
            text = await asyncio.wait_for(ws.recv(), 10)
            await ws.send(b"\x00\x01\x02binary\xff")
            binary = await asyncio.wait_for(ws.recv(), 10)
            return text, binary

    text, binary = asyncio.run(talk())
    assert text == "hello, tunnel"
    assert binary == b"\x00\x01\x02binary\xff"


def test_error_pages_tell_apart_unknown_host_tunnel_down_and_origin_failure(
    edge: Edge, account: Account, connector: Proc
) -> None:
    unknown = request(edge, "nobody.example.test")
    assert unknown.status == 404
    assert b"No tunnel serves this hostname" in unknown.body

    create_tunnel(account, "idle", "idle.example.test")
    down = request(edge, "idle.example.test")
    assert down.status == 530
    assert b"1033" in down.body

    failed = request(edge, HOST, path="/down")
    assert failed.status == 502
    assert b"origin could not be reached" in failed.body
    assert "Unable to reach the origin service" in connector.wait_for_log(
        "Unable to reach the origin service"
    )


def test_sigterm_lets_the_request_in_flight_finish(
    edge: Edge, connector: Proc, origin: Origin
) -> None:
    address, port = edge.http.rsplit(":", 1)
    conn = http.client.HTTPConnection(address, int(port), timeout=20)
    conn.request("GET", "/slow", headers={"Host": HOST})
    response = conn.getresponse()
    assert response.read1(64 * 1024) == b"first piece\n"
    connector.signal(signal.SIGTERM)
    connector.wait_for_log("Unregistered tunnel connection")
    # New requests no longer go to this connector; the one in flight still completes.
    assert request(edge, HOST).status == 530
    origin.release_slow.set()
    assert response.read() == b"second piece\n"
    conn.close()
    assert connector.wait(timeout=20) == 0


def test_edge_survives_garbage_half_open_tls_and_huge_headers(edge: Edge, connector: Proc) -> None:
    host, port = edge.tunnel[0].rsplit(":", 1)
    garbage = socket.create_connection((host, int(port)), timeout=5)
    garbage.sendall(b"\x16\x03\x01\x00\x05hello-not-tls" * 50)
    half_open = socket.create_connection((host, int(port)), timeout=5)
    half_open.sendall(b"\x16\x03\x01")  # a ClientHello that never finishes
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        tls = context.wrap_socket(raw, server_hostname="h2.cftunnel.com")
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 4096)
        tls.close()

    huge = request(edge, HOST, headers=[("X-Huge", "a" * 200_000)])
    assert huge.status == 431

    # Everyone else is still served, over the same tunnel connection.
    assert request(edge, HOST, path="/ok").status == 200
    garbage.close()
    half_open.close()
    assert request(edge, HOST, path="/ok").body == b"hello /ok"
    assert edge.proc.popen.poll() is None


def test_concurrent_requests_spread_and_complete(edge: Edge, connector: Proc) -> None:
    results: list[int] = []

    def one(i: int) -> None:
        results.append(request(edge, HOST, path=f"/n/{i}").status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [200] * 40
