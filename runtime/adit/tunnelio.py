"""asyncio adapter for the sans-IO HTTP/2 tunnel transport, shared by the edge and workers.

One :class:`TunnelIO` per TLS connection pumps bytes between the transport and the protocol
object; each stream's bodies are a :class:`StreamChannel` with back-pressure in both
directions: ``read`` credits the peer only for what was consumed, ``write`` waits while the
stream's queue is above :data:`HIGH_WATER` or the socket's buffer is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Generic, TypeVar, cast

from adit.protocol.errors import Http2TunnelError, ProtocolError
from adit.protocol.http2 import (
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    Event,
    SendBufferDrained,
    StreamEnded,
    StreamReset,
    TunnelHttp2Connection,
)
from adit.protocol.liveness import Liveness, LivenessSettings, PeerState

__all__ = [
    "HIGH_WATER",
    "StreamChannel",
    "StreamClosedError",
    "TunnelIO",
    "release_waiter",
    "set_keepalive",
]

#: Bytes a writer may queue on one stream before it waits for the peer's window.
HIGH_WATER = 512 * 1024
#: Output held back to be coalesced with what other streams produce in the same loop
#: iteration; beyond this it is written at once (a bulk transfer needs no batching).
COALESCE_LIMIT = 64 * 1024
#: Read pieces kept in a stream's inbound list before it is compacted.
_COMPACT_AT = 64
#: Open streams (the control stream and one request) up to which output is not held back.
ALONE = 2
#: Buffers below this are joined before they reach TLS (one record instead of many).
_SMALL_PART = 16 * 1024
#: How long a closing connection may take to hand its last bytes (a GOAWAY) to a peer that
#: does not read them, before the socket is aborted.
CLOSE_GRACE = 2.0
#: Answers (ACKs, resets) a peer may make us owe while our writes are blocked before we stop
#: reading it. An honest peer owes us a read at most for as long as its own writes are
#: blocked, and sends a PING a second at most meanwhile; the protocol's own cap
#: (``FrameLimits.max_owed_control``) closes the connection beyond that.
OWED_BEFORE_PAUSING = 64
#: TCP keepalive under the HTTP/2 PINGs (which see a frozen peer in seconds): the kernel's
#: own probe of a silent connection, with Go's defaults (cloudflared's dialer): the first probe
#: after 15 s idle, then every 15 s, 9 unanswered ones and the socket is dead.
KEEPALIVE_IDLE = 15
KEEPALIVE_INTERVAL = 15
KEEPALIVE_COUNT = 9

Conn = TypeVar("Conn", bound=TunnelHttp2Connection)


class StreamClosedError(Exception):
    """The stream was reset, or the tunnel connection went away."""


class StreamChannel:
    """The bodies of one stream as async reads and writes."""

    # One per open stream, a thousand idle WebSockets at a time: no instance dict.
    __slots__ = (
        "_inbound",
        "_next",
        "_read_waiter",
        "_write_waiter",
        "io",
        "local_ended",
        "remote_ended",
        "reset_code",
        "stream_id",
    )

    def __init__(self, io: TunnelIO[TunnelHttp2Connection], stream_id: int) -> None:
        self.io = io
        self.stream_id = stream_id
        # A list and the index of the next unread piece rather than a deque: an empty deque
        # is 760 bytes, and a thousand idle WebSockets have a thousand empty queues.
        self._inbound: list[tuple[bytes, int]] = []
        self._next = 0
        # One reader and one writer at a time: a bare future each is all the waiting needs
        # (two asyncio.Events per stream cost CPU per request and memory per idle stream).
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self.remote_ended = False
        self.local_ended = False
        self.reset_code: int | None = None

    # -- reading -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether :meth:`read` would return without waiting."""
        return self._next < len(self._inbound) or self.remote_ended or self.reset_code is not None

    @property
    def exhausted(self) -> bool:
        """Whether the peer ended the stream and every chunk was read (:meth:`read` would
        return ``b""``): the last chunk read was the body's last."""
        return self.remote_ended and self._next >= len(self._inbound)

    async def read(self) -> bytes:
        """Next body chunk; ``b""`` once the peer ended the stream."""
        while self._next >= len(self._inbound):
            # The peer's end first: a reset after it (Go's RST_STREAM NO_ERROR once it has
            # answered, RFC 9113 §8.1) stops our sending, not what was received whole.
            if self.remote_ended:
                return b""
            if self.reset_code is not None:
                raise StreamClosedError(f"stream reset (code {self.reset_code})")
            self._read_waiter = waiter = self.io._loop.create_future()
            try:
                await waiter
            finally:
                self._read_waiter = None
        inbound = self._inbound
        data, flow_len = inbound[self._next]
        self._next += 1
        if self._next == len(inbound):
            inbound.clear()
            self._next = 0
        elif self._next >= _COMPACT_AT and 2 * self._next >= len(inbound):
            # Many small pieces queued (a reader slower than tiny frames): drop the read ones
            # now and then, so a long queue costs linear time, not quadratic.
            del inbound[: self._next]
            self._next = 0
        self.io.acknowledge(self.stream_id, flow_len)
        return data

    # -- writing -------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Queue body bytes, waiting while the peer or the socket cannot take more."""
        if self.reset_code is not None or self.io.closed:
            raise StreamClosedError("stream is closed")
        self.io.conn.send_data(self.stream_id, data)
        self.io.flush()
        while self.io.conn.pending(self.stream_id) > HIGH_WATER or self.io.paused:
            if self.reset_code is not None or self.io.closed:
                raise StreamClosedError("stream is closed")
            self._write_waiter = waiter = self.io._loop.create_future()
            try:
                await waiter
            finally:
                self._write_waiter = None

    def end(self) -> None:
        """End our side (after what is queued)."""
        if self.local_ended or self.reset_code is not None or self.io.closed:
            return
        self.local_ended = True
        self.io.conn.end_stream(self.stream_id)
        self.io.flush()
        self.io.maybe_forget(self)

    def reset(self) -> None:
        """Abort the stream in both directions."""
        if self.reset_code is None:
            self.reset_code = 8  # CANCEL
            if not self.io.closed:
                self.io.conn.reset_stream(self.stream_id)
                self.io.flush()
        self._wake()
        self.io.forget(self)

    # -- fed by TunnelIO -----------------------------------------------------------------------

    def _feed(self, data: bytes, flow_len: int) -> None:
        self._inbound.append((data, flow_len))
        self._wake_reader()

    def _ended(self) -> None:
        self.remote_ended = True
        self._wake_reader()
        self.io.maybe_forget(self)

    def _reset(self, code: int) -> None:
        self.reset_code = code
        self._wake()

    def _wake(self) -> None:
        self._wake_reader()
        self._wake_writer()

    def _wake_reader(self) -> None:
        release_waiter(self._read_waiter)

    def _wake_writer(self) -> None:
        release_waiter(self._write_waiter)


def release_waiter(waiter: asyncio.Future[None] | None) -> None:
    """Let whoever awaits ``waiter`` (a bare future standing for an event) go on."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _coalesced(parts: list[bytes | memoryview]) -> list[bytes | memoryview]:
    out: list[bytes | memoryview] = []
    small: list[bytes | memoryview] = []
    for part in parts:
        if len(part) < _SMALL_PART:
            small.append(part)
            continue
        if small:
            out.append(b"".join(small))
            small = []
        out.append(part)
    if small:
        out.append(b"".join(small))
    return out


def set_keepalive(transport: asyncio.BaseTransport) -> None:
    """Turn TCP keepalive on for the socket under ``transport`` (when it is a TCP socket)."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)


class TunnelIO(asyncio.Protocol, Generic[Conn]):
    """Pumps one tunnel connection; subclasses handle the role-specific events.

    Both roles watch the peer with the same liveness rule (:mod:`adit.protocol.liveness`):
    PINGs after a silence, :meth:`on_responsive` when the peer stops or resumes answering,
    and the connection dropped after the idle timeout (``liveness=None``: never).
    """

    def __init__(self, conn: Conn, liveness: LivenessSettings | None = None) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.channels: dict[int, StreamChannel] = {}
        self.closed = False
        self.paused = False
        self._loop = asyncio.get_running_loop()
        self.lost = self._loop.create_future()
        self._held: list[bytes | memoryview] = []
        self._held_size = 0
        self._write_scheduled = False
        #: We stopped reading the peer (it does not read what it makes us answer).
        self.reading_paused = False
        self._liveness_settings = liveness
        self._liveness: Liveness | None = None
        self._liveness_timer: asyncio.TimerHandle | None = None
        #: The peer answers (see :mod:`adit.protocol.liveness`).
        self.responsive = True

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        set_keepalive(transport)
        self.conn.initiate()
        self.flush()
        if self._liveness_settings is not None:
            self._liveness = Liveness(self._liveness_settings, self._loop.time())
            self._arm_liveness(self._loop.time())

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        if self._liveness is not None:
            self._liveness.heard(now)
            if not self.responsive:
                self._set_responsive(True)
        try:
            events = self.conn.receive_data(data, now)
        except ProtocolError as exc:
            code = exc.error_code if isinstance(exc, Http2TunnelError) else None
            self.fail(f"protocol error from peer: {exc}", code or ErrorCode.PROTOCOL_ERROR)
            return
        for event in events:
            self.dispatch(event)
        self.after_read()
        self.flush()
        if self.paused and self.conn.owed_control_frames >= OWED_BEFORE_PAUSING:
            self._pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._liveness_timer is not None:
            self._liveness_timer.cancel()
        for channel in list(self.channels.values()):
            channel._reset(-1)
        self.channels.clear()
        if not self.lost.done():
            self.lost.set_result(str(exc) if exc else "connection closed")
        self.on_lost(exc)
        # This protocol and its transport (and the TLS layer between them) refer to each other:
        # left to the cycle collector, a closed connection's buffers, the TLS input it never
        # read among them, lived until a full collection (~80 KiB each; a tenant redialling
        # and flooding grew the edge by hundreds of MiB). Cut the cycle now.
        self.transport = None
        self._liveness_timer = None

    def pause_writing(self) -> None:
        # From now on our output stays in the protocol object (flush() takes none), where the
        # answers the peer makes us owe are counted: once it made us owe OWED_BEFORE_PAUSING
        # of them, reading stops until the transport drains (a peer that does not read cannot
        # make us read, and queue, without end), and the protocol caps them. Reading does not
        # stop merely because our writes are blocked: two honest peers sending bulk both ways
        # would then each wait for the other to read, for ever (test_tunnelio_channels).
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.reading_paused:
            self.reading_paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()
        self.flush()
        for channel in list(self.channels.values()):
            channel._wake_writer()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    # -- liveness ----------------------------------------------------------------------------

    def _arm_liveness(self, now: float) -> None:
        assert self._liveness is not None
        at = self._liveness.deadline(now)
        self._liveness_timer = self._loop.call_at(at, self._check_liveness)

    def _check_liveness(self) -> None:
        live = self._liveness
        if live is None or self.closed:
            return
        now = self._loop.time()
        payload = live.poll(now)
        if payload is not None:
            self.conn.ping(payload)
            self.flush()
        state = live.state(now)
        if state is PeerState.GONE:
            timeout = live.settings.timeout
            self.fail(f"no answer from the peer for {timeout:g}s", ErrorCode.NO_ERROR)
            # It reads nothing: waiting for it to take the GOAWAY is pointless.
            if self.transport is not None:
                self.transport.abort()
            return
        responsive = state is PeerState.ALIVE
        if responsive != self.responsive:
            self._set_responsive(responsive)
        self._arm_liveness(now)

    def _set_responsive(self, responsive: bool) -> None:
        self.responsive = responsive
        self.on_responsive(responsive)

    # -- plumbing --------------------------------------------------------------------------------

    def flush(self) -> None:
        """Hand whatever the protocol produced to the socket, coalescing small writes.

        Under load many streams each produce a few frames per loop iteration (HEADERS, a
        DATA frame, END_STREAM, WINDOW_UPDATEs); writing them one syscall each was the
        largest single cost of a small request. Small output is therefore held until the end
        of the current iteration and written as one; large output goes at once, and so does
        the output of a connection with a single request open (nothing to join it with:
        holding it would only cost another loop iteration of latency).
        """
        if self.paused or self.closed:
            return
        parts = self.conn.data_to_send_parts()
        if not parts:
            return
        self._held.extend(parts)
        self._held_size += sum(map(len, parts))
        if self._held_size >= COALESCE_LIMIT or len(self.channels) <= ALONE:
            self.write_held()
        elif not self._write_scheduled:
            self._write_scheduled = True
            self._loop.call_soon(self.write_held)

    def write_held(self) -> None:
        """Write the held output now."""
        self._write_scheduled = False
        if not self._held:
            return
        held = self._held
        self._held = []
        self._held_size = 0
        if self.transport is None or self.closed:
            return
        if len(held) == 1:
            self.transport.write(held[0])
        else:
            # TLS makes a record of every buffer it is handed: small frames are joined into
            # one (a few KiB copied), large bodies still go through uncopied.
            self.transport.writelines(_coalesced(held))

    def acknowledge(self, stream_id: int, flow_len: int) -> None:
        """Credit consumed bytes back to the peer."""
        if not self.closed:
            self.conn.acknowledge(stream_id, flow_len)
            self.flush()

    def channel(self, stream_id: int) -> StreamChannel:
        """Create and track the channel of a new stream."""
        channel = StreamChannel(self, stream_id)  # type: ignore[arg-type]
        self.channels[stream_id] = channel
        return channel

    def release(self, channel: StreamChannel) -> None:
        """The reader is done with ``channel``: what it left unread is credited to the peer
        (the connection's window would otherwise shrink by it for good) and dropped."""
        inbound = channel._inbound
        unread = inbound[channel._next :]
        if unread:
            inbound.clear()
            channel._next = 0
            if not self.closed:
                self.acknowledge(channel.stream_id, sum(flow for _, flow in unread))

    def forget(self, channel: StreamChannel) -> None:
        """Stop tracking a finished stream."""
        self.channels.pop(channel.stream_id, None)

    def maybe_forget(self, channel: StreamChannel) -> None:
        """Forget a stream once both sides ended and its inbound data was consumed."""
        if channel.local_ended and channel.remote_ended:
            self.forget(channel)

    def dispatch(self, event: Event) -> None:
        """Route an event to its channel or to the role hook."""
        if isinstance(event, DataReceived):
            channel = self.channels.get(event.stream_id)
            if channel is None:
                # Nobody will read it: give the window back at once.
                self.conn.acknowledge(event.stream_id, event.flow_controlled_length)
            else:
                channel._feed(event.data, event.flow_controlled_length)
        elif isinstance(event, StreamEnded):
            channel = self.channels.get(event.stream_id)
            if channel is not None:
                channel._ended()
        elif isinstance(event, StreamReset):
            channel = self.channels.pop(event.stream_id, None)
            if channel is not None:
                channel._reset(event.error_code)
        elif isinstance(event, SendBufferDrained):
            channel = self.channels.get(event.stream_id)
            if channel is not None:
                channel._wake_writer()
        elif isinstance(event, ConnectionTerminated):
            self.on_goaway(event)
        else:
            self.on_event(event)

    def fail(self, reason: str, error_code: int = ErrorCode.PROTOCOL_ERROR) -> None:
        """Close the connection because of a protocol failure: GOAWAY with ``error_code``."""
        if self.closed:
            return
        with contextlib.suppress(Exception):
            self.conn.close(error_code=error_code)
        self.close_transport()
        self.on_failure(reason, error_code)

    def close_transport(self) -> None:
        """Close the socket after what is queued (held output included, even while paused);
        a peer that does not take it within :data:`CLOSE_GRACE` is cut off."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self.closed:
            self._held.extend(self.conn.data_to_send_parts())
        self.write_held()
        transport.close()
        self._loop.call_later(CLOSE_GRACE, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.abort()

    # -- role hooks --------------------------------------------------------------------------

    def after_read(self) -> None:
        """Every event of one read was dispatched."""

    def on_event(self, event: Event) -> None:
        """Requests (connector) or responses (edge)."""

    def on_goaway(self, event: ConnectionTerminated) -> None:
        """The peer sent GOAWAY."""

    def on_lost(self, exc: Exception | None) -> None:
        """The socket closed."""

    def on_failure(self, reason: str, error_code: int) -> None:
        """The connection failed (protocol error, or the peer stopped answering); the GOAWAY
        said ``error_code`` (ENHANCE_YOUR_CALM for a flood)."""

    def on_responsive(self, responsive: bool) -> None:
        """The peer stopped answering PINGs in time (False), or was heard from again (True)."""
