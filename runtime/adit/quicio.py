"""asyncio adapter for the QUIC tunnel transport: :class:`TunnelIO` over UDP datagrams.

A QUIC connection has no socket of its own on the edge (one UDP socket serves them all, a
listener routes datagrams by connection id) and on the connector its socket is one UDP
endpoint. :class:`QuicIO` is mixed in before a :class:`~adit.tunnelio.TunnelIO` subclass (the
edge's tunnel session, the worker's edge connection) and replaces what is TCP-specific: how
bytes come in (datagrams) and go out (``sendto``), the timers QUIC needs (retransmission,
idle timeout), and how the connection ends (CONNECTION_CLOSE, then the draining period).
Streams, channels, back-pressure and the role logic above stay as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from typing import Any

from aioquic.quic.connection import NetworkAddress

from adit.protocol.errors import ProtocolError
from adit.protocol.http2 import ConnectionTerminated, ErrorCode, Event, StreamReset
from adit.protocol.liveness import Liveness, PeerState
from adit.protocol.quic_tunnel import HandshakeDone, QuicEvent, QuicTunnelConnection
from adit.tunnelio import _COMPACT_AT, HIGH_WATER, StreamChannel, StreamClosedError, TunnelIO

__all__ = [
    "MAX_QUEUED_DATAGRAMS",
    "NO_ANSWER",
    "DatagramSend",
    "QuicIO",
    "QuicSender",
    "QuicStreamChannel",
]

log = logging.getLogger("adit.quic")

#: How long a closed connection lingers to answer the peer's last packets (QUIC's closing
#: period is three PTOs; aioquic ends it with ConnectionTerminated, this bounds it).
CLOSING_LIMIT = 3.0

#: Why a connection ends whose peer stayed silent for the liveness timeout: during the
#: handshake, what quic-go's handshake idle timeout is.
NO_ANSWER = "no answer from the peer"

#: Sends one datagram to an address (the listener's or the endpoint's transport).
QuicSender = Callable[[bytes, NetworkAddress], None]
#: The most a read joins of the pieces that are waiting (a piece is a packet's worth).
READ_JOIN_LIMIT = 256 * 1024


class QuicStreamChannel(StreamChannel):
    """A QUIC stream's channel: a read takes every piece that has arrived, joined.

    A QUIC packet carries at most ~1.2 KB of a stream, and each is a piece of its own: read
    one at a time, a download made one read, one credit and one write to the visitor's socket
    per packet, the edge's largest cost. The datagrams of one wake-up of the loop are read
    before the reader runs, so it now takes them in one go.
    """

    __slots__ = ()

    io: QuicIO

    async def read(self) -> bytes:
        first = await super().read()
        inbound = self._inbound
        start = self._next
        if not first or start >= len(inbound):
            return first
        pieces = [first]
        size = len(first)
        credit = 0
        end = start
        while end < len(inbound) and size < READ_JOIN_LIMIT:
            data, flow_len = inbound[end]
            pieces.append(data)
            size += len(data)
            credit += flow_len
            end += 1
        if end == len(inbound):
            inbound.clear()
            self._next = 0
        elif end >= _COMPACT_AT and 2 * end >= len(inbound):
            del inbound[:end]
            self._next = 0
        else:
            self._next = end
        self.io.acknowledge(self.stream_id, credit)
        return b"".join(pieces)

    async def write(self, data: bytes) -> None:
        # QUIC has no "buffer drained" event: the I/O wakes the writers it knows of as it
        # sends (only those inside write(), not every channel of the connection).
        writing = self.io._writing
        writing.add(self)
        try:
            await super().write(data)
        finally:
            writing.discard(self)


#: DATAGRAM frames that may wait for the congestion window; beyond, a new one is dropped, as a
#: full socket buffer drops UDP (aioquic's queue has no bound of its own).
MAX_QUEUED_DATAGRAMS = 1024


class DatagramSend(enum.Enum):
    """What became of a datagram handed to :meth:`QuicIO.send_datagram`."""

    SENT = "sent"
    TOO_LARGE = "too large for one QUIC packet"
    FULL = "too many datagrams queued"
    CLOSED = "the connection is closed"


class QuicIO(TunnelIO[Any]):
    """The QUIC half of a tunnel connection's I/O; mix in before the role's class."""

    conn: QuicTunnelConnection

    def start_quic(self, send: QuicSender, peer: NetworkAddress, *, client: bool) -> None:
        """Begin: datagrams go out through ``send``; ``peer`` is the far end's address; a
        ``client`` starts the handshake."""
        self._send = send
        self._peer_address = peer
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closing_timer: asyncio.TimerHandle | None = None
        #: A flush is scheduled for the end of this turn of the loop.
        self._flush_soon_pending = False
        #: Channels inside :meth:`QuicStreamChannel.write` (those a flush may have to wake).
        self._writing: set[QuicStreamChannel] = set()
        #: The negotiated ALPN once the handshake is done; fails if the connection ends first.
        self.handshake: asyncio.Future[str | None] = self._loop.create_future()
        if client:
            self.conn.quic.connect(peer, now=self._loop.time())
        self.conn.initiate()
        self._handle(self.conn.take_events())
        if client:
            self.flush()  # the Initial; a server has nothing to send before its first datagram

    # -- datagrams in ------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        """A datagram of this connection (routed here by the listener or the endpoint)."""
        if self.closed:
            return
        try:
            self._received(data, addr)
        except Exception as exc:
            self._internal_error(exc)

    def _received(self, data: bytes, addr: NetworkAddress) -> None:
        now = self._loop.time()
        if self._liveness is not None:
            self._liveness.heard(now)
            if not self.responsive:
                self._set_responsive(True)
        try:
            events = self.conn.receive_datagram(data, addr, now)
        except ProtocolError as exc:
            self.fail(f"protocol error from peer: {exc}", ErrorCode.PROTOCOL_ERROR)
            return
        self._handle(events)
        # One flush for every datagram of this wake-up (the loop reads a burst of them before
        # anything else runs): building packets costs as much when there is nothing to send.
        self.flush_soon()

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        try:
            self._handle(self.conn.handle_timer(self._loop.time()))
            self.flush()
        except Exception as exc:
            self._internal_error(exc)

    def _internal_error(self, exc: Exception) -> None:
        """A bug met while handling this connection costs this connection, closed with
        INTERNAL_ERROR: never the socket every other connection shares, nor a connection
        left half-handled (its events dropped, its timer not armed again)."""
        log.error(
            "QUIC connection with %s:%s: internal error; closing it",
            *self._peer_address[:2],
            exc_info=exc,
        )
        try:
            self.fail(f"internal error: {exc!r}", ErrorCode.INTERNAL_ERROR)
        except Exception:
            with contextlib.suppress(Exception):
                self._terminated("internal error")

    def _handle(self, events: list[QuicEvent]) -> None:
        ended: ConnectionTerminated | None = None
        for event in events:
            if type(event) is ConnectionTerminated:
                ended = event
            elif type(event) is HandshakeDone and not self.handshake.done():
                self.handshake.set_result(event.alpn)
                self._start_liveness()
            self.dispatch(event)  # type: ignore[arg-type]
        self.after_read()
        if ended is not None:
            self._terminated(self.conn.terminated_reason or "connection closed")

    def _start_liveness(self) -> None:
        # From the end of the handshake: before it there is nothing to PING with, and a
        # handshake has its own bounds (QUIC's idle timeout, the handshake deadline), so a
        # client that never finishes one is not "a peer that stopped answering PINGs".
        if self._liveness_settings is not None and self._liveness is None:
            now = self._loop.time()
            self._liveness = Liveness(self._liveness_settings, now)
            self._arm_liveness(now)

    # -- datagrams out -----------------------------------------------------------------------

    def flush(self) -> None:
        """Send what QUIC has to send now, and arm its timer."""
        self._flush_soon_pending = False
        if self.closed:
            return
        now = self._loop.time()
        send = self._send
        conn = self.conn
        for data, addr in conn.datagrams_to_send(now):
            send(data, addr)
        if conn.events_pending:
            # Made while building packets (only ConnectionIdIssued): an id issued is routed
            # before the peer can have it, since the peer may use it at once and send nothing
            # else (not at our next read or timer). No after_read: no read happened.
            for event in conn.take_events():
                self.dispatch(event)  # type: ignore[arg-type]
        self._arm_timer()
        # QUIC has no "buffer drained" event: writers waiting for room are told here.
        if self._writing:
            pending = self.conn.pending
            for channel in list(self._writing):
                if channel._write_waiter is not None and pending(channel.stream_id) <= HIGH_WATER:
                    channel._wake_writer()

    def flush_soon(self) -> None:
        """Flush at the end of this turn of the loop (once, however often asked)."""
        if not self._flush_soon_pending and not self.closed:
            self._flush_soon_pending = True
            self._loop.call_soon(self._flush_if_pending)

    def _flush_if_pending(self) -> None:
        if self._flush_soon_pending:
            self.flush()

    def write_held(self) -> None:
        """Nothing is held: datagrams are sent as :meth:`flush` makes them."""

    # -- DATAGRAM frames and RPC streams (UDP sessions) ---------------------------------------

    def send_datagram(self, data: bytes) -> DatagramSend:
        """Send one DATAGRAM frame now, or say why it was dropped (unreliable, as UDP)."""
        if self.closed:
            return DatagramSend.CLOSED
        quic = self.conn.quic
        if len(data) > quic.max_datagram_payload:
            return DatagramSend.TOO_LARGE
        if quic.datagrams_queued >= MAX_QUEUED_DATAGRAMS:
            return DatagramSend.FULL
        quic.send_datagram_frame(data)
        self.flush()
        return DatagramSend.SENT

    def open_rpc_stream(self, data: bytes) -> StreamChannel:
        """A new stream of ours carrying RPC: its preamble and ``data`` (Cap'n Proto) are
        sent at once; the peer's answer is read from the channel."""
        if self.closed:
            raise StreamClosedError("the tunnel connection is closed")
        try:
            stream_id = self.conn.open_rpc_stream(data)
        except ProtocolError as exc:
            raise StreamClosedError(str(exc)) from exc
        channel = self.channel(stream_id)
        self.flush()
        return channel

    def _arm_timer(self) -> None:
        at = self.conn.get_timer()
        if self._timer is not None:
            timer_at = self._timer_at
            if at is None or (timer_at is not None and timer_at <= at):
                # A timer due no later is kept: QUIC's deadline moves with nearly every packet,
                # mostly later, and an early call only finds nothing due and arms again.
                return
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self._loop.call_at(at, self._on_timer)

    # -- flow control ------------------------------------------------------------------------

    def channel(self, stream_id: int) -> StreamChannel:
        channel = QuicStreamChannel(self, stream_id)
        self.channels[stream_id] = channel
        return channel

    def acknowledge(self, stream_id: int, flow_len: int) -> None:
        """Credit consumed bytes; a flush only once a receive limit moved (the credit is
        batched: most calls change nothing that goes on the wire)."""
        if not self.closed and self.conn.acknowledge(stream_id, flow_len):
            self.flush_soon()

    def dispatch(self, event: Event) -> None:
        if type(event) is StreamReset:
            channel = self.channels.get(event.stream_id)
            super().dispatch(event)
            if channel is not None:
                # Nobody reads a reset stream to its end: QUIC's connection window moves
                # with what was consumed, so what it holds is credited now.
                self.release(channel)
            return
        super().dispatch(event)

    # -- the end -----------------------------------------------------------------------------

    def close_transport(self) -> None:
        """Send the CONNECTION_CLOSE queued by the caller; the connection ends when QUIC's
        closing period does, or after :data:`CLOSING_LIMIT` at the latest."""
        if self.closed:
            return
        self.flush()
        if self._closing_timer is None:
            self._closing_timer = self._loop.call_later(CLOSING_LIMIT, self._terminated, "closed")

    def _check_liveness(self) -> None:
        # The base class aborts the transport of a silent peer; here there is none to abort
        # (the edge's UDP socket is every connection's): close the connection, end it now.
        live = self._liveness
        if live is None or self.closed:
            return
        super()._check_liveness()
        if live.state(self._loop.time()) is PeerState.GONE:
            self._terminated(NO_ANSWER)

    def _terminated(self, reason: str = "connection closed") -> None:
        if self.closed:
            return
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(f"QUIC handshake failed: {reason}"))
            self.handshake.exception()
        for timer in (self._timer, self._closing_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._closing_timer = None
        with contextlib.suppress(Exception):
            self.flush()
        self.connection_lost(ConnectionError(reason))
