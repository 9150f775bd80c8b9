"""Private-network flows: a client's WebSocket on the API listener, carried to an address
behind a tunnel. Cloudflare's users reach their private networks with the WARP client; adit
has none, so ``adit access tcp|udp --destination IP:PORT`` is the client, and these are its
endpoints (HTTPS, on the management API's listener, with the account's API token):

* ``GET /client/v4/accounts/{account}/private/tcp?destination=IP:PORT[&virtual_network_id=ID]``
* ``GET /client/v4/accounts/{account}/private/udp?destination=IP:PORT[&virtual_network_id=ID]``

(without ``/client/v4`` too, as every API path). A flow is admitted in this order, each
refusal a JSON answer in Cloudflare's envelope: the token (401) and the account it acts for
(403, so another account's routes are never even looked up); a WebSocket upgrade (426); the
destination, an IP address and a port, and the virtual network (400); the account's cap on
flows at once (429); the account's IP route for the address in that virtual network, its
default one when none is named (404: another account's routes are invisible); a live
connection of the route's tunnel (503), over QUIC for UDP, whose datagrams carry it (503
saying so). Access policies for private networks would be checked once the route is known,
before a connection is picked; there are none yet.

On the WebSocket, binary messages carry the flow:

* TCP: the bytes, both ways, in messages of at most 16 KiB towards the client (cloudflared
  keeps only 16 KiB of a message). The edge opens the stream to ``IP:PORT`` at once and
  upgrades without waiting for the connector: the client's first bytes go out with the
  connect. An empty message from the client ends its side (a TCP half-close: the destination
  reads its end and may still answer); a Close ends the flow at once. The edge's Close says
  how the flow ended: 1000 once the destination closed the connection (after every byte of
  it), 1014 when the connector could not reach the destination (with its reason), 1011 when
  the tunnel failed, 1001 when the flow idled too long or the edge shuts down.
* UDP: one message is one datagram, both ways (a datagram the tunnel cannot carry is dropped
  and counted, as UDP goes). The connector opens the flow before the upgrade, so its refusal
  is a 502 with its reason; its end of the flow (idle there too, or the tunnel connection
  gone) is a Close 1001 with the reason.

Every flow has an idle deadline (no byte either way for that long ends it) and counts
towards its account's cap; each is logged when it opens and ends, with the account, the
destination, the tunnel and the connection, never the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from random import getrandbits
from typing import Literal, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit

from adit.edge.api_json import error_envelope
from adit.edge.api_request import BAD_REQUEST, NOT_FOUND, ApiError, parse_uuid
from adit.edge.flow_limits import FlowLimits
from adit.edge.header_policy import is_websocket_upgrade
from adit.edge.http1 import Http1Connection, Request
from adit.edge.registry import ConnectionRegistry, LiveConnection
from adit.edge.store import Store
from adit.edge.tunnel_session import RequestStream, TunnelSession
from adit.edge.udp_flows import UdpFlow, UdpFlowClosed, UdpFlowError
from adit.protocol.cidr import InvalidDestination, IPAddress, parse_destination
from adit.protocol.errors import Http2TunnelError
from adit.protocol.headers import RequestType, ResponseMeta
from adit.protocol.hostnames import join_host_port
from adit.protocol.websocket import (
    CloseCode,
    Frame,
    Opcode,
    Role,
    WebSocketConnection,
    WebSocketError,
    accept_key,
)
from adit.tunnelio import StreamClosedError

__all__ = ["FlowLimits", "OpensUdp", "PrivateFlows", "flow_path"]

log = logging.getLogger("adit.edge.private")

FlowKind = Literal["tcp", "udp"]
#: Reads the account a request's token acts for (raises :class:`ApiError` 401).
Authenticate = Callable[[list[tuple[bytes, bytes]]], str]

_PREFIX = "/client/v4"
#: What the edge sends the client in one message: cloudflared's WebSocket reader keeps only
#: this much of a message, and a client built like it must get every byte.
MAX_MESSAGE = 16 * 1024
#: A client frame larger than this is refused (1009): adit's client sends 16 KiB at most.
MAX_TCP_FRAME = 1024 * 1024
#: The largest UDP payload there is (IPv4: 65,535 less the IP and UDP headers).
MAX_DATAGRAM = 65_507
#: A UDP flow's idle timeout travels to the connector in 16 bits of seconds.
MAX_UDP_IDLE = 65_535.0
#: After the edge's Close, how long the client has to answer it before the socket closes.
CLOSE_WAIT = 5.0
#: How much of a connector's reason for a 502 is read, and for how long.
_MAX_REASON = 2048
_REASON_WAIT = 2.0
#: An adit connector's reason starts with this line (see :mod:`adit.edge.public`).
_ORIGIN_ERROR_PREFIX = b"adit-origin-error:"
#: A close frame's reason is at most 123 bytes (RFC 6455 §5.5).
_MAX_CLOSE_REASON = 123
# Cloudflare's codes where the API has one (as adit.edge.api); the gateway and cap refusals are
# adit's own (Cloudflare documents none for them), numbered after their HTTP status.
_UNAVAILABLE = 10013
_METHOD_NOT_ALLOWED = 10405
_TOO_MANY = 10429
_BAD_GATEWAY = 10502
_JSON = "application/json"


@runtime_checkable
class OpensUdp(Protocol):
    """A tunnel connection that carries UDP flows (QUIC's: :class:`QuicTunnelSession`)."""

    async def open_udp(
        self, address: IPAddress, port: int, *, idle_timeout: float = ...
    ) -> UdpFlow: ...


class CloseWith(Exception):
    """End the flow with this WebSocket close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def flow_path(target: bytes) -> tuple[str, FlowKind] | None:
    """``(account, kind)`` when ``target`` is a private flow endpoint, else None (the rest of
    the API answers it)."""
    if b"/private/" not in target:
        return None  # the usual API request, at the cost of one search
    path = urlsplit(target.decode("latin-1")).path
    if path.startswith(_PREFIX + "/"):
        path = path[len(_PREFIX) :]
    segments = path.split("/")
    if len(segments) != 5 or segments[0] or segments[1] != "accounts" or segments[3] != "private":
        return None
    if segments[4] == "tcp":
        return segments[2], "tcp"
    if segments[4] == "udp":
        return segments[2], "udp"
    return None


@dataclass(frozen=True, slots=True)
class _Admitted:
    """A flow that passed every check, about to be carried."""

    kind: FlowKind
    account: str
    address: IPAddress
    port: int
    vnet_id: uuid.UUID | None
    tunnel_id: uuid.UUID
    live: LiveConnection
    key: str
    client: str
    ray: str

    @property
    def destination(self) -> str:
        return join_host_port(str(self.address), self.port)

    def describe(self) -> str:
        """The flow's log fields (no secret among them)."""
        return (
            f"flow={self.ray} proto={self.kind} account={self.account} "
            f"destination={self.destination} vnet={self.vnet_id or 'default'} "
            f"tunnelID={self.tunnel_id} connIndex={self.live.conn_index} "
            f"transport={self.live.protocol} client={self.client}"
        )


class _IdleWatch:
    """Ends a flow once no byte moved either way for ``timeout``: one timer per flow, re-armed
    only when it fires (a byte costs one clock read, not a timer)."""

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.last = self._loop.time()
        #: Done (its result says so) once the flow idled too long.
        self.expired: asyncio.Future[str] = self._loop.create_future()
        self._timer = self._loop.call_later(timeout, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        left = self.last + self.timeout - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._check)
        elif not self.expired.done():
            self.expired.set_result("idle")

    def cancel(self) -> None:
        self._timer.cancel()


class _Client:
    """The client's WebSocket over the upgraded connection: one writer at a time (the
    connection has room for one task waiting for its buffer to drain)."""

    def __init__(self, conn: Http1Connection, ws: WebSocketConnection) -> None:
        self.conn = conn
        self.ws = ws
        self._lock = asyncio.Lock()

    async def send(self, data: bytes) -> None:
        if data:
            async with self._lock:
                await self.conn.write_raw(data)

    async def close(self, code: int, reason: str) -> None:
        """Our Close (once); raises nothing: the client may be gone already."""
        with contextlib.suppress(ConnectionError, OSError):
            await self.send(self.ws.send_close(code, _close_reason(reason)))


class PrivateFlows:
    """The private flow endpoints of one edge process, and the flows they carry."""

    def __init__(
        self,
        store: Store,
        registry: ConnectionRegistry,
        authenticate: Authenticate,
        limits: FlowLimits | None = None,
        *,
        location: str = "adit",
    ) -> None:
        self._store = store
        self._registry = registry
        self._authenticate = authenticate
        self.limits = limits or FlowLimits()
        self._ray_suffix = f"-{location}"
        #: Open flows per account.
        self._active: dict[str, int] = {}
        #: Resolved when the edge shuts down: every flow closes (1001).
        self._going_away: asyncio.Future[str] | None = None

    def active(self, account: str) -> int:
        """Flows the account has open now."""
        return self._active.get(account, 0)

    def drain(self) -> None:
        """The edge shuts down: every flow ends now, its client told why."""
        if self._going_away is not None and not self._going_away.done():
            self._going_away.set_result("the edge is shutting down")

    async def serve(
        self, conn: Http1Connection, request: Request, named: str, kind: FlowKind
    ) -> bool:
        """Admit and carry one flow (or refuse it); the connection closes after either."""
        try:
            flow = self._admit(conn, request, named, kind)
        except ApiError as exc:
            await self._refuse(conn, exc)
            return False
        self._active[flow.account] = self._active.get(flow.account, 0) + 1
        try:
            if flow.kind == "udp":
                await self._carry_udp(conn, flow)
            else:
                await self._carry_tcp(conn, flow)
        finally:
            left = self._active[flow.account] - 1
            if left:
                self._active[flow.account] = left
            else:
                del self._active[flow.account]
        return False

    # -- admission ------------------------------------------------------------------------

    def _admit(
        self, conn: Http1Connection, request: Request, named: str, kind: FlowKind
    ) -> _Admitted:
        if request.method != b"GET":
            raise ApiError(405, _METHOD_NOT_ALLOWED, "Method not allowed")
        account = self._authenticate(request.headers)
        if named != account:
            raise ApiError(403, 10000, "Authentication error")
        key = _header(request.headers, b"sec-websocket-key")
        if not (request.upgrade and is_websocket_upgrade(request.headers)):
            raise _UpgradeRequired("a private flow is carried over a WebSocket: upgrade to it")
        if _header(request.headers, b"sec-websocket-version") != "13":
            raise _UpgradeRequired("only WebSocket version 13 is spoken here")
        if not key:
            raise ApiError(400, BAD_REQUEST, "Sec-WebSocket-Key is missing")
        query = {
            k: v[-1]
            for k, v in parse_qs(
                urlsplit(request.target.decode("latin-1")).query, keep_blank_values=True
            ).items()
        }
        text = query.get("destination", "")
        if not text:
            raise ApiError(400, BAD_REQUEST, "destination is required: IP:PORT")
        try:
            address, port = parse_destination(text)
        except InvalidDestination as exc:
            raise ApiError(400, BAD_REQUEST, str(exc)) from None
        vnet_text = query.get("virtual_network_id")
        vnet_id = parse_uuid(vnet_text, "virtual_network_id") if vnet_text else None
        if self.active(account) >= self.limits.max_per_account:
            raise ApiError(
                429,
                _TOO_MANY,
                f"the account has {self.limits.max_per_account} private flows open, its "
                "limit: close one first",
            )
        tunnel_id = self._store.private_route(account, address, vnet_id)
        if tunnel_id is None:
            raise ApiError(404, NOT_FOUND, self._no_route(account, address, vnet_id))
        # Access policies for private networks: none yet; their check goes here.
        if kind == "udp":
            live = self._registry.pick_over(tunnel_id, "quic")
            if live is None and self._registry.pick(tunnel_id) is not None:
                raise ApiError(
                    503,
                    _UNAVAILABLE,
                    f"tunnel {tunnel_id} has no QUIC connection to this edge: UDP flows need "
                    "QUIC's datagrams (run its connector with --protocol quic)",
                )
        else:
            live = self._registry.pick(tunnel_id)
        if live is None:
            raise ApiError(
                503,
                _UNAVAILABLE,
                f"tunnel {tunnel_id} is down: no connector of it is connected to this edge",
            )
        return _Admitted(
            kind=kind,
            account=account,
            address=address,
            port=port,
            vnet_id=vnet_id,
            tunnel_id=tunnel_id,
            live=live,
            key=key,
            client=conn.client_ip or "-",
            ray=f"{getrandbits(64):016x}{self._ray_suffix}",
        )

    def _no_route(self, account: str, address: IPAddress, vnet_id: uuid.UUID | None) -> str:
        if vnet_id is not None:
            # Another account's virtual network reads like one that does not exist.
            return f"no route for {address} in virtual network {vnet_id}"
        defaults = self._store.private.list_vnets(account, is_default=True, is_deleted=False)
        if not defaults:
            return f"no route for {address}: the account has no IP routes"
        default = defaults[0]
        return (
            f"no route for {address} in virtual network {default.name} ({default.id}), "
            "the account's default"
        )

    async def _refuse(self, conn: Http1Connection, exc: ApiError) -> None:
        extra: tuple[tuple[str, str], ...] = (("Cache-Control", "no-store"),)
        if isinstance(exc, _UpgradeRequired):
            extra += (("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"))
        extra += (("Connection", "close"),)
        with contextlib.suppress(ConnectionError, OSError):
            await conn.respond_simple(
                exc.status, error_envelope(exc.code, exc.message), content_type=_JSON, extra=extra
            )

    async def _switch(self, conn: Http1Connection, flow: _Admitted) -> bytes:
        """The 101; returns what the client sent after its request head."""
        await conn.send_informational(
            101,
            [
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", accept_key(flow.key)),
            ],
        )
        return conn.take_leftover()

    def _going_away_future(self) -> asyncio.Future[str]:
        if self._going_away is None:
            self._going_away = asyncio.get_running_loop().create_future()
        return self._going_away

    # -- TCP ------------------------------------------------------------------------------

    async def _carry_tcp(self, conn: Http1Connection, flow: _Admitted) -> None:
        session = flow.live.handle
        assert isinstance(session, TunnelSession)
        try:
            stream = session.open_request(
                "CONNECT",
                "",
                flow.destination,
                [],
                request_type=RequestType.TCP,
                end_stream=False,
            )
        except (StreamClosedError, Http2TunnelError) as exc:
            log.warning("private flow refused: no tunnel stream: %s %s", exc, flow.describe())
            await self._refuse(
                conn,
                ApiError(503, _UNAVAILABLE, f"the tunnel connection cannot open a stream: {exc}"),
            )
            return
        started = time.monotonic()
        counts = [0, 0]  # bytes client → destination, destination → client
        outcome = "the flow ended"
        log.info("private flow opened %s", flow.describe())
        try:
            leftover = await self._switch(conn, flow)
            ws = WebSocketConnection(Role.SERVER, max_frame=MAX_TCP_FRAME)
            client = _Client(conn, ws)
            watch = _IdleWatch(self.limits.tcp_idle_timeout)

            def closing(outcome: CloseWith) -> None:
                if outcome.code == CloseCode.NORMAL:
                    # The destination closed: our end too, so the connector sees both ends.
                    stream.channel.end()

            try:
                outcome = await self._run(
                    client,
                    self._tcp_up(client, stream, leftover, watch, counts),
                    self._tcp_down(client, stream, watch, counts, flow),
                    watch,
                    closing,
                )
            finally:
                watch.cancel()
        except (ConnectionError, OSError):
            outcome = "the client went away"
        finally:
            stream.session.finished(stream)
            log.info(
                "private flow closed %s up=%d down=%d duration=%.3fs: %s",
                flow.describe(),
                counts[0],
                counts[1],
                time.monotonic() - started,
                outcome,
            )

    async def _run(
        self,
        client: _Client,
        up: Coroutine[object, object, str],
        down: Coroutine[object, object, str],
        watch: _IdleWatch,
        closing: Callable[[CloseWith], None] | None = None,
    ) -> str:
        """Carry a flow (``up``: the client's messages on, ``down``: the destination's back)
        until either ends, it idles out or the edge shuts down; the client gets the Close
        that says how (``closing`` is told first). Returns how it ended, for the log."""
        up_task = asyncio.ensure_future(up)
        down_task = asyncio.ensure_future(down)
        going_away = self._going_away_future()
        try:
            await asyncio.wait(
                {up_task, down_task, watch.expired, going_away},
                return_when=asyncio.FIRST_COMPLETED,
            )
            outcome: str | CloseWith
            if up_task.done() and not up_task.cancelled() and up_task.exception() is None:
                outcome = up_task.result()  # the client closed or went: whatever down did
            elif down_task.done():
                outcome = _ending(down_task)
            elif up_task.done():
                outcome = _ending(up_task)
            elif watch.expired.done():
                outcome = CloseWith(CloseCode.GOING_AWAY, f"idle for {watch.timeout:g}s")
            else:
                outcome = CloseWith(CloseCode.GOING_AWAY, "the edge is shutting down")
            if isinstance(outcome, str):
                return outcome  # the client closed, or went away: nothing more to say
            if closing is not None:
                closing(outcome)
            await client.close(outcome.code, outcome.reason)
            if not up_task.done():
                # The client answers our Close (its reply is read by ``up``), or goes.
                await asyncio.wait({up_task}, timeout=CLOSE_WAIT)
            return f"{outcome.reason} (close {outcome.code})"
        finally:
            for task in (up_task, down_task):
                task.cancel()
            for task in (up_task, down_task):
                with contextlib.suppress(BaseException):
                    await task

    async def _from_client(
        self, client: _Client, leftover: bytes, take: Callable[[Frame], Awaitable[None]]
    ) -> str:
        """The client's data frames to ``take``, pings and its Close answered; returns when
        the client closed or went away."""
        ws = client.ws
        data = leftover
        while True:
            if data:
                try:
                    frames = ws.receive(data)
                except WebSocketError as exc:
                    await client.send(ws.data_to_send())  # our Close with the error's code
                    return f"the client broke the WebSocket protocol: {exc}"
                await client.send(ws.data_to_send())  # pongs, the reply to a Close
                for frame in frames:
                    opcode = frame.opcode
                    if opcode in (Opcode.BINARY, Opcode.CONTINUATION):
                        await take(frame)
                    elif opcode == Opcode.TEXT:
                        raise CloseWith(1003, "text messages are not carried: send binary ones")
                    elif opcode == Opcode.CLOSE:
                        return "the client closed the flow"
            data = await client.conn.read_raw()
            if not data:
                return "the client went away"

    def _tcp_up(
        self,
        client: _Client,
        stream: RequestStream,
        leftover: bytes,
        watch: _IdleWatch,
        counts: list[int],
    ) -> Coroutine[object, object, str]:
        """Client messages → the stream; an empty message is the client's half-close."""
        channel = stream.channel

        async def take(frame: Frame) -> None:
            if frame.payload:
                watch.touch()
                counts[0] += len(frame.payload)
                try:
                    await channel.write(frame.payload)
                except StreamClosedError as exc:
                    raise CloseWith(1011, f"the tunnel stream failed: {exc}") from None
            elif frame.opcode == Opcode.BINARY and frame.fin:
                channel.end()

        return self._from_client(client, leftover, take)

    async def _tcp_down(
        self,
        client: _Client,
        stream: RequestStream,
        watch: _IdleWatch,
        counts: list[int],
        flow: _Admitted,
    ) -> str:
        """The connector's answer, then the stream → client messages (16 KiB at most)."""
        try:
            async with asyncio.timeout(self.limits.connect_timeout):
                response = await stream.response()
        except TimeoutError:
            log.warning(
                "private flow: the connector did not answer in %gs %s",
                self.limits.connect_timeout,
                flow.describe(),
            )
            raise CloseWith(
                1014,
                f"the connector did not reach {flow.destination} "
                f"in {self.limits.connect_timeout:g}s",
            ) from None
        except StreamClosedError as exc:
            raise CloseWith(1011, f"the tunnel stream failed: {exc}") from None
        if response.meta is not ResponseMeta.ORIGIN or response.status not in (101, 200):
            if response.meta is ResponseMeta.FLOW_RATE_LIMITED:
                # cloudflared over HTTP/2 says it only in the meta header, with no body.
                reason = "too many active flows at the connector (--max-active-flows)"
            else:
                reason = await _connector_reason(stream, response.end_stream)
            log.warning(
                "private flow: the connector could not reach the destination %s: %s",
                flow.describe(),
                reason,
            )
            text = f"cannot reach {flow.destination}: {reason}"
            if len(text.encode()) > _MAX_CLOSE_REASON:
                # A close frame holds 123 bytes: the innermost of Go's "a: b: c" errors says
                # what happened ("connection refused"); the log has all of it.
                text = f"cannot reach {flow.destination}: {reason.rsplit(': ', 1)[-1]}"
            raise CloseWith(1014, text)
        log.debug("private flow connected %s", flow.describe())
        ws = client.ws
        channel = stream.channel
        while True:
            try:
                chunk = await channel.read()
            except StreamClosedError as exc:
                raise CloseWith(1011, f"the tunnel stream failed: {exc}") from None
            if not chunk:
                raise CloseWith(CloseCode.NORMAL, "the destination closed the connection")
            watch.touch()
            counts[1] += len(chunk)
            if ws.close_sent:
                return "the flow is closing"  # the client's Close was answered: no more data
            for start in range(0, len(chunk), MAX_MESSAGE):
                await client.send(ws.send_data(chunk[start : start + MAX_MESSAGE]))

    # -- UDP ------------------------------------------------------------------------------

    async def _carry_udp(self, conn: Http1Connection, flow: _Admitted) -> None:
        session = flow.live.handle
        assert isinstance(session, OpensUdp)  # admission picked a QUIC connection
        idle = min(self.limits.udp_idle_timeout, MAX_UDP_IDLE)
        try:
            async with asyncio.timeout(self.limits.connect_timeout):
                udp = await session.open_udp(flow.address, flow.port, idle_timeout=idle)
        except UdpFlowError as exc:
            log.warning("private flow refused: no UDP flow: %s %s", exc, flow.describe())
            await self._refuse(
                conn,
                ApiError(
                    502,
                    _BAD_GATEWAY,
                    f"the connector opened no UDP flow to {flow.destination}: {exc}",
                ),
            )
            return
        except TimeoutError:
            log.warning("private flow refused: the connector did not answer %s", flow.describe())
            await self._refuse(
                conn,
                ApiError(
                    504,
                    _BAD_GATEWAY,
                    f"the connector did not open a UDP flow to {flow.destination} "
                    f"in {self.limits.connect_timeout:g}s",
                ),
            )
            return
        started = time.monotonic()
        counts = [0, 0, 0]  # datagrams client → destination, destination → client, dropped
        outcome = "the flow ended"
        log.info("private flow opened %s udpSession=%s", flow.describe(), udp.session_id.hex)
        try:
            leftover = await self._switch(conn, flow)
            client = _Client(conn, WebSocketConnection(Role.SERVER, max_frame=MAX_DATAGRAM))
            watch = _IdleWatch(idle)
            try:
                outcome = await self._run(
                    client,
                    self._udp_up(client, udp, leftover, watch, counts),
                    self._udp_down(client, udp, watch, counts),
                    watch,
                )
            finally:
                watch.cancel()
        except (ConnectionError, OSError):
            outcome = "the client went away"
        finally:
            udp.close(outcome)
            log.info(
                "private flow closed %s datagrams up=%d down=%d dropped=%d duration=%.3fs: %s",
                flow.describe(),
                counts[0],
                counts[1],
                counts[2],
                time.monotonic() - started,
                outcome,
            )

    def _udp_up(
        self,
        client: _Client,
        udp: UdpFlow,
        leftover: bytes,
        watch: _IdleWatch,
        counts: list[int],
    ) -> Coroutine[object, object, str]:
        """Client messages → datagrams, one a message (a fragmented one put together)."""
        message = bytearray()

        async def take(frame: Frame) -> None:
            message.extend(frame.payload)
            if len(message) > MAX_DATAGRAM:
                raise CloseWith(CloseCode.TOO_BIG, f"a datagram is at most {MAX_DATAGRAM} bytes")
            if not frame.fin:
                return
            watch.touch()
            counts[0] += 1
            if not udp.send(bytes(message)):
                counts[2] += 1  # UDP's way: dropped (too large, or the connection's queue full)
            message.clear()

        return self._from_client(client, leftover, take)

    async def _udp_down(
        self, client: _Client, udp: UdpFlow, watch: _IdleWatch, counts: list[int]
    ) -> str:
        """Datagrams from the destination → one message each."""
        ws = client.ws
        while True:
            try:
                datagram = await udp.receive()
            except UdpFlowClosed as exc:
                # The connector ended it (idle there too), or the tunnel connection went.
                raise CloseWith(CloseCode.GOING_AWAY, f"the UDP flow ended: {exc}") from None
            watch.touch()
            counts[1] += 1
            if ws.close_sent:
                return "the flow is closing"
            await client.send(ws.send_data(datagram))


class _UpgradeRequired(ApiError):
    """426: the request must ask for a WebSocket."""

    def __init__(self, message: str) -> None:
        super().__init__(426, BAD_REQUEST, message)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return ""


def _ending(task: asyncio.Future[str]) -> str | CloseWith:
    """How a finished half of the flow ends it: a Close to send, or the reason it ended."""
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is None:
        return task.result()
    if isinstance(exc, CloseWith):
        return exc
    if isinstance(exc, ConnectionError | OSError):
        return "the client went away"
    if isinstance(exc, StreamClosedError):
        return CloseWith(1011, f"the tunnel stream failed: {exc}")
    log.error("private flow failed", exc_info=exc)
    return CloseWith(1011, "internal error")


async def _connector_reason(stream: RequestStream, ended: bool) -> str:
    """Why the connector could not reach the destination, from its 502's body: cloudflared
    over QUIC gives its dial error, an adit connector a reason line and the error; cloudflared
    over HTTP/2 gives none."""
    body = b""
    if not ended:
        with contextlib.suppress(StreamClosedError, TimeoutError):
            async with asyncio.timeout(_REASON_WAIT):
                while len(body) < _MAX_REASON and (chunk := await stream.channel.read()):
                    body += chunk
    if body.startswith(_ORIGIN_ERROR_PREFIX):
        first, _, rest = body[:_MAX_REASON].partition(b"\n")
        detail = rest.decode("utf-8", "replace").strip().splitlines()
        return detail[0].strip() if detail else first[len(_ORIGIN_ERROR_PREFIX) :].decode().strip()
    text = body[:_MAX_REASON].decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else "the connector gave no reason"


def _close_reason(reason: str) -> str:
    """``reason`` cut to what a close frame holds, on a character boundary."""
    data = reason.encode("utf-8")
    if len(data) <= _MAX_CLOSE_REASON:
        return reason
    return data[: _MAX_CLOSE_REASON - 3].decode("utf-8", "ignore") + "..."
