"""cloudflared's HTTP/2 tunnel transport, both roles, sans-IO (PROTOCOL.md §4).

The connector dials the edge, but on that TLS connection the *edge* is the HTTP/2 client: it
opens one stream per eyeball request (and one control stream). :class:`EdgeTunnelConnection`
is that client; :class:`ConnectorTunnelConnection` is the connector's server side.

Both implement the part of HTTP/2 (RFC 9113) a tunnel uses, on :mod:`adit.protocol.http2_frames`
and an HPACK decoder, and add what every adapter would otherwise re-implement: an outbound buffer
per stream that is flushed as flow-control windows open, so an adapter only ever calls
``send_data`` and waits while :meth:`pending` is above its high-water mark (the
:class:`SendBufferDrained` event says when to look again). Inbound data is only credited back
to the peer when the consumer calls :meth:`acknowledge`, which is what gives back-pressure end
to end: a slow eyeball slows the origin, and no body is ever held whole in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from adit.protocol.errors import HeaderDecodeError, Http2FloodError, Http2TunnelError
from adit.protocol.headers import (
    PROXY_CONNECTION_UPGRADE,
    PROXY_SRC,
    REQUEST_HEADERS,
    RESPONSE_HEADERS,
    RESPONSE_META,
    RequestType,
    ResponseMeta,
    classify_request,
    decode_serialized_headers,
    encode_serialized_headers,
    strip_for_tunnel,
    strip_tunnel_internal,
    wire_bytes,
)
from adit.protocol.hpack_codec import HpackDecoder, PlainHpackEncoder
from adit.protocol.http2_frames import (
    CONNECTION_PREFACE,
    DEFAULT_MAX_FRAME_SIZE,
    Flag,
    FrameReader,
    FrameType,
    data_frame_header,
    frame,
    frame_header,
    goaway_frame,
    parse_goaway,
    parse_settings,
    parse_u32,
    ping_frame,
    rst_stream_frame,
    settings_frame,
    window_update_frame,
)
from adit.protocol.http2_limits import Flood, FrameBudget, FrameLimits

__all__ = [
    "ConnectionTerminated",
    "ConnectorTunnelConnection",
    "DataReceived",
    "EdgeTunnelConnection",
    "ErrorCode",
    "Event",
    "PingAcknowledged",
    "RequestReceived",
    "ResponseReceived",
    "SendBufferDrained",
    "StreamEnded",
    "StreamReset",
    "TunnelHttp2Connection",
    "TunnelSettings",
]

#: cloudflared's connector advertises 250; adit's connector serves more at once.
CONNECTOR_MAX_CONCURRENT_STREAMS = 1000


@dataclass(frozen=True, slots=True)
class TunnelSettings:
    """Flow-control and framing sizes; large windows keep a high-latency tunnel busy."""

    stream_window: int = 4 * 1024 * 1024
    connection_window: int = 32 * 1024 * 1024
    max_frame_size: int = 1024 * 1024
    max_header_list_size: int = 1024 * 1024
    max_concurrent_streams: int = CONNECTOR_MAX_CONCURRENT_STREAMS
    #: How many frames of each costly kind the peer may send (the flood policy).
    limits: FrameLimits = field(default_factory=FrameLimits)


_PROXY_CONNECTION_UPGRADE = PROXY_CONNECTION_UPGRADE.encode()
_PROXY_SRC = PROXY_SRC.encode()
_REQUEST_HEADERS = REQUEST_HEADERS.encode()
_RESPONSE_HEADERS = RESPONSE_HEADERS.encode()
_RESPONSE_META = RESPONSE_META.encode()


# --- events ---------------------------------------------------------------------------------

# msgspec Structs, not frozen dataclasses: several events are made per request and a frozen
# dataclass's __init__ (one object.__setattr__ per field) cost ~1.5 µs each.


class RequestReceived(msgspec.Struct, frozen=True):
    """Connector side: the edge opened a stream.

    ``headers`` are the eyeball's headers in order (original names when the edge serialised
    them, else HTTP/2's lower-case), without pseudo-headers and tunnel-internal headers.
    """

    stream_id: int
    request_type: RequestType
    method: str
    path: str
    authority: str
    headers: tuple[tuple[str, str], ...]
    end_stream: bool


class ResponseReceived(msgspec.Struct, frozen=True):
    """Edge side: the connector answered a stream.

    ``headers`` are decoded from ``cf-cloudflared-response-headers`` (the real HTTP/2 headers
    of a tunnel response are artefacts and are ignored); ``meta`` says who answered.
    """

    stream_id: int
    status: int
    headers: tuple[tuple[str, str], ...]
    meta: ResponseMeta
    end_stream: bool


class DataReceived(msgspec.Struct, frozen=True):
    """Body bytes; pass ``flow_controlled_length`` to :meth:`acknowledge` once consumed."""

    stream_id: int
    data: bytes
    flow_controlled_length: int


class StreamEnded(msgspec.Struct, frozen=True):
    """The peer ended its side of the stream."""

    stream_id: int


class StreamReset(msgspec.Struct, frozen=True):
    """The stream was reset (by the peer, or locally because of a stream error: ``reason``
    then says what the peer did wrong)."""

    stream_id: int
    error_code: int
    reason: str = ""


class SendBufferDrained(msgspec.Struct, frozen=True):
    """Outbound data of this stream was flushed; writers waiting on :meth:`pending` may go on."""

    stream_id: int


class PingAcknowledged(msgspec.Struct, frozen=True):
    """The peer answered our PING."""

    payload: bytes


class ConnectionTerminated(msgspec.Struct, frozen=True):
    """GOAWAY received: no new streams; streams above ``last_stream_id`` were not processed."""

    error_code: int
    last_stream_id: int


Event = (
    RequestReceived
    | ResponseReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | SendBufferDrained
    | PingAcknowledged
    | ConnectionTerminated
)


# --- shared core ----------------------------------------------------------------------------

_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65535
# Our own HTTP/2 state machine (RFC 9113) instead of h2's: h2 cost ~300 µs of CPU per stream
# and side (its event objects, enum flags, per-frame logging and stream-state tables); a
# tunnel needs a fraction of HTTP/2, and both of its peers (adit, Go's http2) are strict.
_SENSITIVE = (REQUEST_HEADERS.encode(), RESPONSE_HEADERS.encode())


class ErrorCode:
    """HTTP/2 error codes (RFC 9113 §7)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    #: The peer sends more than any legitimate peer does (a flood).
    ENHANCE_YOUR_CALM = 0xB


class _Setting:
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


def _is_status(value: bytes) -> bool:
    """A ``:status`` value: three ASCII digits, 100 to 999 (``int`` would take ``+2_00``)."""
    return len(value) == 3 and value.isdigit() and value[0] != 0x30


class _ConnectionError(Exception):
    """Internal: the peer broke the protocol; becomes :class:`Http2TunnelError`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True, eq=False)
class _Stream:
    """One stream's state: windows both ways, which sides are closed, queued output."""

    stream_id: int
    send_window: int
    recv_window: int
    recv_unacked: int = 0
    local_closed: bool = False  # END_STREAM (or RST_STREAM) went out
    remote_closed: bool = False  # END_STREAM arrived
    end_queued: bool = False  # END_STREAM goes out after the queued data
    headers_seen: bool = False  # the final response head went out (connector) or came in (edge)
    # Made when something is queued and dropped once sent: an empty deque is 760 bytes, and
    # most streams (an idle WebSocket, a small answer sent whole) have nothing queued.
    chunks: deque[bytes | memoryview] | None = None
    size: int = 0


class TunnelHttp2Connection:
    """What both roles share: connection state, buffered sending, receiving."""

    def __init__(self, *, client_side: bool, settings: TunnelSettings) -> None:
        self._settings = settings
        self._client = client_side
        self._out: list[bytes | memoryview] = []
        self._reader = FrameReader(settings.max_frame_size, expect_preface=not client_side)
        self._encoder = PlainHpackEncoder(_SENSITIVE)
        self._decoder = HpackDecoder(max_header_list_size=settings.max_header_list_size)
        self._streams: dict[int, _Stream] = {}
        self._next_stream_id = 1
        self._last_remote_id = 0
        self._peer_window = _DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME_SIZE
        # Until the peer's SETTINGS arrive, what h2 and Go assume.
        self._peer_max_streams = 100
        self._send_window = _DEFAULT_WINDOW
        self._recv_window = _DEFAULT_WINDOW
        self._recv_unacked = 0
        self._goaway_received = False
        self._header_block: tuple[int, int, bytearray] | None = None
        #: CONTINUATION frames of the header block being received.
        self._continuations = 0
        self._pending_events: list[Event] = []
        self._budget = FrameBudget(settings.limits)
        #: Control frames the peer made us owe (ACKs, RST_STREAM answers) still in ``_out``.
        self._owed = 0
        #: The time of the current :meth:`receive_data` call (None: the caller gave none).
        self._now: float | None = None

    def initiate(self) -> None:
        """Queue the connection preface, our SETTINGS and a large connection window."""
        settings = self._settings
        if self._client:
            self._out.append(CONNECTION_PREFACE)
        self._out.append(
            settings_frame(
                [
                    (_Setting.ENABLE_PUSH, 0),
                    (_Setting.MAX_CONCURRENT_STREAMS, settings.max_concurrent_streams),
                    (_Setting.INITIAL_WINDOW_SIZE, settings.stream_window),
                    (_Setting.MAX_FRAME_SIZE, settings.max_frame_size),
                    (_Setting.MAX_HEADER_LIST_SIZE, settings.max_header_list_size),
                ]
            )
        )
        extra = settings.connection_window - _DEFAULT_WINDOW
        if extra > 0:
            self._out.append(window_update_frame(0, extra))
            self._recv_window += extra

    # -- sending -------------------------------------------------------------------------

    def _open_stream(self, stream_id: int) -> _Stream:
        stream = _Stream(stream_id, self._peer_window, self._settings.stream_window)
        self._streams[stream_id] = stream
        return stream

    def _send_headers(self, stream: _Stream, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        block = self._encoder.encode(headers)
        flags = Flag.END_STREAM if end else 0
        limit = self._peer_max_frame
        sid = stream.stream_id
        if len(block) <= limit:
            # The header and the block apart: the block is copied once, when the output is
            # joined for the transport (it holds kilobytes of serialised headers under Access).
            length = len(block)
            self._out += (
                frame_header(FrameType.HEADERS, flags | Flag.END_HEADERS, sid, length),
                block,
            )
        else:
            self._out.append(frame(FrameType.HEADERS, flags, sid, block[:limit]))
            for offset in range(limit, len(block), limit):
                last = offset + limit >= len(block)
                fragment = block[offset : offset + limit]
                flag = Flag.END_HEADERS if last else 0
                self._out.append(frame(FrameType.CONTINUATION, flag, sid, fragment))
        if end:
            stream.local_closed = stream.end_queued = True
            self._maybe_forget(stream)

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Queue body bytes; they go out as the peer's windows allow."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # reset (or finished) meanwhile: the data has nowhere to go
        if stream.end_queued:
            raise Http2TunnelError(f"stream {stream_id}: data after end of stream")
        if data:
            if stream.chunks is None:
                stream.chunks = deque()
            stream.chunks.append(data)
            stream.size += len(data)
        stream.end_queued = end_stream
        self._flush(stream)

    def end_stream(self, stream_id: int) -> None:
        """End our side of the stream once the queued data is sent."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.end_queued:
            return
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, error_code: int = ErrorCode.CANCEL) -> None:
        """Reset a stream, dropping whatever is still queued for it."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return  # already closed on both sides: nothing left to reset
        stream.chunks = None
        stream.size = 0
        self._out.append(rst_stream_frame(stream_id, error_code))
        self._budget.reset_locally()

    def pending(self, stream_id: int) -> int:
        """Bytes queued for a stream and not yet handed to the transport."""
        stream = self._streams.get(stream_id)
        return stream.size if stream is not None else 0

    def acknowledge(self, stream_id: int, flow_controlled_length: int) -> None:
        """Credit consumed inbound bytes back to the peer (WINDOW_UPDATE when worthwhile)."""
        if flow_controlled_length <= 0:
            return
        self._recv_unacked += flow_controlled_length
        if self._recv_unacked >= self._settings.connection_window // 2:
            self._out.append(window_update_frame(0, self._recv_unacked))
            self._recv_window += self._recv_unacked
            self._recv_unacked = 0
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return
        stream.recv_unacked += flow_controlled_length
        if stream.recv_unacked >= self._settings.stream_window // 2:
            self._out.append(window_update_frame(stream_id, stream.recv_unacked))
            stream.recv_window += stream.recv_unacked
            stream.recv_unacked = 0

    def ping(self, payload: bytes) -> None:
        """Send a PING (8 bytes) for liveness."""
        self._out.append(ping_frame(payload))

    def close(self, error_code: int = 0, last_stream_id: int | None = None) -> None:
        """Send GOAWAY."""
        last = self._last_remote_id if last_stream_id is None else last_stream_id
        self._out.append(goaway_frame(last, error_code))

    def data_to_send(self) -> bytes:
        """Bytes for the transport."""
        return b"".join(self.data_to_send_parts())

    def data_to_send_parts(self) -> list[bytes | memoryview]:
        """Bytes for the transport as separate buffers (bodies uncopied), for ``writelines``."""
        out = self._out
        self._out = []
        self._owed = 0
        return out

    @property
    def owed_control_frames(self) -> int:
        """Answers (ACKs, resets) the peer made us queue that the transport has not taken."""
        return self._owed

    def _owe(self, control_frame: bytes) -> None:
        """Queue an answer the peer's frame made us owe; refuse to owe too many.

        While the transport takes our output this never reaches the cap (:meth:`data_to_send`
        clears it); a peer that does not read what we write and keeps asking would otherwise
        grow our memory without bound (CVE-2019-9512/9515).
        """
        self._out.append(control_frame)
        self._count_owed()

    def _count_owed(self) -> None:
        self._owed += 1
        if self._owed > self._settings.limits.max_owed_control:
            raise Http2FloodError(f"the peer made us owe more than {self._owed - 1} answers")

    @property
    def open_streams(self) -> int:
        """Streams currently open in either direction."""
        return len(self._streams)

    # -- receiving ---------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float | None = None) -> list[Event]:
        """Feed transport bytes; returns the resulting events (``b""`` is not EOF here).

        ``now`` (seconds, any monotonic clock) paces the flood limits; without it time stands
        still for them and they only count. Raises :class:`Http2TunnelError` (its
        ``error_code`` for the GOAWAY) when the peer broke the protocol, and
        :class:`Http2FloodError` when it sent more of a costly kind of frame than allowed.
        """
        events = self._pending_events
        self._pending_events = []
        if now is not None:
            self._now = now
        try:
            for kind, flags, stream_id, payload in self._reader.frames(data):
                if self._header_block is not None and kind != FrameType.CONTINUATION:
                    raise _ConnectionError(
                        ErrorCode.PROTOCOL_ERROR, "header block interrupted by another frame"
                    )
                if kind == FrameType.DATA:
                    self._on_data(flags, stream_id, payload, events)
                elif kind == FrameType.HEADERS:
                    self._on_headers(flags, stream_id, payload, events)
                elif kind == FrameType.CONTINUATION:
                    self._on_continuation(flags, stream_id, payload, events)
                elif kind == FrameType.WINDOW_UPDATE:
                    self._on_window_update(stream_id, payload, events)
                elif kind == FrameType.RST_STREAM:
                    self._on_rst_stream(stream_id, payload, events)
                elif kind == FrameType.SETTINGS:
                    self._on_settings(flags, stream_id, payload, events)
                elif kind == FrameType.PING:
                    self._on_ping(flags, stream_id, payload, events)
                elif kind == FrameType.GOAWAY:
                    last, code = parse_goaway(payload)
                    self._goaway_received = True
                    events.append(ConnectionTerminated(code, last))
                elif kind == FrameType.PUSH_PROMISE:
                    raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE, push is off")
                elif kind == FrameType.PRIORITY and len(payload) != 5:
                    raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY not 5 bytes")
                else:
                    # PRIORITY and unknown frame types are ignored (§5.5), and metered: no
                    # peer of a tunnel sends them.
                    self._budget.charge(Flood.GLITCH, self._now)
        except _ConnectionError as exc:
            raise Http2TunnelError(f"HTTP/2 protocol error: {exc}", exc.code) from exc
        return events

    def _closed_or_idle(self, stream_id: int) -> bool:
        """For a stream we do not track: True when it existed once (closed), False if idle."""
        if stream_id % 2 == 0:
            return False  # even ids would be the connector's own streams: never opened
        if self._client:
            return stream_id < self._next_stream_id
        return stream_id <= self._last_remote_id

    def _on_data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        length = len(payload)
        if stream_id == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        if length > self._recv_window:
            raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the window")
        self._recv_window -= length
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream is None and not self._closed_or_idle(stream_id):
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, f"DATA on idle {stream_id}")
            # A stream we reset or finished: nobody reads it, but the connection window
            # still needs the credit.
            self.acknowledge(0, length)
            return
        if length > stream.recv_window:
            self._stream_error(stream, ErrorCode.FLOW_CONTROL_ERROR, events)
            self.acknowledge(0, length)
            return
        stream.recv_window -= length
        if not length and not flags & Flag.END_STREAM:
            self._budget.charge(Flood.GLITCH, self._now)  # moves nothing; Go never sends one
        data = payload
        if flags & Flag.PADDED:
            if not length or payload[0] >= length:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "padding exceeds the frame")
            data = payload[1 : length - payload[0]]
        if data:
            events.append(DataReceived(stream_id, data, length))
        elif length:
            self.acknowledge(stream_id, length)
        if flags & Flag.END_STREAM:
            self._remote_end(stream, events)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        start, stop = 0, len(payload)
        if flags & Flag.PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "padding exceeds the frame")
            start, stop = 1, len(payload) - payload[0]
        if flags & Flag.PRIORITY:
            start += 5
        if start > stop:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short")
        fragment = payload[start:stop]
        if flags & Flag.END_HEADERS:
            self._on_header_block(stream_id, flags, fragment, events)
        else:
            self._header_block = (stream_id, flags, bytearray(fragment))
            self._continuations = 0

    def _on_continuation(
        self, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if self._header_block is None or self._header_block[0] != stream_id:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = self._header_block[2]
        block += payload
        if len(block) > self._settings.max_header_list_size * 2:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "header block too large")
        self._continuations += 1
        if self._continuations > self._settings.limits.max_continuations:
            raise Http2FloodError(f"a header block of more than {self._continuations} frames")
        if not payload and not flags & Flag.END_HEADERS:
            # An empty fragment adds nothing: a stream of them never ends the block
            # (CVE-2024-27316's class), so each counts as a glitch.
            self._budget.charge(Flood.GLITCH, self._now)
        if flags & Flag.END_HEADERS:
            first_flags = self._header_block[1]
            self._header_block = None
            self._on_header_block(stream_id, first_flags, bytes(block), events)

    def _on_header_block(
        self, stream_id: int, flags: int, block: bytes, events: list[Event]
    ) -> None:
        # Always decoded, even for a stream we will ignore: HPACK state is per connection.
        headers = self._decoder.decode(block)
        end_stream = bool(flags & Flag.END_STREAM)
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._client or stream_id % 2 == 0:
                if stream_id % 2 == 0:
                    raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "HEADERS on a push stream")
                return  # a stream we reset: its late answer goes nowhere
            if stream_id <= self._last_remote_id:
                return  # closed already (we reset it)
            self._last_remote_id = stream_id
            if len(self._streams) >= self._settings.max_concurrent_streams:
                self._owe(rst_stream_frame(stream_id, ErrorCode.REFUSED_STREAM))
                return
            stream = self._open_stream(stream_id)
            self._on_new_stream(stream, headers, end_stream, events)
        elif stream.remote_closed:
            return
        else:
            self._on_stream_headers(stream, headers, end_stream, events)
        if end_stream and stream_id in self._streams:
            self._remote_end(stream, events)

    def _remote_end(self, stream: _Stream, events: list[Event]) -> None:
        stream.remote_closed = True
        events.append(StreamEnded(stream.stream_id))
        self._maybe_forget(stream)

    def _maybe_forget(self, stream: _Stream) -> None:
        if stream.local_closed and stream.remote_closed:
            self._streams.pop(stream.stream_id, None)

    def _stream_error(self, stream: _Stream, code: int, events: list[Event]) -> None:
        self.reset_stream(stream.stream_id, code)
        self._count_owed()  # our RST_STREAM answers the peer's frame (see _owe)
        events.append(StreamReset(stream.stream_id, code))

    def _on_window_update(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        self._budget.charge(Flood.WINDOW_UPDATE, self._now)
        if len(payload) != 4:
            raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes")
        increment = parse_u32(payload) & _MAX_WINDOW
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > _MAX_WINDOW:
                raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "window beyond 2^31-1")
            self._flush_all(events)
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if increment == 0:
            self._stream_error(stream, ErrorCode.PROTOCOL_ERROR, events)
            return
        stream.send_window += increment
        if stream.send_window > _MAX_WINDOW:
            self._stream_error(stream, ErrorCode.FLOW_CONTROL_ERROR, events)
            return
        self._flush(stream, events)

    def _on_rst_stream(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id == 0 or len(payload) != 4:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "malformed RST_STREAM")
        if self._streams.pop(stream_id, None) is not None:
            # Resetting an open stream is free: each stream can be reset once (see
            # http2_limits for why open streams are not metered).
            events.append(StreamReset(stream_id, parse_u32(payload)))
        elif self._closed_or_idle(stream_id):
            self._budget.charge(Flood.GLITCH, self._now)
        else:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on idle {stream_id}")

    def _on_settings(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        self._budget.charge(Flood.SETTINGS, self._now)
        if stream_id != 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & Flag.ACK:
            if payload:
                raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with payload")
            return
        entries = len(payload) // 6
        if entries > self._settings.limits.max_settings_entries:
            raise Http2FloodError(f"a SETTINGS frame with {entries} entries")
        for code, value in parse_settings(payload):
            if code == _Setting.INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "initial window too big")
                delta = value - self._peer_window
                self._peer_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
            elif code == _Setting.MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME_SIZE <= value <= 2**24 - 1:
                    raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                self._peer_max_frame = value
            elif code == _Setting.MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
            elif code == _Setting.ENABLE_PUSH and value > 1:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "bad ENABLE_PUSH")
            # HEADER_TABLE_SIZE: our encoder keeps no dynamic table, any size suits it.
        self._owe(settings_frame(ack=True))
        self._flush_all(events)

    def _on_ping(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        self._budget.charge(Flood.PING, self._now)
        if stream_id != 0 or len(payload) != 8:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "malformed PING")
        if flags & Flag.ACK:
            events.append(PingAcknowledged(payload))
        else:
            self._owe(ping_frame(payload, ack=True))

    # -- role hooks ----------------------------------------------------------------------------

    def _on_new_stream(
        self,
        stream: _Stream,
        headers: list[tuple[bytes, bytes]],
        end_stream: bool,
        events: list[Event],
    ) -> None:
        """A peer-initiated stream (requests on the connector's side)."""
        raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "the peer may not open streams")

    def _on_stream_headers(
        self,
        stream: _Stream,
        headers: list[tuple[bytes, bytes]],
        end_stream: bool,
        events: list[Event],
    ) -> None:
        """A header block on a stream we know (responses on the edge's side); default: trailers
        (ignored)."""

    # -- flushing ----------------------------------------------------------------------------

    def _flush_all(self, events: list[Event] | None = None) -> None:
        for stream in list(self._streams.values()):
            if stream.chunks or (stream.end_queued and not stream.local_closed):
                self._flush(stream, events)

    def _flush(self, stream: _Stream, events: list[Event] | None = None) -> None:
        had = stream.size
        out = self._out
        chunks = stream.chunks
        sid = stream.stream_id
        sent = 0
        while chunks:
            window = min(stream.send_window, self._send_window, self._peer_max_frame)
            if window <= 0:
                break
            head = chunks[0]
            if len(head) <= window:
                chunks.popleft()
                chunk = head
            else:
                view = head if isinstance(head, memoryview) else memoryview(head)
                chunk, chunks[0] = view[:window], view[window:]
            size = len(chunk)
            sent += size
            stream.size -= size
            stream.send_window -= size
            self._send_window -= size
            last = stream.end_queued and not chunks
            out.append(data_frame_header(sid, size, end_stream=last))
            out.append(chunk)
            if last:
                stream.local_closed = True
        if sent:
            self._budget.sent_data(sent)
        if chunks is not None and not chunks:
            stream.chunks = None
        if stream.end_queued and not chunks and not stream.local_closed:
            out.append(data_frame_header(sid, 0, end_stream=True))
            stream.local_closed = True
        if stream.local_closed:
            self._maybe_forget(stream)
        if had and stream.size < had:
            drained = SendBufferDrained(sid)
            (events if events is not None else self._pending_events).append(drained)


# --- the connector's side -------------------------------------------------------------------


class ConnectorTunnelConnection(TunnelHttp2Connection):
    """The connector: HTTP/2 *server* on the TLS connection it dialled to the edge."""

    def __init__(self, settings: TunnelSettings | None = None) -> None:
        super().__init__(client_side=False, settings=settings or TunnelSettings())

    def _on_new_stream(
        self,
        stream: _Stream,
        headers: list[tuple[bytes, bytes]],
        end_stream: bool,
        events: list[Event],
    ) -> None:
        events.append(self._request(stream.stream_id, headers, end_stream))

    def _request(
        self, stream_id: int, raw: list[tuple[bytes, bytes]], end_stream: bool
    ) -> RequestReceived:
        method = path = authority = ""
        regular: list[tuple[str, str]] = []
        serialized: bytes | None = None
        for name, value in raw:
            if name[:1] == b":":
                if name == b":method":
                    method = value.decode("latin-1")
                elif name == b":path":
                    path = value.decode("latin-1")
                elif name == b":authority":
                    authority = value.decode("latin-1")
            elif name == _REQUEST_HEADERS:
                serialized = value
            else:
                regular.append((name.decode("latin-1"), value.decode("latin-1")))
        request_type = classify_request(regular)
        if serialized is not None:
            try:
                headers = decode_serialized_headers(serialized)
            except HeaderDecodeError:
                headers = regular
        else:
            headers = regular
        # What the stream is was told by the edge's own headers (above); none of the tunnel's
        # names is the eyeball's to pass on to an origin.
        visible = tuple(strip_tunnel_internal(headers))
        return RequestReceived(
            stream_id=stream_id,
            request_type=request_type,
            method=method,
            path=path or "/",
            authority=authority,
            headers=visible,
            end_stream=end_stream,
        )

    def send_response(
        self,
        stream_id: int,
        status: int,
        headers: list[tuple[str, str]],
        *,
        meta: ResponseMeta = ResponseMeta.ORIGIN,
        end_stream: bool = False,
        body: bytes = b"",
    ) -> None:
        """Answer a stream: the origin's headers go serialised, as cloudflared sends them.

        ``body`` (a small body already whole) follows at once, ending the stream on its last
        DATA frame when ``end_stream``: one call instead of three for most responses.
        """
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed or stream.headers_seen:
            raise Http2TunnelError(f"stream {stream_id}: cannot send response: stream closed")
        stream.headers_seen = True
        h2_headers: list[tuple[bytes, bytes]] = [
            (b":status", str(200 if status == 101 else status).encode("ascii")),
            (_RESPONSE_META, meta.value.encode("ascii")),
        ]
        if meta is ResponseMeta.ORIGIN:
            h2_headers.append((_RESPONSE_HEADERS, encode_serialized_headers(headers)))
            h2_headers.extend(
                (b"content-length", wire_bytes(v))
                for n, v in headers
                if len(n) == 14 and n.lower() == "content-length"
            )
        if body:
            self._send_headers(stream, h2_headers, False)
            self.send_data(stream_id, body, end_stream=end_stream)
        else:
            self._send_headers(stream, h2_headers, end_stream)


# --- the edge's side ------------------------------------------------------------------------


class EdgeTunnelConnection(TunnelHttp2Connection):
    """The edge: HTTP/2 *client* on the TLS connection the connector dialled."""

    def __init__(self, settings: TunnelSettings | None = None) -> None:
        super().__init__(client_side=True, settings=settings or TunnelSettings())

    @property
    def peer_max_concurrent_streams(self) -> int:
        """What the connector allows (cloudflared: 250)."""
        return self._peer_max_streams

    def _new_stream_id(self) -> int:
        if self._goaway_received:
            raise Http2TunnelError("the connector sent GOAWAY: no new streams")
        if len(self._streams) >= self._peer_max_streams:
            raise Http2TunnelError("the connector's stream limit is reached")
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        return stream_id

    def open_control_stream(self) -> int:
        """Open the stream that carries the Cap'n Proto RPC (no END_STREAM)."""
        stream = self._open_stream(self._new_stream_id())
        self._send_headers(
            stream,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", b"/"),
                (_PROXY_CONNECTION_UPGRADE, b"control-stream"),
            ],
            False,
        )
        return stream.stream_id

    def send_request(
        self,
        method: str,
        path: str,
        authority: str,
        headers: list[tuple[str, str]],
        *,
        request_type: RequestType = RequestType.HTTP,
        serialize_headers: bool = False,
        end_stream: bool = False,
        encoded: Mapping[tuple[str, str], bytes] | None = None,
        keep: dict[tuple[str, str], bytes] | None = None,
    ) -> int:
        """Open a stream for an eyeball request; returns its stream id.

        Hop-by-hop headers are dropped (Go's HTTP/2 server refuses them), and so is every
        header the tunnel gives meaning to (:func:`~adit.protocol.headers.is_tunnel_internal`):
        the stream's kind is ``request_type`` alone, whatever headers the caller passes. With
        ``serialize_headers`` (connectors announcing the adit feature) the exact header names
        travel in ``cf-cloudflared-request-headers`` instead of as HTTP/2 headers (``encoded``:
        pairs of ``headers`` coded for it already; ``keep``: the visitor connection's memo of the
        pairs it repeats; see ``encode_serialized_headers``).
        """
        stream = self._open_stream(self._new_stream_id())
        # A connector that reads plain HTTP/2 headers (cloudflared) would take an eyeball's
        # cf-cloudflared-proxy-connection-upgrade as the edge's word: a configuration push.
        clean = strip_for_tunnel(headers)
        if method == "CONNECT":
            # RFC 9113 §8.5: a CONNECT has no :scheme and no :path (Go's HTTP/2 server, hence
            # cloudflared, resets one that has them with PROTOCOL_ERROR).
            h2_headers: list[tuple[bytes, bytes]] = [
                (b":method", b"CONNECT"),
                (b":authority", wire_bytes(authority)),
            ]
        else:
            h2_headers = [
                (b":method", wire_bytes(method)),
                (b":scheme", b"https"),
                (b":authority", wire_bytes(authority)),
                (b":path", wire_bytes(path)),
            ]
        if request_type is RequestType.WEBSOCKET:
            h2_headers.append((_PROXY_CONNECTION_UPGRADE, b"websocket"))
        elif request_type is RequestType.TCP:
            h2_headers.append((_PROXY_SRC, b"tcp"))
        elif request_type is RequestType.CONFIGURATION:
            # The edge's own configuration push (PROTOCOL.md §4.6.1), never an eyeball's.
            h2_headers.append((_PROXY_CONNECTION_UPGRADE, b"update-configuration"))
        if serialize_headers:
            h2_headers.append((_REQUEST_HEADERS, encode_serialized_headers(clean, encoded, keep)))
        else:
            h2_headers.extend(
                (wire_bytes(name.lower()), wire_bytes(value))
                for name, value in clean
                if name.lower() != "host"
            )
        self._send_headers(stream, h2_headers, end_stream)
        return stream.stream_id

    def _on_stream_headers(
        self,
        stream: _Stream,
        headers: list[tuple[bytes, bytes]],
        end_stream: bool,
        events: list[Event],
    ) -> None:
        if stream.headers_seen:
            return  # trailers: nothing to forward on a tunnel
        status = 0
        meta_value: str | None = None
        serialized = b""
        malformed = False
        for name, value in headers:
            if name == b":status":
                # RFC 9113 §8.3.2: exactly one, the three digits of RFC 9110 §15.
                if status or not _is_status(value):
                    malformed = True
                else:
                    status = int(value)
            elif name == _RESPONSE_META:
                meta_value = value.decode("latin-1")
            elif name == _RESPONSE_HEADERS:
                serialized = value
        try:
            decoded = tuple(decode_serialized_headers(serialized))
        except HeaderDecodeError:
            malformed = True
        if malformed or not status:
            # One connector answer is broken: fail that stream, not the connection.
            self._stream_error(stream, ErrorCode.PROTOCOL_ERROR, events)
            return
        if 100 <= status < 200 and status != 101 and not end_stream:
            return  # 1xx before the real answer: nothing to forward on a tunnel
        stream.headers_seen = True
        events.append(
            ResponseReceived(
                stream_id=stream.stream_id,
                status=status,
                headers=decoded,
                meta=ResponseMeta.parse(meta_value),
                end_stream=end_stream,
            )
        )
