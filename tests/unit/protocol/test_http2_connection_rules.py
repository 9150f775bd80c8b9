"""The HTTP/2 rules adit's own state machine enforces, fed with hand-built frames."""

from __future__ import annotations

import struct

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adit.protocol.errors import Http2TunnelError
from adit.protocol.headers import ResponseMeta
from adit.protocol.hpack_codec import HpackDecoder, HpackError, PlainHpackEncoder
from adit.protocol.http2 import (
    ConnectionTerminated,
    ConnectorTunnelConnection,
    DataReceived,
    EdgeTunnelConnection,
    ErrorCode,
    PingAcknowledged,
    RequestReceived,
    ResponseReceived,
    SendBufferDrained,
    StreamEnded,
    StreamReset,
    TunnelSettings,
)
from adit.protocol.http2_frames import (
    CONNECTION_PREFACE,
    Flag,
    FrameReader,
    FrameType,
    frame,
    goaway_frame,
    ping_frame,
    settings_frame,
    window_update_frame,
)

_REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"h.test"),
    (b":path", b"/x"),
    (b"x-a", b"1"),
]


def _connector(settings_: TunnelSettings | None = None) -> ConnectorTunnelConnection:
    conn = ConnectorTunnelConnection(settings_)
    conn.initiate()
    conn.data_to_send()
    conn.receive_data(CONNECTION_PREFACE + settings_frame())
    conn.data_to_send()
    return conn


def _frames(wire: bytes) -> list[tuple[int, int, int, bytes]]:
    return FrameReader(1 << 24, expect_preface=False).feed(wire)


def test_go_style_hpack_with_huffman_and_dynamic_table_is_decoded() -> None:
    conn = _connector()
    encoder = hpack.Encoder()  # Huffman codes and indexes, as Go's encoder does
    first = conn.receive_data(frame(FrameType.HEADERS, 0x5, 1, encoder.encode(_REQUEST)))
    second = conn.receive_data(frame(FrameType.HEADERS, 0x5, 3, encoder.encode(_REQUEST)))
    for events, sid in ((first, 1), (second, 3)):
        request = events[0]
        assert isinstance(request, RequestReceived)
        assert (request.stream_id, request.method, request.path) == (sid, "GET", "/x")
        assert request.headers == (("x-a", "1"),)
        assert events[1] == StreamEnded(sid)


def test_header_block_split_over_continuation_frames() -> None:
    conn = _connector()
    block = hpack.Encoder().encode([*_REQUEST, (b"x-long", b"v" * 3000)])
    wire = frame(FrameType.HEADERS, Flag.END_STREAM, 1, block[:100])
    wire += frame(FrameType.CONTINUATION, 0, 1, block[100:2000])
    wire += frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, block[2000:])
    request, ended = conn.receive_data(wire)
    assert isinstance(request, RequestReceived)
    assert ("x-long", "v" * 3000) in request.headers
    assert ended == StreamEnded(1)


def test_a_frame_between_headers_and_continuation_is_a_connection_error() -> None:
    conn = _connector()
    block = hpack.Encoder().encode(_REQUEST)
    wire = frame(FrameType.HEADERS, 0, 1, block) + ping_frame(b"12345678")
    with pytest.raises(Http2TunnelError, match="interrupted"):
        conn.receive_data(wire)


def test_padded_headers_and_data_are_unpadded_and_fully_credited() -> None:
    conn = _connector()
    block = hpack.Encoder().encode(_REQUEST)
    padded_headers = bytes([3]) + b"\0" * 5 + block + b"\0\0\0"  # pad 3, priority 5 bytes
    conn.receive_data(
        frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.PADDED | Flag.PRIORITY, 1, padded_headers)
    )
    events = conn.receive_data(
        frame(FrameType.DATA, Flag.PADDED | Flag.END_STREAM, 1, bytes([4]) + b"body" + b"\0" * 4)
    )
    assert events == [DataReceived(1, b"body", 9), StreamEnded(1)]


def test_header_block_longer_than_the_peers_frame_size_goes_out_in_continuations() -> None:
    conn = _connector()
    conn.receive_data(frame(FrameType.HEADERS, 0x5, 1, hpack.Encoder().encode(_REQUEST)))
    big = [("X-Big", "b" * 40_000)]
    conn.send_response(1, 200, big, end_stream=True)
    frames = _frames(conn.data_to_send())
    kinds = [f[0] for f in frames]
    assert kinds[0] == FrameType.HEADERS
    assert kinds[1:] == [FrameType.CONTINUATION] * (len(kinds) - 1)
    assert len(kinds) >= 3
    assert all(len(f[3]) <= 16384 for f in frames)
    assert frames[-1][1] & Flag.END_HEADERS
    edge = EdgeTunnelConnection()
    edge.initiate()
    sid = edge.send_request("GET", "/", "h.test", [], end_stream=True)
    assert sid == 1
    events = edge.receive_data(b"".join(frame(*f) for f in frames))
    (response,) = [e for e in events if isinstance(e, ResponseReceived)]
    assert response.headers == (("X-Big", "b" * 40_000),)
    assert response.meta is ResponseMeta.ORIGIN


def test_streams_beyond_our_limit_are_refused() -> None:
    conn = _connector(TunnelSettings(max_concurrent_streams=1))
    encoder = hpack.Encoder()
    assert conn.receive_data(
        frame(FrameType.HEADERS, Flag.END_HEADERS, 1, encoder.encode(_REQUEST))
    )
    assert (
        conn.receive_data(frame(FrameType.HEADERS, Flag.END_HEADERS, 3, encoder.encode(_REQUEST)))
        == []
    )
    ((kind, _flags, sid, payload),) = _frames(conn.data_to_send())
    assert (kind, sid, struct.unpack(">L", payload)[0]) == (
        FrameType.RST_STREAM,
        3,
        ErrorCode.REFUSED_STREAM,
    )


def test_edge_respects_the_connectors_stream_limit_and_goaway() -> None:
    edge = EdgeTunnelConnection()
    edge.initiate()
    edge.receive_data(settings_frame([(0x3, 1)]))
    assert edge.peer_max_concurrent_streams == 1
    edge.send_request("GET", "/", "h.test", [])
    with pytest.raises(Http2TunnelError, match="limit"):
        edge.send_request("GET", "/", "h.test", [])
    other = EdgeTunnelConnection()
    other.initiate()
    assert other.receive_data(goaway_frame(0, 0)) == [ConnectionTerminated(0, 0)]
    with pytest.raises(Http2TunnelError, match="GOAWAY"):
        other.send_request("GET", "/", "h.test", [])


def test_ping_is_answered_and_acks_are_reported() -> None:
    conn = _connector()
    assert conn.receive_data(ping_frame(b"abcdefgh")) == []
    assert _frames(conn.data_to_send()) == [(FrameType.PING, Flag.ACK, 0, b"abcdefgh")]
    assert conn.receive_data(ping_frame(b"12345678", ack=True)) == [PingAcknowledged(b"12345678")]


def test_a_larger_initial_window_releases_queued_data() -> None:
    conn = _connector()
    conn.receive_data(frame(FrameType.HEADERS, 0x5, 1, hpack.Encoder().encode(_REQUEST)))
    conn.send_response(1, 200, [])
    conn.send_data(1, b"z" * 100_000)
    assert conn.pending(1) == 100_000 - 65535
    # A bigger stream window alone is not enough: the connection window is spent too.
    conn.receive_data(settings_frame([(0x4, 200_000)]))
    assert conn.pending(1) == 100_000 - 65535
    events = conn.receive_data(window_update_frame(0, 100_000))
    assert conn.pending(1) == 0
    assert SendBufferDrained(1) in events


def test_flow_control_violations() -> None:
    conn = _connector(TunnelSettings(stream_window=65535, connection_window=65535))
    conn.receive_data(
        frame(FrameType.HEADERS, Flag.END_HEADERS, 1, hpack.Encoder().encode(_REQUEST))
    )
    conn.receive_data(frame(FrameType.DATA, 0, 1, b"a" * 65535))
    with pytest.raises(Http2TunnelError, match="window"):
        conn.receive_data(frame(FrameType.DATA, 0, 1, b"a"))
    other = _connector()
    with pytest.raises(Http2TunnelError, match="2\\^31"):
        other.receive_data(window_update_frame(0, 2**31 - 1))


def test_frames_on_idle_and_closed_streams() -> None:
    conn = _connector()
    with pytest.raises(Http2TunnelError, match="idle"):
        conn.receive_data(frame(FrameType.DATA, 0, 5, b"x"))
    conn = _connector()
    conn.receive_data(
        frame(FrameType.HEADERS, Flag.END_HEADERS, 1, hpack.Encoder().encode(_REQUEST))
    )
    conn.reset_stream(1)
    conn.data_to_send()
    # Late data of a stream we reset is dropped, and its bytes credited to the connection.
    assert conn.receive_data(frame(FrameType.DATA, 0, 1, b"x" * 100)) == []
    assert conn.receive_data(window_update_frame(1, 10)) == []


def test_peer_reset_is_reported_once() -> None:
    conn = _connector()
    conn.receive_data(
        frame(FrameType.HEADERS, Flag.END_HEADERS, 1, hpack.Encoder().encode(_REQUEST))
    )
    rst = frame(FrameType.RST_STREAM, 0, 1, struct.pack(">L", ErrorCode.CANCEL))
    assert conn.receive_data(rst) == [StreamReset(1, ErrorCode.CANCEL)]
    assert conn.receive_data(rst) == []


def test_bad_preface_and_oversized_frames_are_refused() -> None:
    conn = ConnectorTunnelConnection()
    with pytest.raises(Http2TunnelError, match="preface"):
        conn.receive_data(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 10)
    conn = _connector(TunnelSettings(max_frame_size=16384))
    with pytest.raises(Http2TunnelError, match="exceeds"):
        conn.receive_data(frame(FrameType.DATA, 0, 1, b"x" * 16385))


def test_our_encoder_output_reads_back_with_the_reference_decoder() -> None:
    fields = [
        (b":status", b"200"),
        (b":method", b"GET"),
        (b"content-length", b"12"),
        (b"cf-cloudflared-response-headers", b"QQ:Yg;" * 40),
        (b"x-new-name", b"\xff\x00 bytes"),
        (b"x-long", b"l" * 300),
    ]
    encoder = PlainHpackEncoder([b"cf-cloudflared-response-headers"])
    decoder = hpack.Decoder()
    for _ in range(3):
        assert [tuple(h) for h in decoder.decode(encoder.encode(fields), raw=True)] == fields
    assert len(decoder.header_table.dynamic_entries) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_only_ever_raises_the_protocol_error(data: bytes) -> None:
    for conn in (_connector(), EdgeTunnelConnection()):
        try:
            conn.receive_data(data)
            conn.receive_data(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, data))
            conn.receive_data(frame(FrameType.SETTINGS, 0, 0, data))
        except Http2TunnelError:
            pass


_FIELD = st.tuples(
    st.sampled_from([b":method", b":path", b"cookie", b"x-a", b"set-cookie", b"x-new"])
    | st.binary(min_size=1, max_size=20),
    st.sampled_from([b"GET", b"/", b"1"]) | st.binary(max_size=300),
)


@settings(max_examples=150, deadline=None)
@given(
    blocks=st.lists(st.lists(_FIELD, max_size=12), min_size=1, max_size=6),
    table_size=st.sampled_from([0, 256, 4096]),
)
def test_decoder_reads_what_the_reference_encoder_writes(
    blocks: list[list[tuple[bytes, bytes]]], table_size: int
) -> None:
    encoder = hpack.Encoder()  # indexes and Huffman-codes, as Go's encoder does
    decoder = HpackDecoder()
    encoder.header_table_size = table_size
    for fields in blocks:
        assert decoder.decode(encoder.encode(fields)) == fields


_STATIC_NAMES = sorted({name for name, _ in hpack.table.HeaderTable.STATIC_TABLE})


@settings(max_examples=150, deadline=None)
@given(
    blocks=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(_STATIC_NAMES) | st.binary(min_size=1, max_size=20),
                st.binary(max_size=300),
            ),
            max_size=12,
        ),
        min_size=1,
        max_size=4,
    ),
    sensitive=st.sets(st.sampled_from(_STATIC_NAMES), max_size=5),
)
def test_decoder_reads_what_our_encoder_writes(
    blocks: list[list[tuple[bytes, bytes]]], sensitive: set[bytes]
) -> None:
    # Literal names from every static index (beyond 14 the index takes a second byte),
    # never-indexed ones, and values of every length class, twice (the encoder caches).
    encoder = PlainHpackEncoder(sensitive)
    decoder = HpackDecoder()
    for fields in [*blocks, *blocks]:
        assert decoder.decode(encoder.encode(fields)) == fields


def test_decoder_refuses_bad_blocks() -> None:
    decoder = HpackDecoder(max_header_list_size=100)
    for bad in (b"\xff\xff\xff\xff\xff\xff\xff", b"\x80", b"\xbe", b"\x00\x05ab", b"\x3f\xe2\x1f"):
        with pytest.raises(HpackError):
            HpackDecoder().decode(bad)
    with pytest.raises(HpackError, match="MAX_HEADER_LIST_SIZE"):
        decoder.decode(PlainHpackEncoder().encode([(b"x-a", b"v" * 100)]))


def test_a_large_data_frame_is_passed_on_as_its_pieces_arrive() -> None:
    payload = bytes(range(256)) * 1024
    wire = frame(FrameType.DATA, Flag.END_STREAM, 1, payload)
    reader = FrameReader(1 << 20, expect_preface=False)
    assert reader.feed(wire[:100]) == [(FrameType.DATA, 0, 1, wire[9:100])]
    middle = wire[100:200_000]
    ((kind, flags, sid, piece),) = reader.feed(middle)
    assert (kind, flags, sid) == (FrameType.DATA, 0, 1)
    assert piece is middle  # a read that is all body is passed on uncopied
    rest = reader.feed(wire[200_000:] + ping_frame(b"12345678"))
    assert rest == [
        (FrameType.DATA, Flag.END_STREAM, 1, wire[200_000:]),
        (FrameType.PING, 0, 0, b"12345678"),
    ]


def test_a_padded_data_frame_split_over_reads_is_collected_whole() -> None:
    conn = _connector()
    conn.receive_data(
        frame(FrameType.HEADERS, Flag.END_HEADERS, 1, hpack.Encoder().encode(_REQUEST))
    )
    wire = frame(FrameType.DATA, Flag.PADDED | Flag.END_STREAM, 1, bytes([2]) + b"abcdef" + b"\0\0")
    assert conn.receive_data(wire[:12]) == []
    assert conn.receive_data(wire[12:]) == [DataReceived(1, b"abcdef", 9), StreamEnded(1)]
