"""The worker's callback path for simple GETs (adit.workers.quick_get) against a real origin
through a real edge: every way an exchange that started on it can turn out — a whole small
answer, a large or streamed one, a HEAD, a 204, a pooled connection the origin dropped, a
visitor who leaves, a drain — answers as the general path does, and the counters agree.

The origin is a raw socket server (a thread per connection) so that each test decides
exactly what the connection does; every request after the first on a connection takes the
callback path, since the worker then holds that connection idle in its pool.
"""

from __future__ import annotations

import http.client
import re
import signal
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import (
    Account,
    Edge,
    Proc,
    Processes,
    create_tunnel,
    pattern_bytes,
    request,
    start_connector,
    write_config,
)

pytestmark = pytest.mark.process

HOST = "quick.example.test"
BIG = pattern_bytes(200 * 1024)  # beyond the 64 KiB answered in one piece


@dataclass
class RawOrigin:
    """What the origin saw, and the switches the tests hold it with."""

    port: int = 0
    accepted: int = 0
    requests: list[str] = field(default_factory=list)
    closed_by_peer: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    hanging: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _answer(conn: socket.socket, origin: RawOrigin, method: str, path: str, served: int) -> bool:
    """Answer one request; False to drop the connection without answering."""
    if path.startswith("/drop-next") and served > 0:
        return False  # a keep-alive connection the origin gave up on between requests
    if path.startswith("/big"):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BIG) + BIG)
    elif path.startswith("/drip"):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        origin.release.wait(10)
        conn.sendall(b"6\r\nsecond\r\n0\r\n\r\n")
    elif path.startswith("/empty"):
        conn.sendall(b"HTTP/1.1 204 No Content\r\nX-Empty: yes\r\n\r\n")
    elif path.startswith("/hang"):
        origin.hanging.set()
        origin.release.wait(10)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
    else:
        body = f"small {path}".encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Origin: raw\r\n\r\n" % len(body)
        conn.sendall(head if method == "HEAD" else head + body)
    return True


def _serve(conn: socket.socket, origin: RawOrigin) -> None:
    served = 0
    buffer = b""
    with conn:
        conn.settimeout(30)
        while True:
            while b"\r\n\r\n" not in buffer:
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    with origin.lock:
                        origin.closed_by_peer += 1
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            method, path, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            with origin.lock:
                origin.requests.append(f"{method} {path}")
            if not _answer(conn, origin, method, path, served):
                return
            served += 1


@pytest.fixture
def raw_origin() -> Iterator[RawOrigin]:
    origin = RawOrigin()
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    origin.port = server.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with origin.lock:
                origin.accepted += 1
            threading.Thread(target=_serve, args=(conn, origin), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield origin
    finally:
        origin.release.set()
        stop.set()
        thread.join(5)
        server.close()


@pytest.fixture
def connector(
    edge: Edge, account: Account, processes: Processes, tmp_path: Path, raw_origin: RawOrigin
) -> Proc:
    tunnel = create_tunnel(account, "quick", HOST)
    config = write_config(
        tmp_path / "config.yml", HOST, [{"service": f"http://127.0.0.1:{raw_origin.port}"}]
    )
    # One connection and one worker: consecutive requests share the worker's pool.
    return start_connector(
        processes, tunnel, config, extra=["--ha-connections", "1", "--workers", "1"]
    )


def _metrics(proc: Proc) -> dict[str, float]:
    text = proc.wait_for_log(r"Starting metrics server on \S+/metrics")
    match = re.search(r"Starting metrics server on (\S+)/metrics", text)
    assert match, text
    with urllib.request.urlopen(f"http://{match.group(1)}/metrics", timeout=10) as response:
        scrape = response.read().decode()
    out: dict[str, float] = {}
    for line in scrape.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _wait_for_metric(proc: Proc, name: str, value: float) -> dict[str, float]:
    # The workers report their counters once a second: a bounded wait for the figure.
    event = threading.Event()
    seen: dict[str, float] = {}
    for _ in range(50):
        seen = _metrics(proc)
        if seen.get(name) == value:
            return seen
        event.wait(0.2)
    raise AssertionError(f"{name} never read {value}: {seen.get(name)}")


def test_small_answers_on_a_pooled_connection(
    edge: Edge, connector: Proc, raw_origin: RawOrigin
) -> None:
    for index in range(20):
        reply = request(edge, HOST, path=f"/small/{index}")
        assert reply.status == 200
        assert reply.body == f"small /small/{index}".encode()
        assert reply.header("X-Origin") == "raw"
    head = request(edge, HOST, method="HEAD", path="/small/head")
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == str(len(b"small /small/head"))
    empty = request(edge, HOST, path="/empty")
    assert empty.status == 204 and empty.body == b"" and empty.header("X-Empty") == "yes"
    assert raw_origin.accepted == 1  # all on the one pooled connection
    metrics = _wait_for_metric(connector, "cloudflared_tunnel_total_requests", 22)
    assert metrics['cloudflared_tunnel_response_by_code{status_code="200"}'] == 21
    assert metrics['cloudflared_tunnel_response_by_code{status_code="204"}'] == 1
    assert metrics["cloudflared_tunnel_concurrent_requests_per_tunnel"] == 0
    assert metrics["cloudflared_tunnel_request_errors"] == 0


def test_large_and_streamed_answers_after_a_small_one(
    edge: Edge, connector: Proc, raw_origin: RawOrigin
) -> None:
    assert request(edge, HOST, path="/small/warm").status == 200
    big = request(edge, HOST, path="/big")
    assert big.status == 200 and big.body == BIG
    raw_origin.release.set()  # the drip's second chunk goes at once
    drip = request(edge, HOST, path="/drip")
    assert drip.status == 200 and drip.body == b"firstsecond"
    assert request(edge, HOST, path="/small/after").body == b"small /small/after"
    assert raw_origin.accepted == 1


def test_a_pooled_connection_the_origin_dropped_is_retried_on_a_new_one(
    edge: Edge, connector: Proc, raw_origin: RawOrigin
) -> None:
    assert request(edge, HOST, path="/drop-next/1").status == 200
    # The pooled connection is closed by the origin on this request, without an answer.
    reply = request(edge, HOST, path="/drop-next/2")
    assert reply.status == 200 and reply.body == b"small /drop-next/2"
    assert raw_origin.accepted == 2
    assert raw_origin.requests == ["GET /drop-next/1", "GET /drop-next/2", "GET /drop-next/2"]
    metrics = _wait_for_metric(connector, "cloudflared_tunnel_total_requests", 2)
    assert metrics["cloudflared_tunnel_request_errors"] == 0


def test_a_visitor_who_leaves_ends_the_origin_request(
    edge: Edge, connector: Proc, raw_origin: RawOrigin
) -> None:
    assert request(edge, HOST, path="/small/warm").status == 200
    address, port = edge.http.rsplit(":", 1)
    visitor = http.client.HTTPConnection(address, int(port), timeout=30)
    visitor.request("GET", "/hang", headers={"Host": HOST})
    assert raw_origin.hanging.wait(20)
    visitor.close()  # the edge resets the stream; the worker drops the origin connection
    for _ in range(100):
        if raw_origin.closed_by_peer:
            break
        threading.Event().wait(0.1)
    assert raw_origin.closed_by_peer == 1
    raw_origin.release.set()
    assert request(edge, HOST, path="/small/next").body == b"small /small/next"
    metrics = _wait_for_metric(connector, "cloudflared_tunnel_total_requests", 3)
    assert metrics["cloudflared_tunnel_concurrent_requests_per_tunnel"] == 0


def test_a_drain_waits_for_an_exchange_in_flight(
    edge: Edge, connector: Proc, raw_origin: RawOrigin
) -> None:
    assert request(edge, HOST, path="/small/warm").status == 200
    replies: list[int | bytes] = []

    def visit() -> None:
        reply = request(edge, HOST, path="/hang")
        replies.extend([reply.status, reply.body])

    visitor = threading.Thread(target=visit)
    visitor.start()
    assert raw_origin.hanging.wait(20)
    connector.signal(signal.SIGTERM)
    connector.wait_for_log(r"Unregistered tunnel connection")
    raw_origin.release.set()
    visitor.join(30)
    assert replies == [200, b"late"]
    assert connector.wait(30) == 0
