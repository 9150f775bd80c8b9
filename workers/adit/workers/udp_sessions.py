"""UDP sessions to origins: cloudflared's WARP-to-Tunnel UDP, the connector's side (§6).

The edge asks for a session to ``ip:port``; the connector opens a connected UDP socket to it
and relays datagrams both ways as QUIC DATAGRAM frames, in the version it announced
(``support_datagram_v2``, or ``support_datagram_v3_2`` with ``--features``):

* **v2** (connection/quic_datagram_v2.go): ``registerUdpSession`` on an RPC stream the edge
  opened, answered once the socket is up (a failure is the answer's ``err``, not an RPC
  exception: tunnelrpc/pogs/session_manager.go); ``unregisterUdpSession`` closes a session. A
  session idle for its ``closeAfterIdleHint`` (0: 210 s), or whose origin socket failed, is
  closed here and the edge told so with ``unregisterUdpSession`` on a stream the connector
  opens, with cloudflared's message ("session idle for 3m30s").
* **v3** (quic/v3/muxer.go, manager.go, session.go): a registration datagram is answered by a
  registration response datagram: OK, ``UNABLE_TO_BIND_SOCKET``, ``TOO_MANY_ACTIVE_FLOWS``;
  a registration of a flow this connection already has is answered OK again (its answer was
  lost) and counts as activity. Flows end when idle (the registration's idle seconds, 0:
  210 s) or when their origin socket fails; the edge is not told (v3 has no message for it).
  Unlike cloudflared, which ignores it, a payload bundled with a registration is sent to the
  origin.

``--max-active-flows`` (0: no limit) caps the sessions of the whole worker, as cloudflared's
flow limiter caps its process (flow/limiter.go). Counters for ``cloudflared_udp_*`` are kept
in a :class:`UdpCounters` per worker.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import cast

from adit.config.duration import format_go_duration
from adit.ipc.telemetry import RpcCallCounters
from adit.logs import fields
from adit.protocol.datagrams import (
    MAX_UDP_PAYLOAD,
    DatagramVersion,
    PayloadDatagramV3,
    RegistrationDatagramV3,
    RegistrationStatus,
    UdpDatagramV2,
    decode_datagram_v2,
    decode_datagram_v3,
    encode_payload_datagram_v3,
    encode_registration_response_datagram_v3,
    encode_udp_datagram_v2,
)
from adit.protocol.errors import DatagramError
from adit.protocol.quic_rpc import (
    CallFailed,
    CloudflaredServerSession,
    RegisterUdpSessionCalled,
    SessionManagerClientSession,
    UnregisterUdpSessionCalled,
    UpdateConfigurationCalled,
)
from adit.quic_rpc_streams import RpcStreamFailed, call_on_new_stream, serve_stream
from adit.quicio import DatagramSend, QuicIO
from adit.tunnelio import StreamChannel
from adit.workers.flow_limit import FlowLimiter

__all__ = ["DEFAULT_IDLE_TIMEOUT", "FlowLimiter", "UdpCounters", "UdpSessions"]

log = logging.getLogger("adit.workers.udp")

#: A session's idle timeout when the edge names none (datagramsession/session.go,
#: quic/v3/session.go ``defaultCloseIdleAfter``).
DEFAULT_IDLE_TIMEOUT = 210.0
#: Bytes queued on an origin socket (the kernel did not take them) beyond which a datagram to
#: the origin is dropped (cloudflared: 512 datagrams queued per flow, quic/v3/session.go).
ORIGIN_WRITE_LIMIT = 512 * MAX_UDP_PAYLOAD
#: What cloudflared answers over RPC when v3 is on (connection/quic_datagram_v3.go).
V3_NO_RPC_REGISTRATION = "datagram v3 does not support RegisterUdpSession RPC"
#: cloudflared's ``handler`` and ``method`` labels (tunnelrpc/metrics) of the RPCs served.
_SESSION = "session"
_SERVER_METHODS: dict[type, tuple[str, str]] = {
    RegisterUdpSessionCalled: (_SESSION, "register_udp_session"),
    UnregisterUdpSessionCalled: (_SESSION, "unregister_udp_session"),
    UpdateConfigurationCalled: ("config", "update_configuration"),
}
V3_NO_RPC_UNREGISTRATION = "datagram v3 does not support UnregisterUdpSession RPC"
#: adit's answer to a configuration push over an RPC stream (as over HTTP/2).
LOCALLY_MANAGED = "this connector is locally managed"
#: cloudflared's ``flow.ErrTooManyActiveFlows`` wrapped as RegisterUdpSession wraps it.
RATE_LIMITED = "failed to start udp session due to rate limiting: too many active flows"

Spawn = Callable[[Coroutine[object, object, None]], object]


@dataclass
class UdpCounters:
    """The worker's UDP counters under cloudflared's metric names (CLOUDFLARED_FEATURES §5.3):
    v2 sessions in total, v3 flows and dropped datagrams by connection index."""

    active_sessions: int = 0
    total_sessions: int = 0
    active_flows: collections.Counter[int] = field(default_factory=collections.Counter)
    total_flows: collections.Counter[int] = field(default_factory=collections.Counter)
    failed_flows: collections.Counter[int] = field(default_factory=collections.Counter)
    #: ``(conn_index, reason)``: cloudflared's ``reason`` labels (write_full,
    #: write_flow_unknown, read_too_large, write_failed...).
    dropped: collections.Counter[tuple[int, str]] = field(default_factory=collections.Counter)
    #: v3 registrations answered again (``retry_flow_responses``), by connection index.
    retried: collections.Counter[int] = field(default_factory=collections.Counter)
    #: ``(conn_index, command)``: session RPCs a v3 connection does not serve.
    unsupported: collections.Counter[tuple[int, str]] = field(default_factory=collections.Counter)
    #: Sessions refused by the flow limit (``flow_client_registrations_rate_limited_total``).
    rate_limited: int = 0
    #: The edge's RPCs served here and ours to it (``cloudflared_rpc_{server,client}_*``).
    rpc_server: RpcCallCounters = field(default_factory=RpcCallCounters)
    rpc_client: RpcCallCounters = field(default_factory=RpcCallCounters)


class _Origin(asyncio.DatagramProtocol):
    """A session's connected UDP socket to its origin."""

    def __init__(self) -> None:
        self.session: _Session | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.session is not None:
            self.session.sessions._from_origin(self.session, data)

    def error_received(self, exc: Exception) -> None:
        # On a connected socket: the origin's ICMP "port unreachable" and the like. Go's read
        # fails the same way, and cloudflared ends the session with that error.
        if self.session is not None:
            self.session.sessions._origin_failed(self.session, exc)


class _Session:
    """One session (v2) or flow (v3) and its origin socket."""

    def __init__(
        self,
        sessions: UdpSessions,
        key: int,
        origin: _Origin,
        destination: str,
        idle_timeout: float,
    ) -> None:
        self.sessions = sessions
        self.key = key
        self.origin = origin
        self.destination = destination
        self.idle_timeout = idle_timeout
        self.last_active = sessions.io._loop.time()
        self.idle: asyncio.TimerHandle | None = None
        self.closed = False

    @property
    def session_id(self) -> uuid.UUID:
        """The session id (v2) or request id (v3), as cloudflared logs it."""
        return uuid.UUID(int=self.key)


class UdpSessions:
    """The UDP sessions of one QUIC edge connection (``io``)."""

    def __init__(
        self,
        io: QuicIO,
        version: DatagramVersion,
        conn_index: int,
        spawn: Spawn,
        *,
        limiter: FlowLimiter | None = None,
        counters: UdpCounters | None = None,
        on_update_configuration: Callable[[int, bytes], Awaitable[tuple[int, str | None]]]
        | None = None,
    ) -> None:
        self.io = io
        self._on_update_configuration = on_update_configuration
        self.version = version
        self.conn_index = conn_index
        self._spawn = spawn
        self.limiter = limiter or FlowLimiter()
        self.counters = counters or UdpCounters()
        self._sessions: dict[int, _Session] = {}
        # v3 registrations whose socket is being opened: their repeats are not answered twice.
        self._binding: set[int] = set()
        self._ended = False

    def __len__(self) -> int:
        return len(self._sessions)

    # -- the edge's RPC streams (v2) -----------------------------------------------------------

    def serve(self, channel: StreamChannel) -> None:
        """Serve ``CloudflaredServer`` on an RPC stream the edge opened, for cloudflared's
        5 s (tunnelrpc/quic/cloudflared_server.go ``handleRPC``)."""
        session = CloudflaredServerSession()

        async def handle(event: object) -> None:
            # Timed and counted as cloudflared's ObserveServerHandler does: a refusal in the
            # answer (too many flows, a v3 registration) is no failure, an exception is.
            method = _SERVER_METHODS.get(type(event))
            start = self.io._loop.time()
            failed = await answer(event)
            if method is not None:
                elapsed = self.io._loop.time() - start
                self.counters.rpc_server.record(*method, elapsed, failed=failed)

        async def answer(event: object) -> bool:
            if isinstance(event, RegisterUdpSessionCalled):
                error = await self._register_v2(event)
                session.answer_register_udp(event.answer_id, error)
            elif isinstance(event, UnregisterUdpSessionCalled):
                if self.version is DatagramVersion.V3:
                    self.counters.unsupported[(self.conn_index, "unregister_udp_session")] += 1
                    session.answer_exception(event.answer_id, V3_NO_RPC_UNREGISTRATION)
                    return True
                found = self._sessions.get(event.session_id.int)
                if found is not None:
                    self._close(found, event.message, tell_edge=False)
                session.answer_empty(event.answer_id)
            elif isinstance(event, UpdateConfigurationCalled):
                # The connection answers as over HTTP/2 (edge_connection.answer_remote_config);
                # without it, locally managed: -1 is cloudflared's "no remote version applied".
                if self._on_update_configuration is None:
                    session.answer_update_configuration(event.answer_id, -1, LOCALLY_MANAGED)
                    return False
                applied, refusal = await self._on_update_configuration(event.version, event.config)
                session.answer_update_configuration(event.answer_id, applied, refusal)
            return False

        self._spawn(serve_stream(channel, session, handle))

    async def _register_v2(self, call: RegisterUdpSessionCalled) -> str:
        """Open the session ``call`` asks for; the error to answer with ("" when it is up)."""
        if self.version is DatagramVersion.V3:
            self.counters.unsupported[(self.conn_index, "register_udp_session")] += 1
            return V3_NO_RPC_REGISTRATION
        destination = _address(call.dst_ip, call.dst_port)
        key = call.session_id.int
        old = self._sessions.get(key)
        if old is not None:
            # The edge reuses a session id it still has here: the new registration wins.
            self._close(old, "registered again", tell_edge=False)
        if not self.limiter.acquire():
            self.counters.rate_limited += 1
            log.warning(
                "Too many concurrent sessions being handled, rejecting udp proxy to %s",
                destination,
                extra=fields(connIndex=self.conn_index),
            )
            return RATE_LIMITED
        idle = call.close_after_idle if call.close_after_idle > 0 else DEFAULT_IDLE_TIMEOUT
        opened = await self._open(key, call.dst_ip, call.dst_port, idle)
        if isinstance(opened, str):
            self.limiter.release()
            return opened
        self.counters.total_sessions += 1
        self.counters.active_sessions += 1
        log.debug(
            "Registered session",
            extra=fields(sessionID=call.session_id.hex, dst=destination, connIndex=self.conn_index),
        )
        return ""

    async def _open(
        self, key: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, idle: float
    ) -> _Session | str:
        """A connected UDP socket to the origin as a new session, or why it could not be."""
        destination = _address(ip, port)
        loop = self.io._loop
        try:
            _, origin = await loop.create_datagram_endpoint(_Origin, sock=_connected(ip, port))
        except OSError as exc:
            log.error(
                "Failed to create udp proxy to %s",
                destination,
                extra=fields(connIndex=self.conn_index, error=str(exc)),
            )
            return f"unable to dial udp to origin {destination}: {exc.strerror or exc}"
        if self._ended or self.io.closed:
            if origin.transport is not None:
                origin.transport.close()
            return "the tunnel connection closed"
        session = _Session(self, key, origin, destination, idle)
        origin.session = session
        self._sessions[key] = session
        self._arm_idle(session)
        return session

    # -- datagrams -----------------------------------------------------------------------------

    def on_datagram(self, data: bytes) -> None:
        """A DATAGRAM frame from the edge: a payload for a session, or (v3) a registration."""
        try:
            message = (
                decode_datagram_v2(data)
                if self.version is DatagramVersion.V2
                else decode_datagram_v3(data)
            )
        except DatagramError as exc:
            log.debug("Dropped a malformed datagram: %s", exc)
            self._drop("write_failed")
            return
        if isinstance(message, UdpDatagramV2 | PayloadDatagramV3):
            key = (
                message.session_id.int if isinstance(message, UdpDatagramV2) else message.request_id
            )
            session = self._sessions.get(key)
            if session is None:
                self._drop("write_flow_unknown")
            else:
                self._to_origin(session, message.payload)
        elif isinstance(message, RegistrationDatagramV3):
            self._register_v3(message)
        else:
            # ICMP (no packet router here), tracing, or a registration response: cloudflared
            # expects none of these from the edge either.
            self._drop("write_failed")

    def _to_origin(self, session: _Session, payload: bytes) -> None:
        transport = session.origin.transport
        if transport is None or transport.is_closing():
            self._drop("write_failed")
            return
        # Both asyncio's and uvloop's datagram transports have it; typeshed's class lacks it.
        if cast(asyncio.WriteTransport, transport).get_write_buffer_size() > ORIGIN_WRITE_LIMIT:
            self._drop("write_full")
            return
        transport.sendto(payload)
        session.last_active = self.io._loop.time()

    def _from_origin(self, session: _Session, payload: bytes) -> None:
        if session.closed:
            return
        if len(payload) > MAX_UDP_PAYLOAD:
            self._drop("read_too_large")
            return
        if self.version is DatagramVersion.V2:
            data = encode_udp_datagram_v2(session.session_id, payload)
        else:
            data = encode_payload_datagram_v3(session.key, payload)
        outcome = self.io.send_datagram(data)
        if outcome is DatagramSend.SENT:
            session.last_active = self.io._loop.time()
        elif outcome is DatagramSend.TOO_LARGE:
            # Fits the protocol but not one QUIC packet of ours (see max_datagram_payload).
            self._drop("read_too_large")
        elif outcome is DatagramSend.FULL:
            self._drop("write_full")

    def _drop(self, reason: str) -> None:
        self.counters.dropped[(self.conn_index, reason)] += 1

    # -- v3 registrations ----------------------------------------------------------------------

    def _register_v3(self, registration: RegistrationDatagramV3) -> None:
        key = registration.request_id
        if key in self._binding:
            return  # the answer is on its way
        session = self._sessions.get(key)
        if session is not None:
            # Already here: the edge did not get our answer (quic/v3/muxer.go
            # handleSessionAlreadyRegistered): OK again, and the flow counts as active.
            session.last_active = self.io._loop.time()
            self._answer_v3(key, RegistrationStatus.OK)
            self.counters.retried[self.conn_index] += 1
            return
        if not self.limiter.acquire():
            self.counters.rate_limited += 1
            log.warning(
                "Too many concurrent sessions being handled, rejecting udp proxy",
                extra=fields(connIndex=self.conn_index),
            )
            self._answer_v3(key, RegistrationStatus.TOO_MANY_ACTIVE_FLOWS)
            return
        self._binding.add(key)
        self._spawn(self._bind_v3(registration))

    async def _bind_v3(self, registration: RegistrationDatagramV3) -> None:
        key = registration.request_id
        idle = float(registration.idle_seconds) or DEFAULT_IDLE_TIMEOUT
        try:
            opened = await self._open(key, registration.address, registration.port, idle)
        finally:
            self._binding.discard(key)
        if isinstance(opened, str):
            self.limiter.release()
            self._answer_v3(key, RegistrationStatus.UNABLE_TO_BIND_SOCKET)
            return
        self.counters.total_flows[self.conn_index] += 1
        self.counters.active_flows[self.conn_index] += 1
        self._answer_v3(key, RegistrationStatus.OK)
        if registration.payload:
            self._to_origin(opened, registration.payload)

    def _answer_v3(self, request_id: int, status: RegistrationStatus) -> None:
        self.io.send_datagram(encode_registration_response_datagram_v3(request_id, status))

    # -- the end of sessions -------------------------------------------------------------------

    def _arm_idle(self, session: _Session) -> None:
        loop = self.io._loop
        at = session.last_active + session.idle_timeout
        if loop.time() >= at:
            # cloudflared's words: datagramsession.SessionIdleErr, v3 SessionIdleErr.
            idle = format_go_duration(session.idle_timeout)
            noun = "session" if self.version is DatagramVersion.V2 else "flow was"
            self._close(session, f"{noun} idle for {idle}", tell_edge=True)
        else:
            session.idle = loop.call_at(at, self._arm_idle, session)

    def _origin_failed(self, session: _Session, exc: Exception) -> None:
        transport = session.origin.transport
        local = transport.get_extra_info("sockname") if transport is not None else None
        where = f"{_sockname(local)}->{session.destination}"
        reason = f"read udp {where}: {_go_error(exc)}"
        if self.version is DatagramVersion.V3:
            self.counters.failed_flows[self.conn_index] += 1
        log.debug(
            "Failed to send session payload from destination to transport",
            extra=fields(sessionID=session.session_id.hex, error=reason),
        )
        self._close(session, reason, tell_edge=True)

    def _close(self, session: _Session, reason: str, *, tell_edge: bool) -> None:
        if session.closed:
            return
        session.closed = True
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
        if session.idle is not None:
            session.idle.cancel()
        if session.origin.transport is not None:
            session.origin.transport.close()
        self.limiter.release()
        if self.version is DatagramVersion.V2:
            self.counters.active_sessions -= 1
        else:
            self.counters.active_flows[self.conn_index] -= 1
        log.debug(
            "Session terminated",
            extra=fields(sessionID=session.session_id.hex, reason=reason),
        )
        if tell_edge and self.version is DatagramVersion.V2 and not self._ended:
            self._spawn(self._unregister(session.session_id, reason))

    async def _unregister(self, session_id: uuid.UUID, message: str) -> None:
        """``unregisterUdpSession`` on the edge, on a stream of ours (connection/
        quic_datagram_v2.go ``closeUDPSession``)."""
        client = SessionManagerClientSession()
        question = client.unregister_udp_session(session_id, message)
        start = self.io._loop.time()
        try:
            answer = await call_on_new_stream(self.io, client, question)
        except RpcStreamFailed as exc:
            self._count_unregister(start, failed=True)
            log.debug("Failed to unregister udp session with edge: %s", exc)
            return
        self._count_unregister(start, failed=isinstance(answer, CallFailed))
        if isinstance(answer, CallFailed):
            log.error(
                "Failed to unregister udp session with edge",
                extra=fields(sessionID=session_id.hex, error=answer.reason),
            )

    def _count_unregister(self, start: float, *, failed: bool) -> None:
        elapsed = self.io._loop.time() - start
        self.counters.rpc_client.record(_SESSION, "unregister_udp_session", elapsed, failed=failed)

    def close_all(self) -> None:
        """The tunnel connection ended: every session closes, the edge is not told."""
        self._ended = True
        for session in list(self._sessions.values()):
            self._close(session, "the tunnel connection closed", tell_edge=False)


def _connected(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> socket.socket:
    """A UDP socket connected to ``ip:port`` (Go's ``net.Dial("udp", ...)``).

    Made here rather than by ``create_datagram_endpoint(remote_addr=...)``: uvloop leaves the
    socket of a refused connect() open (EACCES for a broadcast address, ENETUNREACH)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect((str(ip), port))  # UDP: no packet sent, the route and address are checked
    except OSError:
        sock.close()
        raise
    return sock


def _address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _sockname(sockname: object) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host, port = sockname[0], sockname[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "?"


def _go_error(exc: Exception) -> str:
    """An origin socket's error as Go's net package words it ("read: connection refused")."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"read: {exc.strerror.lower()}"
    return str(exc)
