"""MessageSplitter: capnp stream framing split at any point, absurd headers rejected early."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adit.protocol.errors import FramingError, ProtocolError
from adit.protocol.framing import MessageSplitter

CORPUS = Path(__file__).parents[2] / "corpus" / "rpc_control_stream"
MESSAGES = [path.read_bytes() for path in sorted(CORPUS.glob("[0-9]*-cfd-*.bin"))]
STREAM = (CORPUS / "rpc_cloudflared_to_edge.bin").read_bytes()


def frame(*segments: bytes) -> bytes:
    header = struct.pack(f"<I{len(segments)}I", len(segments) - 1, *(len(s) // 8 for s in segments))
    header += b"\0" * (-len(header) % 8)
    return header + b"".join(segments)


def test_whole_stream_splits_into_cloudflareds_messages() -> None:
    assert MessageSplitter().feed(STREAM) == MESSAGES


def test_byte_at_a_time() -> None:
    splitter = MessageSplitter()
    out: list[bytes] = []
    for index in range(len(STREAM)):
        out += splitter.feed(STREAM[index : index + 1])
    assert out == MESSAGES
    assert splitter.buffered == 0


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_chunking(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    splitter = MessageSplitter()
    out: list[bytes] = []
    for start, end in itertools.pairwise(points):
        out += splitter.feed(STREAM[start:end])
    assert out == MESSAGES


def test_multi_segment_message_and_header_padding() -> None:
    # Two segments: 4 + 4*2 = 12 header bytes, padded to 16.
    message = frame(b"a" * 8, b"b" * 16)
    assert len(message) == 16 + 24
    assert MessageSplitter().feed(message + message[:5]) == [message]


def test_three_segments_need_no_padding() -> None:
    message = frame(b"x" * 8, b"", b"y" * 8)
    assert MessageSplitter().feed(message) == [message]


def test_too_many_segments_is_rejected_before_buffering() -> None:
    with pytest.raises(FramingError):
        MessageSplitter().feed(struct.pack("<I", 0xFFFFFFFF))


def test_segment_count_limit_is_configurable() -> None:
    splitter = MessageSplitter(max_segments=2)
    with pytest.raises(FramingError):
        splitter.feed(struct.pack("<I", 2))


def test_huge_segment_is_rejected_from_the_header_alone() -> None:
    with pytest.raises(FramingError, match="exceeds the limit"):
        MessageSplitter().feed(struct.pack("<II", 0, 0xFFFFFFFF))


def test_message_size_limit_is_exact() -> None:
    message = frame(b"z" * 64)  # 8 + 64 bytes
    assert MessageSplitter(max_message_size=72).feed(message) == [message]
    with pytest.raises(FramingError):
        MessageSplitter(max_message_size=71).feed(message)


def test_framing_error_is_a_protocol_error() -> None:
    assert issubclass(FramingError, ProtocolError)


def test_invalid_limits() -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        MessageSplitter(max_message_size=0)


@given(st.binary(max_size=512), st.integers(min_value=1, max_value=64))
def test_garbage_only_ever_raises_framing_error(data: bytes, step: int) -> None:
    splitter = MessageSplitter(max_message_size=4096)
    try:
        for start in range(0, len(data), step):
            for message in splitter.feed(data[start : start + step]):
                assert len(message) <= 4096
    except FramingError:
        pass
