"""The QUIC transport behind the HTTP/2 tunnel connection's interface, both roles in memory.

An edge (:class:`EdgeQuicConnection`) and a connector (:class:`ConnectorQuicConnection`) over
real aioquic connections joined by an in-memory wire, time passed in: the events each role
sees are those its HTTP/2 counterpart produces (PROTOCOL.md §5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from adit.protocol.headers import RequestType, ResponseMeta
from adit.protocol.http2 import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from adit.protocol.quic_engine import (
    PostQuantum,
    TunnelQuicConnection,
    quic_configuration,
)
from adit.protocol.quic_metadata import (
    DATA_STREAM_SIGNATURE,
    RPC_STREAM_PREAMBLE,
    ConnectionType,
    ConnectRequest,
    encode_data_stream_head,
)
from adit.protocol.quic_tunnel import (
    CONTROL_STREAM_ID,
    ConnectorQuicConnection,
    DatagramReceived,
    EdgeQuicConnection,
    HandshakeDone,
    QuicEvent,
    RpcStreamOpened,
)
from quic_pki import Pki, make_pki

EDGE_ADDR = ("127.0.0.1", 7844)
CONNECTOR_ADDR = ("127.0.0.1", 50000)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@dataclass
class Tunnel:
    """An edge and a connector on an in-memory wire."""

    edge: EdgeQuicConnection
    connector: ConnectorQuicConnection
    now: float = 0.0
    edge_events: list[QuicEvent] = field(default_factory=list)
    connector_events: list[QuicEvent] = field(default_factory=list)

    @classmethod
    def open(cls, pki: Pki) -> Tunnel:
        client = TunnelQuicConnection(
            configuration=quic_configuration(
                is_client=True, post_quantum=PostQuantum.PREFER, cadata=pki.ca_pem
            )
        )
        client.connect(EDGE_ADDR, now=0.0)
        first = client.datagrams_to_send(now=0.0)
        server = TunnelQuicConnection(
            configuration=quic_configuration(
                is_client=False,
                post_quantum=PostQuantum.PREFER,
                certificate=pki.leaf,
                private_key=pki.key,
            ),
            original_destination_connection_id=_dcid(first[0][0]),
        )
        tunnel = cls(EdgeQuicConnection(server), ConnectorQuicConnection(client))
        tunnel.connector.initiate()
        tunnel.connector_events += tunnel.connector.take_events()
        tunnel.edge.open_control_stream()
        for data, _ in first:
            tunnel.edge_events += tunnel.edge.receive_datagram(data, CONNECTOR_ADDR, 0.0)
        tunnel.run(until=tunnel.handshaken)
        return tunnel

    def handshaken(self) -> bool:
        return any(isinstance(e, HandshakeDone) for e in self.edge_events) and any(
            isinstance(e, HandshakeDone) for e in self.connector_events
        )

    def step(self, dt: float = 0.002) -> int:
        self.now += dt
        moved = 0
        for src, dst, addr, into in (
            (self.connector, self.edge, CONNECTOR_ADDR, self.edge_events),
            (self.edge, self.connector, EDGE_ADDR, self.connector_events),
        ):
            timer = src.get_timer()
            if timer is not None and timer <= self.now:
                (self.edge_events if src is self.edge else self.connector_events).extend(
                    src.handle_timer(self.now)
                )
            for data, _ in src.datagrams_to_send(self.now):
                moved += 1
                into.extend(dst.receive_datagram(data, addr, self.now))
        return moved

    def run(self, seconds: float = 2.0, until: object = None) -> None:
        end, quiet = self.now + seconds, 0
        while self.now < end:
            if callable(until) and until():
                return
            quiet = 0 if self.step() else quiet + 1
            if until is None and quiet > 50:
                return

    def take(self, side: str) -> list[QuicEvent]:
        events = self.edge_events if side == "edge" else self.connector_events
        taken = list(events)
        events.clear()
        return taken


def _dcid(datagram: bytes) -> bytes:
    from aioquic._buffer import Buffer
    from aioquic.quic.packet import pull_quic_header

    return pull_quic_header(Buffer(data=datagram), host_cid_length=8).destination_cid


def _body(events: list[QuicEvent], stream_id: int) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id
    )


def test_the_control_stream_is_the_connectors_stream_zero_both_ways(pki: Pki) -> None:
    tunnel = Tunnel.open(pki)
    first = [e for e in tunnel.take("connector") if isinstance(e, RequestReceived)]
    assert first == [
        RequestReceived(
            stream_id=CONTROL_STREAM_ID,
            request_type=RequestType.CONTROL_STREAM,
            method="GET",
            path="/",
            authority="",
            headers=(),
            end_stream=False,
        )
    ]
    tunnel.connector.send_data(CONTROL_STREAM_ID, b"\x00\x00\x00\x00bootstrap")
    tunnel.run()
    assert _body(tunnel.take("edge"), CONTROL_STREAM_ID) == b"\x00\x00\x00\x00bootstrap"
    tunnel.edge.send_data(CONTROL_STREAM_ID, b"return")
    tunnel.run()
    assert _body(tunnel.take("connector"), CONTROL_STREAM_ID) == b"return"


def test_an_http_request_and_its_response_cross_as_on_http2(pki: Pki) -> None:
    tunnel = Tunnel.open(pki)
    tunnel.take("connector")
    stream_id = tunnel.edge.send_request(
        "POST",
        "/upload?x=1",
        "app.example.com",
        [("Content-Type", "text/plain"), ("X-Dup", "1"), ("X-Dup", "2"), ("Content-Length", "5")],
        end_stream=False,
    )
    tunnel.edge.send_data(stream_id, b"hello", end_stream=True)
    tunnel.run()
    events = tunnel.take("connector")
    requests = [e for e in events if isinstance(e, RequestReceived)]
    assert len(requests) == 1
    request = requests[0]
    assert (request.method, request.path, request.authority) == (
        "POST",
        "/upload?x=1",
        "app.example.com",
    )
    assert request.request_type is RequestType.HTTP
    assert [v for n, v in request.headers if n == "X-Dup"] == ["1", "2"]
    assert _body(events, stream_id) == b"hello"
    assert any(isinstance(e, StreamEnded) and e.stream_id == stream_id for e in events)

    body = b"x" * 100_000
    tunnel.connector.send_response(
        stream_id,
        201,
        [("Content-Length", str(len(body))), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")],
    )
    tunnel.connector.send_data(stream_id, body, end_stream=True)
    tunnel.run()
    events = tunnel.take("edge")
    answers = [e for e in events if isinstance(e, ResponseReceived)]
    assert len(answers) == 1
    assert answers[0].status == 201 and answers[0].meta is ResponseMeta.ORIGIN
    assert [v for n, v in answers[0].headers if n == "Set-Cookie"] == ["a=1", "b=2"]
    assert _body(events, stream_id) == body
    assert isinstance(events[-1], StreamEnded)


def test_a_response_whole_with_its_head_arrives_in_one_read(pki: Pki) -> None:
    tunnel = Tunnel.open(pki)
    stream_id = tunnel.edge.send_request("GET", "/", "app.example.com", [], end_stream=True)
    tunnel.run()
    tunnel.connector.send_response(
        stream_id, 200, [("Content-Length", "3")], body=b"hi\n", end_stream=True
    )
    tunnel.run()
    events = tunnel.take("edge")
    stream_events = [e for e in events if getattr(e, "stream_id", None) == stream_id]
    assert [type(e) for e in stream_events] == [
        ResponseReceived,
        DataReceived,
        StreamEnded,
    ]
    assert _body(events, stream_id) == b"hi\n"


def test_a_connector_error_becomes_a_502_whose_body_is_the_reason(pki: Pki) -> None:
    tunnel = Tunnel.open(pki)
    stream_id = tunnel.edge.send_request("GET", "/", "down.example.com", [], end_stream=True)
    tunnel.run()
    tunnel.connector.send_response(stream_id, 502, [], meta=ResponseMeta.CONNECTOR)
    tunnel.connector.send_data(stream_id, b"adit-origin-error: refused\n")
    tunnel.connector.end_stream(stream_id)
    tunnel.run()
    events = tunnel.take("edge")
    answer = next(e for e in events if isinstance(e, ResponseReceived))
    assert (answer.status, answer.meta) == (502, ResponseMeta.CONNECTOR)
    assert _body(events, stream_id) == b"adit-origin-error: refused"
    assert [e for e in events if isinstance(e, StreamEnded)] == [StreamEnded(stream_id=stream_id)]


def test_websocket_and_tcp_streams_keep_their_type(pki: Pki) -> None:
    tunnel = Tunnel.open(pki)
    tunnel.take("connector")
    ws = tunnel.edge.send_request(
        "GET",
        "/ws",
        "app.example.com",
        [("Sec-WebSocket-Key", "k")],
        request_type=RequestType.WEBSOCKET,
    )
    tcp = tunnel.edge.send_request("CONNECT", "", "10.1.2.3:22", [], request_type=RequestType.TCP)
    tunnel.run()
    requests = {e.stream_id: e for e in tunnel.take("connector") if isinstance(e, RequestReceived)}
    assert requests[ws].request_type is RequestType.WEBSOCKET
    assert requests[tcp].request_type is RequestType.TCP
    assert requests[tcp].authority == "10.1.2.3:22"
    tunnel.connector.send_response(ws, 101, [("Sec-WebSocket-Accept", "a")])
    tunnel.connector.send_response(tcp, 200, [])
    tunnel.connector.send_data(tcp, b"SSH-2.0-x\r\n")
    tunnel.run()
    events = tunnel.take("edge")
    answers = {e.stream_id: e for e in events if isinstance(e, ResponseReceived)}
    # QUIC carries the origin's 101 (HTTP/2 has none: there the connector says 200).
    assert answers[ws].status == 101
    assert answers[tcp].status == 200
    assert _body(events, tcp) == b"SSH-2.0-x\r\n"


def test_a_stream_without_the_preamble_is_reset_and_the_connection_lives(pki: Pki) -> None:
    tunnel = Tunnel.open(pki)
    tunnel.take("connector")
    bogus = tunnel.edge.quic.get_next_available_stream_id()
    tunnel.edge.quic.send_stream_data(bogus, b"GET / HTTP/1.1\r\n\r\n")
    good = tunnel.edge.send_request("GET", "/", "app.example.com", [], end_stream=True)
    tunnel.run()
    events = tunnel.take("connector")
    resets = [e for e in events if isinstance(e, StreamReset) and e.stream_id == bogus]
    assert [(e.error_code, "unknown stream signature" in e.reason) for e in resets] == [(0, True)]
    assert [e.stream_id for e in events if isinstance(e, RequestReceived)] == [good]
    assert not any(isinstance(e, ConnectionTerminated) for e in events)


def test_a_data_head_on_a_connector_stream_is_refused(pki: Pki) -> None:
    tunnel = Tunnel.open(pki)
    stream = tunnel.connector.quic.get_next_available_stream_id()
    head = encode_data_stream_head(ConnectRequest(dest="/", type=ConnectionType.HTTP))
    tunnel.connector.quic.send_stream_data(stream, head)
    tunnel.run()
    assert not any(isinstance(e, RequestReceived) for e in tunnel.take("edge"))


def test_an_rpc_stream_the_edge_opens_carries_capnp_both_ways(pki: Pki) -> None:
    tunnel = Tunnel.open(pki)
    tunnel.take("connector")
    stream_id = tunnel.edge.open_rpc_stream(b"bootstrap+call")
    tunnel.run()
    events = tunnel.take("connector")
    assert RpcStreamOpened(stream_id=stream_id, data=b"") in events
    assert _body(events, stream_id) == b"bootstrap+call"
    # The connector answers raw, with no preamble (cloudflared's CloudflaredServer).
    tunnel.connector.send_data(stream_id, b"return")
    tunnel.connector.end_stream(stream_id)
    tunnel.run()
    events = tunnel.take("edge")
    assert _body(events, stream_id) == b"return"
    assert StreamEnded(stream_id=stream_id) in events


def test_an_rpc_stream_the_connector_opens_reaches_the_edge(pki: Pki) -> None:
    tunnel = Tunnel.open(pki)
    tunnel.take("edge")
    stream_id = tunnel.connector.open_rpc_stream(b"unregister")
    assert stream_id % 4 == 0 and stream_id != CONTROL_STREAM_ID
    tunnel.run()
    events = tunnel.take("edge")
    assert RpcStreamOpened(stream_id=stream_id, data=b"") in events
    assert _body(events, stream_id) == b"unregister"
    tunnel.edge.send_data(stream_id, b"return", end_stream=True)
    tunnel.run()
    assert _body(tunnel.take("connector"), stream_id) == b"return"


def test_datagrams_of_the_largest_size_one_packet_holds_cross_both_ways(pki: Pki) -> None:
    tunnel = Tunnel.open(pki)
    tunnel.run()
    for sender, receiver in (("edge", "connector"), ("connector", "edge")):
        quic = (tunnel.edge if sender == "edge" else tunnel.connector).quic
        size = quic.max_datagram_payload
        # cloudflared's peer allows 16383-byte frames; one aioquic packet is the bound here.
        assert 1100 < size < quic._max_datagram_size
        big, small = b"b" * size, b"after"
        quic.send_datagram_frame(big)
        quic.send_datagram_frame(small)
        assert quic.datagrams_queued == 2
        tunnel.run()
        assert quic.datagrams_queued == 0
        got = [e.data for e in tunnel.take(receiver) if isinstance(e, DatagramReceived)]
        assert got == [big, small]


def test_no_datagram_fits_before_the_peer_allows_them(pki: Pki) -> None:
    client = TunnelQuicConnection(
        configuration=quic_configuration(
            is_client=True, post_quantum=PostQuantum.PREFER, cadata=pki.ca_pem
        )
    )
    assert client.max_datagram_payload == 0


def test_a_data_head_on_a_connector_stream_is_refused_at_its_first_byte(pki: Pki) -> None:
    """Connector-opened streams carry RPC only: nothing of a data head is kept."""
    tunnel = Tunnel.open(pki)
    stream = 4  # the connector's first stream after its control stream
    tunnel.connector.quic.send_stream_data(stream, DATA_STREAM_SIGNATURE[:1])
    tunnel.run()
    resets = [e for e in tunnel.take("edge") if isinstance(e, StreamReset)]
    assert [(e.stream_id, "only RPC" in e.reason) for e in resets] == [(stream, True)]


def test_a_unidirectional_stream_from_the_connector_is_stopped(pki: Pki) -> None:
    """cloudflared opens none; whatever it carries (an RPC head, a data head, bytes), the
    edge stops it, and never tries to reset a stream it cannot send on."""
    tunnel = Tunnel.open(pki)
    tunnel.take("connector")
    quic = tunnel.connector.quic
    head = encode_data_stream_head(ConnectRequest(dest="/", type=ConnectionType.HTTP))
    uni = []
    for payload in (RPC_STREAM_PREAMBLE, head, b"bytes"):
        stream = quic.get_next_available_stream_id(is_unidirectional=True)
        quic.send_stream_data(stream, payload)
        uni.append(stream)
    tunnel.run()
    edge_events = tunnel.take("edge")
    assert not any(isinstance(e, RequestReceived | ConnectionTerminated) for e in edge_events)
    for stream in uni:
        # STOP_SENDING came: the stream is reset (and gone once the edge acknowledged that).
        left = quic._streams.get(stream)
        assert left is None or left.sender._reset_error_code is not None, stream
    good = tunnel.edge.send_request("GET", "/", "app.example.com", [], end_stream=True)
    tunnel.run()
    requests = [e for e in tunnel.take("connector") if isinstance(e, RequestReceived)]
    assert [e.stream_id for e in requests] == [good]


def test_a_stream_ended_inside_its_head_is_closed_both_ways(pki: Pki) -> None:
    """Else its state, and its place among the streams the connector may open, would stay
    for the connection's life (the edge's side of it never ended)."""
    tunnel = Tunnel.open(pki)
    stream = 4
    tunnel.connector.quic.send_stream_data(stream, RPC_STREAM_PREAMBLE[:3], end_stream=True)
    tunnel.run()
    resets = [e for e in tunnel.take("edge") if isinstance(e, StreamReset)]
    assert [(e.stream_id, "inside its head" in e.reason) for e in resets] == [(stream, True)]
    assert stream not in tunnel.edge.quic._streams


def test_stop_sending_from_the_edge_gives_the_stream_up_at_the_connector(pki: Pki) -> None:
    """A visitor who leaves a download: the edge's GET has ended its side, so STOP_SENDING
    is all it says; the connector must see the stream given up (and stop the origin), as an
    HTTP/2 RST_STREAM tells it."""
    tunnel = Tunnel.open(pki)
    stream_id = tunnel.edge.send_request("GET", "/big", "app.example.com", [], end_stream=True)
    tunnel.run()
    tunnel.connector.send_response(stream_id, 200, [])
    tunnel.connector.send_data(stream_id, b"x" * 10_000)
    tunnel.run()
    tunnel.take("connector")
    tunnel.edge.reset_stream(stream_id)
    tunnel.run()
    resets = [e for e in tunnel.take("connector") if isinstance(e, StreamReset)]
    assert [e.stream_id for e in resets] == [stream_id]
