"""QUIC for the tunnel (cloudflared's default transport), both roles, on aioquic (sans-IO).

The edge is the QUIC server, the connector the client. This module holds cloudflared's QUIC
settings (:func:`quic_configuration`) and :class:`TunnelQuicConnection`, an aioquic
``QuicConnection`` subclass adding what the tunnel needs and aioquic 1.7 lacks:

* the X25519MLKEM768 hybrid key share (:mod:`adit.protocol.quic_tls`), without which
  cloudflared's handshake fails against an aioquic server;
* **consumption-based flow control.** aioquic raises MAX_STREAM_DATA / MAX_DATA (doubling,
  without limit) whenever the peer has *sent* half the window, whatever the application has
  read (``QuicConnection._write_stream_limits`` / ``_write_connection_limits``), so a slow
  reader buffers without bound. Here the advertised limits are ``consumed + window``: the
  application reports what it has processed with :meth:`TunnelQuicConnection.consumed`; the
  peer can never have more than a window in flight beyond that, as with quic-go, whose flow
  controller also counts bytes *read* (internal/flowcontrol). Updates are batched: a limit
  moves once half a window has been consumed since it last moved (quic-go: a quarter,
  internal/protocol WindowUpdateThreshold);
* a configurable number of streams the peer may open (aioquic hard-codes 128; cloudflared
  allows 2^60, ``quic/constants.go`` MaxIncomingStreams);
* quic-go's overall handshake deadline (2 × HandshakeIdleTimeout, quic-go ``config.go``
  ``handshakeTimeout``): aioquic only has the idle timeout, which a peer trickling packets
  keeps pushing back;
* send-queue accessors for writer back-pressure;
* counts for cloudflared's ``quic_client_*`` metrics (:attr:`TunnelQuicConnection.counters`,
  :meth:`TunnelQuicConnection.path_stats`; :mod:`adit.protocol.quic_counters` says why not
  aioquic's qlog): frames through the frame handler table and a packet builder that notes
  each frame it starts, losses through a recovery subclass, drops around decryption and the
  duplicate check. Each costs a call and an integer added per packet or frame.

Keep-alive PINGs (cloudflared sends one after 1 s of silence) are not here: the tunnel's
transport-independent :mod:`adit.protocol.liveness` decides when to call ``send_ping``.

What the application must do: call :meth:`~TunnelQuicConnection.consumed` for every byte of
``StreamDataReceived.data`` once it is done with it, including on streams it abandons or that
the peer resets (bytes the peer announced but never delivered are credited here).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from aioquic import tls
from aioquic._buffer import Buffer
from aioquic._crypto import CryptoError
from aioquic.buffer import size_uint_var
from aioquic.quic import connection as aioquic_connection
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    STREAM_COUNT_MAX,
    NetworkAddress,
    QuicConnection,
    QuicConnectionState,
    QuicNetworkPath,
    QuicReceiveContext,
    QuicTokenHandler,
)
from aioquic.quic.crypto import CryptoPair, KeyUnavailableError
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicProtocolVersion,
    pull_quic_transport_parameters,
)
from aioquic.quic.packet_builder import QuicDeliveryHandler, QuicPacketBuilder, QuicSentPacket
from aioquic.quic.recovery import (
    K_TIME_THRESHOLD,
    QuicPacketNumberWindow,
    QuicPacketRecovery,
    QuicPacketSpace,
)
from aioquic.quic.stream import QuicStream
from aioquic.tls import AlertDescription
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from adit.protocol.quic_counters import (
    FRAME_LABELS,
    LOSS_REORDERING,
    LOSS_TIME,
    PathStats,
    QuicCounters,
    congestion_state,
)
from adit.protocol.quic_tls import X25519MLKEM768, PostQuantum, TunnelTlsContext, group_name

__all__ = [
    "ALPN",
    "CONNECTION_RECEIVE_WINDOW",
    "HANDSHAKE_IDLE_TIMEOUT",
    "HANDSHAKE_TIMEOUT",
    "INITIAL_PACKET_SIZE_IPV4",
    "INITIAL_PACKET_SIZE_IPV6",
    "KEEPALIVE_PERIOD",
    "MAX_DATAGRAM_FRAME_SIZE",
    "MAX_IDLE_TIMEOUT",
    "MAX_INCOMING_STREAMS",
    "PROBE_SERVER_NAME",
    "SERVER_MAX_INCOMING_STREAMS",
    "SERVER_NAME",
    "STREAM_RECEIVE_WINDOW",
    "PostQuantum",
    "TunnelQuicConfiguration",
    "TunnelQuicConnection",
    "quic_configuration",
]

#: The only ALPN cloudflared offers over QUIC (connection/protocol.go); quic-go refuses a
#: handshake where the server selects none.
ALPN = "argotunnel"
#: SNI cloudflared hard-codes for QUIC, and for its pre-check probes (connection/protocol.go).
SERVER_NAME = "quic.cftunnel.com"
PROBE_SERVER_NAME = "probe.cftunnel.com"
#: cloudflared quic/constants.go. aioquic's idle timeout also covers the handshake, so the two
#: timeouts are one setting here; HANDSHAKE_TIMEOUT bounds the whole handshake as quic-go does.
HANDSHAKE_IDLE_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 2 * HANDSHAKE_IDLE_TIMEOUT
MAX_IDLE_TIMEOUT = 5.0
#: cloudflared's KeepAlivePeriod (quic/constants.go MaxIdlePingPeriod).
KEEPALIVE_PERIOD = 1.0
#: quic-go's max_datagram_frame_size transport parameter (internal/wire MaxDatagramSize).
MAX_DATAGRAM_FRAME_SIZE = 16383
#: cloudflared's InitialPacketSize by edge address family (supervisor/tunnel.go serveQUIC:
#: 1232 for IPv4, 1252 otherwise; the comment in cmd/cloudflared/flags says the opposite).
INITIAL_PACKET_SIZE_IPV4 = 1232
INITIAL_PACKET_SIZE_IPV6 = 1252
#: cloudflared's --quic-connection-level-flow-control-limit / --quic-stream-level-... defaults
#: (cmd/cloudflared/tunnel/cmd.go): quic-go auto-tunes its windows up to these.
CONNECTION_RECEIVE_WINDOW = 30 * (1 << 20)
STREAM_RECEIVE_WINDOW = 6 * (1 << 20)
#: quic/constants.go MaxIncomingStreams (and MaxIncomingUniStreams): quic-go's maximum. The
#: connector's default: the edge opens one stream per proxied request.
MAX_INCOMING_STREAMS = 1 << 60
#: The edge's default. cloudflared opens only its control stream and short-lived RPC streams,
#: and aioquic creates every lower-numbered stream a peer implicitly opens (RFC 9000 §2.1) as an
#: object, before the tunnel is even registered: 2^60 would let any client exhaust memory.
SERVER_MAX_INCOMING_STREAMS = 128

#: The AEAD tag of every 1-RTT packet (AES-GCM and ChaCha20-Poly1305 alike).
_AEAD_TAG_SIZE = 16

_HANDSHAKE_FAILURE = QuicErrorCode.CRYPTO_ERROR + AlertDescription.handshake_failure


@dataclass
class TunnelQuicConfiguration(QuicConfiguration):
    """aioquic's configuration plus the tunnel's own settings.

    ``max_stream_data`` and ``max_data`` are the stream and connection receive *windows*: the
    initial limits sent in the transport parameters, and then how far beyond what the
    application has consumed the peer may send.
    """

    #: Key exchange policy of the TLS handshake.
    post_quantum: PostQuantum = PostQuantum.PREFER
    #: Bidirectional (and unidirectional) streams the peer may have open at once; ``None``:
    #: :data:`MAX_INCOMING_STREAMS` for a client, :data:`SERVER_MAX_INCOMING_STREAMS` for a server.
    max_incoming_streams: int | None = None
    #: Count what cloudflared's ``quic_client_*`` metrics show (frames, losses, drops: see
    #: :mod:`adit.protocol.quic_counters`); the edge, which exposes none, leaves it off.
    count_for_metrics: bool = True


def quic_configuration(
    *,
    is_client: bool,
    post_quantum: PostQuantum,
    server_name: str = SERVER_NAME,
    cafile: str | None = None,
    cadata: bytes | None = None,
    certificate: x509.Certificate | None = None,
    certificate_chain: Sequence[x509.Certificate] = (),
    private_key: CertificateIssuerPrivateKeyTypes | None = None,
    stream_window: int = STREAM_RECEIVE_WINDOW,
    connection_window: int = CONNECTION_RECEIVE_WINDOW,
    max_datagram_size: int = INITIAL_PACKET_SIZE_IPV4,
    max_incoming_streams: int | None = None,
) -> TunnelQuicConfiguration:
    """cloudflared's QUIC settings (supervisor/tunnel.go serveQUIC) for either role.

    A server needs ``certificate`` and ``private_key`` (loaded by the caller; a leaf valid for
    :data:`SERVER_NAME`) and requires the ALPN :data:`ALPN`. A client verifies the server
    against ``cafile``/``cadata`` (or aioquic's default roots) and the name ``server_name``.
    """
    if is_client and (certificate is not None or private_key is not None):
        raise ValueError("a tunnel client presents no certificate (cloudflared sends none)")
    if not is_client and (certificate is None or private_key is None):
        raise ValueError("a tunnel server needs a certificate and its private key")
    if min(stream_window, connection_window) < 2:
        raise ValueError("receive windows must be at least 2 bytes")
    configuration = TunnelQuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        idle_timeout=MAX_IDLE_TIMEOUT,
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
        max_datagram_size=max_datagram_size,
        max_stream_data=stream_window,
        max_data=connection_window,
        # quic-go's congestion controller is Cubic (internal/congestion); aioquic defaults to Reno.
        congestion_control_algorithm="cubic",
        # cloudflared dials QUIC v1 (PROTOCOL.md §5.1); offering v2 only adds a code path.
        supported_versions=[QuicProtocolVersion.VERSION_1],
        post_quantum=post_quantum,
        max_incoming_streams=max_incoming_streams,
    )
    if is_client:
        configuration.server_name = server_name
        configuration.load_verify_locations(cafile=cafile, cadata=cadata)
    else:
        configuration.certificate = certificate
        configuration.certificate_chain = list(certificate_chain)
        configuration.private_key = private_key
    return configuration


# -- counting hooks (see adit.protocol.quic_counters) -------------------------------------------


class _FrameNotingBuilder(QuicPacketBuilder):
    """aioquic's packet builder, noting the type of every frame it starts.

    aioquic makes its builder inside ``datagrams_to_send`` (and ``_send_probing_frames``) by
    the name its connection module gives the class, with no argument to pick another: this
    subclass takes that name (the end of this module), and
    :meth:`TunnelQuicConnection._flush_builder` counts what it noted. Another
    ``QuicConnection`` in the process builds with it too; nobody reads its notes.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frame_types: list[int] = []

    def start_frame(
        self,
        frame_type: int,
        capacity: int = 1,
        handler: QuicDeliveryHandler | None = None,
        handler_args: Sequence[Any] = (),
    ) -> Buffer:
        buf = super().start_frame(frame_type, capacity, handler, handler_args)
        # After the call: a frame that does not fit raises before anything is written.
        self.frame_types.append(frame_type)
        return buf


class _LossCountingRecovery(QuicPacketRecovery):
    """aioquic's loss recovery, counting ack-eliciting packets declared lost by their
    trigger, as quic-go reports them (internal/ackhandler ``detectLostPackets``)."""

    def __init__(self, *, counters: QuicCounters, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._counters = counters

    def _on_packets_lost(
        self,
        *,
        congestion_event: bool = True,
        now: float,
        packets: Iterable[QuicSentPacket],
        persistent_congestion: bool = False,
        space: QuicPacketSpace,
    ) -> None:
        if congestion_event:
            # Only _detect_loss declares losses: a PTO's early retransmission is none (nor
            # in quic-go). quic-go tests the time threshold first, then the reordering one.
            packets = list(packets)
            rtt = (
                max(self._rtt_latest, self._rtt_smoothed)
                if self._rtt_initialized
                else self._rtt_initial
            )
            late = now - K_TIME_THRESHOLD * rtt
            lost = self._counters.lost
            for packet in packets:
                if packet.is_ack_eliciting:
                    sent = packet.sent_time if packet.sent_time is not None else now
                    lost[LOSS_TIME if sent <= late else LOSS_REORDERING] += 1
        super()._on_packets_lost(
            congestion_event=congestion_event,
            now=now,
            packets=packets,
            persistent_congestion=persistent_congestion,
            space=space,
        )


class _DuplicateCountingWindow(QuicPacketNumberWindow):
    """A packet space's received packet numbers; aioquic asks it (only) whether a packet is
    a duplicate, to drop it: counted as qlog's ``duplicate`` drop."""

    def __init__(self, counters: QuicCounters, packet_type: str) -> None:
        super().__init__()
        self._counters = counters
        self._packet_type = packet_type

    def __contains__(self, packet_number: int) -> bool:
        seen = super().__contains__(packet_number)
        if seen:
            counters = self._counters
            counters.drop(self._packet_type, "duplicate", counters.last_packet_size)
        return seen


_Decrypt = Callable[[bytes, int, int], tuple[bytes, bytes, int]]


def _drop_counting(decrypt: _Decrypt, counters: QuicCounters, packet_type: str) -> _Decrypt:
    """``decrypt`` (a crypto pair's ``decrypt_packet``), counting the packets it cannot
    decrypt as aioquic's qlog names the drop; aioquic then drops them."""

    def decrypt_packet(
        packet: bytes, encrypted_offset: int, expected_packet_number: int
    ) -> tuple[bytes, bytes, int]:
        counters.last_packet_size = size = len(packet)
        try:
            return decrypt(packet, encrypted_offset, expected_packet_number)
        except KeyUnavailableError:
            # quic-go buffers such a packet (keys to come); aioquic drops it.
            counters.drop(packet_type, "key_unavailable", size)
            raise
        except CryptoError:
            counters.drop(packet_type, "payload_decrypt_error", size)
            raise

    return decrypt_packet


def _counted_frames(handler: _FrameHandler, counts: list[int]) -> _FrameHandler:
    """A frame handler of aioquic's table that counts the frames it is given."""

    def handle(context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
        counts[frame_type] += 1
        handler(context, frame_type, buf)

    return handle


_FrameHandler = Callable[[QuicReceiveContext, int, Buffer], None]
#: qlog's packet type of each epoch's packets.
_PACKET_TYPES = {
    tls.Epoch.INITIAL: "initial",
    tls.Epoch.ZERO_RTT: "0RTT",
    tls.Epoch.HANDSHAKE: "handshake",
    tls.Epoch.ONE_RTT: "1RTT",
}
#: What the peer's ``max_udp_payload_size`` is when it does not send one (RFC 9000 §18.2).
_DEFAULT_MAX_UDP_PAYLOAD = 65527


def _milliseconds(seconds: float) -> int:
    """Go's ``Duration.Milliseconds``: truncated."""
    return int(seconds * 1000)


class TunnelQuicConnection(QuicConnection):
    """An aioquic ``QuicConnection`` for the tunnel: hybrid post-quantum TLS, flow control by
    consumption, configurable incoming streams, a handshake deadline. Same sans-IO API
    (``receive_datagram``/``datagrams_to_send``/``get_timer``/``handle_timer(now)``)."""

    #: The TLS context class the connection uses (a seam: tests offer cloudflared's exact groups).
    tls_context_class: ClassVar[type[TunnelTlsContext]] = TunnelTlsContext

    def __init__(
        self,
        *,
        configuration: TunnelQuicConfiguration,
        original_destination_connection_id: bytes | None = None,
        retry_source_connection_id: bytes | None = None,
        token_handler: QuicTokenHandler | None = None,
    ) -> None:
        if configuration.post_quantum is not PostQuantum.OFF and configuration.session_ticket:
            raise ValueError("session resumption is not supported with X25519MLKEM768")
        if min(configuration.max_stream_data, configuration.max_data) < 2:
            raise ValueError("receive windows must be at least 2 bytes")
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
            token_handler=token_handler,
        )
        self._post_quantum = configuration.post_quantum
        self._stream_window = configuration.max_stream_data
        self._connection_window = configuration.max_data
        self._consumed_total = 0
        self._stream_consumed: dict[int, int] = {}
        self._handshake_deadline: float | None = None
        #: The peer closed the connection (its CONNECTION_CLOSE came), rather than this side.
        self.closed_by_peer = False
        streams = configuration.max_incoming_streams
        if streams is None:
            streams = MAX_INCOMING_STREAMS if self._is_client else SERVER_MAX_INCOMING_STREAMS
        # Read into the transport parameters by _initialize, which runs after __init__.
        for limit in (self._local_max_streams_bidi, self._local_max_streams_uni):
            limit.value = limit.sent = streams
        #: What cloudflared's quic_client_* counters read (see quic_counters).
        self.counters = QuicCounters()
        self._peer_max_udp_payload: int | None = None
        self._counting = configuration.count_for_metrics
        if self._counting:
            self._install_counters(configuration)

    def _install_counters(self, configuration: TunnelQuicConfiguration) -> None:
        """Hook the counting into aioquic's recovery and frame handler table."""
        # aioquic's recovery as it was just made, with the loss counting subclass.
        self._loss = _LossCountingRecovery(
            counters=self.counters,
            congestion_control_algorithm=configuration.congestion_control_algorithm,
            initial_rtt=configuration.initial_rtt,
            max_datagram_size=self._max_datagram_size,
            peer_completed_address_validation=not self._is_client,
            quic_logger=self._quic_logger,
            send_probe=self._send_probe,
            logger=self._logger,
        )
        # Received frames are counted on their way to aioquic's handlers (its per-instance
        # table, name-mangled), PADDING left out as quic-go leaves it out.
        table: dict[int, tuple[_FrameHandler, frozenset[tls.Epoch]]] = vars(self)[
            "_QuicConnection__frame_handlers"
        ]
        received = self.counters.frames_received
        for frame_type, (handler, epochs) in table.items():
            if frame_type in FRAME_LABELS:
                table[frame_type] = (_counted_frames(handler, received), epochs)

    # TLS

    @property
    def key_exchange_group(self) -> int | None:
        """The TLS group the handshake used (0x11EC for X25519MLKEM768), once known."""
        context = getattr(self, "tls", None)  # set by _initialize
        return context.key_exchange_group if isinstance(context, TunnelTlsContext) else None

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self.tls = self.tls_context_class.adopt(self.tls, self._post_quantum)
        if self._counting:
            self._count_drops()

    def _count_drops(self) -> None:
        """Count drops on receipt where aioquic decides them: decryption, then the duplicate
        check (both made by ``_initialize`` just now, before any packet was decrypted)."""
        counters = self.counters
        # The Initial pairs (one per version; _cryptos holds the one in use), then the rest.
        pairs: list[tuple[CryptoPair, str]] = [
            (pair, "initial") for pair in self._cryptos_initial.values()
        ]
        pairs += [
            (self._cryptos[epoch], _PACKET_TYPES[epoch])
            for epoch in (tls.Epoch.ZERO_RTT, tls.Epoch.HANDSHAKE, tls.Epoch.ONE_RTT)
        ]
        for pair, packet_type in pairs:
            # An instance attribute: aioquic calls crypto.decrypt_packet(...) on the pair.
            pair.decrypt_packet = _drop_counting(  # type: ignore[method-assign,assignment]
                pair.decrypt_packet, counters, packet_type
            )
        for epoch, space in self._spaces.items():
            space.received_packets = _DuplicateCountingWindow(counters, _PACKET_TYPES[epoch])

    @property
    def events_pending(self) -> bool:
        """Events wait to be taken (building packets makes some: a NEW_CONNECTION_ID written
        is a ``ConnectionIdIssued``)."""
        return bool(self._events)

    def next_event(self) -> events.QuicEvent | None:
        """aioquic's next event; a strict client refused during the handshake is told why."""
        event = super().next_event()
        if (
            isinstance(event, events.ConnectionTerminated)
            and self._is_client
            and self._post_quantum is PostQuantum.STRICT
            and not self._handshake_complete
            and event.error_code == _HANDSHAKE_FAILURE
            and "X25519MLKEM768" not in event.reason_phrase
        ):
            # A server without the hybrid (aioquic's says "No supported key share") never names it.
            reason = (
                f"{event.reason_phrase} (post-quantum strict mode offered only "
                f"{group_name(X25519MLKEM768)})"
            )
            event = dataclasses.replace(event, reason_phrase=reason)
        return event

    @property
    def peer_packet_received(self) -> bool:
        """Whether a packet of the peer was decrypted yet. A server's first datagram may hold
        none: then it was no client's Initial, whatever its header said."""
        return self._state is not QuicConnectionState.FIRSTFLIGHT

    # handshake deadline

    def connect(self, addr: NetworkAddress, now: float) -> None:
        """Start the client handshake (aioquic's ``connect``) and its deadline."""
        self._handshake_deadline = now + HANDSHAKE_TIMEOUT
        super().connect(addr, now)

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        """aioquic's ``receive_datagram``; a server's handshake deadline starts with the first."""
        if self._handshake_deadline is None:
            self._handshake_deadline = now + HANDSHAKE_TIMEOUT
        self.counters.bytes_received += len(data)
        super().receive_datagram(data, addr, now)

    def get_timer(self) -> float | None:
        """aioquic's timer, or the handshake deadline if that comes first."""
        timer_at = super().get_timer()
        deadline = self._handshake_deadline
        if timer_at is None or deadline is None or self._handshake_complete:
            return timer_at
        return min(timer_at, deadline)

    def handle_timer(self, now: float) -> None:
        """aioquic's timer work; past the handshake deadline, close the connection."""
        deadline = self._handshake_deadline
        if deadline is not None and now >= deadline and not self._handshake_complete:
            self._handshake_deadline = None
            self.close(
                error_code=QuicErrorCode.NO_ERROR,
                frame_type=QuicFrameType.PADDING,
                reason_phrase=f"handshake not complete after {HANDSHAKE_TIMEOUT:g} s",
            )
        super().handle_timer(now)

    # metrics

    def _flush_builder(
        self,
        builder: QuicPacketBuilder,
        network_path: QuicNetworkPath,
        peer_cid: bytes,
        now: float,
    ) -> list[tuple[bytes, NetworkAddress]]:
        datagrams = super()._flush_builder(builder, network_path, peer_cid, now)
        counters = self.counters
        if self._counting and isinstance(builder, _FrameNotingBuilder):
            sent = counters.frames_sent
            for frame_type in builder.frame_types:
                sent[frame_type] += 1
        for data, _ in datagrams:
            counters.bytes_sent += len(data)
        return datagrams

    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        super()._parse_transport_parameters(data, from_session_ticket)
        if not from_session_ticket:
            # aioquic checks the peer's max_udp_payload_size and keeps nothing of it: read
            # again (once per connection) for quic_client_max_udp_payload.
            parameters = pull_quic_transport_parameters(Buffer(data=data))
            size = parameters.max_udp_payload_size
            self._peer_max_udp_payload = _DEFAULT_MAX_UDP_PAYLOAD if size is None else size

    def path_stats(self) -> PathStats:
        """The connection's RTTs, congestion window and state, MTU and the peer's largest
        UDP payload, as cloudflared's ``quic_client_*`` gauges show them."""
        loss = self._loss
        sampled = loss._rtt_initialized
        return PathStats(
            max_udp_payload=self._peer_max_udp_payload,
            min_rtt_ms=_milliseconds(loss._rtt_min) if sampled else None,
            latest_rtt_ms=_milliseconds(loss._rtt_latest) if sampled else None,
            smoothed_rtt_ms=_milliseconds(loss._rtt_smoothed) if sampled else None,
            mtu=self._max_datagram_size,
            congestion_window=loss.congestion_window,
            congestion_state=congestion_state(loss, self._max_datagram_size),
        )

    # flow control

    @property
    def consumed_total(self) -> int:
        """Bytes of stream data the application consumed (plus those credited on resets)."""
        return self._consumed_total

    def consumed(self, stream_id: int, length: int) -> bool:
        """The application is done with ``length`` more bytes received on ``stream_id``.

        Raises the stream's and the connection's receive limits to ``consumed + window`` once
        half a window has been consumed since they last moved (the MAX_STREAM_DATA / MAX_DATA
        frames go out with the next ``datagrams_to_send``); returns whether a limit moved (if
        not, there is nothing new to send). ``ValueError`` if that is more than was delivered.
        """
        if length < 0:
            raise ValueError("cannot consume a negative length")
        if self._consumed_total + length > self._local_max_data.used:
            raise ValueError("consumed more than the connection received")
        moved = False
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.receiver.is_finished:
            consumed = self._stream_consumed.get(stream_id, 0) + length
            if consumed > stream.receiver.starting_offset():
                raise ValueError(f"consumed more than stream {stream_id} delivered")
            self._stream_consumed[stream_id] = consumed
            limit = consumed + self._stream_window
            if limit - stream.max_stream_data_local >= self._stream_window // 2:
                stream.max_stream_data_local = limit
                moved = True
        else:
            # Finished receiving (no limit to raise any more) or already discarded.
            self._stream_consumed.pop(stream_id, None)
        moved = self._credit_connection(length) or moved
        if len(self._stream_consumed) > 2 * len(self._streams) + 64:
            # Streams abandoned without a last consumed() call: forget the discarded ones.
            for gone in self._stream_consumed.keys() - self._streams.keys():
                del self._stream_consumed[gone]
        return moved

    def _credit_connection(self, length: int) -> bool:
        self._consumed_total += length
        max_data = self._local_max_data
        limit = self._consumed_total + self._connection_window
        if limit - max_data.value >= self._connection_window // 2:
            max_data.value = limit
            return True
        return False

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> None:
        # Replaces aioquic's, which doubles the limit whenever the peer has sent half of it:
        # consumed() moves the limit; this only sends it (again, after a loss: aioquic's
        # _on_max_stream_data_delivery zeroes max_stream_data_local_sent).
        if stream.max_stream_data_local_sent == stream.max_stream_data_local:
            return
        assert stream.stream_id is not None  # only crypto streams have none
        buf = builder.start_frame(
            QuicFrameType.MAX_STREAM_DATA,
            capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
            handler=self._on_max_stream_data_delivery,
            handler_args=(stream,),
        )
        buf.push_uint_var(stream.stream_id)
        buf.push_uint_var(stream.max_stream_data_local)
        stream.max_stream_data_local_sent = stream.max_stream_data_local
        frames = builder.quic_logger_frames
        if self._quic_logger is not None and frames is not None:
            frames.append(
                self._quic_logger.encode_max_stream_data_frame(
                    maximum=stream.max_stream_data_local, stream_id=stream.stream_id
                )
            )

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        # Replaces aioquic's for the same reason as _write_stream_limits; MAX_STREAMS keeps
        # aioquic's batching: wait until the peer has fewer streams left to open than the
        # update would grant. Values stay within the 2^60 RFC 9000 §19.11 allows.
        for limit in (
            self._local_max_data,
            self._local_max_streams_bidi,
            self._local_max_streams_uni,
        ):
            if limit is not self._local_max_data:
                limit.value = min(limit.value, STREAM_COUNT_MAX)
                if limit.sent - limit.used >= limit.value - limit.sent:
                    continue
            if limit.value == limit.sent:
                continue
            buf = builder.start_frame(
                limit.frame_type,
                capacity=CONNECTION_LIMIT_FRAME_CAPACITY,
                handler=self._on_connection_limit_delivery,
                handler_args=(limit,),
            )
            buf.push_uint_var(limit.value)
            limit.sent = limit.value
            frames = builder.quic_logger_frames
            if self._quic_logger is not None and frames is not None:
                frames.append(
                    self._quic_logger.encode_connection_limit_frame(
                        frame_type=limit.frame_type, maximum=limit.value
                    )
                )

    def _handle_reset_stream_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        # RFC 9000 §4.5: a reset stream's final size counts against connection flow control,
        # but the bytes between what was delivered and the final size never reach the
        # application, which therefore cannot consume them: credit them here.
        start = buf.tell()
        stream_id = buf.pull_uint_var()
        buf.seek(start)
        stream = self._streams.get(stream_id)
        was_finished = stream is not None and stream.receiver.is_finished
        super()._handle_reset_stream_frame(context, frame_type, buf)
        stream = self._streams.get(stream_id)
        if stream is not None and stream.receiver.is_finished and not was_finished:
            self._credit_connection(
                stream.receiver.highest_offset - stream.receiver.starting_offset()
            )

    def _handle_connection_close_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        self.closed_by_peer = True
        super()._handle_connection_close_frame(context, frame_type, buf)

    # send side

    def stream_send_queued(self, stream_id: int) -> int:
        """Bytes written to ``stream_id`` that have not been sent yet (0 for an unknown or
        discarded stream): what a writer should keep bounded."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        return stream.sender._buffer_stop - stream.sender.highest_offset

    def stream_unacknowledged(self, stream_id: int) -> bool:
        """Whether the peer acknowledged none of the data sent on ``stream_id`` (nothing was
        sent, or all of it is unacknowledged); false for an unknown or discarded stream."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return False
        sender = stream.sender
        return sender._buffer_start == 0 and len(sender._acked) == 0 and not sender._acked_fin

    def stream_send_queue_below(self, stream_id: int, mark: int) -> bool:
        """Whether fewer than ``mark`` bytes wait unsent on ``stream_id`` (write more if so)."""
        return self.stream_send_queued(stream_id) < mark

    # datagrams

    @property
    def max_datagram_payload(self) -> int:
        """The largest DATAGRAM frame payload this side can send (0 before the peer allowed
        any).

        aioquic sends every packet at the configured ``max_datagram_size`` (no path MTU
        discovery) and queues DATAGRAM frames in order: one that cannot fit in an empty
        short-header packet would stay at the head of the queue for good and hold back every
        datagram after it. So the bound is what fits in one: the packet, less its header (one
        byte, the peer's connection id, a two-byte packet number), the AEAD tag and the frame's
        type and length, and no more than the peer's ``max_datagram_frame_size``.
        """
        remote = self._remote_max_datagram_frame_size
        if not remote:
            return 0
        room = self._max_datagram_size - (3 + len(self._peer_cid.cid)) - _AEAD_TAG_SIZE
        payload = room - 1 - size_uint_var(room)
        return max(0, min(payload, remote - 1 - size_uint_var(remote)))

    @property
    def datagrams_queued(self) -> int:
        """DATAGRAM frames waiting to be sent (congestion control holds them): what a sender
        of datagrams should keep bounded, dropping beyond, as UDP would."""
        return len(self._datagrams_pending)


def _check_aioquic() -> None:
    """Fail the import if aioquic's connection internals hooked here are not the expected ones."""
    problems: list[str] = []
    expected = {
        "_initialize": ["self", "peer_cid"],
        "_write_stream_limits": ["self", "builder", "space", "stream"],
        "_write_connection_limits": ["self", "builder", "space"],
        "_handle_reset_stream_frame": ["self", "context", "frame_type", "buf"],
        "_handle_connection_close_frame": ["self", "context", "frame_type", "buf"],
        "_on_max_stream_data_delivery": ["self", "delivery", "stream"],
        "_on_connection_limit_delivery": ["self", "delivery", "limit"],
        "_flush_builder": ["self", "builder", "network_path", "peer_cid", "now"],
        "_parse_transport_parameters": ["self", "data", "from_session_ticket"],
    }
    for name, parameters in expected.items():
        method = getattr(QuicConnection, name, None)
        if method is None or list(inspect.signature(method).parameters) != parameters:
            problems.append(f"QuicConnection.{name} is not ({', '.join(parameters)})")
    for cls, name, parameters in (
        (
            QuicPacketRecovery,
            "_on_packets_lost",
            ["self", "congestion_event", "now", "packets", "persistent_congestion", "space"],
        ),
        (
            QuicPacketRecovery,
            "__init__",
            [
                "self",
                "congestion_control_algorithm",
                "initial_rtt",
                "max_datagram_size",
                "peer_completed_address_validation",
                "send_probe",
                "logger",
                "quic_logger",
            ],
        ),
        (QuicPacketNumberWindow, "__contains__", ["self", "packet_number"]),
        (
            CryptoPair,
            "decrypt_packet",
            ["self", "packet", "encrypted_offset", "expected_packet_number"],
        ),
        (
            QuicPacketBuilder,
            "start_frame",
            ["self", "frame_type", "capacity", "handler", "handler_args"],
        ),
    ):
        method = getattr(cls, name, None)
        if method is None or list(inspect.signature(method).parameters) != parameters:
            problems.append(f"{cls.__name__}.{name} is not ({', '.join(parameters)})")
    builder = vars(aioquic_connection).get("QuicPacketBuilder")
    if not (isinstance(builder, type) and issubclass(builder, QuicPacketBuilder)):
        problems.append("aioquic.quic.connection has no QuicPacketBuilder to build packets")
    probe = QuicConnection(configuration=QuicConfiguration(is_client=True))
    for attribute in (
        "_QuicConnection__frame_handlers",
        "_loss",
        "_max_datagram_size",
        "_send_probe",
        "_logger",
        "_local_max_data",
        "_local_max_streams_bidi",
        "_local_max_streams_uni",
        "_streams",
        "_handshake_complete",
        "_is_client",
        "_state",
        "_quic_logger",
        "_max_datagram_size",
        "_remote_max_datagram_frame_size",
        "_datagrams_pending",
    ):
        if not hasattr(probe, attribute):
            problems.append(f"QuicConnection has no {attribute}")
    limit = probe._local_max_data
    if not all(hasattr(limit, name) for name in ("frame_type", "sent", "used", "value")):
        problems.append("Limit lacks frame_type, sent, used or value")
    stream = QuicStream(stream_id=0, max_stream_data_local=1)
    for owner, names in (
        (stream, ("max_stream_data_local", "max_stream_data_local_sent")),
        (stream.receiver, ("highest_offset", "is_finished", "starting_offset")),
        (
            stream.sender,
            ("highest_offset", "_buffer_stop", "_buffer_start", "_acked", "_acked_fin"),
        ),
    ):
        problems += [
            f"{type(owner).__name__} has no {name}" for name in names if not hasattr(owner, name)
        ]
    if problems:
        raise ImportError(
            "adit.protocol.quic_engine hooks aioquic 1.7 internals that this aioquic lacks: "
            + "; ".join(problems)
        )


_check_aioquic()
# aioquic's connection module builds its packets with the class it names QuicPacketBuilder
# (see _FrameNotingBuilder): from now on, one that notes the frames it starts.
aioquic_connection.QuicPacketBuilder = _FrameNotingBuilder  # type: ignore[attr-defined]
