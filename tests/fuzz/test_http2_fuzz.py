"""The HTTP/2 frame decoder and the tunnel's HTTP/2 connection, both roles, under hostile bytes.

Whatever arrives, :meth:`FrameReader.feed` and :meth:`TunnelHttp2Connection.receive_data`
either return frames/events or raise :class:`Http2TunnelError`: any other exception is a
decoder bug (the connection code has no catch-all that would hide one). Nothing spins,
nothing allocates much beyond its input, and nothing depends on how the bytes were split
across reads.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import example, given
from hypothesis import strategies as st

from adit.protocol.errors import Http2TunnelError
from adit.protocol.headers import RequestType
from adit.protocol.http2 import (
    ConnectionTerminated,
    ConnectorTunnelConnection,
    DataReceived,
    EdgeTunnelConnection,
    Event,
    PingAcknowledged,
    RequestReceived,
    ResponseReceived,
    SendBufferDrained,
    StreamEnded,
    StreamReset,
    TunnelHttp2Connection,
)
from adit.protocol.http2_frames import FrameReader
from fuzz.budget import allocation_bounded, budget, cpu_bounded
from fuzz.http2_wire import (
    CLOUDFLARED_TO_EDGE,
    EDGE_TO_CLOUDFLARED,
    PREFACE,
    Frame,
    frame_streams,
    literal,
    meaningful_heads,
    mutated_capture,
    serialise,
    splits,
)

_EVENTS = (
    RequestReceived,
    ResponseReceived,
    DataReceived,
    StreamEnded,
    StreamReset,
    SendBufferDrained,
    PingAcknowledged,
    ConnectionTerminated,
)


# -- FrameReader -------------------------------------------------------------------------------


def _read(pieces: list[bytes], *, preface: bool) -> tuple[list[Frame], bool]:
    """Frames, and whether the reader refused. A DATA frame split across reads comes out in
    pieces (END_STREAM on the last): pieces following a flagless DATA frame of the same stream
    are merged into it, in the whole read and the split one alike."""
    reader = FrameReader(1 << 14, expect_preface=preface)
    frames: list[Frame] = []
    try:
        for piece in pieces:
            for kind, flags, stream_id, payload in reader.feed(piece):
                last = frames[-1] if frames else None
                if kind == 0 and last is not None and last[:3] == (0, 0, stream_id):
                    frames[-1] = (0, flags, stream_id, last[3] + payload)
                else:
                    frames.append((kind, flags, stream_id, payload))
    except Http2TunnelError:
        return frames, True
    return frames, False


@budget(300)
@given(st.binary(max_size=200), st.booleans(), st.data())
@example(b"", True, None)
@example(PREFACE[:5] + b"x", True, None)
def test_frame_reader_takes_any_bytes_in_any_split(
    data: bytes, preface: bool, draw: st.DataObject | None
) -> None:
    pieces = draw.draw(splits(data)) if draw is not None else [data]
    with cpu_bounded(), allocation_bounded(len(data)):
        whole, refused = _read([data], preface=preface)
        split, split_refused = _read(pieces, preface=preface)
    assert refused == split_refused
    if not refused:
        assert split == whole


@budget(150)
@given(frame_streams(), st.data())
def test_frame_reader_splits_frame_streams_the_same_way(
    frames: list[Frame], draw: st.DataObject
) -> None:
    wire = serialise(frames)
    whole, refused = _read([wire], preface=False)
    assert not refused  # every frame here is within the limit
    split, _ = _read(draw.draw(splits(wire)), preface=False)
    assert split == whole


@budget(100)
@given(st.integers(1 << 14 + 1, 2**24 - 1), st.integers(0, 255))
def test_a_declared_length_is_refused_before_it_is_buffered(length: int, kind: int) -> None:
    # A 9-byte header announcing a 16 MiB frame is refused by the header alone.
    header = bytes((length >> 16, (length >> 8) & 0xFF, length & 0xFF, kind, 0, 0, 0, 0, 1))
    reader = FrameReader(1 << 14, expect_preface=False)
    try:
        reader.feed(header)
    except Http2TunnelError:
        return
    raise AssertionError("a frame beyond the limit was accepted")


# -- the connection, both roles ---------------------------------------------------------------


def _edge() -> EdgeTunnelConnection:
    """The edge with the streams the capture's answers belong to (see test_http2_vectors)."""
    edge = EdgeTunnelConnection()
    edge.initiate()
    edge.open_control_stream()
    edge.send_request("GET", "/hello.txt?x=1", "test.local", [], end_stream=True)
    post = edge.send_request("POST", "/echo", "test.local", [("content-length", "48")])
    edge.send_data(post, b"0" * 48, end_stream=True)
    edge.send_request("GET", "/ws", "ws.local", [], request_type=RequestType.WEBSOCKET)
    edge.send_request("GET", "/", "other.local", [], end_stream=True)
    edge.send_request("GET", "/", "down.local", [], end_stream=True)
    edge.data_to_send()
    return edge


def _connector() -> ConnectorTunnelConnection:
    connector = ConnectorTunnelConnection()
    connector.initiate()
    connector.data_to_send()
    return connector


def _react(conn: TunnelHttp2Connection, events: list[Event]) -> None:
    """What an adapter does with events: consume data, answer requests."""
    reset = {event.stream_id for event in events if isinstance(event, StreamReset)}
    for event in events:
        assert isinstance(event, _EVENTS), event
        if isinstance(event, DataReceived):
            assert event.flow_controlled_length >= len(event.data) > 0
            conn.acknowledge(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, RequestReceived) and isinstance(conn, ConnectorTunnelConnection):
            if event.stream_id not in reset:
                conn.send_response(event.stream_id, 200, [("Content-Length", "2")], body=b"ok")
        elif isinstance(event, ResponseReceived):
            assert 100 <= event.status <= 999
    conn.data_to_send()


def _run(conn: TunnelHttp2Connection, pieces: list[bytes]) -> tuple[list[object], bool]:
    """Normalised events (a stream's DATA pieces merged) and whether the connection failed."""
    seen: list[object] = []
    try:
        for piece in pieces:
            events = conn.receive_data(piece)
            _react(conn, events)
            for event in events:
                last = seen[-1] if seen else None
                if (
                    isinstance(event, DataReceived)
                    and isinstance(last, DataReceived)
                    and last.stream_id == event.stream_id
                ):
                    seen[-1] = DataReceived(event.stream_id, last.data + event.data, 0)
                elif isinstance(event, DataReceived):
                    seen.append(DataReceived(event.stream_id, event.data, 0))
                elif not isinstance(event, SendBufferDrained):
                    seen.append(event)
    except Http2TunnelError:
        return seen, True
    return seen, False


def _both_ways(
    make: type[EdgeTunnelConnection] | type[ConnectorTunnelConnection],
    wire: bytes,
    pieces: list[bytes],
) -> None:
    fresh: Callable[[], TunnelHttp2Connection] = (
        _edge if make is EdgeTunnelConnection else _connector
    )
    with cpu_bounded(), allocation_bounded(len(wire)):
        whole, failed = _run(fresh(), [wire])
        split, split_failed = _run(fresh(), pieces)
    assert failed == split_failed
    if not failed:
        assert split == whole


@budget(200)
@given(mutated_capture(CLOUDFLARED_TO_EDGE), st.integers(-2, 2), st.data())
def test_edge_role_survives_mutated_cloudflared_traffic(
    frames: list[Frame], length_delta: int, draw: st.DataObject
) -> None:
    wire = serialise(frames, length_delta=length_delta)
    _both_ways(EdgeTunnelConnection, wire, draw.draw(splits(wire)))


@budget(200)
@given(mutated_capture(EDGE_TO_CLOUDFLARED), st.integers(-2, 2), st.data())
def test_connector_role_survives_mutated_edge_traffic(
    frames: list[Frame], length_delta: int, draw: st.DataObject
) -> None:
    wire = PREFACE + serialise(frames, length_delta=length_delta)
    _both_ways(ConnectorTunnelConnection, wire, draw.draw(splits(wire)))


@budget(200)
@given(frame_streams(), st.booleans(), st.data())
def test_both_roles_survive_made_up_frames(
    frames: list[Frame], edge_role: bool, draw: st.DataObject
) -> None:
    if edge_role:
        wire = serialise(CLOUDFLARED_TO_EDGE[:3] + frames)
        _both_ways(EdgeTunnelConnection, wire, draw.draw(splits(wire)))
    else:
        wire = PREFACE + serialise(EDGE_TO_CLOUDFLARED[:4] + frames)
        _both_ways(ConnectorTunnelConnection, wire, draw.draw(splits(wire)))


@budget(200)
@given(st.binary(max_size=300), st.booleans())
def test_both_roles_survive_raw_bytes(data: bytes, edge_role: bool) -> None:
    conn: TunnelHttp2Connection = _edge() if edge_role else _connector()
    wire = data if edge_role else PREFACE + data
    with cpu_bounded(), allocation_bounded(len(wire)):
        _run(conn, [wire])


@budget(200)
@given(meaningful_heads(), st.sampled_from([3, 5, 7, 9, 11]), st.sampled_from([0x4, 0x5]))
# Found: no :status made a response with status 0.
@example(b"", 3, 0x4)
# Found: json.loads raised RecursionError on a deeply nested meta.
@example(literal(b":status", b"200") + literal(b"cf-cloudflared-response-meta", b"[" * 3000), 3, 4)
def test_edge_role_reads_any_response_head(block: bytes, stream_id: int, flags: int) -> None:
    # A connector's answer on an open stream: status, meta and serialised headers hostile.
    wire = serialise([*CLOUDFLARED_TO_EDGE[:3], (1, flags, stream_id, block)])
    with cpu_bounded(), allocation_bounded(len(wire)):
        _run(_edge(), [wire])


@budget(200)
@given(meaningful_heads(), st.sampled_from([3, 5, 7, 2**31 - 1]), st.sampled_from([0x4, 0x5]))
def test_connector_role_reads_any_request_head(block: bytes, stream_id: int, flags: int) -> None:
    # An edge's request: pseudo-headers, tunnel headers and serialised headers hostile.
    wire = PREFACE + serialise([*EDGE_TO_CLOUDFLARED[:3], (1, flags, stream_id, block)])
    with cpu_bounded(), allocation_bounded(len(wire)):
        _run(_connector(), [wire])
