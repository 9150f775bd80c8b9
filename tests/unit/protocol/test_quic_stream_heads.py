"""QUIC stream heads against cloudflared's own streams (golden vectors, PROTOCOL.md §5.2-§5.4).

cloudflared → edge bytes are authoritative: our encoder must reproduce them. Edge → cloudflared
bytes came from a throwaway edge: we compare what they mean, never their bytes.
"""

from __future__ import annotations

import ipaddress
import itertools
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adit.protocol import quic_metadata
from adit.protocol.errors import ProtocolUsageError, QuicMetadataError
from adit.protocol.quic_capnp import decode_connect_response, framed_length
from adit.protocol.quic_metadata import (
    DATA_STREAM_PREAMBLE,
    DATA_STREAM_SIGNATURE,
    PROTOCOL_VERSION,
    RPC_STREAM_PREAMBLE,
    RPC_STREAM_SIGNATURE,
    ConnectionType,
    ConnectRequest,
    ConnectResponse,
    HttpRequestHead,
    HttpResponseHead,
    StreamHead,
    StreamHeadReader,
    StreamSignature,
    TcpRequestHead,
    encode_data_stream_head,
    encode_rpc_stream_head,
    http_request_metadata,
    http_response_metadata,
    parse_http_request,
    parse_http_response,
    parse_tcp_request,
    tcp_connect_request,
)

CORPUS = Path(__file__).parents[2] / "corpus" / "quic"
DATA_STREAMS = ("data_stream_http_get", "data_stream_websocket", "data_stream_tcp")
Message = ConnectRequest | ConnectResponse


def vector(folder: str, pattern: str) -> bytes:
    (path,) = (CORPUS / folder).glob(pattern)
    return path.read_bytes()


def read_head(expect: type[ConnectRequest], data: bytes) -> StreamHead[ConnectRequest]:
    head = StreamHeadReader(expect).feed(data)
    assert head is not None
    return head


def response_head(data: bytes) -> StreamHead[ConnectResponse]:
    head = StreamHeadReader(ConnectResponse).feed(data)
    assert head is not None
    return head


def request_of(folder: str) -> ConnectRequest:
    message = read_head(ConnectRequest, vector(folder, "stream_edge_to_cloudflared.bin")).message
    assert message is not None
    return message


def response_of(folder: str) -> ConnectResponse:
    message = response_head(vector(folder, "stream_cloudflared_to_edge.bin")).message
    assert message is not None
    return message


# Constants -------------------------------------------------------------------------------------


def test_preambles_are_cloudflareds() -> None:
    assert DATA_STREAM_SIGNATURE.hex() == "0a36cd12a13e"
    assert RPC_STREAM_SIGNATURE.hex() == "52bb825cdb65"
    assert PROTOCOL_VERSION == b"01"
    assert encode_rpc_stream_head() == RPC_STREAM_PREAMBLE == RPC_STREAM_SIGNATURE
    for folder in DATA_STREAMS:
        assert vector(folder, "03-cfd-preamble.bin") == DATA_STREAM_PREAMBLE
    cfd_rpc = vector("rpc_stream_unregisterUdpSession_from_cloudflared", "stream_cloud*")
    assert cfd_rpc.startswith(RPC_STREAM_SIGNATURE)
    assert cfd_rpc[6:10] == b"\0\0\0\0"  # capnp framing right after it: no version on RPC


# cloudflared's ConnectResponses ----------------------------------------------------------------

SPIKE_HEADERS = (
    ("Content-Length", "3"),
    ("Content-Type", "text/plain"),
    ("X-Origin", "spike"),
    ("Set-Cookie", "a=1"),
    ("Set-Cookie", "b=2"),
)
WEBSOCKET_HEADERS = (
    ("Connection", "Upgrade"),
    ("Sec-Websocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ("Upgrade", "websocket"),
)


def test_http_get_response() -> None:
    head = response_head(vector("data_stream_http_get", "stream_cloudflared_to_edge.bin"))
    assert head.signature is StreamSignature.DATA
    assert head.rest == b"hi\n"
    assert head.message is not None
    assert head.message.error == ""
    assert parse_http_response(head.message) == HttpResponseHead(200, SPIKE_HEADERS, False)


def test_websocket_response_keeps_101() -> None:
    response = response_of("data_stream_websocket")
    assert parse_http_response(response) == HttpResponseHead(101, WEBSOCKET_HEADERS, False)


def test_tcp_ack_is_empty() -> None:
    response = response_of("data_stream_tcp")
    assert response == ConnectResponse()
    assert parse_http_response(response) == HttpResponseHead(None, (), False)


@pytest.mark.parametrize("folder", DATA_STREAMS)
def test_our_connect_response_is_byte_identical_to_cloudflareds(folder: str) -> None:
    cfd = vector(folder, "03-cfd-preamble.bin") + vector(folder, "04-cfd-ConnectResponse.bin")
    response = response_of(folder)
    status = parse_http_response(response)
    if status.status is not None:
        rebuilt = ConnectResponse(metadata=http_response_metadata(status.status, status.headers))
        assert rebuilt == response
    assert encode_data_stream_head(response) == cfd


# The edge's ConnectRequests --------------------------------------------------------------------


def test_http_get_request() -> None:
    request = request_of("data_stream_http_get")
    assert request.dest == "https://test.local/hello.txt?x=1"
    assert request.type is ConnectionType.HTTP
    assert parse_http_request(request) == HttpRequestHead(
        method="GET",
        host="test.local",
        headers=(
            ("User-Agent", "golden-vector-edge"),
            ("Cf-Ray", "0123456789abcdef-TST"),
            ("X-Multi", "one"),
            ("X-Multi", "two"),
        ),
    )
    ours = ConnectRequest(
        dest="https://test.local/hello.txt?x=1",
        type=ConnectionType.HTTP,
        metadata=http_request_metadata("GET", "test.local", parse_http_request(request).headers),
    )
    assert read_head(ConnectRequest, encode_data_stream_head(ours)).message == request


def test_websocket_request() -> None:
    request = request_of("data_stream_websocket")
    assert (request.dest, request.type) == ("https://ws.local/ws", ConnectionType.WEBSOCKET)
    head = parse_http_request(request)
    assert (head.method, head.host) == ("GET", "ws.local")
    assert head.headers == (
        ("Cf-Cloudflared-Proxy-Connection-Upgrade", "websocket"),
        ("Sec-Websocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-Websocket-Version", "13"),
    )
    ours = ConnectRequest(
        "https://ws.local/ws",
        ConnectionType.WEBSOCKET,
        http_request_metadata("GET", "ws.local", head.headers),
    )
    assert read_head(ConnectRequest, encode_data_stream_head(ours)).message == request


def test_tcp_request() -> None:
    request = request_of("data_stream_tcp")
    assert parse_tcp_request(request) == TcpRequestHead(
        address=ipaddress.IPv4Address("127.0.0.1"), port=9009, flow_id="flow-0001", trace_id=""
    )
    ours = tcp_connect_request(ipaddress.IPv4Address("127.0.0.1"), 9009, flow_id="flow-0001")
    assert read_head(ConnectRequest, encode_data_stream_head(ours)).message == request


# Every split of every stream -------------------------------------------------------------------

STREAMS = [
    (folder, name, expect)
    for folder in DATA_STREAMS
    for name, expect in (
        ("stream_edge_to_cloudflared.bin", ConnectRequest),
        ("stream_cloudflared_to_edge.bin", ConnectResponse),
    )
] + [
    ("rpc_stream_updateConfiguration", "stream_edge_to_cloudflared.bin", ConnectRequest),
    ("rpc_stream_registerUdpSession", "stream_edge_to_cloudflared.bin", ConnectRequest),
    (
        "rpc_stream_unregisterUdpSession_from_cloudflared",
        "stream_cloudflared_to_edge.bin",
        ConnectRequest,
    ),
]


def feed_all(
    reader: StreamHeadReader[Message], chunks: list[bytes]
) -> tuple[StreamHead[Message], bytes]:
    """Feed ``chunks`` until the head is out; return it and every byte after the head."""
    for index, chunk in enumerate(chunks):
        head = reader.feed(chunk)
        if head is not None:
            return head, head.rest + b"".join(chunks[index + 1 :])
    raise AssertionError("the head never completed")


@pytest.mark.parametrize(("folder", "name", "expect"), STREAMS)
def test_every_split_of_every_stream(folder: str, name: str, expect: type[Message]) -> None:
    stream = vector(folder, name)
    whole = StreamHeadReader(expect).feed(stream)
    assert whole is not None
    body = whole.rest
    if whole.signature is StreamSignature.RPC:
        assert len(stream) - len(body) == len(RPC_STREAM_SIGNATURE)
    for cut in range(len(stream) + 1):
        head, after = feed_all(StreamHeadReader(expect), [stream[:cut], stream[cut:]])
        assert (head.signature, head.message, after) == (whole.signature, whole.message, body)
    head, after = feed_all(
        StreamHeadReader(expect), [stream[i : i + 1] for i in range(len(stream))]
    )
    assert (head.message, after) == (whole.message, body)


def test_rpc_streams_hand_over_at_the_signature() -> None:
    stream = vector("rpc_stream_updateConfiguration", "stream_edge_to_cloudflared.bin")
    head = read_head(ConnectRequest, stream)
    assert (head.signature, head.message, head.rest) == (StreamSignature.RPC, None, stream[6:])


message_texts = st.text(st.characters(max_codepoint=0xFF), max_size=30)
heads = st.one_of(
    st.builds(
        ConnectRequest,
        message_texts,
        st.sampled_from(ConnectionType),
        st.lists(st.tuples(message_texts, message_texts), max_size=5).map(tuple),
    ),
    st.builds(
        ConnectResponse,
        message_texts,
        st.lists(st.tuples(message_texts, message_texts), max_size=5).map(tuple),
    ),
)


@given(heads, st.binary(max_size=40), st.lists(st.integers(min_value=0, max_value=400)))
def test_any_head_in_any_chunks(message: Message, body: bytes, cuts: list[int]) -> None:
    stream = encode_data_stream_head(message) + body
    points = [0, *sorted(min(cut, len(stream)) for cut in cuts), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    reader: StreamHeadReader[Message] = StreamHeadReader(type(message))
    head, after = feed_all(reader, chunks)
    assert (head.signature, head.message, after) == (StreamSignature.DATA, message, body)


# Refusals --------------------------------------------------------------------------------------

GOOD = encode_data_stream_head(ConnectResponse(metadata=(("HttpStatus", "200"),)))


def test_bad_signature_fails_at_its_first_wrong_byte() -> None:
    reader = StreamHeadReader(ConnectRequest)
    assert reader.feed(DATA_STREAM_SIGNATURE[:5]) is None
    with pytest.raises(QuicMetadataError, match="unknown stream signature"):
        reader.feed(b"\x00")
    with pytest.raises(QuicMetadataError, match="starting 00"):
        StreamHeadReader(ConnectRequest).feed(b"\x00")
    # cloudflared's RPC answers carry no signature: capnp from the first byte.
    answer = vector("rpc_stream_updateConfiguration", "stream_cloudflared_to_edge.bin")
    with pytest.raises(QuicMetadataError, match="signature"):
        StreamHeadReader(ConnectResponse).feed(answer)


def test_rpc_signature_is_no_answer_on_a_data_stream() -> None:
    reader = StreamHeadReader(ConnectResponse)
    with pytest.raises(QuicMetadataError, match="RPC stream signature"):
        reader.feed(RPC_STREAM_SIGNATURE[:1])
    head = StreamHeadReader(ConnectRequest).feed(RPC_STREAM_SIGNATURE)
    assert head is not None and head.signature is StreamSignature.RPC


def test_bad_version() -> None:
    reader = StreamHeadReader(ConnectResponse)
    assert reader.feed(DATA_STREAM_SIGNATURE + b"0") is None
    with pytest.raises(QuicMetadataError, match="version b'02'"):
        reader.feed(b"2")
    with pytest.raises(QuicMetadataError, match="version b'1'"):
        StreamHeadReader(ConnectResponse).feed(DATA_STREAM_SIGNATURE + b"1")


def test_segment_table_that_lies_fails_before_the_message_arrives() -> None:
    reader = StreamHeadReader(ConnectResponse, max_message_size=1024)
    with pytest.raises(QuicMetadataError, match="exceeds the limit of 1024"):
        reader.feed(DATA_STREAM_PREAMBLE + struct.pack("<II", 0, 128))
    with pytest.raises(ProtocolUsageError):
        reader.feed(b"")  # the reader is spent, like the stream
    with pytest.raises(QuicMetadataError, match="segments"):
        StreamHeadReader(ConnectResponse).feed(DATA_STREAM_PREAMBLE + b"\xff\xff\xff\xff")
    assert StreamHeadReader(ConnectResponse, max_message_size=1024).feed(GOOD) is not None


def test_message_that_is_not_the_expected_struct() -> None:
    request = encode_data_stream_head(ConnectRequest("x", ConnectionType.TCP))
    broken = bytearray(request)
    broken[8 + 16] = 7  # the ConnectionType
    reader = StreamHeadReader(ConnectRequest)
    with pytest.raises(QuicMetadataError, match="ConnectionType"):
        reader.feed(bytes(broken))
    with pytest.raises(ProtocolUsageError):
        reader.feed(b"")
    # A Text where the metadata list should be: root at word 1 (1 data word, 2 pointers),
    # type http, dest null, metadata -> the 5-byte Text "boom" at word 4.
    words = (1 << 32 | 2 << 48, 0, 0, 1 | 2 << 32 | 5 << 35, int.from_bytes(b"boom", "little"))
    message = struct.pack("<II5Q", 0, len(words), *words)
    with pytest.raises(QuicMetadataError, match="metadata is not a list of structs"):
        StreamHeadReader(ConnectRequest).feed(DATA_STREAM_PREAMBLE + message)


def test_a_spent_reader_refuses_more() -> None:
    reader = StreamHeadReader(ConnectResponse)
    assert reader.feed(GOOD) is not None
    with pytest.raises(ProtocolUsageError):
        reader.feed(b"")
    failed = StreamHeadReader(ConnectResponse)
    with pytest.raises(QuicMetadataError):
        failed.feed(b"X")
    with pytest.raises(ProtocolUsageError):
        failed.feed(GOOD)
    with pytest.raises(ValueError, match="max_message_size"):
        StreamHeadReader(ConnectResponse, max_message_size=7)


def test_large_head_byte_by_byte_stays_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    # 800 headers of ~70 wire bytes, fed one byte at a time: the segment table is parsed once
    # it is whole and the message decoded once it is whole, never again per byte.
    calls = {"table": 0, "decode": 0}

    def counted_table(data: memoryview, max_size: int) -> int | None:
        calls["table"] += 1
        return framed_length(data, max_size)

    def counted_decode(data: bytes) -> ConnectResponse:
        calls["decode"] += 1
        return decode_connect_response(data)

    monkeypatch.setattr(quic_metadata, "framed_length", counted_table)
    monkeypatch.setattr(quic_metadata, "decode_connect_response", counted_decode)
    metadata = tuple((f"HttpHeader:X-{i:04d}", "v" * 24) for i in range(800))
    stream = encode_data_stream_head(ConnectResponse(metadata=metadata))
    assert 50_000 < len(stream) < 64 * 1024
    reader = StreamHeadReader(ConnectResponse)
    heads = [reader.feed(stream[i : i + 1]) for i in range(len(stream))]
    assert heads[-1] is not None and heads[-1].message is not None
    assert heads[-1].message.metadata == metadata
    assert all(head is None for head in heads[:-1])
    assert calls == {"table": 9, "decode": 1}  # from the version's last byte to the table's
