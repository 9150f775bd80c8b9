"""adit's HPACK decoder against python-hyper's ``hpack`` decoder, block after block.

Both keep a dynamic table across the blocks of a connection, so the property is over
sequences: for every block, either both refuse it (and the connection ends there), or both
decode the same header list. Only :class:`HpackError` may escape ours, nothing spins, and a
block never costs much more memory than its size.
"""

from __future__ import annotations

from hpack import Decoder, HPACKDecodingError
from hypothesis import example, given
from hypothesis import strategies as st

from adit.protocol.hpack_codec import HpackDecoder, HpackError, PlainHpackEncoder
from fuzz.budget import allocation_bounded, budget, cpu_bounded
from fuzz.http2_wire import header_blocks

_LIST_LIMIT = 4096  # small, so that header-list-size refusals are reached too


def _ours() -> HpackDecoder:
    return HpackDecoder(max_table_size=4096, max_header_list_size=_LIST_LIMIT)


def _theirs() -> Decoder:
    decoder = Decoder(max_header_list_size=_LIST_LIMIT)
    decoder.max_allowed_table_size = 4096
    return decoder


def _decode_theirs(decoder: Decoder, block: bytes) -> list[tuple[bytes, bytes]] | None:
    try:
        return [(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)]
    except HPACKDecodingError:
        return None


def _decode_ours(decoder: HpackDecoder, block: bytes) -> list[tuple[bytes, bytes]] | None:
    try:
        return decoder.decode(block)
    except HpackError:
        return None


def _longest_integer_continuation(block: bytes) -> int:
    """The longest run of bytes with the continuation bit: an integer at least that long."""
    longest = run = 0
    for byte in block:
        run = run + 1 if byte & 0x80 else 0
        longest = max(longest, run)
    return longest


@budget(400)
@given(st.lists(header_blocks(), min_size=1, max_size=5))
# Found: a dynamic table size update after a header field (RFC 7541 §4.2) was accepted.
@example([b"\x82\x3f\xe1\x1f"])
# Truncated blocks: inside an integer, a name, a value.
@example([b"\xff"])
@example([b"\x00"])
@example([b"\x00\x01a"])
@example([b"\x04"])
@example([b"\x40\x81"])
def test_decodes_as_hpack_does(blocks: list[bytes]) -> None:
    ours, theirs = _ours(), _theirs()
    for block in blocks:
        with cpu_bounded(), allocation_bounded(len(block)):
            mine = _decode_ours(ours, block)
        reference = _decode_theirs(theirs, block)
        if mine is None and reference is not None:
            # Allowed, in the refusing direction only: RFC 7541 §5.1 lets a decoder refuse
            # integers beyond its limits. Ours stops at five continuation bytes (2^35), which
            # no table index, string length or table size of a tunnel comes near.
            assert _longest_integer_continuation(block) >= 4, (block, reference)
            return
        assert mine == reference, block
        if mine is None:
            return  # a refused block ends the connection: the tables mean nothing after it


@budget(200)
@given(st.binary(max_size=256))
def test_any_bytes_decode_or_raise_hpack_error(block: bytes) -> None:
    with cpu_bounded(), allocation_bounded(len(block)):
        _decode_ours(_ours(), block)


@budget(100)
@given(
    st.lists(
        st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=40)), max_size=6),
        min_size=1,
        max_size=4,
    )
)
def test_our_encoding_reads_back(header_lists: list[list[tuple[bytes, bytes]]]) -> None:
    encoder = PlainHpackEncoder([b"authorization"])
    ours, theirs = HpackDecoder(), Decoder()
    for headers in header_lists:
        block = encoder.encode(headers)
        assert ours.decode(block) == headers
        assert _decode_theirs(theirs, block) == headers
