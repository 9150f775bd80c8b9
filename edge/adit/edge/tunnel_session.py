"""One connector connection on the tunnel listener: control stream, registration, streams.

The edge is the HTTP/2 client here (PROTOCOL.md §4.1): as soon as TLS is up it opens the
control stream and serves ``RegistrationServer`` on it. A registered session is recorded in
the :class:`~adit.edge.registry.ConnectionRegistry`; the public pipeline then opens request
streams on it with :meth:`TunnelSession.open_request`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import hashlib
import hmac
import ipaddress
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from adit.edge.config_push import PushOutcome
from adit.edge.registry import ConnectionRegistry, LiveConnection
from adit.edge.store import SecretMatch, Store, StoreError
from adit.edge.tunnel_configs import StoredConfig
from adit.protocol.config_update import MAX_ANSWER, ConfigUpdateError, decode_answer, encode_update
from adit.protocol.errors import ProtocolError
from adit.protocol.headers import FEATURE_SERIALIZED_REQUEST_HEADERS, RequestType, ResponseMeta
from adit.protocol.http2 import (
    ConnectionTerminated,
    DataReceived,
    EdgeTunnelConnection,
    ErrorCode,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from adit.protocol.liveness import LivenessSettings
from adit.protocol.registration import (
    DUPLICATE_CONNECTION,
    ConnectionDetails,
    ConnectionOptions,
    RegistrationError,
    TunnelAuth,
)
from adit.protocol.rpc import (
    RegisterConnectionCalled,
    RegistrationServerSession,
    RpcAborted,
    UnregisterConnectionCalled,
    UpdateLocalConfigurationCalled,
)
from adit.tunnelio import StreamChannel, StreamClosedError, TunnelIO

log = logging.getLogger("adit.edge.tunnel")

#: Without a registration within this time the connection is dropped (slowloris guard).
REGISTRATION_TIMEOUT = 15.0
#: How often a registered connection checks that its secret is still accepted, besides the
#: checks when this process rotates or deletes the tunnel and at the end of a rotation window.
#: This one notices what another edge process sharing the store did; it is one store read per
#: connection a minute (jittered, so that the connections of a busy edge do not ask at once).
SECRET_RECHECK = 60.0


@dataclass(frozen=True, slots=True)
class EdgeIdentity:
    """What this edge process tells connectors about itself."""

    location: str


#: Called once when a request stream's answer is known (:attr:`RequestStream.answer` or
#: :attr:`RequestStream.failure` set), at the end of the tunnel read that brought it.
AnswerCallback = Callable[["RequestStream"], None]


class StreamUndelivered(StreamClosedError):
    """The tunnel connection ended before the connector acknowledged any of the request: it
    never reached the origin, and may be sent over another connection."""


class RequestStream:
    """An eyeball request in flight on a tunnel connection, seen from the edge.

    Awaited with :meth:`response`, or, with an ``on_answer`` callback, told from the tunnel's
    ``data_received``: then an origin's response whose body ended in the same read as its
    head is :attr:`complete`, its body in :attr:`body` (already credited to the connector),
    and the channel never sees it; otherwise the body is in the channel as usual.

    Every wait on it ends: with the answer, with the connector's reset or the tunnel's end,
    or with :meth:`cancel` (the edge gives up on it: the error given is what waits raise).
    """

    __slots__ = (
        "_response",
        "answer",
        "body",
        "channel",
        "complete",
        "failure",
        "held",
        "on_answer",
        "session",
    )

    def __init__(
        self, session: TunnelSession, channel: StreamChannel, on_answer: AnswerCallback | None
    ) -> None:
        self.session = session
        self.channel = channel
        self.on_answer = on_answer
        self.answer: ResponseReceived | None = None
        #: Why the stream ended before (or instead of) its answer.
        self.failure: StreamClosedError | None = None
        self.complete = False
        self.body: list[bytes] = []
        #: Body events of the answer's read, while it is being delivered.
        self.held: list[Event] | None = None
        self._response: asyncio.Future[ResponseReceived] | None = None

    async def response(self) -> ResponseReceived:
        """Wait for the connector's response headers (StreamClosedError if it reset)."""
        if self.answer is not None:
            return self.answer
        if self.failure is not None:
            raise self.failure
        # The session's loop, not asyncio.get_running_loop(): on Python 3.11 that makes a
        # getpid() system call each time (~2 % of an HTTP/2 request, which waits here).
        self._response = self.session._loop.create_future()
        return await self._response

    def cancel(self, error: StreamClosedError) -> None:
        """Give up on the stream: RST_STREAM (CANCEL) to the connector, so that it stops the
        origin request; waits on the stream raise ``error`` (or the channel's closed error),
        and ``on_answer`` is not called for it."""
        self.on_answer = None
        if self.failure is None:
            self.failure = error
        self._fail_waiter(self.failure)
        self.channel.reset()

    def _answered(self, event: ResponseReceived) -> None:
        if self.answer is not None or self.failure is not None:
            return
        self.answer = event
        if self.on_answer is not None:
            self.held = []
            self.session._delivering.append(self)
        elif self._response is not None and not self._response.done():
            self._response.set_result(event)

    def _deliver(self) -> int:
        """End of the answer's read: the body is whole, or goes to the channel; tell.

        Returns the flow-controlled bytes of a whole body, for the session to credit."""
        held, self.held = self.held or [], None
        answer = self.answer
        ended = (held and type(held[-1]) is StreamEnded) or (answer and answer.end_stream)
        if ended and answer is not None and answer.meta is ResponseMeta.ORIGIN:
            flow = 0
            for event in held:
                if type(event) is DataReceived:
                    self.body.append(event.data)
                    flow += event.flow_controlled_length
            self.complete = True
            self.channel.remote_ended = True  # its end was held here, not fed to the channel
        else:
            flow = 0
            for event in held:
                self.session._to_channel(event)
        if self.on_answer is not None:
            self.on_answer(self)
        return flow

    def _failed(self, reason: str, *, undelivered: bool = False) -> None:
        if self.answer is not None or self.failure is not None:
            return
        self.failure = StreamUndelivered(reason) if undelivered else StreamClosedError(reason)
        if self.on_answer is not None:
            self.on_answer(self)
        else:
            self._fail_waiter(self.failure)

    def _fail_waiter(self, error: StreamClosedError) -> None:
        if self._response is not None and not self._response.done():
            self._response.set_exception(error)
            # Retrieved here so an abandoned request does not log "never retrieved".
            self._response.exception()


class TunnelSession(TunnelIO[EdgeTunnelConnection]):
    """The edge side of one tunnel connection."""

    #: The transport, as the API and logs name it.
    protocol_name = "http2"

    def __init__(
        self,
        store: Store,
        registry: ConnectionRegistry,
        identity: EdgeIdentity,
        *,
        on_closed: Callable[[TunnelSession], None] | None = None,
        liveness: LivenessSettings | None = None,
        conn: EdgeTunnelConnection | None = None,
    ) -> None:
        super().__init__(conn or EdgeTunnelConnection(), liveness)
        self.store = store
        self.registry = registry
        self.identity = identity
        self.rpc = RegistrationServerSession()
        self.control: StreamChannel | None = None
        self.live: LiveConnection | None = None
        self.serialize_headers = False
        self.peer = "?"
        self._requests: dict[int, RequestStream] = {}
        # Answered requests with a callback, told at the end of the current read.
        self._delivering: list[RequestStream] = []
        self._on_closed = on_closed
        self._timeout: asyncio.TimerHandle | None = None
        self._control_task: asyncio.Task[None] | None = None
        #: SHA-256 of the secret the connector registered with (rotation bookkeeping).
        self.secret_digest = b""
        # The secret itself, to ask the store (in constant time) whether it is still accepted.
        self._secret = b""
        self._recheck: asyncio.TimerHandle | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.begin(f"{peer[0]}:{peer[1]}" if peer else "?")

    def begin(self, peer: str) -> None:
        """The connection is up (TCP: TLS is; QUIC: its first datagram came): expect the
        control stream, and a registration on it within :data:`REGISTRATION_TIMEOUT`."""
        self.peer = peer
        control_id = self.conn.open_control_stream()
        self.control = self.channel(control_id)
        self.flush()
        loop = asyncio.get_running_loop()
        self._timeout = loop.call_later(REGISTRATION_TIMEOUT, self._registration_timed_out)
        self._control_task = loop.create_task(self._serve_control(self.control))

    def _registration_timed_out(self) -> None:
        if self.live is None:
            log.warning("connector %s did not register in time; closing", self.peer)
            self.close("registration timeout")

    def close(self, reason: str) -> None:
        """GOAWAY and close (the registry's ConnectionHandle)."""
        log.info("closing tunnel connection from %s: %s", self.peer, reason)
        if not self.closed:
            with contextlib.suppress(Exception):
                self.conn.close()
                self.flush()
        self._unlist()
        self.close_transport()

    def on_lost(self, exc: Exception | None) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
        if self._recheck is not None:
            self._recheck.cancel()
        for stream_id, request in self._requests.items():
            request._failed("the tunnel connection closed", undelivered=self.undelivered(stream_id))
        self._requests.clear()
        if self.live is not None:
            log.info(
                "tunnel connection lost tunnelID=%s connIndex=%d connection=%s from=%s: %s",
                self.live.tunnel_id,
                self.live.conn_index,
                self.live.connection_id,
                self.peer,
                exc or "closed",
            )
        self._unlist()
        if self._on_closed is not None:
            self._on_closed(self)
        # What refers back to this session (its registry entry, control channel and task,
        # timers) goes, so the session is freed when the transport lets go of it.
        self.live = None
        self.control = None
        self._control_task = None
        self._timeout = self._recheck = None

    def undelivered(self, stream_id: int) -> bool:
        """Whether the connector provably never received stream ``stream_id`` of this lost
        connection. HTTP/2 cannot tell: TCP acknowledges bytes, not streams."""
        del stream_id
        return False

    def on_failure(self, reason: str, error_code: int) -> None:
        log.warning("tunnel connection from %s failed: %s", self.peer, reason)
        if error_code == ErrorCode.ENHANCE_YOUR_CALM and self.live is not None:
            # A tenant's connector flooded us: its tunnel waits before registering again, or
            # it could make us pay a handshake and a registration per flood, many a second.
            wait = self.registry.cooldowns.punish(self.live.tunnel_id, self._loop.time())
            log.warning(
                "tunnel %s flooded the edge: its registrations are refused for %gs",
                self.live.tunnel_id,
                wait,
            )

    def on_responsive(self, responsive: bool) -> None:
        # Routing follows at once: the registry skips an unresponsive connection while the
        # tunnel has another (see ConnectionRegistry.pick).
        if self.live is not None:
            self.live.responsive = responsive
        log.warning(
            "tunnel connection from %s %s tunnelID=%s connIndex=%s",
            self.peer,
            "answers again" if responsive else "does not answer PINGs: no new requests to it",
            self.live.tunnel_id if self.live else "-",
            self.live.conn_index if self.live else "-",
        )

    def _unlist(self) -> None:
        if self.live is not None:
            self.registry.remove(self.live)

    # -- control stream --------------------------------------------------------------------------

    async def _serve_control(self, control: StreamChannel) -> None:
        try:
            while True:
                data = await control.read()
                if not data:
                    break
                for event in self.rpc.receive_data(data):
                    self._rpc_event(event)
                out = self.rpc.data_to_send()
                if out:
                    await control.write(out)
        except StreamClosedError:
            pass
        except ProtocolError as exc:
            self.fail(f"control stream: {exc}")
            return
        # The control stream ended: cloudflared does this after unregistering. Stop routing
        # new requests; in-flight streams finish on this connection.
        if self.live is not None:
            self.live.draining = True

    def _rpc_event(self, event: object) -> None:
        if isinstance(event, RegisterConnectionCalled):
            result = self._register(event.auth, event.tunnel_id, event.conn_index, event.options)
            self.rpc.answer_register(event.answer_id, result)
            if isinstance(result, RegistrationError):
                # cloudflared acts on a refusal only when the connection ends (§4.4).
                asyncio.get_running_loop().call_later(0.2, self.close, result.cause)
        elif isinstance(event, UnregisterConnectionCalled):
            if self.live is not None:
                self.live.draining = True
                log.info(
                    "connector unregistered tunnelID=%s connIndex=%d",
                    self.live.tunnel_id,
                    self.live.conn_index,
                )
                self._maybe_finish_rotation(self.live.tunnel_id, self.live.account_tag)
            self.rpc.answer_empty(event.answer_id)
        elif isinstance(event, UpdateLocalConfigurationCalled):
            log.debug("local configuration from %s: %d bytes", self.peer, len(event.config))
            self.rpc.answer_empty(event.answer_id)
        elif isinstance(event, RpcAborted):
            log.debug("connector closed its RPC session: %s", event.reason)

    def _register(
        self, auth: TunnelAuth, tunnel_id: uuid.UUID, conn_index: int, options: ConnectionOptions
    ) -> ConnectionDetails | RegistrationError:
        if self.live is not None:
            return RegistrationError("this connection is already registered", 0, False)
        wait = self.registry.cooldowns.remaining(tunnel_id, self._loop.time())
        if wait > 0:
            # Before the store is asked: a flooding tenant's redials cost a dict lookup.
            return RegistrationError(
                f"tunnel {tunnel_id} flooded the edge (ENHANCE_YOUR_CALM): it may register "
                f"again in {wait:.1f}s",
                int(wait * 1e9),
                True,
            )
        match = self.store.match_tunnel_secret(tunnel_id, auth.account_tag, auth.tunnel_secret)
        if match is SecretMatch.NONE:
            # Deliberately without the word "Unauthorized": cloudflared retries forever on it,
            # and a wrong secret will not become right by retrying.
            log.warning(
                "refused registration for tunnel %s from %s: bad credentials", tunnel_id, self.peer
            )
            return RegistrationError(
                f"tunnel credentials rejected for tunnel {tunnel_id}: unknown tunnel or wrong "
                "secret (recreate the credentials with `adit tunnel token` or `create`)",
                0,
                False,
            )
        for other in self.registry.connections(tunnel_id):
            same = other.client_id == options.client.client_id and other.conn_index == conn_index
            if same and not other.draining:
                if not options.replace_existing:
                    return RegistrationError(DUPLICATE_CONNECTION, 0, True)
                # The connector rolls this connection (new credentials or addresses): the new
                # one takes the requests from now on, the old one finishes what it carries and
                # is unregistered by the connector.
                other.draining = True
                log.info(
                    "connection replaced tunnelID=%s connIndex=%d old=%s",
                    tunnel_id,
                    conn_index,
                    other.connection_id,
                )
        self.secret_digest = hashlib.sha256(auth.tunnel_secret).digest()
        self._secret = auth.tunnel_secret
        connection_id = uuid.uuid4()
        self.live = LiveConnection(
            tunnel_id=tunnel_id,
            account_tag=auth.account_tag,
            connection_id=connection_id,
            client_id=options.client.client_id,
            conn_index=conn_index,
            location=self.identity.location,
            origin_ip=_origin_ip(options.origin_local_ip, self.peer),
            opened_at=datetime.datetime.now(datetime.UTC),
            client_version=options.client.version,
            arch=options.client.arch,
            features=options.client.features,
            handle=self,
            protocol=self.protocol_name,
        )
        self.serialize_headers = FEATURE_SERIALIZED_REQUEST_HEADERS in options.client.features
        stored = self._stored_config(tunnel_id)
        if stored is None:
            self.registry.add(self.live)
        else:
            # A remotely managed tunnel: the connection takes requests once it answered the
            # push of the stored configuration (until then it would serve its default 503).
            pushed = self.registry.config_pusher.push(
                self.live, stored.version, stored.config.encode()
            )
            pushed.add_done_callback(functools.partial(self._list_after_push, self.live))
        if self._timeout is not None:
            self._timeout.cancel()
        log.info(
            "Registered tunnel connection tunnelID=%s connIndex=%d connection=%s client=%s "
            "version=%s from=%s protocol=%s",
            tunnel_id,
            conn_index,
            connection_id,
            options.client.client_id,
            options.client.version,
            self.peer,
            self.protocol_name,
        )
        if match is SecretMatch.CURRENT:
            self._maybe_finish_rotation(tunnel_id, auth.account_tag)
        self._arm_recheck(match)
        return ConnectionDetails(connection_id, self.identity.location, False)

    def _stored_config(self, tunnel_id: uuid.UUID) -> StoredConfig | None:
        """The tunnel's remotely managed configuration, if it has one (a store read)."""
        try:
            return self.store.configs.get(tunnel_id)
        except StoreError as exc:
            log.warning("could not read tunnel %s's configuration: %s", tunnel_id, exc)
            return None

    def _list_after_push(self, live: LiveConnection, pushed: asyncio.Future[PushOutcome]) -> None:
        """The stored configuration's push ended (whatever its outcome: a connector that
        refused it still serves something): the connection takes requests from now on. A
        PUT meanwhile did not see it (it was not listed yet): it gets that version now."""
        if self.live is not live or self.closed:
            return
        self.registry.add(live)
        if not self.revalidate():
            return  # the tunnel was deleted or its secret rotated out meanwhile
        stored = self._stored_config(live.tunnel_id)
        if stored is not None and stored.version > pushed.result().version:
            self.registry.config_pusher.push(live, stored.version, stored.config.encode())

    @property
    def full(self) -> bool:
        """The connector takes no more streams here now (the registry's ConnectionHandle)."""
        return self.conn.open_streams >= self.conn.peer_max_concurrent_streams

    # -- the secret it registered with ---------------------------------------------------------

    def revalidate(self) -> bool:
        """Close this connection if the secret it registered with is no longer accepted (the
        rotation finished or expired, the tunnel was deleted); True when it stays."""
        live = self.live
        if live is None or self.closed:
            return True
        match = self.store.match_tunnel_secret(live.tunnel_id, live.account_tag, self._secret)
        if match is SecretMatch.NONE:
            self.close("the secret it registered with is no longer accepted")
            return False
        self._arm_recheck(match)
        return True

    def _arm_recheck(self, match: SecretMatch) -> None:
        """Check again in :data:`SECRET_RECHECK`, or when the rotation window that keeps the
        secret valid ends, whichever comes first."""
        assert self.live is not None
        delay = SECRET_RECHECK * (0.75 + random.random() / 2)  # noqa: S311 - spacing only
        if match is SecretMatch.PREVIOUS:
            rotation = self.store.rotation(self.live.tunnel_id)
            if rotation is not None:
                left = rotation.expires_at - datetime.datetime.now(datetime.UTC)
                # Just after the end: the store compares ``now >= expires_at``.
                delay = min(delay, max(0.0, left.total_seconds()) + 0.05)
        if self._recheck is not None:
            self._recheck.cancel()
        self._recheck = self._loop.call_later(delay, self.revalidate)

    def _maybe_finish_rotation(self, tunnel_id: uuid.UUID, account_tag: str) -> None:
        """End a secret rotation once every routable connection of the tunnel on this edge
        registered with the new secret (at least one did: a crashed connector's stale file is
        no proof the rotation reached it)."""
        if self.store.rotation(tunnel_id) is None:
            return
        tunnel = self.store.get_tunnel(account_tag, tunnel_id)
        if tunnel is None:
            return
        current = hashlib.sha256(tunnel.secret).digest()
        live = [c for c in self.registry.connections(tunnel_id) if not c.draining]
        digests = [c.handle.secret_digest for c in live if isinstance(c.handle, TunnelSession)]
        if not digests or not all(hmac.compare_digest(d, current) for d in digests):
            return
        # A write: on the store's writer thread, never waiting for its lock on the loop.
        finishing = self.store.off_loop(self.store.finish_rotation, tunnel_id)
        finishing.add_done_callback(functools.partial(_rotation_finished, tunnel_id))

    # -- configuration pushes ---------------------------------------------------------------

    async def update_configuration(self, version: int, config: bytes) -> tuple[int, str | None]:
        """Push a remotely managed tunnel's configuration (JSON) on a stream of its own
        (PROTOCOL.md §4.6.1). Returns the version the connector runs and its error (None:
        applied); raises :class:`ConfigUpdateError` or :class:`StreamClosedError` when there
        was no proper answer. The caller bounds the wait."""
        body = encode_update(version, config)
        request = self.open_request(
            "PUT",
            "/",
            "update-configuration",
            [("content-type", "application/json"), ("content-length", str(len(body)))],
            request_type=RequestType.CONFIGURATION,
            end_stream=False,
        )
        try:
            await request.channel.write(body)
            request.channel.end()
            self.flush()
            answer = await request.response()
            chunks: list[bytes] = []
            size = 0
            while data := await request.channel.read():
                size += len(data)
                if size > MAX_ANSWER:
                    raise ConfigUpdateError("the connector's answer is too long")
                chunks.append(data)
        finally:
            self.finished(request)
        if answer.status != 200:
            raise ConfigUpdateError(f"the connector answered HTTP {answer.status}")
        return decode_answer(b"".join(chunks))

    # -- request streams --------------------------------------------------------------------

    def open_request(
        self,
        method: str,
        path: str,
        authority: str,
        headers: list[tuple[str, str]],
        *,
        request_type: RequestType,
        end_stream: bool,
        on_answer: AnswerCallback | None = None,
        encoded: Mapping[tuple[str, str], bytes] | None = None,
        keep: dict[tuple[str, str], bytes] | None = None,
    ) -> RequestStream:
        """Open a stream for an eyeball request (``on_answer``: see :class:`RequestStream`;
        ``encoded``: pairs of ``headers`` serialised already; ``keep``: the visitor
        connection's memo of serialised pairs, see ``encode_serialized_headers``)."""
        if self.closed:
            raise StreamClosedError("tunnel connection is closed")
        stream_id = self.conn.send_request(
            method,
            path,
            authority,
            headers,
            request_type=request_type,
            serialize_headers=self.serialize_headers,
            end_stream=end_stream,
            encoded=encoded,
            keep=keep,
        )
        channel = self.channel(stream_id)
        if end_stream:
            channel.local_ended = True
        request = RequestStream(self, channel, on_answer)
        self._requests[stream_id] = request
        self.flush()
        return request

    @property
    def in_flight(self) -> int:
        """Request streams open on this connection (a hand-over closes it at none)."""
        return len(self._requests)

    def finished(self, request: RequestStream) -> None:
        """The pipeline is done with a request stream; one still open either way is reset
        (the connector then stops its origin request, and sends no more of the body)."""
        # No more callbacks; and the callback (an exchange's bound method, holding the
        # exchange that holds this stream) is a reference cycle: cut here, the request's
        # objects go with their last reference instead of waiting for the cyclic collector
        # (which cost the edge ~3 % of its instructions a request, collecting ~15 objects
        # of each).
        request.on_answer = None
        self._requests.pop(request.channel.stream_id, None)
        channel = request.channel
        self.release(channel)
        if channel.reset_code is None and not (channel.local_ended and channel.remote_ended):
            channel.reset()
        else:
            self.forget(channel)

    def after_read(self) -> None:
        if self._delivering:
            # Every frame of this read is in: whole small responses can be told as such.
            delivering, self._delivering = self._delivering, []
            flow = 0
            for request in delivering:
                flow += request._deliver()
            if flow:
                # Whole bodies belong to streams that ended both ways: only the connection's
                # window is owed, once for all of them.
                self.acknowledge(delivering[-1].channel.stream_id, flow)

    def dispatch(self, event: Event) -> None:
        if self._delivering and (type(event) is DataReceived or type(event) is StreamEnded):
            request = self._requests.get(event.stream_id)
            if request is not None and request.held is not None:
                request.held.append(event)
                return
        super().dispatch(event)
        if isinstance(event, StreamReset):
            request = self._requests.get(event.stream_id)
            if request is not None:
                request._failed(
                    event.reason or f"the connector reset the stream (code {event.error_code})"
                )

    def _to_channel(self, event: Event) -> None:
        """A held body event, passed on to its channel after all."""
        super().dispatch(event)

    def on_event(self, event: Event) -> None:
        if isinstance(event, ResponseReceived):
            request = self._requests.get(event.stream_id)
            if request is not None:
                request._answered(event)
            elif self.control is not None and event.stream_id == self.control.stream_id:
                pass  # the control stream's 200: RPC bytes follow as DATA

    def on_goaway(self, event: ConnectionTerminated) -> None:
        if self.live is not None:
            self.live.draining = True


def _rotation_finished(tunnel_id: uuid.UUID, done: asyncio.Future[bool]) -> None:
    if done.cancelled():
        return
    exc = done.exception()
    if isinstance(exc, StoreError):
        log.warning("cannot finish the secret rotation of tunnel %s yet: %s", tunnel_id, exc)
    elif exc is not None:
        log.error("finishing the secret rotation of tunnel %s failed", tunnel_id, exc_info=exc)
    elif done.result():
        log.info(
            "secret rotation finished tunnelID=%s: the previous secret is refused from now on",
            tunnel_id,
        )


def _origin_ip(raw: bytes, peer: str) -> str:
    if len(raw) in (4, 16):
        address = ipaddress.ip_address(raw)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(address)
    return peer.rsplit(":", 1)[0]
