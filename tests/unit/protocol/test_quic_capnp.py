"""The hand-written ConnectRequest/ConnectResponse coder against pycapnp, and every refusal.

Hand-made messages below are lists of 64-bit words, one list per segment, so each malformation
is visible as the one word that carries it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import capnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adit.protocol import quic_capnp
from adit.protocol.errors import ProtocolError, ProtocolUsageError, QuicMetadataError
from adit.protocol.quic_capnp import (
    MAX_SEGMENTS,
    ConnectionType,
    ConnectRequest,
    ConnectResponse,
    decode_connect_request,
    decode_connect_response,
    encode_connect_request,
    encode_connect_response,
    framed_length,
)

_SCHEMA = Path(quic_capnp.__file__).with_name("capnp_schema") / "quic_metadata_protocol.capnp"
pycapnp: Any = capnp.SchemaParser().load(str(_SCHEMA), imports=[])


# Words -----------------------------------------------------------------------------------------


def struct_ptr(offset: int, data: int, pointers: int) -> int:
    return (offset << 2) & 0xFFFFFFFF | data << 32 | pointers << 48


def list_ptr(offset: int, size: int, count: int) -> int:
    return (offset << 2) & 0xFFFFFFFF | 1 | size << 32 | count << 35


def far_ptr(segment: int, pad: int, *, double: bool = False) -> int:
    return 2 | (4 if double else 0) | pad << 3 | segment << 32


def text(raw: bytes) -> list[int]:
    padded = raw + b"\0" * (-len(raw) % 8)
    return list(struct.unpack(f"<{len(padded) // 8}Q", padded))


def frame(*segments: list[int]) -> bytes:
    header = struct.pack(f"<I{len(segments)}I", len(segments) - 1, *map(len, segments))
    header += b"\0" * (-len(header) % 8)
    return header + b"".join(struct.pack(f"<{len(s)}Q", *s) for s in segments)


BYTES, POINTERS, COMPOSITE = 2, 6, 7

# A ConnectResponse: error "boom", one metadata entry ("k", "v").
GOOD_RESPONSE = [
    struct_ptr(0, 0, 2),
    list_ptr(1, BYTES, 5),  # error -> word 3
    list_ptr(1, COMPOSITE, 2),  # metadata -> word 4
    *text(b"boom\0"),
    struct_ptr(1, 0, 2),  # tag: one element, 0 data, 2 pointers
    list_ptr(1, BYTES, 2),  # key -> word 7
    list_ptr(1, BYTES, 2),  # val -> word 8
    *text(b"k\0"),
    *text(b"v\0"),
]


def test_hand_made_words_read_as_intended() -> None:
    expected = ConnectResponse(error="boom", metadata=(("k", "v"),))
    assert decode_connect_response(frame(GOOD_RESPONSE)) == expected
    assert encode_connect_response(expected) == frame(GOOD_RESPONSE)


def with_word(index: int, word: int) -> bytes:
    words = list(GOOD_RESPONSE)
    words[index] = word
    return frame(words)


# Round trips and pycapnp -----------------------------------------------------------------------

latin1 = st.text(st.characters(max_codepoint=0xFF), max_size=40)
ascii_text = st.text(st.characters(min_codepoint=1, max_codepoint=0x7F), max_size=40)


def entries(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    return st.lists(st.tuples(alphabet, alphabet), max_size=6).map(tuple)


def requests(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[ConnectRequest]:
    return st.builds(ConnectRequest, alphabet, st.sampled_from(ConnectionType), entries(alphabet))


def responses(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[ConnectResponse]:
    return st.builds(ConnectResponse, alphabet, entries(alphabet))


@given(requests(latin1))
def test_connect_request_round_trip(request: ConnectRequest) -> None:
    assert decode_connect_request(encode_connect_request(request)) == request


@given(responses(latin1))
def test_connect_response_round_trip(response: ConnectResponse) -> None:
    assert decode_connect_response(encode_connect_response(response)) == response


def test_text_is_latin1_bytes_both_ways() -> None:
    # cloudflared passes an origin's header bytes through unchecked: they need not be UTF-8.
    response = ConnectResponse(metadata=(("HttpHeader:X", "caf\xe9 \xff"),))
    encoded = encode_connect_response(response)
    assert b"caf\xe9 \xff\0" in encoded
    assert decode_connect_response(encoded) == response


def pycapnp_metadata(builder: Any, metadata: tuple[tuple[str, str], ...]) -> None:
    for entry, (key, value) in zip(builder.init("metadata", len(metadata)), metadata, strict=True):
        entry.key = key
        entry.val = value


def segment_strategies() -> st.SearchStrategy[dict[str, Any]]:
    # One segment, or a first segment of one word with tight further segments: the latter
    # makes pycapnp place objects in other segments behind far pointers.
    return st.sampled_from(
        [{}, {"num_first_segment_words": 1, "allocate_seg_callable": lambda n: bytearray(8 * n)}]
    )


@settings(max_examples=50)
@given(requests(ascii_text), segment_strategies())
def test_reads_what_pycapnp_writes(request: ConnectRequest, layout: dict[str, Any]) -> None:
    builder = pycapnp.ConnectRequest.new_message(**layout)
    builder.dest = request.dest
    builder.type = request.type.name.lower()
    pycapnp_metadata(builder, request.metadata)
    assert decode_connect_request(builder.to_bytes()) == request


@settings(max_examples=50)
@given(responses(ascii_text), segment_strategies())
def test_reads_responses_pycapnp_writes(response: ConnectResponse, layout: dict[str, Any]) -> None:
    builder = pycapnp.ConnectResponse.new_message(**layout)
    builder.error = response.error
    pycapnp_metadata(builder, response.metadata)
    assert decode_connect_response(builder.to_bytes()) == response


@settings(max_examples=50)
@given(requests(ascii_text), responses(ascii_text))
def test_pycapnp_reads_what_we_write(request: ConnectRequest, response: ConnectResponse) -> None:
    with pycapnp.ConnectRequest.from_bytes(encode_connect_request(request)) as reader:
        assert reader.dest == request.dest
        assert reader.type == request.type.name.lower()
        assert tuple((e.key, e.val) for e in reader.metadata) == request.metadata
    with pycapnp.ConnectResponse.from_bytes(encode_connect_response(response)) as reader:
        assert reader.error == response.error
        assert tuple((e.key, e.val) for e in reader.metadata) == response.metadata


def test_empty_text_stays_null_like_go() -> None:
    # go-capnproto2 leaves "" as a null pointer (cloudflared's ConnectResponse.error is null).
    encoded = encode_connect_response(ConnectResponse())
    root_error_pointer = encoded[16:24]
    assert root_error_pointer == bytes(8)


# Valid encodings other than ours ---------------------------------------------------------------


def test_null_root_reads_as_defaults() -> None:
    assert decode_connect_request(frame([0])) == ConnectRequest("", ConnectionType.HTTP)
    assert decode_connect_response(frame([0])) == ConnectResponse()


def test_structs_of_other_sizes_read_by_the_schema_rules() -> None:
    # A root without a data section (type reads as http) and with a third pointer; Metadata
    # elements with a data word and a third pointer: what an older or newer schema writes.
    words = [
        struct_ptr(0, 0, 3),
        list_ptr(2, BYTES, 2),  # dest -> word 4
        list_ptr(2, COMPOSITE, 4),  # metadata -> word 5
        0,
        *text(b"d\0"),
        struct_ptr(1, 1, 3),
        0xDEAD,  # element data word
        list_ptr(2, BYTES, 2),  # key -> word 10
        list_ptr(2, BYTES, 2),  # val -> word 11
        0,
        *text(b"k\0"),
        *text(b"v\0"),
    ]
    assert decode_connect_request(frame(words)) == ConnectRequest(
        "d", ConnectionType.HTTP, (("k", "v"),)
    )


def test_single_and_double_far_pointers() -> None:
    single = [
        far_ptr(1, 0),  # root: landing pad at 1:0
    ]
    landing = [struct_ptr(0, 0, 2), *GOOD_RESPONSE[1:]]
    assert decode_connect_response(frame(single, landing)).error == "boom"
    # Double far: the pad (in segment 1) points at the struct's start in segment 2 and
    # carries its tag; the struct's own pointers are relative to where it lies.
    double_root = [far_ptr(1, 0, double=True)]
    pad = [far_ptr(2, 0), struct_ptr(0, 0, 2)]
    content = GOOD_RESPONSE[1:]
    message = frame(double_root, pad, content)
    expected = ConnectResponse(error="boom", metadata=(("k", "v"),))
    assert decode_connect_response(message) == expected
    with pycapnp.ConnectResponse.from_bytes(message) as reader:  # the hand-made layout is valid
        assert reader.error == "boom"


# Refusals --------------------------------------------------------------------------------------

Decoder = Callable[[bytes], object]


def refuses(decode: Decoder, data: bytes, match: str) -> None:
    with pytest.raises(QuicMetadataError, match=match) as caught:
        decode(data)
    assert isinstance(caught.value, ProtocolError)


def test_framing_limits_fail_early() -> None:
    too_many = struct.pack("<I", MAX_SEGMENTS)
    with pytest.raises(QuicMetadataError, match="segments"):
        framed_length(too_many, 1 << 20)
    assert framed_length(struct.pack("<I", MAX_SEGMENTS - 1), 1 << 20) is None
    with pytest.raises(QuicMetadataError, match="segment table alone"):
        framed_length(struct.pack("<I", 20), 64)
    with pytest.raises(QuicMetadataError, match="exceeds the limit"):
        framed_length(struct.pack("<II", 0, 8), 64)
    assert framed_length(struct.pack("<II", 0, 7), 64) == 64
    assert framed_length(b"\0\0\0", 64) is None


def test_segment_table_must_match_the_message() -> None:
    good = frame(GOOD_RESPONSE)
    refuses(decode_connect_response, good[:6], "truncated")
    refuses(decode_connect_response, struct.pack("<II", 1, 1), "truncated")
    refuses(decode_connect_response, good[:-8], "declares")
    refuses(decode_connect_response, good + bytes(8), "declares")
    refuses(decode_connect_response, frame([], GOOD_RESPONSE), "no root pointer")


def test_pointers_must_stay_inside() -> None:
    refuses(decode_connect_response, with_word(0, struct_ptr(0, 0, 200)), "overruns")
    refuses(decode_connect_response, with_word(0, struct_ptr(-5, 0, 2)), "overruns")
    refuses(decode_connect_response, with_word(1, list_ptr(1, BYTES, 200)), "overruns")
    refuses(decode_connect_response, with_word(2, list_ptr(1, COMPOSITE, 200)), "overruns")
    refuses(decode_connect_response, with_word(2, list_ptr(100, COMPOSITE, 2)), "outside")
    refuses(decode_connect_response, frame([far_ptr(1, 0)]), "outside")
    refuses(decode_connect_response, frame([far_ptr(0, 5)]), "outside")


def test_far_pointer_landings_are_checked() -> None:
    refuses(decode_connect_response, frame([far_ptr(1, 0)], [far_ptr(1, 1), 0]), "lands on")
    refuses(decode_connect_response, frame([far_ptr(1, 0)], [3]), "lands on")
    bad_content = [struct_ptr(0, 0, 0), struct_ptr(0, 0, 2)]
    refuses(decode_connect_response, frame([far_ptr(1, 0, double=True)], bad_content), "double")
    bad_tag = [far_ptr(0, 0), far_ptr(0, 0)]
    refuses(decode_connect_response, frame([far_ptr(1, 0, double=True)], bad_tag), "double")


def test_kinds_must_match_the_schema() -> None:
    refuses(decode_connect_response, with_word(0, 3), "capability")
    refuses(decode_connect_response, with_word(0, list_ptr(0, BYTES, 8)), "list pointer where")
    refuses(decode_connect_response, with_word(1, struct_ptr(1, 1, 0)), "error is not a Text")
    refuses(decode_connect_response, with_word(1, list_ptr(1, 3, 2)), "error is not a Text")
    refuses(decode_connect_response, with_word(2, list_ptr(1, POINTERS, 2)), "not a list of str")
    refuses(decode_connect_response, with_word(4, list_ptr(0, BYTES, 0)), "tag that is not")


def test_text_must_be_nul_terminated() -> None:
    refuses(decode_connect_response, with_word(1, list_ptr(1, BYTES, 4)), "NUL-terminated")
    refuses(decode_connect_response, with_word(1, list_ptr(1, BYTES, 0)), "NUL-terminated")
    refuses(decode_connect_response, with_word(5, list_ptr(1, BYTES, 1)), "key is not a NUL")
    refuses(decode_connect_response, with_word(6, list_ptr(1, BYTES, 1)), "val is not a NUL")


def test_composite_list_elements_must_fit() -> None:
    refuses(decode_connect_response, with_word(4, struct_ptr(2, 0, 2)), "declares 2 elements")


def test_aliasing_cannot_amplify_the_decode() -> None:
    # 60 elements whose keys and values all point at the same 64-byte text: 120 reads of
    # 8 words from a message of ~200 words.
    count = 60
    shared = 1 + 1 + 1 + 2 * count  # after root pointer, root struct (2 words), tag, elements
    words = [struct_ptr(0, 0, 2), 0, list_ptr(0, COMPOSITE, 2 * count), struct_ptr(count, 0, 2)]
    for index in range(2 * count):
        at = 4 + index
        words.append(list_ptr(shared + 1 - at - 1, BYTES, 64))
    words += text(b"x" * 63 + b"\0")
    assert len(words) < 2 * count + 16
    refuses(decode_connect_response, frame(words), "aliasing")


def test_zero_sized_elements_are_charged() -> None:
    # One tag word claiming 2^20 elements of zero words each.
    words = [struct_ptr(0, 0, 2), 0, list_ptr(0, COMPOSITE, 0), struct_ptr(1 << 20, 0, 0)]
    refuses(decode_connect_response, frame(words), "aliasing")
    few = [struct_ptr(0, 0, 2), 0, list_ptr(0, COMPOSITE, 0), struct_ptr(2, 0, 0), 0, 0]
    assert decode_connect_response(frame(few)).metadata == (("", ""), ("", ""))


def test_unknown_connection_type() -> None:
    encoded = bytearray(encode_connect_request(ConnectRequest("x", ConnectionType.TCP)))
    encoded[16] = 3  # the type field: first bytes of the root's data word
    refuses(decode_connect_request, bytes(encoded), "ConnectRequest.type 3")


def test_encoder_refuses_what_capnp_cannot_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quic_capnp, "_LIST_LIMIT", 16)
    with pytest.raises(ProtocolUsageError, match="Text"):
        encode_connect_response(ConnectResponse(error="x" * 15))
    encode_connect_response(ConnectResponse(error="x" * 14))
    with pytest.raises(ProtocolUsageError, match="metadata"):
        encode_connect_response(ConnectResponse(metadata=(("", ""),) * 8))
