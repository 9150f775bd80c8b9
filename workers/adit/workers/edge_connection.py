"""One connection from a worker to the edge: TLS, HTTP/2 server role, registration, streams.

The edge opens the control stream; we answer it and pipeline ``registerConnection`` on the
bootstrap capability, exactly as cloudflared (PROTOCOL.md §3.4, §4.3). Every other stream is
an eyeball request handed to the :class:`~adit.workers.proxy.OriginProxy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec

from adit.config.origin import OriginOptions
from adit.logs import fields
from adit.protocol.config_update import ConfigUpdateError, decode_update, encode_answer
from adit.protocol.errors import Http2TunnelError, ProtocolError
from adit.protocol.headers import RequestType, ResponseMeta
from adit.protocol.hostnames import host_of_authority
from adit.protocol.http2 import ConnectorTunnelConnection, Event, RequestReceived, StreamReset
from adit.protocol.liveness import LivenessSettings
from adit.protocol.registration import (
    ConnectionDetails,
    ConnectionOptions,
    RegistrationError,
    RegistrationResult,
    TunnelAuth,
)
from adit.protocol.request_target import decoded_path

# Not adit.protocol.rpc: that would import the edge's server session too.
from adit.protocol.rpc_client import RegistrationClientSession
from adit.protocol.rpc_events import (
    CallFailed,
    CallReturned,
    RegistrationFailed,
    RegistrationReturned,
    RpcAborted,
)
from adit.tunnelio import StreamChannel, StreamClosedError, TunnelIO, release_waiter
from adit.workers.stream import IncomingRequest, ResponseSource, StreamKind, TunnelStream

if TYPE_CHECKING:
    from adit.config.ingress import Ingress
    from adit.config.origin import Rule
    from adit.workers.quick_get import QuickExchange

log = logging.getLogger("adit.workers.edge")

#: cloudflared's --rpc-timeout.
RPC_TIMEOUT = 5.0
#: How the connector watches the edge (the same rule the edge applies to us): a frozen or cut
#: off edge is noticed within the idle timeout and the connection is dialled again.
LIVENESS = LivenessSettings()


#: The host the edge sends ``tail``'s management requests under (cloudflared's
#: ``--management-hostname`` default; the worker's proxy says which name it serves).
MANAGEMENT_HOSTNAME = "management.argotunnel.com"


#: Who answered, in the ``cf-cloudflared-response-meta`` header's words.
_RESPONSE_META: Final = {
    ResponseSource.ORIGIN: ResponseMeta.ORIGIN,
    ResponseSource.CONNECTOR: ResponseMeta.CONNECTOR,
    ResponseSource.FLOW_RATE_LIMITED: ResponseMeta.FLOW_RATE_LIMITED,
}


def _default_management_host(host: str) -> bool:
    """For a proxy without ``is_management_host`` (tests' stand-ins): the default name."""
    return host.lower() == MANAGEMENT_HOSTNAME


#: cloudflared's ``warp-routing`` defaults for private-network flows: 5 s to connect, TCP
#: keep-alive every 30 s (CLOUDFLARED_FEATURES.md §4.13).
WARP_ROUTING = OriginOptions(connect_timeout=5.0, tcp_keep_alive=30.0)


class StreamServer(Protocol):
    """What serves the eyeball streams (:class:`~adit.workers.proxy.OriginProxy`).

    A protocol rather than the class, so that dialling the edge does not import the origin
    side (h11, h2, cryptography for hello_world...): the worker loads it meanwhile.
    """

    def serve(self, stream: TunnelStream, rule: Rule) -> Coroutine[Any, Any, None]: ...

    def serve_private(
        self, stream: TunnelStream, options: OriginOptions
    ) -> Coroutine[Any, Any, None]: ...


#: Answers a configuration push: (version, config JSON) → (version in force, error or None).
RemoteConfigHandler = Callable[[int, bytes], Awaitable[tuple[int, str | None]]]
#: A push body is a config.yml's worth of JSON; the edge caps the config at 256 KiB.
MAX_PUSH = 1 << 20
#: What a connector with local ingress answers a push with (HTTP/2 and QUIC alike).
LOCALLY_MANAGED = "this connector is locally managed"


class Registration(msgspec.Struct, frozen=True):
    """What a connection registers with (a Struct: cheaper to define than a dataclass)."""

    auth: TunnelAuth
    tunnel_id: uuid.UUID
    conn_index: int
    options: ConnectionOptions
    local_config: bytes = b""


class ConnectorStream:
    """A :class:`~adit.workers.stream.TunnelStream` over one HTTP/2 stream."""

    __slots__ = ("_started", "channel", "connection", "request")

    def __init__(
        self, connection: EdgeConnection, channel: StreamChannel, request: IncomingRequest
    ) -> None:
        self.connection = connection
        self.channel = channel
        self.request = request
        self._started = False

    @property
    def response_started(self) -> bool:
        return self._started

    @property
    def stream_id(self) -> int:
        return self.channel.stream_id

    # read() and write() hand out the channel's own coroutines: no wrapper frame per call (on
    # the data path) nor per idle stream (a WebSocket waits in read() for its whole life).
    def read(self) -> Coroutine[Any, Any, bytes]:
        return self.channel.read()

    async def send_response(
        self,
        status: int,
        headers: list[tuple[str, str]],
        *,
        source: ResponseSource = ResponseSource.ORIGIN,
        end_stream: bool = False,
        body: bytes = b"",
    ) -> None:
        self._send(status, headers, _RESPONSE_META[source], end_stream, body)

    def send_whole(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """An origin's whole response at once (the callback path: no coroutine)."""
        self._send(status, headers, ResponseMeta.ORIGIN, True, body)

    def _send(
        self,
        status: int,
        headers: list[tuple[str, str]],
        meta: ResponseMeta,
        end_stream: bool,
        body: bytes,
    ) -> None:
        if self.channel.reset_code is not None or self.connection.closed:
            raise StreamClosedError("stream is closed")
        try:
            self.connection.conn.send_response(
                self.channel.stream_id,
                status,
                headers,
                meta=meta,
                end_stream=end_stream,
                body=body,
            )
        except Http2TunnelError as exc:
            raise StreamClosedError(str(exc)) from exc
        self._started = True
        if end_stream:
            self.channel.local_ended = True
            self.connection.maybe_forget(self.channel)
        self.connection.flush()

    def write(self, data: bytes) -> Coroutine[Any, Any, None]:
        return self.channel.write(data)

    async def end(self) -> None:
        self.channel.end()

    def reset(self) -> None:
        self.channel.reset()


class EdgeConnection(TunnelIO[ConnectorTunnelConnection]):
    """The connector's side of one tunnel connection."""

    def __init__(
        self,
        registration: Registration,
        proxy: StreamServer,
        ingress: Callable[[], Ingress],
        *,
        conn: ConnectorTunnelConnection | None = None,
    ) -> None:
        super().__init__(conn or ConnectorTunnelConnection(), LIVENESS)
        self.registration = registration
        self.proxy = proxy
        self.ingress = ingress
        self.rpc = RegistrationClientSession()
        self.control: StreamChannel | None = None
        loop = asyncio.get_running_loop()
        self.registered: asyncio.Future[RegistrationResult] = loop.create_future()
        self.details: ConnectionDetails | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.background: set[asyncio.Task[None]] = set()
        # The task serving each eyeball stream, to stop when the edge resets it.
        self._serving: dict[int, asyncio.Task[None]] = {}
        # Streams answered on the callback path (adit.workers.quick_get), likewise.
        self._quick: dict[int, QuickExchange] = {}
        self._quick_idle: asyncio.Future[None] | None = None  # a drain waits for them
        self._serve_quick = getattr(proxy, "serve_quick", None)
        self._calls: dict[int, asyncio.Future[bool]] = {}
        self.failure: str | None = None
        #: Answers the edge's configuration pushes (the worker sets it; None: refused).
        self.on_remote_config: RemoteConfigHandler | None = None

    #: The transport, as cloudflared names it in logs and metrics.
    protocol_name = "http2"

    def local_sockname(self) -> object:
        """The local address of the connection's socket."""
        return self.transport.get_extra_info("sockname") if self.transport else None

    @property
    def conn_index(self) -> int:
        """This connection's HA index."""
        return self.registration.conn_index

    # -- requests ----------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        if not isinstance(event, RequestReceived):
            return
        channel = self.channel(event.stream_id)
        if event.request_type is RequestType.CONTROL_STREAM:
            self._open_control(channel)
        elif event.request_type is RequestType.CONFIGURATION:
            self.spawn(self._serve_remote_config(channel))
        elif event.request_type is RequestType.TCP:
            # Private-network (WARP) routing: the edge opens a flow to ``ip:port`` only for a
            # route of the tunnel's account (enablement is the edge's, as with cloudflared).
            request = IncomingRequest(
                kind=StreamKind.TCP,
                method="CONNECT",
                path="",
                authority=event.authority,
                host="",
                headers=event.headers,
                conn_index=self.conn_index,
                end_stream=event.end_stream,
            )
            stream = ConnectorStream(self, channel, request)
            self._track(
                event.stream_id,
                self.spawn(self.proxy.serve_private(stream, WARP_ROUTING), stream=True),
            )
        else:
            kind = (
                StreamKind.WEBSOCKET
                if event.request_type is RequestType.WEBSOCKET
                else (StreamKind.HTTP)
            )
            host = host_of_authority(event.authority)
            management = getattr(self.proxy, "serve_management", None)
            is_management = getattr(self.proxy, "is_management_host", _default_management_host)
            if management is not None and is_management(host):
                # cloudflared's internal rule, ahead of the user's ingress (``tail``).
                self._serve_management(event, host, management)
                return
            request = IncomingRequest(
                kind=kind,
                method=event.method,
                path=event.path,
                authority=event.authority,
                host=host,
                headers=event.headers,
                conn_index=self.conn_index,
                end_stream=event.end_stream,
            )
            # The decoded path, as cloudflared matches Go's URL.Path; the origin gets the
            # path as sent, which the edge made the one normal spelling of that same path.
            rule = self.ingress().find_matching_rule(host, decoded_path(event.path))
            stream = ConnectorStream(self, channel, request)
            quick = self._serve_quick
            if quick is not None and quick(stream, rule, self):
                return
            self._track(event.stream_id, self.spawn(self.proxy.serve(stream, rule), stream=True))

    def _serve_management(
        self,
        event: RequestReceived,
        host: str,
        serve: Callable[[TunnelStream], Coroutine[Any, Any, None]],
    ) -> None:
        kind = (
            StreamKind.WEBSOCKET if event.request_type is RequestType.WEBSOCKET else StreamKind.HTTP
        )
        request = IncomingRequest(
            kind=kind,
            method=event.method,
            path=event.path,
            authority=event.authority,
            host=host,
            headers=event.headers,
            conn_index=self.conn_index,
            end_stream=event.end_stream,
        )
        stream = ConnectorStream(self, self.channel(event.stream_id), request)
        self._track(event.stream_id, self.spawn(serve(stream), stream=True))

    def _track(self, stream_id: int, task: asyncio.Task[None]) -> None:
        """Remember the task serving a stream, to cancel it when the edge resets the stream."""
        self._serving[stream_id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._serving.pop(stream_id, None)
            channel = self.channels.get(stream_id)
            if channel is not None:
                # A request body the origin never read is credited back to the edge.
                self.release(channel)

        task.add_done_callback(done)

    @property
    def in_flight(self) -> int:
        """Eyeball streams being served (what a drain waits for)."""
        return len(self.tasks) + len(self._quick)

    def quick_begin(self, exchange: QuickExchange) -> None:
        self._quick[exchange.stream_id] = exchange

    def quick_end(self, exchange: QuickExchange) -> None:
        stream_id = exchange.stream_id
        del self._quick[stream_id]
        channel = self.channels.get(stream_id)
        if channel is not None:
            self.release(channel)
        if not self._quick and self._quick_idle is not None:
            release_waiter(self._quick_idle)

    def quick_handoff(self, exchange: QuickExchange, work: Coroutine[Any, Any, None]) -> None:
        stream_id = exchange.stream_id
        del self._quick[stream_id]
        self._track(stream_id, self.spawn(work, stream=True))
        if not self._quick and self._quick_idle is not None:
            release_waiter(self._quick_idle)

    def dispatch(self, event: Event) -> None:
        super().dispatch(event)
        if type(event) is StreamReset:
            exchange = self._quick.get(event.stream_id)
            if exchange is not None:
                exchange.cancel()  # as a task's cancel below
                return
            task = self._serving.get(event.stream_id)
            if task is not None:
                # The edge gave up on the request (its visitor left, or a deadline passed):
                # stop the origin request now, not when it next writes, and drop its origin
                # connection (cloudflared cancels the request's context; Go's Transport then
                # closes the connection).
                task.cancel()

    def spawn(
        self, coro: Coroutine[object, object, None], *, stream: bool = False
    ) -> asyncio.Task[None]:
        """Run ``coro`` tied to this connection; ``stream`` tasks are what a drain waits for."""
        task = self._loop.create_task(coro)
        tracked = self.tasks if stream else self.background
        tracked.add(task)
        task.add_done_callback(tracked.discard)
        return task

    async def answer_remote_config(self, version: int, config: bytes) -> tuple[int, str | None]:
        """A push's answer: the version in force and the error (None: applied)."""
        handler = self.on_remote_config
        if handler is None:
            # Locally managed: the config file is the source of truth; -1 is cloudflared's
            # "no remote version applied".
            return -1, LOCALLY_MANAGED
        return await handler(version, config)

    async def _serve_remote_config(self, channel: StreamChannel) -> None:
        # The edge's push (PROTOCOL.md §4.6.1): answered 200 with the version in force and
        # the error, as cloudflared does; a body that is not a push gets a 400.
        with contextlib.suppress(StreamClosedError):
            chunks: list[bytes] = []
            size = 0
            while data := await channel.read():
                size += len(data)
                if size > MAX_PUSH:
                    channel.reset()
                    return
                chunks.append(data)
            status = 200
            try:
                version, config = decode_update(b"".join(chunks))
            except ConfigUpdateError as exc:
                status, body = 400, encode_answer(-1, str(exc))
            else:
                body = encode_answer(*await self.answer_remote_config(version, config))
            self.conn.send_response(
                channel.stream_id, status, [("Content-Type", "application/json")]
            )
            await channel.write(body)
            channel.end()

    # -- control stream / RPC -------------------------------------------------------------------

    def _open_control(self, channel: StreamChannel) -> None:
        if self.control is not None:
            channel.reset()
            return
        self.control = channel
        self.conn.send_response(
            channel.stream_id, 200, [("Content-Type", "application/octet-stream")]
        )
        reg = self.registration
        options = msgspec.structs.replace(
            reg.options, origin_local_ip=local_ip_bytes(self.local_sockname())
        )
        self.rpc.register(reg.auth, reg.tunnel_id, reg.conn_index, options)
        self.spawn(self._serve_control(channel))

    async def _serve_control(self, control: StreamChannel) -> None:
        try:
            await self._send_rpc()
            while data := await control.read():
                for event in self.rpc.receive_data(data):
                    self._rpc_event(event)
                await self._send_rpc()
        except StreamClosedError:
            pass
        except ProtocolError as exc:
            self.fail(f"control stream: {exc}")
        if not self.registered.done():
            self.registered.set_exception(
                ConnectionError("control stream closed before registration")
            )

    async def _send_rpc(self) -> None:
        data = self.rpc.data_to_send()
        if data and self.control is not None:
            await self.control.write(data)

    def _rpc_event(self, event: object) -> None:
        if isinstance(event, RegistrationReturned):
            if isinstance(event.result, ConnectionDetails):
                self.details = event.result
            if not self.registered.done():
                self.registered.set_result(event.result)
        elif isinstance(event, RegistrationFailed):
            if not self.registered.done():
                self.registered.set_result(RegistrationError(event.reason, 0, True))
        elif isinstance(event, CallReturned):
            call = self._calls.pop(event.question_id, None)
            if call is not None and not call.done():
                call.set_result(True)
        elif isinstance(event, CallFailed):
            call = self._calls.pop(event.question_id, None)
            if call is not None and not call.done():
                call.set_result(False)
        elif isinstance(event, RpcAborted):
            log.debug("edge aborted the RPC session: %s", event.reason)

    async def _call(self, question_id: int) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._calls[question_id] = future
        await self._send_rpc()
        try:
            return await asyncio.wait_for(future, RPC_TIMEOUT)
        except TimeoutError:
            return False

    async def push_local_config(self) -> bool:
        """``updateLocalConfiguration`` with the config file (conn 0 of a local tunnel)."""
        if not self.registration.local_config:
            return True
        return await self._call(self.rpc.update_local_configuration(self.registration.local_config))

    async def unregister(self) -> bool | None:
        """Tell the edge to stop routing new requests here, then close the RPC session.

        Whether the edge answered the call; None when there was nothing to unregister."""
        if self.details is None or self.closed or self.control is None:
            return None
        answered = False
        with contextlib.suppress(StreamClosedError):
            answered = await self._call(self.rpc.unregister())
            self.rpc.close()
            await self._send_rpc()
            self.control.reset()
        return answered

    async def drain(self, deadline: float) -> None:
        """Wait for in-flight streams until ``deadline`` (loop time), then close."""
        loop = asyncio.get_running_loop()
        while (self.tasks or self._quick) and loop.time() < deadline:
            waiting: set[asyncio.Future[None]] = set(self.tasks)
            if self._quick:
                if self._quick_idle is None or self._quick_idle.done():
                    self._quick_idle = loop.create_future()
                waiting.add(self._quick_idle)
            await asyncio.wait(waiting, timeout=max(0.0, deadline - loop.time()))
        for exchange in list(self._quick.values()):
            exchange.cancel()
        for task in [*self.tasks, *self.background]:
            task.cancel()
        self.close("connector shutting down")

    def close(self, reason: str) -> None:
        """GOAWAY and close."""
        if not self.closed:
            with contextlib.suppress(Exception):
                self.conn.close()
                self.flush()
        self.close_transport()

    def on_failure(self, reason: str, error_code: int) -> None:
        self.failure = reason
        log.warning(
            "Tunnel connection failed", extra=fields(connIndex=self.conn_index, error=reason)
        )

    def on_lost(self, exc: Exception | None) -> None:
        if not self.registered.done():
            self.registered.set_exception(
                ConnectionError(str(exc) if exc else "the edge closed the connection")
            )
        for call in self._calls.values():
            if not call.done():
                call.set_result(False)


def local_ip_bytes(sockname: object) -> bytes:
    """The socket's local IP as the 16-byte (v4-mapped) form cloudflared sends."""
    if isinstance(sockname, tuple) and sockname:
        try:
            address = ipaddress.ip_address(sockname[0])
        except ValueError:
            return b""
        if isinstance(address, ipaddress.IPv4Address):
            return ipaddress.IPv6Address(f"::ffff:{address}").packed
        return address.packed
    return b""


def is_refusal(result: RegistrationResult) -> bool:
    """True when the edge refused the registration."""
    return isinstance(result, RegistrationError)
