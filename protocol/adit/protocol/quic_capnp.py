"""cloudflared's QUIC metadata structs on the wire (PROTOCOL.md §3.3), coded without pycapnp.

A ``ConnectRequest`` and a ``ConnectResponse`` (``tunnelrpc/proto/quic_metadata_protocol.capnp``)
head every proxied QUIC stream, so one of each is coded per request. Their schema is small and
fixed (two Texts, a u16 enum, a list of two-Text structs): a hand-written coder costs a fraction
of pycapnp's message objects and keeps pycapnp out of the request path, as
:mod:`adit.protocol.registration_wire` keeps it out of registration. The tests check this coder
against pycapnp in both directions.

Writing follows go-capnproto2's ``pogs.Insert`` into a single segment
(``tunnelrpc/pogs/quic_metadata_protocol.go``): the root struct, then each pointer field in
schema order, depth first; an empty Text stays a null pointer, an empty metadata list is an
empty list. A ConnectResponse we write is therefore byte-identical to cloudflared's.

Reading accepts any valid encoding (several segments, far pointers, structs larger or smaller
than ours, as schema evolution allows) and refuses anything else with
:class:`~adit.protocol.errors.QuicMetadataError`: a pointer outside its segment, a Text that is
not a NUL-terminated byte list, a metadata list that is not a list of structs, an unknown
ConnectionType. Work is bounded by a budget of one visit per word of the message: no
well-formed message visits a word twice, and pointers that alias one object many times could
otherwise turn a small message into a very large decode.

Text is carried as latin-1 ``str``, one character per byte, like header text everywhere in adit
(:func:`adit.protocol.headers.wire_bytes`): Go strings are bytes, cloudflared copies whatever
bytes an origin's header held, and go-capnproto2 never checks UTF-8.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

import msgspec

from adit.protocol.errors import ProtocolUsageError, QuicMetadataError
from adit.protocol.headers import wire_bytes

__all__ = [
    "MAX_SEGMENTS",
    "ConnectRequest",
    "ConnectResponse",
    "ConnectionType",
    "decode_connect_request",
    "decode_connect_response",
    "encode_connect_request",
    "encode_connect_response",
    "framed_length",
]

MAX_SEGMENTS = 512
"""Most segments a framed message may declare: go-capnproto2's ``maxStreamSegments`` (mem.go)."""

_WORD = 8
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# Text lengths and list sizes are 29-bit fields of a list pointer.
_LIST_LIMIT = 1 << 29
# Pointer kinds (low two bits) and the list element sizes used here (capnp encoding spec).
_STRUCT, _LIST, _FAR, _CAPABILITY = 0, 1, 2, 3
_BYTES = 2
_COMPOSITE = 7
# A Metadata element: no data, two pointers (key, val).
_METADATA_POINTERS = 2


class ConnectionType(enum.IntEnum):
    """What a data stream carries (``ConnectRequest.type``)."""

    HTTP = 0
    WEBSOCKET = 1
    TCP = 2


_CONNECTION_TYPES = {kind.value: kind for kind in ConnectionType}


class ConnectRequest(msgspec.Struct, frozen=True):
    """The edge's request heading a data stream: where to go and how (PROTOCOL.md §5.3)."""

    dest: str
    type: ConnectionType
    metadata: tuple[tuple[str, str], ...] = ()


class ConnectResponse(msgspec.Struct, frozen=True):
    """The connector's answer heading the other direction of a data stream (PROTOCOL.md §5.4)."""

    error: str = ""
    metadata: tuple[tuple[str, str], ...] = ()


# Writing ---------------------------------------------------------------------------------------


class _Builder:
    """One segment, grown the way go-capnproto2 grows it: each new object goes at the end."""

    def __init__(self) -> None:
        self._buffer = bytearray(_WORD)  # word 0: the root pointer

    def allocate(self, words: int) -> int:
        start = len(self._buffer) // _WORD
        self._buffer += bytes(words * _WORD)
        return start

    def pointer(self, at: int, target: int, kind: int, upper: int) -> None:
        offset = target - at - 1
        word = (offset << 2) & 0xFFFFFFFF | kind | upper << 32
        _U64.pack_into(self._buffer, at * _WORD, word)

    def u16(self, word: int, value: int) -> None:
        _U16.pack_into(self._buffer, word * _WORD, value)

    def text(self, at: int, value: str) -> None:
        if not value:
            return  # go-capnproto2 leaves an empty Text null
        raw = wire_bytes(value) + b"\0"
        if len(raw) >= _LIST_LIMIT:
            raise ProtocolUsageError(f"a Text of {len(raw)} bytes does not fit a capnp list")
        start = self.allocate(-(-len(raw) // _WORD))
        self._buffer[start * _WORD : start * _WORD + len(raw)] = raw
        self.pointer(at, start, _LIST, _BYTES | len(raw) << 3)

    def metadata(self, at: int, entries: tuple[tuple[str, str], ...]) -> None:
        words = _METADATA_POINTERS * len(entries)
        if words >= _LIST_LIMIT:
            raise ProtocolUsageError(f"{len(entries)} metadata entries do not fit a capnp list")
        start = self.allocate(1 + words)
        # The tag word of a composite list: a struct pointer whose offset field is the count.
        _U64.pack_into(self._buffer, start * _WORD, len(entries) << 2 | _METADATA_POINTERS << 48)
        self.pointer(at, start, _LIST, _COMPOSITE | words << 3)
        for index, (key, value) in enumerate(entries):
            element = start + 1 + _METADATA_POINTERS * index
            self.text(element, key)
            self.text(element + 1, value)

    def framed(self) -> bytes:
        """The message in standard stream framing: one segment."""
        return _U32.pack(0) + _U32.pack(len(self._buffer) // _WORD) + self._buffer


def encode_connect_request(request: ConnectRequest) -> bytes:
    """``request`` as one framed capnp message (1 data word: type; pointers: dest, metadata)."""
    builder = _Builder()
    root = builder.allocate(3)
    builder.pointer(0, root, _STRUCT, 1 | 2 << 16)
    builder.u16(root, request.type)
    builder.text(root + 1, request.dest)
    builder.metadata(root + 2, request.metadata)
    return builder.framed()


def encode_connect_response(response: ConnectResponse) -> bytes:
    """``response`` as one framed capnp message (no data; pointers: error, metadata)."""
    builder = _Builder()
    root = builder.allocate(2)
    builder.pointer(0, root, _STRUCT, 2 << 16)
    builder.text(root, response.error)
    builder.metadata(root + 1, response.metadata)
    return builder.framed()


# Reading ---------------------------------------------------------------------------------------


def framed_length(data: bytes | bytearray | memoryview, max_size: int) -> int | None:
    """The length of the framed message ``data`` starts with, or None until its segment table
    is complete.

    Raises :class:`QuicMetadataError` as soon as the table declares more than
    :data:`MAX_SEGMENTS` segments or more than ``max_size`` bytes, so a lying table never makes
    the caller buffer more. The table is parsed only once it is whole: O(1) per call before.
    """
    if len(data) < 4:
        return None
    header = _table_length(data)
    if header > max_size:
        raise QuicMetadataError(f"capnp segment table alone exceeds the limit of {max_size} bytes")
    if len(data) < header:
        return None
    total = header + _WORD * sum(_sizes(data))
    if total > max_size:
        raise QuicMetadataError(f"capnp message of {total} bytes exceeds the limit of {max_size}")
    return total


def _table_length(data: bytes | bytearray | memoryview) -> int:
    """The length of the segment table (padded to a word) once its first u32 is known."""
    count: int = _U32.unpack_from(data, 0)[0] + 1
    if count > MAX_SEGMENTS:
        raise QuicMetadataError(f"capnp message declares {count} segments (limit {MAX_SEGMENTS})")
    header = 4 + 4 * count
    return header + -header % _WORD


def _sizes(data: bytes | bytearray | memoryview) -> tuple[int, ...]:
    """The segment sizes in words of a complete segment table."""
    return struct.unpack_from(f"<{_U32.unpack_from(data, 0)[0] + 1}I", data, 4)


def _segments(data: bytes) -> list[bytes]:
    """The segments of exactly one framed message."""
    if len(data) < _WORD or len(data) < _table_length(data):
        raise QuicMetadataError(f"capnp message truncated in its segment table ({len(data)} B)")
    offset = _table_length(data)
    sizes = _sizes(data)
    declared = offset + _WORD * sum(sizes)
    if declared != len(data):
        raise QuicMetadataError(
            f"capnp segment table declares {declared} bytes, the message has {len(data)}"
        )
    segments = []
    for size in sizes:
        segments.append(data[offset : offset + size * _WORD])
        offset += size * _WORD
    if not segments[0]:
        raise QuicMetadataError("capnp message has no root pointer (its first segment is empty)")
    return segments


def _offset(pointer: int) -> int:
    """The signed 30-bit word offset of a struct or list pointer."""
    raw = (pointer & 0xFFFFFFFF) >> 2
    return raw - (1 << 30) if raw & (1 << 29) else raw


class _Struct(NamedTuple):
    segment: int
    start: int  # first word of the data section; the pointer section follows it
    data_words: int
    pointers: int


# A null struct pointer reads as the struct's defaults (capnp rule; Go and pycapnp agree).
_DEFAULT = _Struct(0, 0, 0, 0)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._segments = _segments(data)
        self._sizes = [len(segment) // _WORD for segment in self._segments]
        self._budget = sum(self._sizes)

    def _word(self, segment: int, index: int) -> int:
        if segment >= len(self._segments) or not 0 <= index < self._sizes[segment]:
            raise QuicMetadataError(f"capnp pointer leads outside the message ({segment}:{index})")
        word: int = _U64.unpack_from(self._segments[segment], index * _WORD)[0]
        return word

    def _claim(self, segment: int, start: int, words: int, visits: int) -> None:
        """Check that ``words`` words at ``start`` lie in ``segment``, and pay ``visits``."""
        if segment >= len(self._segments) or start < 0 or start + words > self._sizes[segment]:
            raise QuicMetadataError(f"capnp object of {words} words overruns segment {segment}")
        self._budget -= visits
        if self._budget < 0:
            raise QuicMetadataError("capnp message reads more words than it holds (aliasing)")

    def _follow(self, segment: int, at: int) -> tuple[int, int, int] | None:
        """The pointer at word ``at``: (pointer word, segment, target word), or None if null."""
        word = self._word(segment, at)
        if word == 0:
            return None
        kind = word & 3
        if kind == _FAR:
            return self._land(word)
        if kind == _CAPABILITY:
            raise QuicMetadataError("capnp capability pointer where the schema has data")
        return word, segment, at + 1 + _offset(word)

    def _land(self, far: int) -> tuple[int, int, int]:
        segment, pad = far >> 32, far >> 3 & 0x1FFFFFFF
        if not far & 4:
            # Single far: the landing pad is an ordinary pointer, relative to the pad itself.
            word = self._word(segment, pad)
            if word & 3 not in (_STRUCT, _LIST):
                raise QuicMetadataError("capnp far pointer lands on a far or capability pointer")
            return word, segment, pad + 1 + _offset(word)
        # Double far: a far pointer to the object's start, then a tag describing the object.
        content, tag = self._word(segment, pad), self._word(segment, pad + 1)
        if content & 7 != _FAR or tag & 3 not in (_STRUCT, _LIST):
            raise QuicMetadataError("capnp double-far landing pad is malformed")
        return tag, content >> 32, content >> 3 & 0x1FFFFFFF

    def root(self) -> _Struct:
        return self.struct(0, 0) or _DEFAULT

    def struct(self, segment: int, at: int) -> _Struct | None:
        found = self._follow(segment, at)
        if found is None:
            return None
        word, segment, target = found
        if word & 3 != _STRUCT:
            raise QuicMetadataError("capnp list pointer where the schema has a struct")
        data_words, pointers = word >> 32 & 0xFFFF, word >> 48
        self._claim(segment, target, data_words + pointers, data_words + pointers)
        return _Struct(segment, target, data_words, pointers)

    def u16(self, owner: _Struct, byte: int) -> int:
        if byte + 2 > owner.data_words * _WORD:
            return 0  # a field beyond a smaller (older) struct reads as its default
        value: int = _U16.unpack_from(self._segments[owner.segment], owner.start * _WORD + byte)[0]
        return value

    def _field(self, owner: _Struct, index: int) -> tuple[int, int, int] | None:
        if index >= owner.pointers:
            return None
        return self._follow(owner.segment, owner.start + owner.data_words + index)

    def text(self, owner: _Struct, index: int, name: str) -> str:
        found = self._field(owner, index)
        if found is None:
            return ""
        word, segment, target = found
        if word & 3 != _LIST or word >> 32 & 7 != _BYTES:
            raise QuicMetadataError(f"{name} is not a Text (not a list of bytes)")
        length = word >> 35
        words = -(-length // _WORD)
        self._claim(segment, target, words, words)
        raw = self._segments[segment][target * _WORD : target * _WORD + length]
        if not raw or raw[-1] != 0:
            raise QuicMetadataError(f"{name} is not a NUL-terminated Text")
        return raw[:-1].decode("latin-1")

    def struct_list(self, owner: _Struct, index: int, name: str) -> list[_Struct]:
        found = self._field(owner, index)
        if found is None:
            return []
        word, segment, target = found
        if word & 3 != _LIST or word >> 32 & 7 != _COMPOSITE:
            raise QuicMetadataError(f"{name} is not a list of structs")
        words = word >> 35
        tag = self._word(segment, target)
        if tag & 3 != _STRUCT:
            raise QuicMetadataError(f"{name} has a list tag that is not a struct tag")
        count = (tag & 0xFFFFFFFF) >> 2
        data_words, pointers = tag >> 32 & 0xFFFF, tag >> 48
        size = data_words + pointers
        if count * size > words:
            raise QuicMetadataError(
                f"{name} declares {count} elements of {size} words in a list of {words} words"
            )
        # Zero-sized elements still cost a visit each, or a one-word list could hold 2^29.
        self._claim(segment, target, 1 + words, 1 + max(words, count))
        first = target + 1
        return [_Struct(segment, first + i * size, data_words, pointers) for i in range(count)]

    def metadata(self, owner: _Struct, index: int, name: str) -> tuple[tuple[str, str], ...]:
        return tuple(
            (self.text(entry, 0, f"{name} key"), self.text(entry, 1, f"{name} val"))
            for entry in self.struct_list(owner, index, name)
        )


def decode_connect_request(data: bytes) -> ConnectRequest:
    """The ConnectRequest in ``data``, exactly one framed capnp message."""
    reader = _Reader(data)
    root = reader.root()
    value = reader.u16(root, 0)
    kind = _CONNECTION_TYPES.get(value)
    if kind is None:
        # cloudflared would panic on it (ConnectionType.String in quic_connection.go's log line).
        raise QuicMetadataError(f"ConnectRequest.type {value} is not a ConnectionType")
    return ConnectRequest(
        dest=reader.text(root, 0, "ConnectRequest.dest"),
        type=kind,
        metadata=reader.metadata(root, 1, "ConnectRequest.metadata"),
    )


def decode_connect_response(data: bytes) -> ConnectResponse:
    """The ConnectResponse in ``data``, exactly one framed capnp message."""
    reader = _Reader(data)
    root = reader.root()
    return ConnectResponse(
        error=reader.text(root, 0, "ConnectResponse.error"),
        metadata=reader.metadata(root, 1, "ConnectResponse.metadata"),
    )
