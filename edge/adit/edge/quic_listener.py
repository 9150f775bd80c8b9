"""The tunnel listener's QUIC half: one UDP socket, connections routed by connection id.

cloudflared dials QUIC first (``--protocol auto``, its default), on the same port as HTTP/2
(PROTOCOL.md §1.2, §5). Each QUIC connection becomes a :class:`QuicTunnelSession`: the same
tunnel session as over TLS/TCP (registration, registry, request streams), with the QUIC I/O
of :class:`~adit.quicio.QuicIO` under it.

Before a datagram costs a connection, it must be an Initial of full size (a client pads it to
1200 bytes: no amplification) and, while many handshakes are in flight or the address has
many, carry a Retry token proving its source address (RFC 9000 §8.1): a flood of Initials from
forged addresses then costs one stateless Retry packet each. Connections are capped in total
and per client address, as the TCP listeners are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import cast

from aioquic._buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from adit.edge.registry import ConnectionRegistry
from adit.edge.store import Store
from adit.edge.tunnel_session import EdgeIdentity, TunnelSession
from adit.protocol.liveness import LivenessSettings
from adit.protocol.quic_engine import (
    PostQuantum,
    TunnelQuicConfiguration,
    TunnelQuicConnection,
    quic_configuration,
)
from adit.protocol.quic_tunnel import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    EdgeQuicConnection,
    RpcStreamOpened,
)
from adit.quicio import QuicIO

__all__ = ["QuicListener", "QuicTunnelSession", "edge_quic_configuration"]

log = logging.getLogger("adit.edge.quic")

#: Handshakes in flight above which every new connection must prove its address (Retry).
RETRY_ABOVE = 16
#: Connections of one client address above which its new ones must prove the address.
RETRY_ABOVE_PER_ADDRESS = 4


def edge_quic_configuration(
    chain_pem: str, key_pem: str, post_quantum: PostQuantum = PostQuantum.PREFER
) -> TunnelQuicConfiguration:
    """The tunnel listener's QUIC settings (cloudflared's), presenting the tunnel certificate.

    Post-quantum ``PREFER``: cloudflared offers only the X25519MLKEM768 key share and aioquic
    cannot ask for another (no HelloRetryRequest), so the hybrid is what it gets."""
    chain = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))
    key = load_pem_private_key(key_pem.encode("ascii"), password=None)
    return quic_configuration(
        is_client=False,
        post_quantum=post_quantum,
        certificate=chain[0],
        certificate_chain=chain[1:],
        private_key=cast(CertificateIssuerPrivateKeyTypes, key),
    )


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

    def on_event(self, event: object) -> None:
        if isinstance(event, ConnectionIdIssued):
            self.listener.route(event.connection_id, self)
        elif isinstance(event, ConnectionIdRetired):
            self.listener.unroute(event.connection_id)
        elif isinstance(event, RpcStreamOpened):
            # UDP sessions (datagram v2) are not served yet: the stream is refused.
            self.conn.reset_stream(event.stream_id)
        else:
            super().on_event(event)  # type: ignore[arg-type]


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
        self._sessions: dict[QuicTunnelSession, tuple[str, list[bytes]]] = {}
        self._per_ip: dict[str, int] = {}
        self._retry = QuicRetryTokenHandler()
        self.transport: asyncio.DatagramTransport | None = None
        self._loop = asyncio.get_running_loop()

    # -- asyncio.DatagramProtocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (a connector's port closed): QUIC's own timers notice the loss.
        log.debug("QUIC listener: %s", exc)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        if data and not data[0] & 0x80:
            # A short header (every packet after the handshake): the connection id is the
            # bytes after the first, of the length we issue; no header to parse to route it.
            session = self._routes.get(data[1 : 1 + self.configuration.connection_id_length])
            if session is not None:
                session.datagram_received(data, addr)
                return
        buf = Buffer(data=data)
        try:
            header = pull_quic_header(buf, host_cid_length=self.configuration.connection_id_length)
        except ValueError:
            return  # not QUIC: nothing to answer (answering garbage amplifies it)
        session = self._routes.get(header.destination_cid)
        if session is not None:
            session.datagram_received(data, addr)
            return
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in self.configuration.supported_versions
        ):
            # RFC 9000 §6: tell the client which versions we speak (never answering a
            # Version Negotiation with another: two servers would ping-pong for ever).
            self._send(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=self.configuration.supported_versions,
                ),
                addr,
            )
            return
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            return  # a packet of a connection we do not have, or an unpadded Initial
        host = str(addr[0])
        if len(self._sessions) >= self._max or self._per_ip.get(host, 0) >= self._max_per_ip:
            log.warning("QUIC connection from %s refused: connection limit reached", host)
            return
        original_cid: bytes | None = None
        retry_cid: bytes | None = None
        now = self._loop.time()
        if header.token:
            try:
                original_cid = self._retry.validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=now,
                )
                retry_cid = header.destination_cid
            except ValueError:
                # Not a token of ours (expired, another address, another edge process): as if
                # there were none, so that an honest client is asked again, not left hanging.
                pass
        if original_cid is None and self._must_validate(host):
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
            return
        quic = TunnelQuicConnection(
            configuration=self.configuration,
            original_destination_connection_id=original_cid or header.destination_cid,
            retry_source_connection_id=retry_cid,
        )
        session = self._new_session(quic, self)
        self._sessions[session] = (host, [])
        self._per_ip[host] = self._per_ip.get(host, 0) + 1
        self.route(header.destination_cid, session)
        self.route(quic.host_cid, session)
        session.start_quic(self._send, addr, client=False)
        session.datagram_received(data, addr)
        session.begin(f"{host}:{addr[1]}")

    def _must_validate(self, host: str) -> bool:
        handshaking = sum(1 for s in self._sessions if s.live is None)
        return handshaking >= RETRY_ABOVE or self._per_ip.get(host, 0) >= RETRY_ABOVE_PER_ADDRESS

    def _send(self, data: bytes, addr: NetworkAddress) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(OSError):
                self.transport.sendto(data, addr)

    # -- routing ---------------------------------------------------------------------------

    def route(self, cid: bytes, session: QuicTunnelSession) -> None:
        """Datagrams for ``cid`` go to ``session`` (while it lives)."""
        if session.closed or session not in self._sessions:
            return
        self._routes[cid] = session
        self._sessions[session][1].append(cid)

    def unroute(self, cid: bytes) -> None:
        """``cid`` was retired."""
        self._routes.pop(cid, None)

    def forget(self, session: TunnelSession) -> None:
        """A session ended: its connection ids and its place in the caps are freed."""
        entry = self._sessions.pop(cast(QuicTunnelSession, session), None)
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

    @property
    def sessions(self) -> list[QuicTunnelSession]:
        """The live sessions."""
        return list(self._sessions)

    def stop_accepting(self) -> None:
        """New connections are refused (the drain): datagrams of live ones still flow."""
        self._max = 0

    def close(self) -> None:
        """Stop receiving (the sessions are closed by the server)."""
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        """For symmetry with asyncio.Server (the UDP transport closes at once)."""
