"""The sans-IO RFC 6455 codec: accept keys, framing, masking rules, control frames, closing."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adit.protocol.errors import ProtocolUsageError
from adit.protocol.websocket import (
    CloseCode,
    Frame,
    FrameDecoder,
    Opcode,
    Role,
    WebSocketConnection,
    WebSocketError,
    accept_key,
    client_key,
    encode_frame,
    mask_payload,
)

MASK = b"\x37\xfa\x21\x3d"


def fixed_mask(count: int) -> bytes:
    assert count == 4
    return MASK


def test_accept_key_matches_rfc_6455_example() -> None:
    # RFC 6455 §1.3.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert client_key(b"the sample nonce") == "dGhlIHNhbXBsZSBub25jZQ=="
    with pytest.raises(ProtocolUsageError):
        client_key(b"short")


def test_rfc_examples_single_frame_masked_and_unmasked() -> None:
    # RFC 6455 §5.7: "Hello", unmasked and masked with 37 fa 21 3d.
    assert encode_frame(Opcode.TEXT, b"Hello") == bytes.fromhex("810548656c6c6f")
    masked = bytes.fromhex("818537fa213d7f9f4d5158")
    assert encode_frame(Opcode.TEXT, b"Hello", mask=MASK) == masked
    assert FrameDecoder(expect_masked=True).feed(masked) == [Frame(True, Opcode.TEXT, b"Hello")]
    # Fragmented unmasked text message.
    frames = FrameDecoder(expect_masked=False).feed(bytes.fromhex("010348656c80026c6f"))
    assert frames == [Frame(False, Opcode.TEXT, b"Hel"), Frame(True, Opcode.CONTINUATION, b"lo")]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_length_encodings_round_trip(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    data = encode_frame(Opcode.BINARY, payload, mask=MASK)
    header = {True: 2, False: 4 if size < 65536 else 10}[size < 126]
    assert len(data) == header + 4 + size
    assert FrameDecoder(expect_masked=True).feed(data) == [Frame(True, Opcode.BINARY, payload)]


@settings(deadline=None)  # timing varies under a loaded parallel run
@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    cut=st.integers(min_value=1, max_value=50),
)
def test_any_chunking_gives_the_same_frames(payloads: list[bytes], cut: int) -> None:
    stream = b"".join(encode_frame(Opcode.BINARY, p, mask=MASK) for p in payloads)
    decoder = FrameDecoder(expect_masked=True)
    frames: list[Frame] = []
    for start in range(0, len(stream), cut):
        frames += decoder.feed(stream[start : start + cut])
    assert [f.payload for f in frames] == payloads


@settings(deadline=None)
@given(st.binary(max_size=1000), st.binary(min_size=4, max_size=4))
def test_masking_is_an_involution(payload: bytes, mask: bytes) -> None:
    assert mask_payload(mask_payload(payload, mask), mask) == payload


@pytest.mark.parametrize(
    ("data", "expect_masked", "message"),
    [
        (encode_frame(Opcode.BINARY, b"x"), True, "must be masked"),
        (encode_frame(Opcode.BINARY, b"x", mask=MASK), False, "must not be masked"),
        (bytes([0x80 | 0x40 | Opcode.BINARY, 0]), False, "reserved bits"),
        (bytes([0x83, 0]), False, "unknown opcode"),
        (encode_frame(Opcode.PING, b"x" * 126), False, "longer than 125"),
        (encode_frame(Opcode.PING, b"", fin=False), False, "fragmented control"),
        (encode_frame(Opcode.CONTINUATION, b"x"), False, "without a message"),
        (
            encode_frame(Opcode.TEXT, b"a", fin=False) + encode_frame(Opcode.TEXT, b"b"),
            False,
            "inside a fragmented",
        ),
    ],
)
def test_violations(data: bytes, expect_masked: bool, message: str) -> None:
    with pytest.raises(WebSocketError, match=message):
        FrameDecoder(expect_masked=expect_masked).feed(data)


def test_oversized_frame_is_refused_with_1009() -> None:
    data = struct.pack("!BBQ", 0x82, 127, 1 << 40)
    with pytest.raises(WebSocketError) as info:
        FrameDecoder(expect_masked=False, max_frame=1024).feed(data)
    assert info.value.code == CloseCode.TOO_BIG


def test_server_answers_ping_and_close_and_never_masks() -> None:
    server = WebSocketConnection(Role.SERVER)
    ping = encode_frame(Opcode.PING, b"hb", mask=MASK)
    data = encode_frame(Opcode.BINARY, b"payload", mask=MASK)
    frames = server.receive(ping + data)
    assert frames == [Frame(True, Opcode.BINARY, b"payload")]
    assert server.data_to_send() == encode_frame(Opcode.PONG, b"hb")
    assert server.send_data(b"out") == encode_frame(Opcode.BINARY, b"out")

    close = encode_frame(Opcode.CLOSE, struct.pack("!H", 1001) + b"bye", mask=MASK)
    (frame,) = server.receive(close + encode_frame(Opcode.BINARY, b"late", mask=MASK))
    assert frame.opcode == Opcode.CLOSE
    assert server.close_code == 1001
    assert server.data_to_send() == encode_frame(Opcode.CLOSE, struct.pack("!H", 1001))
    assert server.closed
    with pytest.raises(ProtocolUsageError):
        server.send_data(b"after close")


def test_client_masks_every_frame_and_closes_first() -> None:
    client = WebSocketConnection(Role.CLIENT, mask_source=fixed_mask)
    assert client.send_data(b"Hello", opcode=Opcode.TEXT) == bytes.fromhex("818537fa213d7f9f4d5158")
    sent = client.send_close(CloseCode.NORMAL)
    assert sent == encode_frame(Opcode.CLOSE, struct.pack("!H", 1000), mask=MASK)
    assert client.send_close() == b""  # only once
    assert (client.close_sent, client.close_received) == (True, False)
    client.receive(encode_frame(Opcode.CLOSE, struct.pack("!H", 1000)))
    assert (client.close_sent, client.close_received) == (True, True)
    assert client.data_to_send() == b""  # no second close


def test_protocol_error_queues_a_close_with_its_code() -> None:
    server = WebSocketConnection(Role.SERVER)
    with pytest.raises(WebSocketError):
        server.receive(encode_frame(Opcode.BINARY, b"unmasked"))
    assert server.data_to_send() == encode_frame(Opcode.CLOSE, struct.pack("!H", 1002))


def test_fragmented_message_payloads_stream_through() -> None:
    server = WebSocketConnection(Role.SERVER)
    parts = [b"ab", b"cd", b"ef"]
    opcodes = itertools.chain([Opcode.BINARY], itertools.repeat(Opcode.CONTINUATION))
    data = b"".join(
        encode_frame(op, part, fin=index == 2, mask=MASK)
        for index, (op, part) in enumerate(zip(opcodes, parts, strict=False))
    )
    # A ping may arrive between fragments.
    data = data[:8] + encode_frame(Opcode.PING, b"", mask=MASK) + data[8:]
    frames = server.receive(data)
    assert b"".join(f.payload for f in frames) == b"abcdef"
    assert server.data_to_send() == encode_frame(Opcode.PONG, b"")
