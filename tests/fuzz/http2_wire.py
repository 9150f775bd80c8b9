"""HTTP/2 frames as test data: the golden captures split into frames, and strategies that
build, mutate and split frame streams for the fuzz tests.

Independent of :mod:`adit.protocol.http2_frames` on purpose: a test that builds its input with
the code under test cannot see that code's mistakes.
"""

from __future__ import annotations

import struct
from pathlib import Path

from hpack.hpack import encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import strategies as st

__all__ = [
    "CLOUDFLARED_TO_EDGE",
    "EDGE_TO_CLOUDFLARED",
    "PREFACE",
    "Frame",
    "frame_streams",
    "header_blocks",
    "literal",
    "meaningful_heads",
    "mutated_capture",
    "serialise",
    "split_frames",
    "splits",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_VECTORS = Path(__file__).resolve().parents[1] / "corpus" / "http2_raw"

Frame = tuple[int, int, int, bytes]  # type, flags, stream id (with the reserved bit), payload


def split_frames(wire: bytes) -> list[Frame]:
    """The frames of a capture (after the preface, if it has one)."""
    offset = len(PREFACE) if wire.startswith(PREFACE) else 0
    frames = []
    while offset + 9 <= len(wire):
        high, low, kind, flags, stream_id = struct.unpack_from(">HBBBL", wire, offset)
        length = (high << 8) | low
        frames.append((kind, flags, stream_id, wire[offset + 9 : offset + 9 + length]))
        offset += 9 + length
    return frames


def serialise(frames: list[Frame], *, length_delta: int = 0) -> bytes:
    """Frames back to bytes; ``length_delta`` lies in every length field (framing errors)."""
    out = bytearray()
    for kind, flags, stream_id, payload in frames:
        length = max(0, min(len(payload) + length_delta, 2**24 - 1))
        out += struct.pack(">HBBBL", length >> 8, length & 0xFF, kind, flags, stream_id)
        out += payload
    return bytes(out)


def _shrunk(frames: list[Frame]) -> list[Frame]:
    # The captures carry a 70 KiB upload and download; a few bytes of each DATA frame keep
    # every stream's story while making an example ~100 times cheaper to run.
    return [(k, f, s, p[:48] if k == 0 else p) for k, f, s, p in frames]


CLOUDFLARED_TO_EDGE = _shrunk(split_frames((_VECTORS / "cloudflared_to_edge.bin").read_bytes()))
EDGE_TO_CLOUDFLARED = _shrunk(split_frames((_VECTORS / "edge_to_cloudflared.bin").read_bytes()))

_KINDS = st.one_of(st.integers(0, 9), st.integers(0, 255))
# The flags any frame type gives meaning to, alone and together, then any byte.
_FLAGS = st.one_of(
    st.sampled_from([0, 0x1, 0x4, 0x5, 0x8, 0x9, 0x20, 0x24, 0x25, 0x2D]), st.integers(0, 255)
)
_STREAMS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 5, 7, 9, 11, 13]),
    st.sampled_from([2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1]),  # the reserved bit set
    st.integers(0, 2**32 - 1),
)
_U32 = st.one_of(st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))


# Header fields the tunnel's two roles read, with values each role must survive.
_MEANINGFUL_NAMES = [
    b":status",
    b":method",
    b":path",
    b":authority",
    b":scheme",
    b"cf-cloudflared-response-meta",
    b"cf-cloudflared-response-headers",
    b"cf-cloudflared-request-headers",
    b"cf-cloudflared-proxy-connection-upgrade",
    b"cf-cloudflared-proxy-src",
    b"content-length",
]
_MEANINGFUL_VALUES = st.one_of(
    st.sampled_from(
        [
            b"200",
            b"101",
            b"100",
            b"",
            b"0",
            b"99",
            b"1000",
            b"+200",
            b" 200",
            b"2_00",
            b"\xd9\xa0\xd9\xa0\xd9\xa0",  # digits, but not ASCII ones
            b'{"src":"origin"}',
            b'{"src":"cloudflared","flow_rate_limited":true}',
            b"[" * 3000,  # deeper than Python's recursion limit
            b'{"src":' * 1000,
            b"Q29udGVudC1MZW5ndGg:Mw;WC1PcmlnaW4:c3Bpa2U",
            b"Zm9v;YmFy:===;:",
            b"websocket",
            b"control-stream",
            b"update-configuration",
            b"tcp",
        ]
    ),
    st.binary(max_size=32),
)


@st.composite
def meaningful_heads(draw: st.DrawFn) -> bytes:
    """A header block of the fields the tunnel reads, each with a drawn (hostile) value."""
    fields = []
    for _ in range(draw(st.integers(0, 6))):
        fields.append(literal(draw(st.sampled_from(_MEANINGFUL_NAMES)), draw(_MEANINGFUL_VALUES)))
    return b"".join(fields)


def literal(name: bytes, value: bytes) -> bytes:
    """One HPACK field as a literal without indexing, name and value raw."""
    return b"\x00" + _integer(len(name), 7, 0) + name + _integer(len(value), 7, 0) + value


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    """HPACK blocks: well-formed ones (every representation, Huffman or not), fields the
    tunnel gives meaning to with hostile values, and any bytes."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 3:
        return draw(meaningful_heads())
    return b"".join(draw(st.lists(_hpack_field(), max_size=6)))


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    # The hpack library's encoder: inputs made independently of the decoder under test.
    encoded = encode_integer(value, prefix_bits)
    encoded[0] |= first
    return bytes(encoded)


_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


@st.composite
def _hpack_string(draw: st.DrawFn) -> bytes:
    text = draw(
        st.one_of(
            st.sampled_from([b":status", b"200", b":path", b"/", b"cf-cloudflared-response-meta"]),
            st.binary(max_size=24),
        )
    )
    if draw(st.booleans()):
        coded = _HUFFMAN.encode(text)
        return _integer(len(coded), 7, 0x80) + coded
    return _integer(len(text), 7, 0) + text


@st.composite
def _hpack_field(draw: st.DrawFn) -> bytes:
    index = draw(st.one_of(st.integers(0, 70), st.integers(0, 2**20)))
    form = draw(st.integers(0, 5))
    if form == 0:  # indexed
        return _integer(index, 7, 0x80)
    if form == 4:  # dynamic table size update
        return _integer(draw(st.sampled_from([0, 256, 4096, 4097, 2**20])), 5, 0x20)
    prefix, first = {1: (6, 0x40), 2: (4, 0x00), 3: (4, 0x10), 5: (6, 0x40)}[form]
    if draw(st.booleans()):
        name = _integer(index, prefix, first)
    else:
        name = bytes((first,)) + draw(_hpack_string())
    return name + draw(_hpack_string())


@st.composite
def _payload(draw: st.DrawFn, kind: int) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40))  # any bytes for any frame type, now and then
    if kind == 0:  # DATA
        return draw(st.binary(max_size=32))
    if kind in (1, 9):  # HEADERS, CONTINUATION
        return draw(header_blocks())
    if kind == 2:  # PRIORITY
        return draw(st.binary(min_size=5, max_size=5))
    if kind in (3, 8):  # RST_STREAM, WINDOW_UPDATE
        return struct.pack(">L", draw(_U32))
    if kind == 4:  # SETTINGS
        pairs = draw(
            st.lists(st.tuples(st.integers(0, 8) | st.integers(0, 2**16 - 1), _U32), max_size=4)
        )
        return b"".join(struct.pack(">HL", code, value) for code, value in pairs)
    if kind == 6:  # PING
        return draw(st.binary(min_size=8, max_size=8))
    if kind == 7:  # GOAWAY
        return struct.pack(">LL", draw(_U32), draw(_U32)) + draw(st.binary(max_size=8))
    return draw(st.binary(max_size=16))


@st.composite
def _frame(draw: st.DrawFn) -> Frame:
    kind = draw(_KINDS)
    return (kind, draw(_FLAGS), draw(_STREAMS), draw(_payload(kind)))


def frame_streams(max_frames: int = 12) -> st.SearchStrategy[list[Frame]]:
    """Sequences of frames built from scratch, every field drawn."""
    return st.lists(_frame(), max_size=max_frames)


@st.composite
def mutated_capture(draw: st.DrawFn, frames: list[Frame]) -> list[Frame]:
    """A golden capture with a few frames dropped, repeated, moved, rewritten or made up."""
    out = list(frames)
    for _ in range(draw(st.integers(0, 4))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        kind, flags, stream_id, payload = out[at]
        action = draw(st.integers(0, 7))
        if action == 0:
            del out[at]
        elif action == 1:
            out.insert(at, out[at])
        elif action == 2:
            out.insert(draw(st.integers(0, len(out) - 1)), out.pop(at))
        elif action == 3:
            out[at] = (kind, draw(_FLAGS), stream_id, payload)
        elif action == 4:
            out[at] = (kind, flags, draw(_STREAMS), payload)
        elif action == 5:
            out[at] = (draw(_KINDS), flags, stream_id, payload)
        elif action == 6 and payload:
            cut = draw(st.integers(0, len(payload) - 1))
            flipped = bytearray(payload)
            flipped[cut] = draw(st.integers(0, 255))
            out[at] = (
                kind,
                flags,
                stream_id,
                bytes(flipped[: draw(st.integers(cut, len(payload)))]),
            )
        else:
            out.insert(at, draw(_frame()))
    return out


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """``data`` cut into reads at drawn places (empty reads included)."""

    @st.composite
    def cut(draw: st.DrawFn) -> list[bytes]:
        points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
        pieces = []
        start = 0
        for point in points:
            pieces.append(data[start:point])
            start = point
        pieces.append(data[start:])
        return pieces

    return cut()
