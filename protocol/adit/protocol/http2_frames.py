"""HTTP/2 frames (RFC 9113 §4, §6): splitting a byte stream into frames and building frames.

Sans-IO and stateless beyond the receive buffer: :class:`FrameReader` turns bytes into
``(type, flags, stream_id, payload)`` tuples, the ``*_frame`` functions build the bytes of one
frame. What the frames mean (streams, windows, settings) is :mod:`adit.protocol.http2`'s job.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from adit.protocol.errors import Http2TunnelError

__all__ = [
    "CONNECTION_PREFACE",
    "DEFAULT_MAX_FRAME_SIZE",
    "Flag",
    "FrameReader",
    "FrameType",
    "data_frame_header",
    "frame",
    "goaway_frame",
    "parse_goaway",
    "parse_settings",
    "parse_u32",
    "ping_frame",
    "rst_stream_frame",
    "settings_frame",
    "window_update_frame",
]

CONNECTION_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_MAX_FRAME_SIZE = 16384
_HEADER = struct.Struct(">HBBBL")  # 24-bit length as (high 16, low 8), type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_GOAWAY = struct.Struct(">LL")
_STREAM_MASK = 0x7FFFFFFF


class FrameType:
    """Frame type codes (§6)."""

    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class Flag:
    """Frame flags (§6); the same bit means different things on different frame types."""

    END_STREAM = 0x1
    ACK = 0x1
    END_HEADERS = 0x4
    PADDED = 0x8
    PRIORITY = 0x20


Frame = tuple[int, int, int, bytes]


class FrameReader:
    """Splits received bytes into frames, enforcing our advertised maximum size.

    A DATA frame (unpadded) is passed on piece by piece as its bytes arrive: each piece is
    reported as a DATA frame of its own, END_STREAM only on the last. A 1 MiB frame arrives in
    many TLS reads; collecting it first cost four copies of every body byte (46 % of the
    edge's CPU on a download). Other frames are collected whole, in a bytearray.
    """

    def __init__(self, max_frame_size: int, *, expect_preface: bool) -> None:
        self.max_frame_size = max_frame_size
        self._partial = bytearray()
        self._need = 0  # bytes the partial frame needs before parsing is worthwhile
        self._preface = expect_preface
        self._data_left = 0  # bytes still to come of the DATA frame being passed on
        self._data_stream = 0
        self._data_flags = 0

    def feed(self, data: bytes) -> list[Frame]:
        """Frames (or DATA pieces) completed by ``data``, all at once; a partial header is
        kept."""
        return list(self.frames(data))

    def frames(self, data: bytes) -> Iterator[Frame]:
        """Frames (or DATA pieces) completed by ``data``, each parsed as it is taken.

        A consumer that stops early (the peer broke the protocol, or a flood reached its
        limit) has not paid for the rest of the read: a 256 KiB read of PING frames is 15,000
        frames, and building them all before the flood limit saw the 101st cost the edge
        ~7 ms of CPU per read. Only once every frame was taken is a partial one kept.
        """
        if self._partial:
            self._partial += data
            if len(self._partial) < self._need:
                if self._preface and not CONNECTION_PREFACE.startswith(self._partial):
                    # Refused as soon as it goes wrong, however the bytes were split.
                    raise Http2TunnelError("the peer did not send the HTTP/2 connection preface")
                return
            buffer: bytes = bytes(self._partial)
            self._partial.clear()
        else:
            buffer = data
        offset = 0
        if self._preface:
            if len(buffer) < len(CONNECTION_PREFACE):
                if not CONNECTION_PREFACE.startswith(buffer):
                    raise Http2TunnelError("the peer did not send the HTTP/2 connection preface")
                self._partial += buffer
                self._need = len(CONNECTION_PREFACE)
                return
            if not buffer.startswith(CONNECTION_PREFACE):
                raise Http2TunnelError("the peer did not send the HTTP/2 connection preface")
            offset = len(CONNECTION_PREFACE)
            self._preface = False
        end = len(buffer)
        unpack = _HEADER.unpack_from
        limit = self.max_frame_size
        need = 9
        while True:
            if self._data_left:
                take = min(self._data_left, end - offset)
                if take <= 0:
                    break
                piece = buffer if take == end else buffer[offset : offset + take]
                offset += take
                self._data_left -= take
                flags = 0 if self._data_left else self._data_flags
                yield (FrameType.DATA, flags, self._data_stream, piece)
                continue
            if end - offset < 9:
                break
            high, low, kind, flags, stream_id = unpack(buffer, offset)
            length = (high << 8) | low
            if length > limit:
                raise Http2TunnelError(f"frame of {length} bytes exceeds our limit of {limit}")
            start = offset + 9
            stop = start + length
            if stop > end:
                if kind == FrameType.DATA and not flags & Flag.PADDED:
                    self._data_left = length
                    self._data_stream = stream_id & _STREAM_MASK
                    self._data_flags = flags
                    offset = start
                    continue
                need = 9 + length
                break
            yield (kind, flags, stream_id & _STREAM_MASK, buffer[start:stop])
            offset = stop
        if offset < end:
            self._partial += memoryview(buffer)[offset:]
            self._need = need


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One whole frame."""
    return frame_header(kind, flags, stream_id, len(payload)) + payload


def frame_header(kind: int, flags: int, stream_id: int, length: int) -> bytes:
    """The 9-byte header of a frame whose ``length``-byte payload is written after it."""
    return _HEADER.pack(length >> 8, length & 0xFF, kind, flags, stream_id)


def data_frame_header(stream_id: int, length: int, *, end_stream: bool) -> bytes:
    """The 9-byte header of a DATA frame; the payload is written after it, uncopied."""
    return frame_header(FrameType.DATA, Flag.END_STREAM if end_stream else 0, stream_id, length)


def settings_frame(settings: Iterable[tuple[int, int]] = (), *, ack: bool = False) -> bytes:
    """SETTINGS (or its acknowledgement)."""
    payload = b"".join(_SETTING.pack(code, value) for code, value in settings)
    return frame(FrameType.SETTINGS, Flag.ACK if ack else 0, 0, payload)


def window_update_frame(stream_id: int, increment: int) -> bytes:
    """WINDOW_UPDATE for a stream (or the connection, stream 0)."""
    return frame(FrameType.WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream_frame(stream_id: int, error_code: int) -> bytes:
    """RST_STREAM."""
    return frame(FrameType.RST_STREAM, 0, stream_id, _U32.pack(error_code))


def ping_frame(payload: bytes, *, ack: bool = False) -> bytes:
    """PING (8 opaque bytes) or its answer."""
    return frame(FrameType.PING, Flag.ACK if ack else 0, 0, payload)


def goaway_frame(last_stream_id: int, error_code: int) -> bytes:
    """GOAWAY."""
    return frame(FrameType.GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, error_code))


def parse_u32(payload: bytes) -> int:
    """The 31-bit value of a WINDOW_UPDATE (reserved bit cleared) or an error code."""
    return int(_U32.unpack(payload)[0])


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """SETTINGS parameters in order."""
    if len(payload) % 6:
        raise Http2TunnelError("SETTINGS payload is not a multiple of 6 bytes")
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def parse_goaway(payload: bytes) -> tuple[int, int]:
    """``(last_stream_id, error_code)`` of a GOAWAY."""
    if len(payload) < 8:
        raise Http2TunnelError("GOAWAY shorter than 8 bytes")
    last, code = _GOAWAY.unpack_from(payload)
    return last & _STREAM_MASK, code
