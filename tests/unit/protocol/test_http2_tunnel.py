"""Both roles of the HTTP/2 tunnel transport, run against each other in memory."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from adit.protocol.headers import RequestType, ResponseMeta
from adit.protocol.http2 import (
    ConnectorTunnelConnection,
    DataReceived,
    EdgeTunnelConnection,
    Event,
    RequestReceived,
    ResponseReceived,
    SendBufferDrained,
    StreamEnded,
    StreamReset,
    TunnelSettings,
)


class Pair:
    """An edge and a connector joined by an in-memory wire."""

    def __init__(self, settings: TunnelSettings | None = None) -> None:
        self.edge = EdgeTunnelConnection(settings)
        self.connector = ConnectorTunnelConnection(settings)
        self.edge.initiate()
        self.connector.initiate()
        self.edge_events: list[Event] = []
        self.connector_events: list[Event] = []
        self.pump()

    def pump(self) -> None:
        for _ in range(1000):
            to_connector = self.edge.data_to_send()
            to_edge = self.connector.data_to_send()
            if not to_connector and not to_edge:
                return
            if to_connector:
                self.connector_events += self.connector.receive_data(to_connector)
            if to_edge:
                self.edge_events += self.edge.receive_data(to_edge)
        raise AssertionError("wire did not settle")

    def take(self, events: list[Event], kind: type) -> list:  # type: ignore[type-arg]
        found = [e for e in events if isinstance(e, kind)]
        for e in found:
            events.remove(e)
        return found


def test_request_and_response_round_trip_with_serialised_headers() -> None:
    pair = Pair()
    headers = [("X-Mixed-Case", "1"), ("x-multi", "a"), ("X-Multi", "b"), ("Host", "h.test")]
    sid = pair.edge.send_request(
        "GET", "/a?b=1", "h.test", headers, serialize_headers=True, end_stream=True
    )
    pair.pump()
    (req,) = pair.take(pair.connector_events, RequestReceived)
    assert req.request_type is RequestType.HTTP
    assert (req.method, req.path, req.authority) == ("GET", "/a?b=1", "h.test")
    assert list(req.headers) == headers
    assert pair.take(pair.connector_events, StreamEnded) == [StreamEnded(sid)]

    response_headers = [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Case", "Y")]
    pair.connector.send_response(sid, 200, response_headers)
    pair.connector.send_data(sid, b"hello", end_stream=True)
    pair.pump()
    (resp,) = pair.take(pair.edge_events, ResponseReceived)
    assert resp.status == 200
    assert list(resp.headers) == response_headers
    assert resp.meta is ResponseMeta.ORIGIN
    body = b"".join(e.data for e in pair.take(pair.edge_events, DataReceived))
    assert body == b"hello"


def test_plain_headers_for_cloudflared_drop_hop_by_hop() -> None:
    pair = Pair()
    pair.edge.send_request(
        "GET",
        "/",
        "h.test",
        [("Connection", "keep-alive, X-Gone"), ("X-Gone", "1"), ("Keep-Alive", "5"), ("A", "b")],
        end_stream=True,
    )
    pair.pump()
    (req,) = pair.take(pair.connector_events, RequestReceived)
    assert list(req.headers) == [("a", "b")]


def test_websocket_and_control_stream_are_classified() -> None:
    pair = Pair()
    pair.edge.open_control_stream()
    pair.edge.send_request("GET", "/ws", "h.test", [], request_type=RequestType.WEBSOCKET)
    pair.pump()
    control, ws = pair.take(pair.connector_events, RequestReceived)
    assert control.request_type is RequestType.CONTROL_STREAM
    assert ws.request_type is RequestType.WEBSOCKET
    assert not ws.end_stream
    assert all(n.lower() != "cf-cloudflared-proxy-connection-upgrade" for n, _ in ws.headers)


def test_a_private_tcp_stream_is_a_connect_without_scheme_or_path() -> None:
    """RFC 9113 §8.5, which Go's server (so cloudflared) enforces with PROTOCOL_ERROR."""
    import hpack

    pair = Pair()
    pair.edge.send_request(
        "CONNECT", "", "10.1.2.3:22", [], request_type=RequestType.TCP, end_stream=False
    )
    wire = pair.edge.data_to_send()
    blocks = []
    offset = 0
    while offset < len(wire):
        length = int.from_bytes(wire[offset : offset + 3], "big")
        if wire[offset + 3] == 0x1:  # HEADERS (no padding or priority from the edge)
            blocks.append(wire[offset + 9 : offset + 9 + length])
        offset += 9 + length
    (block,) = blocks
    decoded = hpack.Decoder().decode(block, raw=True)
    assert [name for name, _ in decoded if name.startswith(b":")] == [b":method", b":authority"]
    pair.connector_events += pair.connector.receive_data(wire)
    pair.pump()
    (req,) = pair.take(pair.connector_events, RequestReceived)
    assert (req.method, req.authority) == ("CONNECT", "10.1.2.3:22")
    assert req.request_type is RequestType.TCP


def test_connector_error_answer_has_no_serialised_headers() -> None:
    pair = Pair()
    sid = pair.edge.send_request("GET", "/", "h.test", [], end_stream=True)
    pair.pump()
    pair.connector.send_response(sid, 502, [], meta=ResponseMeta.CONNECTOR, end_stream=True)
    pair.pump()
    (resp,) = pair.take(pair.edge_events, ResponseReceived)
    assert (resp.status, resp.meta, resp.headers) == (502, ResponseMeta.CONNECTOR, ())


def test_flow_control_holds_data_until_the_consumer_acknowledges() -> None:
    small = TunnelSettings(stream_window=65535, connection_window=65535, max_frame_size=16384)
    pair = Pair(small)
    sid = pair.edge.send_request("POST", "/", "h.test", [])
    payload = bytes(range(256)) * 4096  # 1 MiB, far beyond one window
    pair.edge.send_data(sid, payload, end_stream=True)
    pair.pump()
    assert pair.edge.pending(sid) > 0, "more than a window must wait for credit"
    received = bytearray()
    for _ in range(200):
        for event in pair.take(pair.connector_events, DataReceived):
            received += event.data
            pair.connector.acknowledge(sid, event.flow_controlled_length)
        pair.pump()
        if pair.edge.pending(sid) == 0 and len(received) == len(payload):
            break
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert pair.take(pair.edge_events, SendBufferDrained)


def test_reset_by_peer_drops_queued_data() -> None:
    small = TunnelSettings(stream_window=65535, connection_window=65535, max_frame_size=16384)
    pair = Pair(small)
    sid = pair.edge.send_request("POST", "/", "h.test", [])
    pair.edge.send_data(sid, b"x" * 200_000)
    pair.pump()
    pair.connector.reset_stream(sid)
    pair.pump()
    assert pair.take(pair.edge_events, StreamReset)
    assert pair.edge.pending(sid) == 0


@settings(max_examples=50, deadline=None)
@given(
    body=st.binary(max_size=20_000),
    cut=st.lists(st.integers(min_value=1, max_value=500), max_size=20),
)
def test_any_chunking_of_the_wire_gives_the_same_stream(body: bytes, cut: list[int]) -> None:
    edge = EdgeTunnelConnection()
    connector = ConnectorTunnelConnection()
    edge.initiate()
    connector.initiate()
    sid = edge.send_request("POST", "/p", "h.test", [("X-A", "1")], serialize_headers=True)
    edge.send_data(sid, body, end_stream=True)
    wire = edge.data_to_send()
    events: list[Event] = []
    offset = 0
    for size in [*cut, len(wire)]:
        events += connector.receive_data(wire[offset : offset + size])
        offset += size
        if offset >= len(wire):
            break
    got = b"".join(e.data for e in events if isinstance(e, DataReceived))
    assert got == body
    assert any(isinstance(e, StreamEnded) for e in events)


# Names the tunnel gives meaning to, as a visitor might spell them, and what they would ask for.
_SMUGGLED_NAMES = [
    "Cf-Cloudflared-Proxy-Connection-Upgrade",
    "cf-cloudflared-proxy-src",
    "CF-CLOUDFLARED-REQUEST-HEADERS",
    "Cf_Cloudflared_Proxy_Src",
    "Cf-Int-Anything",
    "Cf-Proxy-Anything",
    "cf-trace-id",
]
_SMUGGLED_VALUES = ["update-configuration", "control-stream", "websocket", "tcp", "1.2.3.4:22"]


@given(
    kind=st.sampled_from([RequestType.HTTP, RequestType.WEBSOCKET]),
    serialize=st.booleans(),
    smuggled=st.lists(
        st.tuples(st.sampled_from(_SMUGGLED_NAMES), st.sampled_from(_SMUGGLED_VALUES)),
        min_size=1,
        max_size=4,
    ),
)
@settings(max_examples=50)
def test_no_header_a_caller_passes_changes_what_the_stream_is(
    kind: RequestType, serialize: bool, smuggled: list[tuple[str, str]]
) -> None:
    """The stream's kind is ``request_type`` alone, whatever headers come with it, and none of
    the tunnel's names reaches the connector's request (issue 13 item 6)."""
    pair = Pair()
    headers = [("X-Before", "1"), *smuggled, ("X-After", "2")]
    pair.edge.send_request(
        "PUT", "/", "h.test", headers, request_type=kind, serialize_headers=serialize
    )
    pair.pump()
    (req,) = pair.take(pair.connector_events, RequestReceived)
    assert req.request_type is kind
    assert [(n.lower(), v) for n, v in req.headers] == [("x-before", "1"), ("x-after", "2")]
