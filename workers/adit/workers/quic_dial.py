"""Dialling the edge over QUIC: one UDP endpoint and one QUIC connection per HA connection.

The connection is the worker's :class:`~adit.workers.edge_connection.EdgeConnection` (control
stream, registration, streams to origins) with the QUIC I/O of :class:`~adit.quicio.QuicIO`
under it, as cloudflared's ``quicConnection`` (PROTOCOL.md §5): SNI ``quic.cftunnel.com``, ALPN
``argotunnel``, datagrams on, the control stream opened by us as stream 0. The edge's RPC
streams and the DATAGRAM frames are its UDP sessions (:mod:`adit.workers.udp_sessions`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from aioquic.quic.connection import NetworkAddress

from adit.protocol.datagrams import DatagramVersion, datagram_version
from adit.protocol.quic_engine import (
    PostQuantum,
    TunnelQuicConfiguration,
    TunnelQuicConnection,
    quic_configuration,
)
from adit.protocol.quic_tunnel import ConnectorQuicConnection, DatagramReceived, RpcStreamOpened
from adit.quicio import NO_ANSWER, QuicIO
from adit.workers.edge_connection import EdgeConnection, Registration, StreamServer
from adit.workers.udp_sessions import FlowLimiter, UdpCounters, UdpSessions

if TYPE_CHECKING:
    from adit.config.ingress import Ingress

__all__ = ["QuicDialError", "QuicEdgeConnection", "connector_quic_configuration", "dial_quic"]


def connector_quic_configuration(
    ca_pem: str, *, post_quantum: bool = False
) -> TunnelQuicConfiguration:
    """cloudflared's QUIC client settings, trusting ``ca_pem`` only (its ``--cacert``; the
    system's roots without one). ``post_quantum``: X25519MLKEM768 only (cloudflared's
    ``--post-quantum``, strict); else offered first, with X25519 beside it."""
    return quic_configuration(
        is_client=True,
        post_quantum=PostQuantum.STRICT if post_quantum else PostQuantum.PREFER,
        cadata=ca_pem.encode("ascii") if ca_pem else None,
    )


class QuicDialError(ConnectionError):
    """The QUIC handshake did not complete; ``timed_out`` when the edge never answered
    (cloudflared's sign that UDP is blocked on the way: its reason to fall back)."""

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class QuicEdgeConnection(QuicIO, EdgeConnection):
    """The connector's side of one QUIC tunnel connection."""

    conn: ConnectorQuicConnection

    def __init__(
        self,
        quic: TunnelQuicConnection,
        registration: Registration,
        proxy: StreamServer,
        ingress: Callable[[], Ingress],
        *,
        flow_limiter: FlowLimiter | None = None,
        udp_counters: UdpCounters | None = None,
    ) -> None:
        EdgeConnection.__init__(
            self,
            registration,
            proxy,
            ingress,
            conn=ConnectorQuicConnection(quic),  # type: ignore[arg-type]
        )
        self.udp: asyncio.DatagramTransport | None = None
        #: The UDP sessions to origins, in the datagram version the features announce (a
        #: connector announcing neither gets none asked of it, but would serve v2).
        version = datagram_version(registration.options.client.features) or DatagramVersion.V2
        self.sessions = UdpSessions(
            self,
            version,
            registration.conn_index,
            self.spawn,
            limiter=flow_limiter,
            counters=udp_counters,
            on_update_configuration=self.answer_remote_config,
        )

    protocol_name = "quic"

    def local_sockname(self) -> object:
        return self.udp.get_extra_info("sockname") if self.udp is not None else None

    def on_event(self, event: object) -> None:
        if isinstance(event, DatagramReceived):
            self.sessions.on_datagram(event.data)
        elif isinstance(event, RpcStreamOpened):
            # UDP session registrations and configuration pushes (cloudflared's
            # CloudflaredServer). The channel exists before the stream's RPC bytes are
            # dispatched to it.
            self.sessions.serve(self.channel(event.stream_id))
        else:
            super().on_event(event)  # type: ignore[arg-type]

    def on_failure(self, reason: str, error_code: int) -> None:
        if not self.handshake.done():
            # A handshake that heard nothing: the dial's failure, which the connect loop
            # reports (a "Tunnel connection failed" warning would say it twice).
            self.failure = reason
            return
        super().on_failure(reason, error_code)

    def on_lost(self, exc: Exception | None) -> None:
        self.sessions.close_all()
        super().on_lost(exc)
        if self.udp is not None:
            self.udp.close()
            self.udp = None

    def abandon(self) -> None:
        """The dial failed: nobody waits for this connection's registration."""
        registered = self.registered
        if registered.done():
            registered.exception()  # read: no "exception was never retrieved" at collection
        else:
            registered.cancel()


class _Endpoint(asyncio.DatagramProtocol):
    """The UDP socket of one QUIC connection."""

    def __init__(self) -> None:
        self.connection: QuicEdgeConnection | None = None

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        if self.connection is not None:
            self.connection.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # An ICMP "port unreachable" for a datagram we sent: QUIC's timers decide; nothing
        # here ends the connection.
        pass


async def dial_quic(
    host: str,
    port: int,
    configuration: TunnelQuicConfiguration,
    make: Callable[[TunnelQuicConnection], QuicEdgeConnection],
    *,
    handshake_timeout: float,
) -> QuicEdgeConnection:
    """A QUIC connection to the edge with its handshake done (the registration is the
    caller's to await). Raises :class:`QuicDialError` or OSError."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=2)  # SOCK_DGRAM
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, _, _, _, address = infos[0]
    transport, endpoint = await loop.create_datagram_endpoint(
        _Endpoint, remote_addr=(str(address[0]), int(address[1])), family=family
    )
    peer = cast(NetworkAddress, transport.get_extra_info("peername"))
    quic = TunnelQuicConnection(configuration=configuration)
    connection = make(quic)
    connection.udp = transport
    endpoint.connection = connection

    def send(data: bytes, _addr: NetworkAddress) -> None:
        if not transport.is_closing():
            with contextlib.suppress(OSError):
                transport.sendto(data)

    connection.start_quic(send, peer, client=True)
    try:
        await asyncio.wait_for(asyncio.shield(connection.handshake), handshake_timeout)
    except TimeoutError:
        connection.abandon()
        connection.close("QUIC handshake timed out")
        transport.close()
        raise QuicDialError(
            f"QUIC handshake with {host}:{port} timed out: no recent network activity",
            timed_out=True,
        ) from None
    except ConnectionError as exc:
        connection.abandon()
        transport.close()
        # Silence ends a handshake two ways, both quic-go's handshake idle timeout: aioquic's
        # idle timer, or the liveness rule's (the same 5 s, which usually fires first).
        silent = "Idle timeout" in str(exc) or NO_ANSWER in str(exc)
        raise QuicDialError(str(exc), timed_out=silent) from None
    return connection
