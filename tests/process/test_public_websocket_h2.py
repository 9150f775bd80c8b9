"""WebSocket over HTTP/2 (RFC 8441) on the edge's HTTPS listener: an extended CONNECT from a
real HTTP/2 client (``h2`` with the ``websockets`` framing, tests/h2_websocket.py) reaches a
real WebSocket echo origin through adit's connector, and through the unmodified cloudflared
when ADIT_CLOUDFLARED is set."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import h2.errors
import pytest
from websockets.frames import Opcode

from adversary import CLOUDFLARED, INSIDE_NETNS, rerun_in_private_netns, start_cloudflared
from h2_websocket import H2Closed, H2WebSocket
from harness import (
    Account,
    Edge,
    Origin,
    Proc,
    Processes,
    Tunnel,
    create_tunnel,
    pattern_bytes,
    start_connector,
    start_edge,
    write_config,
)

pytestmark = pytest.mark.process

HOST = "app.example.test"
#: Under the echo origin's 1 MiB message limit (the `websockets` default).
ONE_MB = 1_000_000


@pytest.fixture
def edge(processes: Processes, request: pytest.FixtureRequest) -> Edge:
    """The edge with an HTTPS listener; a test's indirect parameter adds flags."""
    return start_edge(processes, https=True, extra=getattr(request, "param", []))


@pytest.fixture
def tunnel(account: Account) -> Tunnel:
    return create_tunnel(account, "web", HOST)


def _config(tmp_path: Path, origin: Origin, ws_origin: int) -> Path:
    return write_config(
        tmp_path / "config.yml",
        HOST,
        [
            {"path": "^/ws", "service": f"http://127.0.0.1:{ws_origin}"},
            {"service": origin.url},
        ],
    )


@pytest.fixture
def connector(
    processes: Processes, tunnel: Tunnel, origin: Origin, ws_origin: int, tmp_path: Path
) -> Proc:
    return start_connector(processes, tunnel, _config(tmp_path, origin, ws_origin))


def _client(edge: Edge, *, settings_first: bool = True) -> H2WebSocket:
    address, port = edge.https.rsplit(":", 1)
    return H2WebSocket(address, int(port), HOST, edge.ca, settings_first=settings_first)


@pytest.fixture
def client(edge: Edge) -> Iterator[H2WebSocket]:
    conn = _client(edge)
    try:
        yield conn
    finally:
        conn.shutdown()


def test_websocket_over_http2_echoes_text_and_a_megabyte_and_closes(
    edge: Edge, connector: Proc, client: H2WebSocket
) -> None:
    assert client.connect_protocol == 1  # SETTINGS_ENABLE_CONNECT_PROTOCOL offered
    assert client.connect("/ws/echo") == 200
    # The origin's proof of a key the visitor never sent is not passed on (RFC 8441 §5).
    assert client.header(b"sec-websocket-accept") is None
    assert client.header(b"cf-ray") is not None

    client.send_text("hello over h2")
    frame = client.receive()
    assert (frame.opcode, frame.data) == (Opcode.TEXT, b"hello over h2")

    big = pattern_bytes(ONE_MB)
    client.send_binary(big)  # four times the stream's window: flow control both ways
    frame = client.receive()
    assert frame.opcode is Opcode.BINARY
    assert frame.data == big

    closed = client.close()
    assert closed.opcode is Opcode.CLOSE
    assert closed.data[:2] == (1000).to_bytes(2, "big")
    assert client.ended and client.reset_code is None


def test_websocket_over_http2_next_to_requests_on_one_connection(
    edge: Edge, connector: Proc, client: H2WebSocket
) -> None:
    assert client.connect("/ws/one") == 200
    websocket = client.stream_id
    client.request(
        [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":path", b"/hello"),
            (b":authority", HOST.encode()),
        ],
        end_stream=True,
    )
    assert client.status == 200
    assert client.read_body().startswith(b"hello /hello")
    # The WebSocket stream is still up.
    client.stream_id = websocket
    client.send_text("still here")
    assert client.receive().data == b"still here"


@pytest.mark.parametrize(
    "edge", [["--body-timeout", "1s", "--response-timeout", "1s"]], indirect=True
)
def test_quiet_websocket_lives_and_one_not_read_is_reset(
    edge: Edge, connector: Proc, client: H2WebSocket
) -> None:
    assert client.connect("/ws/echo") == 200
    # Quiet past every request deadline: as on HTTP/1.1, the peers decide when to stop.
    time.sleep(3)
    client.send_text("after a quiet while")
    assert client.receive().data == b"after a quiet while"
    # The echo of 200 kB is three times what the client's window takes: unread, the edge
    # gives the stream up after the send (body) timeout, and the tunnel stream with it.
    client.send_binary(pattern_bytes(200_000))
    time.sleep(3)
    with contextlib.suppress(H2Closed):
        client.read_body()
    assert client.reset_code == h2.errors.ErrorCodes.CANCEL
    # The connection itself goes on.
    assert client.connect("/ws/echo") == 200


def test_websocket_to_an_origin_that_answers_200_is_no_acceptance(
    edge: Edge, connector: Proc, client: H2WebSocket
) -> None:
    # "/" goes to a plain HTTP origin: its 200 must not reach the visitor as the 2xx that
    # accepts a WebSocket over HTTP/2.
    assert client.connect("/plain") == 502
    assert b"did not accept the WebSocket" in client.read_body()


def test_extended_connect_for_another_protocol_is_refused(
    edge: Edge, connector: Proc, client: H2WebSocket
) -> None:
    assert client.connect("/ws/echo", protocol=b"connect-udp") == 501
    assert b"websocket" in client.read_body()


def test_extended_connect_before_the_setting_arrived_is_a_protocol_error(
    edge: Edge, connector: Proc
) -> None:
    # The request goes in the client's first flight, before it read (and acknowledged) the
    # edge's SETTINGS_ENABLE_CONNECT_PROTOCOL.
    early = _client(edge, settings_first=False)
    try:
        early.connect("/ws/echo")
        assert early.status == 0
        assert early.reset_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    finally:
        early.shutdown()
    # ...while the connection itself goes on: a later one, after the SETTINGS, works.
    late = _client(edge)
    try:
        assert late.connect("/ws/echo") == 200
    finally:
        late.shutdown()


def test_protocol_pseudo_header_outside_connect_is_a_protocol_error(
    edge: Edge, connector: Proc, client: H2WebSocket
) -> None:
    client.request(
        [
            (b":method", b"GET"),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":path", b"/ws/echo"),
            (b":authority", HOST.encode()),
        ]
    )
    assert client.status == 0
    assert client.terminated is not None
    assert client.terminated.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
def test_cloudflared_in_a_loopback_only_namespace() -> None:
    rerun_in_private_netns(f"{Path(__file__)}::test_websocket_over_http2_through_cloudflared")


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace made by the test above")
@pytest.mark.parametrize("protocol", ["http2", "quic"])
def test_websocket_over_http2_through_cloudflared(
    processes: Processes,
    edge: Edge,
    tunnel: Tunnel,
    origin: Origin,
    ws_origin: int,
    tmp_path: Path,
    protocol: str,
) -> None:
    start_cloudflared(
        processes, tunnel, _config(tmp_path, origin, ws_origin), edge, protocol=protocol
    )
    client = _client(edge)
    try:
        test_websocket_over_http2_echoes_text_and_a_megabyte_and_closes(edge, edge.proc, client)
    finally:
        client.shutdown()
