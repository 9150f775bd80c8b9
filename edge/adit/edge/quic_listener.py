"""The tunnel listener's QUIC half: one UDP socket, connections routed by connection id.

cloudflared dials QUIC first (``--protocol auto``, its default), on the same port as HTTP/2
(PROTOCOL.md §1.2, §5). Each QUIC connection becomes a :class:`QuicTunnelSession`: the same
tunnel session as over TLS/TCP (registration, registry, request streams), with the QUIC I/O
of :class:`~adit.quicio.QuicIO` under it, and what only QUIC carries: UDP flows to the
connector's network (:meth:`QuicTunnelSession.open_udp`, :mod:`adit.edge.udp_flows`).

Before a datagram costs a connection, it must be an Initial of full size (a client pads it to
1200 bytes: no amplification), that decrypts, and, while many handshakes are in flight or the
address has many, carry a Retry token proving its source address (RFC 9000 §8.1): a flood of
Initials from forged addresses then costs one stateless Retry packet each. A token that does
not prove it (another address, expired) gets CONNECTION_CLOSE INVALID_TOKEN, stateless too.
Connections are capped in total and per client address, as the TCP listeners are.

Nothing else is answered but a Version Negotiation to a full-size packet of another version
(RFC 9000 §5.2.2, §6.1), and a bug met while handling a datagram costs that datagram (or its
connection: :class:`~adit.quicio.QuicIO`), never the socket every connection shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from aioquic._buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    PACKET_LONG_HEADER,
    QuicErrorCode,
    QuicFrameType,
    QuicHeader,
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.retry import QuicRetryTokenHandler
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from adit.edge.registry import ConnectionRegistry
from adit.edge.store import Store
from adit.edge.tunnel_session import EdgeIdentity, TunnelSession
from adit.edge.udp_flows import (
    DEFAULT_IDLE_TIMEOUT,
    UdpFlow,
    UdpFlowError,
    UdpFlows,
    datagram_version,
)
from adit.protocol.liveness import LivenessSettings
from adit.protocol.quic_engine import (
    PostQuantum,
    TunnelQuicConfiguration,
    TunnelQuicConnection,
    quic_configuration,
)
from adit.protocol.quic_rpc import CloudflaredClientSession, ConfigurationUpdated
from adit.protocol.quic_tunnel import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    DatagramReceived,
    EdgeQuicConnection,
    RpcStreamOpened,
)
from adit.protocol.registration import (
    ConnectionDetails,
    ConnectionOptions,
    RegistrationError,
    TunnelAuth,
)
from adit.quic_rpc_streams import RpcStreamFailed, call_on_new_stream
from adit.quicio import QuicIO

__all__ = [
    "QuicListener",
    "QuicListenerStats",
    "QuicTunnelSession",
    "edge_quic_configuration",
    "long_header_invariants",
]

log = logging.getLogger("adit.edge.quic")

#: Handshakes in flight above which every new connection must prove its address (Retry).
RETRY_ABOVE = 16
#: Connections of one client address above which its new ones must prove the address.
RETRY_ABOVE_PER_ADDRESS = 4
#: Connections refused at the caps are logged at most once in this many seconds (with how
#: many there were): the datagrams of a flood must not become as many log lines.
REFUSALS_LOGGED_EVERY = 10.0


def long_header_invariants(data: bytes) -> tuple[int, bytes, bytes] | None:
    """(version, destination connection id, source connection id) of a long-header packet,
    read by the rules every QUIC version shares (RFC 8999 §5.1: connection ids of up to 255
    bytes); None when ``data`` is too short to hold them."""
    if len(data) < 7:
        return None
    version = int.from_bytes(data[1:5], "big")
    end = 6 + data[5]
    if len(data) <= end:
        return None
    destination_cid = data[6:end]
    source_end = end + 1 + data[end]
    if len(data) < source_end:
        return None
    return version, destination_cid, data[end + 1 : source_end]


def initial_close(header: QuicHeader, error_code: int, reason: str) -> bytes:
    """A server Initial packet with a CONNECTION_CLOSE for the connection ``header``'s Initial
    would open, without making that connection (RFC 9000 §10.2.3: before the handshake, the
    close goes in an Initial, under the keys of the client's destination connection id)."""
    crypto = CryptoPair()
    crypto.setup_initial(cid=header.destination_cid, is_client=False, version=header.version or 1)
    builder = QuicPacketBuilder(
        host_cid=os.urandom(8),
        peer_cid=header.source_cid,
        version=header.version or 1,
        is_client=False,
        max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    phrase = reason.encode("ascii")
    buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=16 + len(phrase))
    buf.push_uint_var(error_code)
    buf.push_uint_var(QuicFrameType.PADDING)
    buf.push_uint_var(len(phrase))
    buf.push_bytes(phrase)
    datagrams, _ = builder.flush()
    return datagrams[0]


def edge_quic_configuration(
    chain_pem: str, key_pem: str, post_quantum: PostQuantum = PostQuantum.PREFER
) -> TunnelQuicConfiguration:
    """The tunnel listener's QUIC settings (cloudflared's), presenting the tunnel certificate.

    Post-quantum ``PREFER``: cloudflared offers only the X25519MLKEM768 key share and aioquic
    cannot ask for another (no HelloRetryRequest), so the hybrid is what it gets."""
    chain = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))
    key = load_pem_private_key(key_pem.encode("ascii"), password=None)
    configuration = quic_configuration(
        is_client=False,
        post_quantum=post_quantum,
        certificate=chain[0],
        certificate_chain=chain[1:],
        private_key=cast(CertificateIssuerPrivateKeyTypes, key),
    )
    # The quic_client_* metrics are the connector's: no per-packet counting here.
    configuration.count_for_metrics = False
    return configuration


class QuicTunnelSession(QuicIO, TunnelSession):
    """A connector's QUIC connection, seen from the edge."""

    conn: EdgeQuicConnection
    protocol_name = "quic"

    def __init__(
        self,
        quic: TunnelQuicConnection,
        store: Store,
        registry: ConnectionRegistry,
        identity: EdgeIdentity,
        *,
        listener: QuicListener,
        on_closed: Callable[[TunnelSession], None] | None = None,
        liveness: LivenessSettings | None = None,
    ) -> None:
        TunnelSession.__init__(
            self,
            store,
            registry,
            identity,
            on_closed=on_closed,
            liveness=liveness,
            conn=EdgeQuicConnection(quic),  # type: ignore[arg-type]
        )
        self.listener = listener
        #: The UDP flows this connection carries (:mod:`adit.edge.udp_flows`).
        self.udp = UdpFlows(self)

    async def update_configuration(self, version: int, config: bytes) -> tuple[int, str | None]:
        """``ConfigurationManager.updateConfiguration`` on the connector (PROTOCOL.md §5.6): a
        remotely managed tunnel's configuration (JSON) pushed over an RPC stream of its own.
        Returns the version the connector applied and its error (None: applied); raises
        :class:`~adit.quic_rpc_streams.RpcStreamFailed` when there was no answer."""
        client = CloudflaredClientSession()
        question = client.update_configuration(version, config)
        answer = await call_on_new_stream(self, client, question)
        if isinstance(answer, ConfigurationUpdated):
            return answer.latest_applied_version, answer.error
        raise RpcStreamFailed(f"updateConfiguration failed: {getattr(answer, 'reason', answer)}")

    async def open_udp(
        self,
        address: ipaddress.IPv4Address | ipaddress.IPv6Address,
        port: int,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> UdpFlow:
        """A UDP flow to ``address:port`` in the connector's network, over the datagram
        version the connector announced; raises :class:`UdpFlowError` saying why not."""
        live = self.live
        if live is None or self.closed:
            raise UdpFlowError("the tunnel connection is not registered")
        if live.draining:
            raise UdpFlowError("the tunnel connection is draining (the connector unregistered)")
        version = datagram_version(live.features)
        if version is None:
            raise UdpFlowError(
                "the connector does not proxy UDP (it announced neither support_datagram_v2 "
                "nor support_datagram_v3_2)"
            )
        return await self.udp.open(version, address, port, idle_timeout=idle_timeout)

    def undelivered(self, stream_id: int) -> bool:
        # QUIC acknowledges stream data: a stream the connector acknowledged none of never
        # reached it (a connector killed, or gone silent, before it read the request).
        return self.conn.quic.stream_unacknowledged(stream_id)

    def _register(
        self, auth: TunnelAuth, tunnel_id: uuid.UUID, conn_index: int, options: ConnectionOptions
    ) -> ConnectionDetails | RegistrationError:
        result = super()._register(auth, tunnel_id, conn_index, options)
        if self.live is not None:
            self.listener.registered(self)
        return result

    def on_event(self, event: object) -> None:
        if isinstance(event, DatagramReceived):
            self.udp.on_datagram(event.data)
        elif isinstance(event, ConnectionIdIssued):
            self.listener.route(event.connection_id, self)
        elif isinstance(event, ConnectionIdRetired):
            self.listener.unroute(event.connection_id)
        elif isinstance(event, RpcStreamOpened):
            # The connector's SessionManager client: unregisterUdpSession (datagram v2). The
            # channel exists before the event's RPC bytes are dispatched to it.
            self.udp.serve(self.channel(event.stream_id))
        else:
            super().on_event(event)  # type: ignore[arg-type]

    def on_lost(self, exc: Exception | None) -> None:
        self.udp.close_all("the tunnel connection closed")
        super().on_lost(exc)


@dataclass(frozen=True)
class QuicListenerStats:
    """What a QUIC listener holds now, and what it did since it started."""

    #: Live connections (sessions), registered or not.
    sessions: int
    #: Sessions without a registration yet (in their handshake, or not registered).
    unregistered: int
    #: Connection ids routed to a session.
    routes: int
    #: Connection ids the listener keeps for its sessions (to unroute them at the end).
    tracked_ids: int
    #: Live sessions by client address.
    per_ip: dict[str, int]
    #: Sessions created since the listener started.
    created: int
    #: Retry packets sent since the listener started.
    retries: int


class QuicListener(asyncio.DatagramProtocol):
    """Routes the datagrams of one UDP socket to their QUIC tunnel sessions."""

    def __init__(
        self,
        configuration: TunnelQuicConfiguration,
        new_session: Callable[[TunnelQuicConnection, QuicListener], QuicTunnelSession],
        *,
        max_connections: int,
        max_connections_per_ip: int,
    ) -> None:
        self.configuration = configuration
        self._new_session = new_session
        self._max = max_connections
        self._max_per_ip = max_connections_per_ip
        self._routes: dict[bytes, QuicTunnelSession] = {}
        #: Each session's client address and the connection ids routed to it.
        self._sessions: dict[QuicTunnelSession, tuple[str, set[bytes]]] = {}
        self._per_ip: dict[str, int] = {}
        #: Sessions not registered yet: what the Retry threshold counts.
        self._unregistered: set[QuicTunnelSession] = set()
        self._retry = QuicRetryTokenHandler()
        self._created = 0
        self._retries = 0
        self._refused = 0
        self._refusals_logged_at: float | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self._loop = asyncio.get_running_loop()
        #: After a hand-over (:mod:`adit.edge.handover`): where datagrams of no connection of
        #: ours that open none go (the predecessor's connections), in the successor...
        self.stray: Callable[[bytes, tuple[str, int]], None] | None = None
        #: ...and the duplicate socket the predecessor sends on once it no longer reads.
        self._sender: socket.socket | None = None

    # -- asyncio.DatagramProtocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (a connector's port closed): QUIC's own timers notice the loss.
        log.debug("QUIC listener: %s", exc)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            self._received(data, addr)
        except Exception:
            # A bug costs the datagram, never the socket every connection shares (a session's
            # own errors close that session: QuicIO).
            log.exception("QUIC listener: a datagram from %s:%s could not be handled", *addr[:2])

    def _received(self, data: bytes, addr: NetworkAddress) -> None:
        if not data:
            return
        if data[0] & PACKET_LONG_HEADER:
            header = long_header_invariants(data)
            if header is None:
                return  # not even a long header's invariant fields: nothing to answer
            version, destination_cid, source_cid = header
        else:
            version, source_cid = None, b""
            destination_cid = data[1 : 1 + self.configuration.connection_id_length]
        session = self._routes.get(destination_cid)
        if session is not None:
            session.datagram_received(data, addr)
            return
        if version is None:
            # A short header for no connection of ours (a stateless reset is optional): the
            # predecessor's, right after a hand-over.
            if self.stray is not None:
                self.stray(data, (str(addr[0]), int(addr[1])))
            return
        if version == QuicProtocolVersion.NEGOTIATION:
            return  # never answered (RFC 9000 §6.1: two endpoints would ping-pong for ever)
        if version not in self.configuration.supported_versions:
            # RFC 9000 §5.2.2, §6.1: a packet that could open a connection in some version gets
            # the versions we speak; a smaller one MUST be dropped (an answer would amplify it).
            # Its connection ids are read by the version-independent rules (RFC 8999 §5.1):
            # another version's may be up to 255 bytes, and its other bits mean nothing here.
            if len(data) >= SMALLEST_MAX_DATAGRAM_SIZE:
                self._send(
                    encode_quic_version_negotiation(
                        source_cid=destination_cid,
                        destination_cid=source_cid,
                        supported_versions=self.configuration.supported_versions,
                    ),
                    addr,
                )
            return
        self._initial(data, addr)

    def _initial(self, data: bytes, addr: NetworkAddress) -> None:
        """A long-header packet of our version for no connection: a new one, if it is a
        client's Initial (of full size, from a proven address when needed, that decrypts)."""
        buf = Buffer(data=data)
        try:
            header = pull_quic_header(buf, host_cid_length=self.configuration.connection_id_length)
        except ValueError:
            return  # not QUIC: nothing to answer (answering garbage amplifies it)
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            if header.packet_type != QuicPacketType.INITIAL and self.stray is not None:
                self.stray(data, (str(addr[0]), int(addr[1])))
            return  # a packet of a connection we do not have, or an unpadded Initial
        host = str(addr[0])
        now = self._loop.time()
        if len(self._sessions) >= self._max or self._per_ip.get(host, 0) >= self._max_per_ip:
            self._refuse(host, now)
            return
        original_cid: bytes | None = None
        retry_cid: bytes | None = None
        if header.token:
            try:
                original_cid = self._retry.validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=now,
                )
            except ValueError as exc:
                # This edge gives out no token but in a Retry, and a client takes one Retry per
                # connection attempt (RFC 9000 §17.2.5.2): asking again would leave it hanging,
                # making the connection would fail its check of the Retry. Refused, and told
                # so at once (RFC 9000 §8.1.3: INVALID_TOKEN); no connection is made.
                log.debug("QUIC Initial from %s: bad token (%s)", host, exc)
                self._send(
                    initial_close(header, QuicErrorCode.INVALID_TOKEN, "invalid token"), addr
                )
                return
            retry_cid = header.destination_cid
        elif self._must_validate(host):
            source_cid = os.urandom(8)
            self._send(
                encode_quic_retry(
                    version=header.version or 1,
                    source_cid=source_cid,
                    destination_cid=header.source_cid,
                    original_destination_cid=header.destination_cid,
                    retry_token=self._retry.create_token(
                        address=addr,
                        original_destination_connection_id=header.destination_cid,
                        retry_source_connection_id=source_cid,
                        now=now,
                    ),
                ),
                addr,
            )
            self._retries += 1
            return
        quic = TunnelQuicConnection(
            configuration=self.configuration,
            original_destination_connection_id=original_cid or header.destination_cid,
            retry_source_connection_id=retry_cid,
        )
        quic.receive_datagram(data, addr, now)
        if not quic.peer_packet_received:
            # Nothing in it decrypted with the Initial keys of its own connection id: bytes
            # made to look like an Initial. No connection (nor anything else) is kept for them.
            return
        session = self._new_session(quic, self)
        self._created += 1
        self._sessions[session] = (host, set())
        self._unregistered.add(session)
        self._per_ip[host] = self._per_ip.get(host, 0) + 1
        self.route(header.destination_cid, session)
        self.route(quic.host_cid, session)
        try:
            session.start_quic(self._send, addr, client=False)
            session.begin(f"{host}:{addr[1]}")
        except Exception as exc:
            session._internal_error(exc)

    def _refuse(self, host: str, now: float) -> None:
        self._refused += 1
        logged = self._refusals_logged_at
        if logged is None or now - logged >= REFUSALS_LOGGED_EVERY:
            log.warning(
                "QUIC connections refused: connection limit reached (%d since the last report, "
                "the latest from %s)",
                self._refused,
                host,
            )
            self._refused = 0
            self._refusals_logged_at = now

    def _must_validate(self, host: str) -> bool:
        return (
            len(self._unregistered) >= RETRY_ABOVE
            or self._per_ip.get(host, 0) >= RETRY_ABOVE_PER_ADDRESS
        )

    def _send(self, data: bytes, addr: NetworkAddress) -> None:
        if self._sender is not None:
            with contextlib.suppress(OSError):
                self._sender.sendto(data, addr)
            return
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(OSError):
                self.transport.sendto(data, addr)

    # -- routing ---------------------------------------------------------------------------

    def route(self, cid: bytes, session: QuicTunnelSession) -> None:
        """Datagrams for ``cid`` go to ``session`` (while it lives)."""
        if session.closed or session not in self._sessions:
            return
        self._routes[cid] = session
        self._sessions[session][1].add(cid)

    def registered(self, session: QuicTunnelSession) -> None:
        """``session`` registered: it no longer counts as a handshake in flight."""
        self._unregistered.discard(session)

    def unroute(self, cid: bytes) -> None:
        """``cid`` was retired (its session forgets it too: a peer retiring ids for as long as
        the connection lives must not grow what the listener keeps)."""
        session = self._routes.pop(cid, None)
        entry = self._sessions.get(session) if session is not None else None
        if entry is not None:
            entry[1].discard(cid)

    def forget(self, session: TunnelSession) -> None:
        """A session ended: its connection ids and its place in the caps are freed."""
        quic_session = cast(QuicTunnelSession, session)
        self._unregistered.discard(quic_session)
        entry = self._sessions.pop(quic_session, None)
        if entry is None:
            return
        host, cids = entry
        for cid in cids:
            if self._routes.get(cid) is session:
                del self._routes[cid]
        left = self._per_ip.get(host, 1) - 1
        if left > 0:
            self._per_ip[host] = left
        else:
            self._per_ip.pop(host, None)

    def stats(self) -> QuicListenerStats:
        """A snapshot of the listener's state and counters."""
        return QuicListenerStats(
            sessions=len(self._sessions),
            unregistered=len(self._unregistered),
            routes=len(self._routes),
            tracked_ids=sum(len(cids) for _, cids in self._sessions.values()),
            per_ip=dict(self._per_ip),
            created=self._created,
            retries=self._retries,
        )

    @property
    def sessions(self) -> list[QuicTunnelSession]:
        """The live sessions."""
        return list(self._sessions)

    def stop_accepting(self) -> None:
        """New connections are refused (the drain): datagrams of live ones still flow."""
        self._max = 0

    def stop_reading(self) -> None:
        """Stop reading the socket (a successor reads it now) but keep sending on it: the
        live connections get their datagrams from :meth:`datagram_received`, relayed."""
        if self.transport is None or self._sender is not None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            self._sender = socket.socket(fileno=os.dup(sock.fileno()))
            self._sender.setblocking(False)
        self.stop_accepting()
        self.transport.close()

    def close(self) -> None:
        """Stop receiving (the sessions are closed by the server)."""
        if self.transport is not None:
            self.transport.close()
        if self._sender is not None:
            self._sender.close()

    async def wait_closed(self) -> None:
        """For symmetry with asyncio.Server (the UDP transport closes at once)."""
