"""Incremental splitter for Cap'n Proto's standard (unpacked) stream framing.

A framed message is ``u32 segmentCount-1``, ``segmentCount`` × ``u32 segmentSizeInWords``, zero
padding to a multiple of 8 bytes, then the segments (PROTOCOL.md §3). The splitter checks the
header as soon as it is complete, so a hostile or corrupted header (four billion segments, a
terabyte-sized segment) fails immediately with :class:`FramingError` instead of making us buffer
forever.
"""

from __future__ import annotations

import struct

from adit.protocol.errors import FramingError

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_SEGMENTS",
    "MessageSplitter",
]

DEFAULT_MAX_MESSAGE_SIZE = 8 * 1024 * 1024
"""Largest accepted framed message in bytes (cloudflared's control messages stay under 64 KiB)."""

DEFAULT_MAX_SEGMENTS = 512
"""Largest accepted segment count; the Cap'n Proto C++ reader has the same limit."""

_WORD = 8
_U32 = struct.Struct("<I")


class MessageSplitter:
    """Splits a byte stream into complete framed Cap'n Proto messages.

    Each returned message still carries its framing header, so it can be handed to any standard
    Cap'n Proto reader as it is.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_segments: int = DEFAULT_MAX_SEGMENTS,
    ) -> None:
        if max_message_size < _WORD or max_segments < 1:
            raise ValueError("max_message_size must be >= 8 and max_segments >= 1")
        self._max_message_size = max_message_size
        self._max_segments = max_segments
        self._buffer = bytearray()
        # Total length of the message at the front of the buffer, once its header is complete.
        self._pending_length: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a complete message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` and return every message it completes, in order.

        Raises :class:`FramingError` when a header exceeds the limits; the splitter is then
        unusable, like the connection the bytes came from.
        """
        self._buffer += data
        messages: list[bytes] = []
        while True:
            if self._pending_length is None:
                self._pending_length = self._parse_header()
                if self._pending_length is None:
                    break
            if len(self._buffer) < self._pending_length:
                break
            messages.append(bytes(self._buffer[: self._pending_length]))
            del self._buffer[: self._pending_length]
            self._pending_length = None
        return messages

    def _parse_header(self) -> int | None:
        """Return the framed length of the buffered message, or None if the header is partial."""
        if len(self._buffer) < 4:
            return None
        segment_count: int = _U32.unpack_from(self._buffer, 0)[0] + 1
        if segment_count > self._max_segments:
            raise FramingError(
                f"capnp message declares {segment_count} segments (limit {self._max_segments})"
            )
        header_length = 4 + 4 * segment_count
        header_length += -header_length % _WORD
        if header_length > self._max_message_size:
            raise FramingError("capnp framing header exceeds the maximum message size")
        if len(self._buffer) < header_length:
            return None
        words: int = sum(struct.unpack_from(f"<{segment_count}I", self._buffer, 4))
        total = header_length + _WORD * words
        if total > self._max_message_size:
            raise FramingError(
                f"capnp message of {total} bytes exceeds the limit of {self._max_message_size}"
            )
        return total
