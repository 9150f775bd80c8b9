"""RFC 6455 WebSocket framing, sans-IO, for both endpoints.

Used by the connector (the WebSocket *server* end of TCP-over-WebSocket streams,
PROTOCOL.md §4.7) and by ``adit access`` (the *client* end, CLOUDFLARED_FEATURES.md §7.1).

:class:`WebSocketConnection` takes bytes in and gives :class:`Frame` events out; it answers
pings and the closing handshake by itself through :meth:`WebSocketConnection.data_to_send`.
Masking follows §5.3: a client masks every frame it sends and a server rejects unmasked
frames; a server never masks and a client rejects masked frames. Masks come from an injected
source (``os.urandom`` by default) so tests stay deterministic.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from adit.protocol.errors import ProtocolError, ProtocolUsageError

__all__ = [
    "GUID",
    "MAX_CONTROL_PAYLOAD",
    "CloseCode",
    "Frame",
    "FrameDecoder",
    "Opcode",
    "Role",
    "WebSocketConnection",
    "WebSocketError",
    "accept_key",
    "client_key",
    "encode_frame",
    "mask_payload",
]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_CONTROL_PAYLOAD = 125
# A frame larger than this is refused (1009): TCP-over-WebSocket peers send small frames.
DEFAULT_MAX_FRAME = 16 * 1024 * 1024


class WebSocketError(ProtocolError):
    """The peer broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


class Role(enum.Enum):
    """Which end of the connection we are."""

    CLIENT = "client"
    SERVER = "server"


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 §5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """The close codes this package sends."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    NO_STATUS = 1005
    TOO_BIG = 1009


_DATA_OPCODES = frozenset({Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY})
_KNOWN_OPCODES = frozenset(int(op) for op in Opcode)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame; ``payload`` is unmasked."""

    fin: bool
    opcode: int
    payload: bytes

    @property
    def is_control(self) -> bool:
        """Close, ping or pong."""
        return self.opcode >= 0x8


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1(key.strip().encode("ascii") + GUID).digest()  # noqa: S324  # RFC 6455 mandates SHA-1
    return base64.b64encode(digest).decode("ascii")


def client_key(nonce: bytes) -> str:
    """A ``Sec-WebSocket-Key`` from 16 random bytes."""
    if len(nonce) != 16:
        raise ProtocolUsageError("a WebSocket key nonce is 16 bytes")
    return base64.b64encode(nonce).decode("ascii")


def mask_payload(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` (masking and unmasking are the same)."""
    length = len(payload)
    if not length:
        return b""
    repeated = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        length, "little"
    )


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"") -> bytes:
    """One frame; ``mask`` (4 bytes) for client-to-server frames, empty for server frames."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if mask:
        if len(mask) != 4:
            raise ProtocolUsageError("a frame mask is 4 bytes")
        return header + mask + mask_payload(payload, mask)
    return header + payload


class FrameDecoder:
    """Bytes in, complete frames out, with §5 validity checks.

    ``expect_masked`` is true on the server side (client frames must be masked) and false on
    the client side (server frames must not be).
    """

    def __init__(self, *, expect_masked: bool, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._expect_masked = expect_masked
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._offset = 0
        self._in_message = False  # a fragmented data message is open

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; every frame now complete, or :class:`WebSocketError`."""
        self._buffer += data
        frames: list[Frame] = []
        try:
            while (frame := self._next()) is not None:
                frames.append(frame)
        finally:
            # Compact once per feed, not once per frame: large reads carry many small frames.
            if self._offset:
                del self._buffer[: self._offset]
                self._offset = 0
        return frames

    def _next(self) -> Frame | None:
        buf, start = self._buffer, self._offset
        available = len(buf) - start
        if available < 2:
            return None
        first, second = buf[start], buf[start + 1]
        fin, opcode = bool(first & 0x80), first & 0x0F
        if first & 0x70:
            raise WebSocketError("reserved bits set without a negotiated extension")
        if opcode not in _KNOWN_OPCODES:
            raise WebSocketError(f"unknown opcode {opcode:#x}")
        masked, length = bool(second & 0x80), second & 0x7F
        if masked != self._expect_masked:
            raise WebSocketError(
                "client frames must be masked"
                if self._expect_masked
                else "server frames must not be masked"
            )
        header = 2
        if length == 126:
            if available < 4:
                return None
            (length,) = struct.unpack_from("!H", buf, start + 2)
            header = 4
        elif length == 127:
            if available < 10:
                return None
            (length,) = struct.unpack_from("!Q", buf, start + 2)
            header = 10
        if opcode >= 0x8:
            if length > MAX_CONTROL_PAYLOAD:
                raise WebSocketError("control frame payload longer than 125 bytes")
            if not fin:
                raise WebSocketError("fragmented control frame")
        elif length > self._max_frame:
            raise WebSocketError(f"frame of {length} bytes is too big", CloseCode.TOO_BIG)
        if opcode == Opcode.CONTINUATION and not self._in_message:
            raise WebSocketError("continuation frame without a message to continue")
        if opcode in (Opcode.TEXT, Opcode.BINARY) and self._in_message:
            raise WebSocketError("new data message inside a fragmented message")
        mask = b""
        if masked:
            if available < header + 4:
                return None
            mask = bytes(buf[start + header : start + header + 4])
            header += 4
        if available < header + length:
            return None
        payload = bytes(buf[start + header : start + header + length])
        self._offset = start + header + length
        if opcode in _DATA_OPCODES:
            self._in_message = not fin
        return Frame(fin, opcode, mask_payload(payload, mask) if mask else payload)


class WebSocketConnection:
    """One endpoint's framing state: decode, auto-answer pings, and the closing handshake.

    :meth:`receive` returns the frames the application cares about (data frames, pongs, and
    the peer's close); answers it owes the peer (pong, close reply) are queued for
    :meth:`data_to_send`. After a protocol error the connection queues a close frame with the
    matching code and raises.
    """

    def __init__(
        self,
        role: Role,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        mask_source: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.role = role
        self._decoder = FrameDecoder(expect_masked=role is Role.SERVER, max_frame=max_frame)
        self._mask_source = mask_source
        self._outgoing = bytearray()
        self.close_sent = False
        self.close_received = False
        self.close_code: int | None = None

    @property
    def closed(self) -> bool:
        """Both close frames went by (or ours went after a protocol error)."""
        return self.close_sent and self.close_received

    def _frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
        mask = self._mask_source(4) if self.role is Role.CLIENT else b""
        return encode_frame(opcode, payload, fin=fin, mask=mask)

    def receive(self, data: bytes) -> list[Frame]:
        """Feed bytes from the peer; return data, pong and close frames."""
        try:
            frames = self._decoder.feed(data)
        except WebSocketError as exc:
            self._queue_close(exc.code, "")
            self.close_received = True
            raise
        out: list[Frame] = []
        for frame in frames:
            if self.close_received:
                break  # nothing may follow a close frame
            if frame.opcode == Opcode.PING:
                if not self.close_sent:
                    self._outgoing += self._frame(Opcode.PONG, frame.payload)
                continue
            if frame.opcode == Opcode.CLOSE:
                self.close_received = True
                self.close_code = _close_code(frame.payload)
                if not self.close_sent:
                    # Echo the code, as RFC 6455 §5.5.1 suggests; no code -> empty body.
                    self._outgoing += self._frame(Opcode.CLOSE, frame.payload[:2])
                    self.close_sent = True
            out.append(frame)
        return out

    def send_data(self, payload: bytes, *, opcode: int = Opcode.BINARY) -> bytes:
        """The bytes of one data message (queued answers first)."""
        if self.close_sent:
            raise ProtocolUsageError("data after close")
        return self.data_to_send() + self._frame(opcode, payload)

    def send_ping(self, payload: bytes = b"") -> bytes:
        """A ping frame (queued answers first)."""
        return self.data_to_send() + self._frame(Opcode.PING, payload[:MAX_CONTROL_PAYLOAD])

    def send_close(self, code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
        """Start (or finish) the closing handshake; empty once a close was sent."""
        if not self.close_sent:
            self._queue_close(code, reason)
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        """Bytes owed to the peer (pongs, close replies) since the last call."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def _queue_close(self, code: int, reason: str) -> None:
        if self.close_sent:
            return
        body = b"" if code == CloseCode.NO_STATUS else struct.pack("!H", code)
        body += reason.encode()[: MAX_CONTROL_PAYLOAD - 2] if body else b""
        self._outgoing += self._frame(Opcode.CLOSE, body)
        self.close_sent = True


def _close_code(payload: bytes) -> int:
    if len(payload) < 2:
        return CloseCode.NO_STATUS
    return int(struct.unpack_from("!H", payload)[0])
