"""UDP flows through a connector: cloudflared's WARP-to-Tunnel UDP, the edge's side (§6).

A flow is one UDP "connection" from a client to ``address:port`` in the connector's network;
its datagrams cross the tunnel connection as QUIC DATAGRAM frames. How the connector is asked
to open one depends on the datagram version it announced in ``ClientInfo.features``
(features/selector.go: cloudflared announces ``support_datagram_v3_2`` *beside*
``support_datagram_v2`` when v3 is on, so v3 is looked for first):

* **v2** (``support_datagram_v2``): the edge opens an RPC stream and calls the connector's
  ``registerUdpSession(sessionId, dstIp, dstPort, closeAfterIdleHint)``; datagrams are
  ``payload ‖ sessionId ‖ 0x00`` both ways. The session ends with ``unregisterUdpSession``
  from either side, each on a fresh RPC stream (connection/quic_datagram_v2.go: the connector
  calls it with "session idle for 3m30s" when the session idled out, or with the origin's
  error).
* **v3** (``support_datagram_v3_2``): registration is a datagram, answered by a registration
  response datagram (quic/v3/muxer.go); both can be lost, so the edge sends the registration
  again until answered (cloudflared answers a duplicate with OK again). Payloads are ``0x01 ‖
  requestId ‖ payload``. No RPC: each side forgets the flow when it idles out.

Incoming datagrams are demultiplexed by session (request) id: one of no open flow, or that
does not decode, is dropped and counted in :attr:`UdpFlows.dropped`, as is a datagram for a
flow whose receive queue is full (the newest is dropped, as a full socket buffer drops UDP).
A connection holds at most ``max_flows`` flows; they all close when it ends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import math
import uuid

from adit.protocol.datagrams import (
    MAX_UDP_PAYLOAD,
    DatagramVersion,
    PayloadDatagramV3,
    RegistrationResponseDatagramV3,
    RegistrationStatus,
    UdpDatagramV2,
    datagram_version,
    decode_datagram_v2,
    decode_datagram_v3,
    encode_payload_datagram_v3,
    encode_registration_datagram_v3,
    encode_udp_datagram_v2,
)
from adit.protocol.errors import DatagramError
from adit.protocol.quic_rpc import (
    CallFailed,
    CloudflaredClientSession,
    SessionManagerServerSession,
    UdpSessionRegistered,
    UnregisterUdpSessionCalled,
)
from adit.quic_rpc_streams import RpcStreamFailed, call_on_new_stream, serve_stream
from adit.quicio import DatagramSend, QuicIO
from adit.tunnelio import StreamChannel, release_waiter

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "MAX_FLOWS",
    "RECEIVE_QUEUE",
    "DatagramVersion",
    "UdpFlow",
    "UdpFlowClosed",
    "UdpFlowError",
    "UdpFlows",
    "datagram_version",
]

log = logging.getLogger("adit.edge.udp")

#: cloudflared's idle timeout of a session that names none (datagramsession/session.go).
DEFAULT_IDLE_TIMEOUT = 210.0
#: Flows one tunnel connection may carry at once.
MAX_FLOWS = 1024
#: Datagrams from the origin a flow keeps for its reader; beyond, new ones are dropped.
RECEIVE_QUEUE = 1024
#: How long a v3 registration may go unanswered, and how often it is sent meanwhile.
REGISTRATION_TIMEOUT = 5.0
REGISTRATION_RESEND = 1.0
#: A v2 flow idle this long past its idle timeout is closed here too: the connector should
#: have unregistered it by then (it says why, the edge would not know).
V2_IDLE_GRACE = 5.0
_U16_MAX = 0xFFFF


class UdpFlowError(Exception):
    """A flow could not be opened; the message is the reason, for the client."""


class UdpFlowClosed(Exception):
    """The flow is closed (the message says why): nothing more will be received."""


class UdpFlow:
    """One UDP flow through the connector: datagrams to the origin with :meth:`send`, from it
    with :meth:`receive`."""

    def __init__(
        self, flows: UdpFlows, session_id: uuid.UUID, destination: str, idle_timeout: float
    ) -> None:
        self.session_id = session_id
        #: ``ip:port`` of the origin (for logs).
        self.destination = destination
        self.idle_timeout = idle_timeout
        self._flows = flows
        self._queue: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._reason: str | None = None
        #: v3: the registration's answer, while it is awaited.
        self._registration: asyncio.Future[RegistrationResponseDatagramV3] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self.last_active = flows.io._loop.time()
        #: Datagrams sent, received, and dropped either way (see :meth:`send`).
        self.sent = 0
        self.received = 0
        self.dropped_sending = 0
        self.dropped_receiving = 0

    def send(self, payload: bytes) -> bool:
        """Send one datagram to the origin; False when it was dropped (too large for a
        datagram, flow closed, the connection's queue full), which is counted."""
        return self._flows._send(self, payload)

    async def receive(self) -> bytes:
        """The next datagram from the origin; what arrived before the flow closed is still
        returned, then :class:`UdpFlowClosed` is raised."""
        while not self._queue:
            if self._reason is not None:
                raise UdpFlowClosed(self._reason)
            self._waiter = waiter = self._flows.io._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def close(self, reason: str = "") -> None:
        """Close the flow (v2: the connector is told, with ``reason``); idempotent."""
        self._flows._close(self, reason or "closed by the edge", notify=True)

    @property
    def closed(self) -> bool:
        """Whether the flow is closed (by either side, or with its connection)."""
        return self._reason is not None

    @property
    def close_reason(self) -> str | None:
        """Why the flow closed (None while open)."""
        return self._reason

    def _deliver(self, payload: bytes) -> bool:
        if self._reason is not None or len(self._queue) >= RECEIVE_QUEUE:
            self.dropped_receiving += 1
            return False
        self._queue.append(payload)
        self.received += 1
        release_waiter(self._waiter)
        return True

    def _ended(self, reason: str) -> None:
        self._reason = reason
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        registration = self._registration
        if registration is not None and not registration.done():
            registration.set_exception(UdpFlowError(f"the flow closed: {reason}"))
            registration.exception()  # retrieved: the registering task raises it anyway
        release_waiter(self._waiter)


class UdpFlows:
    """The UDP flows of one tunnel connection (a :class:`~adit.quicio.QuicIO`)."""

    def __init__(self, io: QuicIO, *, max_flows: int = MAX_FLOWS) -> None:
        self.io = io
        self.max_flows = max_flows
        #: Set by the first flow opened: the version every datagram of the connection is.
        self.version: DatagramVersion | None = None
        # Flows by session id as an integer (v3's request id is the same 128 bits).
        self._flows: dict[int, UdpFlow] = {}
        #: Datagrams dropped, by reason.
        self.dropped: collections.Counter[str] = collections.Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ended: str | None = None

    def __len__(self) -> int:
        return len(self._flows)

    # -- opening ----------------------------------------------------------------------------

    async def open(
        self,
        version: DatagramVersion,
        address: ipaddress.IPv4Address | ipaddress.IPv6Address,
        port: int,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> UdpFlow:
        """Ask the connector for a flow to ``address:port``; raises :class:`UdpFlowError`."""
        if self._ended is not None:
            raise UdpFlowError(f"the tunnel connection is closed: {self._ended}")
        if not 0 < port <= _U16_MAX:
            raise UdpFlowError(f"invalid UDP port {port}")
        if not 0 < idle_timeout <= _U16_MAX:
            raise UdpFlowError(
                f"the idle timeout must be within 0 and {_U16_MAX}s, not {idle_timeout}"
            )
        if len(self._flows) >= self.max_flows:
            raise UdpFlowError(
                f"too many UDP flows on this tunnel connection (at most {self.max_flows})"
            )
        if self.version is None:
            self.version = version
        session_id = uuid.uuid4()
        destination = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
        flow = UdpFlow(self, session_id, destination, idle_timeout)
        # Listed before the connector is asked: its origin may answer before the answer does.
        self._flows[session_id.int] = flow
        try:
            if version is DatagramVersion.V2:
                await self._register_v2(flow, address, port)
            else:
                await self._register_v3(flow, address, port)
        except UdpFlowError as exc:
            self._close(flow, str(exc), notify=False)
            raise
        except BaseException:
            # Cancelled while the connector may already have the session: it is told.
            self._close(flow, "the flow's opening was cancelled", notify=True)
            raise
        self._arm_idle(flow)
        log.debug(
            "UDP flow opened sessionID=%s dst=%s datagramVersion=%s",
            session_id.hex,
            destination,
            version.name,
        )
        return flow

    async def _register_v2(
        self, flow: UdpFlow, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
    ) -> None:
        client = CloudflaredClientSession()
        question = client.register_udp_session(flow.session_id, address, port, flow.idle_timeout)
        try:
            answer = await call_on_new_stream(self.io, client, question)
        except RpcStreamFailed as exc:
            raise UdpFlowError(f"registerUdpSession failed: {exc}") from None
        if isinstance(answer, CallFailed):
            raise UdpFlowError(f"registerUdpSession failed: {answer.reason}")
        if isinstance(answer, UdpSessionRegistered) and answer.error:
            raise UdpFlowError(f"the connector refused the UDP session: {answer.error}")
        if flow.closed:  # unregistered (or its connection ended) while it was registering
            raise UdpFlowError(f"the flow closed: {flow.close_reason}")

    async def _register_v3(
        self, flow: UdpFlow, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
    ) -> None:
        # The idle timeout in whole seconds, rounded up: never 0, the connector's 210 s default.
        datagram = encode_registration_datagram_v3(
            flow.session_id.int,
            address,
            port,
            idle_seconds=min(_U16_MAX, math.ceil(flow.idle_timeout)),
        )
        loop = self.io._loop
        flow._registration = answer = loop.create_future()
        attempts = round(REGISTRATION_TIMEOUT / REGISTRATION_RESEND)
        try:
            # Sent again until answered: the registration and its answer are datagrams, either
            # may be lost, and cloudflared answers a registration it has with OK again.
            for _ in range(attempts):
                outcome = self.io.send_datagram(datagram)
                if outcome is DatagramSend.CLOSED:
                    raise UdpFlowError("the tunnel connection closed")
                with contextlib.suppress(TimeoutError):
                    response = await asyncio.wait_for(asyncio.shield(answer), REGISTRATION_RESEND)
                    break
            else:
                raise UdpFlowError(
                    f"the connector did not answer the flow registration within "
                    f"{REGISTRATION_TIMEOUT:g}s"
                )
        finally:
            flow._registration = None
        if response.status is not RegistrationStatus.OK:
            text = response.message or response.status.name.lower().replace("_", " ")
            raise UdpFlowError(f"the connector refused the UDP flow: {text}")

    # -- datagrams ---------------------------------------------------------------------------

    def _send(self, flow: UdpFlow, payload: bytes) -> bool:
        if flow.closed:
            return self._dropped(flow, "flow closed")
        if len(payload) > MAX_UDP_PAYLOAD:
            return self._dropped(flow, "too large")
        if self.version is DatagramVersion.V2:
            data = encode_udp_datagram_v2(flow.session_id, payload)
        else:
            data = encode_payload_datagram_v3(flow.session_id.int, payload)
        outcome = self.io.send_datagram(data)
        if outcome is not DatagramSend.SENT:
            return self._dropped(
                flow, "too large" if outcome is DatagramSend.TOO_LARGE else outcome.value
            )
        flow.sent += 1
        flow.last_active = self.io._loop.time()
        return True

    def _dropped(self, flow: UdpFlow, reason: str) -> bool:
        flow.dropped_sending += 1
        self.dropped[f"send: {reason}"] += 1
        return False

    def on_datagram(self, data: bytes) -> None:
        """A DATAGRAM frame from the connector: to its flow, or dropped and counted."""
        version = self.version
        if version is None:
            self.dropped["no flow opened"] += 1
            return
        try:
            message = (
                decode_datagram_v2(data)
                if version is DatagramVersion.V2
                else decode_datagram_v3(data)
            )
        except DatagramError:
            self.dropped["malformed"] += 1
            return
        if isinstance(message, UdpDatagramV2 | PayloadDatagramV3):
            key = (
                message.session_id.int if isinstance(message, UdpDatagramV2) else message.request_id
            )
            flow = self._flows.get(key)
            if flow is None:
                self.dropped["unknown flow"] += 1
            elif flow._deliver(message.payload):
                flow.last_active = self.io._loop.time()
            else:
                self.dropped["receive queue full" if not flow.closed else "flow closed"] += 1
        elif isinstance(message, RegistrationResponseDatagramV3):
            flow = self._flows.get(message.request_id)
            waiter = flow._registration if flow is not None else None
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
            # else: the answer to a registration sent again, or to a flow given up.
        else:
            # ICMP and tracing datagrams: the edge opens no such flows.
            self.dropped["unexpected type"] += 1

    # -- closing -----------------------------------------------------------------------------

    def _arm_idle(self, flow: UdpFlow) -> None:
        limit = flow.idle_timeout + (V2_IDLE_GRACE if self.version is DatagramVersion.V2 else 0)
        loop = self.io._loop
        at = flow.last_active + limit
        if loop.time() >= at:
            self._close(flow, f"idle for {limit:g}s", notify=True)
        else:
            flow._idle = loop.call_at(at, self._arm_idle, flow)

    def _close(self, flow: UdpFlow, reason: str, *, notify: bool) -> None:
        if flow.closed:
            return
        if self._flows.get(flow.session_id.int) is flow:
            del self._flows[flow.session_id.int]
        flow._ended(reason)
        log.debug("UDP flow closed sessionID=%s: %s", flow.session_id.hex, reason)
        if notify and self.version is DatagramVersion.V2 and self._ended is None:
            self._spawn(self._unregister(flow.session_id, reason))

    async def _unregister(self, session_id: uuid.UUID, reason: str) -> None:
        client = CloudflaredClientSession()
        question = client.unregister_udp_session(session_id, reason)
        try:
            answer = await call_on_new_stream(self.io, client, question)
        except RpcStreamFailed as exc:
            log.debug("unregisterUdpSession sessionID=%s failed: %s", session_id.hex, exc)
            return
        if isinstance(answer, CallFailed):
            log.debug("unregisterUdpSession sessionID=%s failed: %s", session_id.hex, answer.reason)

    async def serve_stream(self, channel: StreamChannel) -> None:
        """Serve the connector's ``SessionManager`` calls on an RPC stream it opened
        (``unregisterUdpSession`` when one of its sessions ended)."""
        session = SessionManagerServerSession()

        async def handle(event: object) -> None:
            if isinstance(event, UnregisterUdpSessionCalled):
                flow = self._flows.get(event.session_id.int)
                if flow is not None:
                    reason = event.message or "unregistered by the connector"
                    self._close(flow, reason, notify=False)
                session.answer_empty(event.answer_id)

        await serve_stream(channel, session, handle)

    def serve(self, channel: StreamChannel) -> None:
        """Start serving an RPC stream the connector opened (:meth:`serve_stream`)."""
        self._spawn(self.serve_stream(channel))

    def close_all(self, reason: str) -> None:
        """The tunnel connection ended: every flow closes with ``reason``."""
        self._ended = reason
        for flow in list(self._flows.values()):
            self._close(flow, reason, notify=False)

    def _spawn(self, coro: collections.abc.Coroutine[object, object, None]) -> None:
        task = self.io._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
