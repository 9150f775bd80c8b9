"""The HTTP/2 tunnel layer against bytes captured from the real cloudflared (both directions).

Streams of the capture: 1 control, 3 GET, 5 POST 70 KiB, 7 WebSocket, 9 catch-all 404,
11 origin down (502 from cloudflared).
"""

from __future__ import annotations

from pathlib import Path

from adit.protocol.headers import RequestType, ResponseMeta
from adit.protocol.http2 import (
    ConnectorTunnelConnection,
    DataReceived,
    EdgeTunnelConnection,
    Event,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)

VECTORS = Path(__file__).resolve().parents[2] / "corpus" / "http2_raw"
POST_SIZE = 71680


def _body(events: list[Event], stream_id: int) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id
    )


def _feed(
    conn: EdgeTunnelConnection | ConnectorTunnelConnection, wire: bytes, step: int
) -> list[Event]:
    """Feed ``wire`` in ``step``-sized pieces, crediting every DATA frame as it is consumed."""
    events: list[Event] = []
    for offset in range(0, len(wire), step):
        new = conn.receive_data(wire[offset : offset + step])
        for event in new:
            if isinstance(event, DataReceived):
                conn.acknowledge(event.stream_id, event.flow_controlled_length)
        events += new
    return events


def test_edge_role_decodes_cloudflareds_answers() -> None:
    edge = EdgeTunnelConnection()
    edge.initiate()
    assert edge.open_control_stream() == 1
    edge.send_request("GET", "/hello.txt?x=1", "test.local", [], end_stream=True)
    post = edge.send_request("POST", "/echo", "test.local", [("content-length", str(POST_SIZE))])
    edge.send_data(post, b"0" * POST_SIZE, end_stream=True)
    edge.send_request("GET", "/ws", "ws.local", [], request_type=RequestType.WEBSOCKET)
    edge.send_request("GET", "/", "other.local", [], end_stream=True)
    edge.send_request("GET", "/", "down.local", [], end_stream=True)
    edge.data_to_send()

    events = _feed(edge, (VECTORS / "cloudflared_to_edge.bin").read_bytes(), 1000)
    responses = {e.stream_id: e for e in events if isinstance(e, ResponseReceived)}

    get = responses[3]
    assert get.status == 200
    assert get.meta is ResponseMeta.ORIGIN
    assert sorted(get.headers) == sorted(
        [
            ("Content-Length", "3"),
            ("Content-Type", "text/plain"),
            ("X-Origin", "spike"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ]
    )
    assert [v for n, v in get.headers if n == "Set-Cookie"] == ["a=1", "b=2"]
    assert _body(events, 3) == b"hi\n"

    assert responses[5].status == 200
    assert len(_body(events, 5)) == POST_SIZE

    websocket = responses[7]
    assert websocket.status == 200  # cloudflared rewrites the origin's 101
    assert ("Sec-Websocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in websocket.headers
    assert _body(events, 7) == b"\x81\necho:Hello"

    assert (responses[9].status, responses[9].headers, responses[9].meta) == (
        404,
        (),
        ResponseMeta.ORIGIN,
    )
    assert (responses[11].status, responses[11].meta) == (502, ResponseMeta.CONNECTOR)
    ended = {e.stream_id for e in events if isinstance(e, StreamEnded)}
    assert {3, 5, 7, 9, 11} <= ended
    assert StreamReset(1, 0) in events  # the control stream after unregistering


def test_connector_role_classifies_the_edges_requests() -> None:
    connector = ConnectorTunnelConnection()
    connector.initiate()
    events = _feed(connector, (VECTORS / "edge_to_cloudflared.bin").read_bytes(), 777)
    requests = {e.stream_id: e for e in events if isinstance(e, RequestReceived)}
    assert requests[1].request_type is RequestType.CONTROL_STREAM
    get = requests[3]
    assert (get.request_type, get.method, get.path, get.authority) == (
        RequestType.HTTP,
        "GET",
        "/hello.txt?x=1",
        "test.local",
    )
    assert ("cf-ray", "0123456789abcdef-TST") in get.headers
    assert requests[5].method == "POST"
    assert len(_body(events, 5)) == POST_SIZE
    ws = requests[7]
    assert ws.request_type is RequestType.WEBSOCKET
    assert ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==") in ws.headers
    assert _body(events, 7) == bytes.fromhex("8185 37fa213d 7f9f4d5158")
    assert requests[9].authority == "other.local"
    assert requests[11].authority == "down.local"
    assert len(_body(events, 1)) == 384  # the edge's capnp RPC bytes on the control stream
