"""The public listener: eyeball HTTP(S) requests, routed by Host to tunnels.

One seam per concern (DESIGN.md §3): parse (llhttp) → Access (:mod:`adit.edge.access`) → route
(hostname → tunnel) → pick a connection (the registry) → forward over the tunnel. Both ways a
request is served go through :meth:`PublicListener._forward` for all but the parsing: the fast
path (a bodiless request taken in ``data_received`` and answered from the tunnel's read) and
the connection's serving task (bodies, upgrades, answers that come in pieces). What it returns,
an :class:`_Exchange`, is held by the eyeball connection while the request is in flight, and
every way out ends there: the answer, the visitor leaving (the stream is reset, so the
connector stops the origin request), a deadline (408 or 524), or a broken body (400).

Bodies are streamed both ways; the socket's and the tunnel's back-pressure meet in the middle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from random import getrandbits

from adit.edge.access.gate import (
    FLOW_BODY_TOO_LARGE,
    MAX_FLOW_BODY,
    AccessGate,
    ConnectionMemo,
    FlowRequest,
)
from adit.edge.acme_challenges import CHALLENGE_PATH
from adit.edge.h2_public import AlpnSwitch, Http2Connection
from adit.edge.header_policy import is_websocket_upgrade, tunnel_request_headers
from adit.edge.http1 import (
    BadRequest,
    HeadersTooLarge,
    Http1Connection,
    Phase,
    Request,
    RequestTimeout,
    ResponseError,
)
from adit.edge.limits import ConnectionTracker, Deadline
from adit.edge.management_route import CONNECTOR_MANAGEMENT_HOST, ManagementGate
from adit.edge.pages import (
    BAD_REQUEST,
    BAD_RESPONSE,
    HEADERS_TOO_LARGE,
    ORIGIN_FAILED,
    REQUEST_TIMEOUT,
    STREAM_FAILED,
    TUNNEL_DOWN,
    TUNNEL_TIMEOUT,
    UNKNOWN_HOST,
    ErrorPage,
    origin_failure_page,
)
from adit.edge.registry import ConnectionRegistry
from adit.edge.store import Store
from adit.edge.tunnel_session import RequestStream, StreamUndelivered, TunnelSession
from adit.edge.zone_options import hsts_value
from adit.protocol.errors import BadRequestTarget, Http2TunnelError
from adit.protocol.headers import HOP_BY_HOP, RequestType, ResponseMeta
from adit.protocol.hostnames import (
    InvalidHostname,
    check_hostname,
    host_of_authority,
    normalize_authority,
)
from adit.protocol.http2 import ResponseReceived
from adit.protocol.request_target import RequestTarget, normalize_target
from adit.tunnelio import StreamClosedError

log = logging.getLogger("adit.edge.public")

_ACME_CHALLENGE = "/.well-known/acme-challenge/"

#: Authorities whose hostname is remembered (see ``PublicListener._names``).
_NAMES_KEPT = 4096

# An adit connector says why it answered 502 in the first line of a short plain-text body,
# "adit-origin-error: refused|timeout|tls", and more on the next lines; cloudflared's 502 has
# no body, which gets the generic page. The class picks the page; the rest goes to the log.
_ORIGIN_ERROR_PREFIX = b"adit-origin-error:"
_MAX_REASON = 2048
_REASON_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class Opened:
    """A request's tunnel stream, opened: the hostname it was routed by, whether it is a
    WebSocket upgrade."""

    stream: RequestStream
    host: str
    websocket: bool


class ClientGone(StreamClosedError):
    """The visitor went away (or closed its side): nothing more is sent to them."""


class TunnelTimeout(StreamClosedError):
    """The tunnel did not answer, take the body or go on answering in time (524)."""


class RequestAborted(StreamClosedError):
    """The request body broke or stalled: the visitor gets ``cause``'s page (400, 408)."""

    def __init__(self, cause: BadRequest) -> None:
        super().__init__(str(cause))
        self.cause = cause


def request_error_page(exc: BadRequest) -> ErrorPage:
    """The page for a request the edge cannot serve."""
    if isinstance(exc, HeadersTooLarge):
        return HEADERS_TOO_LARGE
    if isinstance(exc, RequestTimeout):
        return REQUEST_TIMEOUT
    return BAD_REQUEST


class PublicListener:
    """Serves eyeball connections for every routed hostname."""

    def __init__(
        self,
        store: Store,
        registry: ConnectionRegistry,
        *,
        location: str,
        scheme: str,
        tracker: ConnectionTracker | None = None,
        management: ManagementGate | None = None,
        challenges: Callable[[bytes], bytes | None] | None = None,
        access: AccessGate | None = None,
    ) -> None:
        self.store = store
        #: Cloudflare Access (None: every routed hostname is open, as before Access).
        self.access = access
        #: ACME HTTP-01 answers by request target (None: ACME is off; such paths are routed).
        self.challenges = challenges
        #: The management hostname's gate (``tail``): None serves no such name.
        self.management = management
        self.registry = registry
        self.location = location
        self.scheme = scheme
        self.tracker = tracker
        #: The HTTPS port visitors' URLs name (None: 443, left out); set once HTTPS is bound.
        self.https_port: int | None = None
        self._ray_suffix = f"-{location}"
        # A request's authority → (its hostname checked and in the one spelling, the
        # authority to forward): pure functions of the text, and most requests repeat a
        # handful of authorities. Bounded; names that are no hostname are never kept.
        self._names: dict[str, tuple[str, str]] = {}

    def protocol(self) -> asyncio.Protocol:
        """The protocol factory for ``loop.create_server``: one per eyeball connection (over
        TLS, HTTP/2 or HTTP/1.1 as ALPN chooses)."""
        if self.scheme == "https":
            return AlpnSwitch(self)
        return self.http1_protocol()

    def http1_protocol(self) -> Http1Connection:
        """An HTTP/1.1 eyeball connection."""
        return Http1Connection(self._handle, self._refuse, self._fast, tracker=self.tracker)

    async def _refuse(self, conn: Http1Connection, exc: BadRequest) -> None:
        with contextlib.suppress(Exception):
            await self._page(conn, request_error_page(exc), "-", self._ray(), keep_alive=False)

    def _ray(self) -> str:
        # An identifier for logs and error pages, not a secret: no system call per request.
        return f"{getrandbits(64):016x}{self._ray_suffix}"

    # -- the seam: route → access → pick → forward ---------------------------------------------

    def _forward(
        self, conn: Http1Connection, request: Request, ray: str, *, fast: bool
    ) -> _Exchange | tuple[ErrorPage, str]:
        """Open the tunnel stream for ``request``, or the page that says why not (and the
        hostname it names).

        ``fast``: the answer is told from the tunnel's read (:meth:`_Exchange.answered`).
        """
        # A refusal on the fast path is answered by the task, which decides again: only
        # that decision goes to the access log (with the Ray ID the visitor is shown).
        opened = self.open_stream(request, conn, ray, log_refusal=not fast)
        if isinstance(opened, tuple):
            return opened
        exchange = _Exchange(self, conn, request, opened.stream, opened.host, ray, opened.websocket)
        if fast:
            opened.stream.on_answer = exchange.answered
        conn.exchange = exchange
        return exchange

    def access_memo(self, conn: Http1Connection | Http2Connection) -> ConnectionMemo | None:
        """What Access remembers for the visitor connection ``conn``, made at its first use
        (None: no Access on this listener)."""
        memo = conn.access_memo
        if memo is None and self.access is not None:
            memo = conn.access_memo = ConnectionMemo()
        return memo

    def open_stream(
        self,
        request: Request,
        visitor: Http1Connection | Http2Connection,
        ray: str,
        *,
        log_refusal: bool = True,
    ) -> Opened | tuple[ErrorPage, str]:
        """Route ``request`` (from either HTTP version, on the connection ``visitor``) and
        open its tunnel stream, or the page that says why not (and the hostname it names)."""
        client_ip = visitor.client_ip
        try:
            target = _target(request)
        except BadRequestTarget as exc:
            # Not one path of this host: nothing is forwarded, and what follows the head (a
            # CONNECT tunnel's bytes, a body) is not read as another request.
            log.debug("refused request target ray=%s: %s", ray, exc)
            return BAD_REQUEST, "-"
        try:
            host, authority = self._names.get(target.authority) or self._name(target.authority)
        except InvalidHostname:
            # No hostname (RFC 1035): nothing to route, and nothing of it goes back.
            return BAD_REQUEST, "-"
        management = self.management
        asserted: tuple[tuple[str, str], ...] = ()
        encoded: dict[tuple[str, str], bytes] | None = None
        if management is not None and host == management.hostname:
            # The token, not a route, names the tunnel; the connector is sent the name its
            # management rule serves.
            admitted = management.admit(target.path)
            if isinstance(admitted, ErrorPage):
                return admitted, host
            tunnel_id, live = admitted.tunnel_id, admitted.connection
            authority = CONNECTOR_MANAGEMENT_HOST
        else:
            # Access policy: before routing and before a connection is picked, so nothing of a
            # request Access refused reaches a tunnel (and the team's key set needs no route).
            access = self.access
            if access is not None:
                verdict = access.check(
                    host,
                    target.path,
                    request.headers,
                    client_ip,
                    ray,
                    log_refusal=log_refusal,
                    memo=self.access_memo(visitor),
                )
                if isinstance(verdict, FlowRequest):
                    # The login flow: answered by the edge itself, never forwarded.
                    return verdict.at(authority, self.scheme), host
                if isinstance(verdict, ErrorPage):
                    return verdict, host
                if verdict is not None:
                    asserted, encoded = verdict.headers, verdict.encoded
            route = self.store.route(host)
            if route is None:
                return UNKNOWN_HOST, host or "-"
            tunnel_id, _account = route
            picked = self.registry.pick(tunnel_id)
            if picked is None:
                return TUNNEL_DOWN, host
            live = picked
        session = live.handle
        assert isinstance(session, TunnelSession)
        headers = tunnel_request_headers(request.headers, client_ip, self.scheme, ray)
        if asserted:
            headers += asserted  # after the policy dropped any visitor-sent copy
        websocket = request.upgrade and is_websocket_upgrade(request.headers)
        try:
            stream = session.open_request(
                request.method.decode("ascii"),
                target.path,
                authority,
                headers,
                request_type=RequestType.WEBSOCKET if websocket else RequestType.HTTP,
                end_stream=not request.has_body and not websocket,
                encoded=encoded,
                keep=visitor.coded,
            )
        except (StreamClosedError, Http2TunnelError) as exc:
            log.warning("cannot open a stream to tunnel %s ray=%s: %s", tunnel_id, ray, exc)
            return STREAM_FAILED, host
        return Opened(stream, host, websocket)

    async def tunnel_moved(self, host: str) -> bool:
        """Right after a hand-over: wait (bounded) for a connection of the tunnel routed at
        ``host`` while its connectors move here (:mod:`adit.edge.tunnel_hold`); whether one
        registered (then the request is routed again)."""
        hold = self.registry.hold
        if hold is None:
            return False
        route = self.store.route(host)
        return route is not None and await hold.connection(route[0])

    def _name(self, authority: str) -> tuple[str, str]:
        """The hostname of ``authority``, checked (RFC 1035) and in the one spelling the edge
        routes by, and the authority to forward: the host in that spelling, so that every
        connector (cloudflared's rules compare names byte for byte) matches what was routed.
        Raises :class:`InvalidHostname`."""
        host = host_of_authority(authority)
        if not host.isascii():
            # A Host is ASCII (RFC 9110's reg-name; IDNs travel as A-labels): refused before
            # any IDNA work, which costs a millisecond for a long Unicode name.
            raise InvalidHostname("a request's host is ASCII")
        names = (check_hostname(host), normalize_authority(authority))
        if len(self._names) >= _NAMES_KEPT:
            self._names.clear()
        self._names[authority] = names
        return names

    def _https_redirect(self, request: Request) -> str | None:
        """Where "Always Use HTTPS" sends a request on the HTTP listener (the same URL over
        https), or None: another listener, no such zone option, or an ACME HTTP-01
        challenge (a certificate authority fetches those over plain HTTP)."""
        if self.scheme != "http" or not self.store.has_zone_options():
            return None
        try:
            target = _target(request)
            host, _ = self._names.get(target.authority) or self._name(target.authority)
        except (BadRequestTarget, InvalidHostname):
            return None
        if target.path.startswith(_ACME_CHALLENGE):
            return None
        if not self.store.zone_options(host).always_https:
            return None
        port = f":{self.https_port}" if self.https_port is not None else ""
        return f"https://{host}{port}{target.path}"

    def edge_headers(self, host: str, ray: str) -> list[tuple[str, str]]:
        """The headers the edge adds to an origin's response: its Ray ID, and over HTTPS the
        zone's HSTS."""
        headers = [("Cf-Ray", ray)]
        if self.scheme == "https":
            max_age = self.store.zone_options(host).hsts_max_age
            if max_age:
                headers.append(("Strict-Transport-Security", hsts_value(max_age)))
        return headers

    def _fast(self, conn: Http1Connection, request: Request) -> _Exchange | None:
        """A bodiless request, from the connection's ``data_received``: forwarded at once,
        and answered from the tunnel's read when the whole response came in it (see
        :meth:`_Exchange.answered`). Anything unusual is left to :meth:`_handle`."""
        if request.has_body or request.upgrade or self._https_redirect(request) is not None:
            return None
        if self.challenges is not None and request.target.startswith(CHALLENGE_PATH):
            return None
        forwarded = self._forward(conn, request, self._ray(), fast=True)
        return None if isinstance(forwarded, tuple) else forwarded

    async def _handle(self, conn: Http1Connection, request: Request) -> bool:
        if self.challenges is not None and request.target.startswith(CHALLENGE_PATH):
            # Before routing: the edge's own proof, never a tunnel's; an unknown token is a
            # plain 404.
            answer = self.challenges(request.target)
            await conn.drain_body()
            await conn.respond_simple(
                200 if answer is not None else 404,
                answer if answer is not None else b"404 page not found\n",
                content_type="application/octet-stream"
                if answer is not None
                else "text/plain; charset=utf-8",
            )
            return True
        ray = self._ray()
        location = self._https_redirect(request)
        if location is not None:
            await conn.drain_body()
            body = b"Moved Permanently: " + location.encode("latin-1") + b"\n"
            await conn.respond_simple(
                301,
                body,
                content_type="text/plain; charset=utf-8",
                extra=(("Location", location), ("Cf-Ray", ray)),
            )
            return True
        forwarded = self._forward(conn, request, ray, fast=False)
        if (
            isinstance(forwarded, tuple)
            and forwarded[0] is TUNNEL_DOWN
            and await self.tunnel_moved(forwarded[1])
        ):
            forwarded = self._forward(conn, request, ray, fast=False)
        if isinstance(forwarded, tuple):
            page, host = forwarded
            if page is BAD_REQUEST:
                # A request we cannot even route is not worth its body: answer and close.
                await self._page(conn, page, host, ray, keep_alive=False)
                return False
            if isinstance(page, FlowRequest):
                page = await self._access_flow(conn, request, page)
            else:
                await conn.drain_body()
            await self._page(conn, page, host, ray)
            return True
        try:
            if forwarded.websocket:
                await self._forward_websocket(forwarded)
                return False
            return await self._forward_http(forwarded, request.has_body)
        finally:
            forwarded.finish()

    async def _access_flow(
        self, conn: Http1Connection, request: Request, flow: FlowRequest
    ) -> ErrorPage:
        """The login flow's answer, given the request's body (bounded: a larger one is
        refused and the connection closed after the answer, its rest unread)."""
        assert self.access is not None
        if conn.expects_continue:
            await conn.send_continue()
        body = bytearray()
        while chunk := await conn.read_body():
            body += chunk
            if len(body) > MAX_FLOW_BODY:
                conn.close_after()
                return FLOW_BODY_TOO_LARGE
        return await self.access.login_flow(flow, request.method.decode("latin-1"), bytes(body))

    # -- answering ------------------------------------------------------------------------------

    async def _page(
        self,
        conn: Http1Connection,
        page: ErrorPage,
        host: str,
        ray: str,
        *,
        keep_alive: bool = True,
    ) -> None:
        extra: tuple[tuple[str, str], ...] = (("Cf-Ray", ray), *page.extra_headers())
        if not keep_alive:
            extra += (("Connection", "close"),)
        await conn.respond_simple(
            page.status, page.render(host, ray), content_type=page.content_type, extra=extra
        )

    async def _answer_later(self, exchange: _Exchange) -> bool:
        """A fast request whose answer was not whole or not the origin's, in the task."""
        try:
            return await self._relay_response(exchange, None)
        finally:
            exchange.finish()

    async def _forward_http(self, exchange: _Exchange, has_body: bool) -> bool:
        uploader = None
        if has_body:
            broken = exchange.conn.broken_body()
            if broken is not None:
                # It came with its head: the stream is reset now, before the loop turns. The
                # uploader would find the same error, but an origin that answers a head at once
                # could have its answer read before the uploader runs, and relayed.
                exchange.stream.cancel(RequestAborted(broken))
            uploader = asyncio.ensure_future(self._upload(exchange))
            # Its error matters only while we wait for it; after that it is the answer's.
            uploader.add_done_callback(_retrieve)
        try:
            return await self._relay_response(exchange, uploader)
        finally:
            if uploader is not None:
                uploader.cancel()

    async def _relay_response(
        self, exchange: _Exchange, uploader: asyncio.Future[None] | None
    ) -> bool:
        conn = exchange.conn
        stream = exchange.stream
        if uploader is None:
            # While a body is uploaded its waits are the deadline (the client's and the
            # tunnel's); after that, the answer is due in the response timeout.
            conn.arm(Deadline.RESPONSE)
        try:
            response = await stream.response()
        except StreamClosedError as exc:
            if uploader is None and _resendable(exchange, exc):
                return await self._resend(exchange, exc)
            return await self._failed(exchange, exc)
        if response.meta is not ResponseMeta.ORIGIN:
            if uploader is not None:
                uploader.cancel()
            page = await self.connector_failure(
                exchange.stream, exchange.host, exchange.ray, response.end_stream
            )
            await self._page(conn, page, exchange.host, exchange.ray, keep_alive=uploader is None)
            return uploader is None
        if not await self._relay(exchange, response, keep_alive=uploader is None):
            return False
        if uploader is not None:
            try:
                await uploader
            except (StreamClosedError, BadRequest):
                return False
        return True

    async def _relay(
        self, exchange: _Exchange, response: ResponseReceived, *, keep_alive: bool
    ) -> bool:
        """The origin's response to the visitor; True once all of it went out. A response
        that cannot be delivered, or a stream that breaks, before any of it was written gets
        a page instead."""
        conn = exchange.conn
        stream = exchange.stream
        channel = stream.channel
        headers = [*response.headers, *self.edge_headers(exchange.host, exchange.ray)]
        try:
            # The head waits for body bytes that are already here (never for ones still to
            # come: a stream of events must show its head at once), and a chunk that is all
            # the body there is waits for the end: a small response leaves in one write.
            await conn.start_response(
                response.status, headers, drop=HOP_BY_HOP, flush=not channel.ready
            )
            while True:
                if not channel.ready:
                    conn.arm(Deadline.RESPONSE)
                chunk = await channel.read()
                if not chunk:
                    break
                await conn.send_body(chunk, flush=not channel.remote_ended)
            await conn.end_response()
        except ResponseError as exc:
            log.warning(
                "undeliverable response for %s ray=%s: %s", exchange.host, exchange.ray, exc
            )
            stream.cancel(StreamClosedError("the response cannot be delivered"))
            if conn.discard_response():
                await self._page(
                    conn, BAD_RESPONSE, exchange.host, exchange.ray, keep_alive=keep_alive
                )
                return keep_alive
            return False
        except StreamClosedError as exc:
            if conn.discard_response():
                return await self._failed(exchange, stream.failure or exc)
            return False  # the body broke after the status went out: cut the connection
        return True

    async def _resend(self, exchange: _Exchange, error: StreamClosedError) -> bool:
        """Forward a request again, once, over another connection: its first one ended
        before the connector received any of it (see :func:`_resendable`)."""
        forwarded = self._forward(exchange.conn, exchange.request, exchange.ray, fast=False)
        if isinstance(forwarded, tuple):
            return await self._failed(exchange, error)
        log.info(
            "request sent again over another tunnel connection for %s ray=%s: %s",
            exchange.host,
            exchange.ray,
            error,
        )
        forwarded.resent = True
        try:
            return await self._relay_response(forwarded, None)
        finally:
            forwarded.finish()

    async def _failed(self, exchange: _Exchange, error: StreamClosedError) -> bool:
        """Answer a request whose stream ended before its answer; never keep-alive."""
        if isinstance(error, ClientGone):
            return False
        if isinstance(error, RequestAborted):
            page = request_error_page(error.cause)
            log.info(
                "request from %s failed ray=%s: %s", exchange.conn.client_ip, exchange.ray, error
            )
        elif isinstance(error, TunnelTimeout):
            page = TUNNEL_TIMEOUT
            log.warning(
                "no answer in time from the tunnel for %s ray=%s", exchange.host, exchange.ray
            )
        else:
            page = STREAM_FAILED
            log.warning(
                "tunnel stream failed for %s ray=%s: %s", exchange.host, exchange.ray, error
            )
        await self._page(exchange.conn, page, exchange.host, exchange.ray, keep_alive=False)
        return False

    async def _upload(self, exchange: _Exchange) -> None:
        """Eyeball request body → tunnel stream (the tunnel's back-pressure paces the reads).

        A body that breaks or stalls resets the stream with the reason (the answer then
        carries it); a tunnel that does not take the body in time is a 524."""
        conn = exchange.conn
        channel = exchange.stream.channel
        try:
            await conn.send_continue()
            while chunk := await conn.read_body():
                conn.arm(Deadline.RESPONSE)
                await channel.write(chunk)
        except BadRequest as exc:
            exchange.stream.cancel(RequestAborted(exc))
            raise
        channel.end()
        if not conn.responded:
            conn.arm(Deadline.RESPONSE)

    async def _forward_websocket(self, exchange: _Exchange) -> None:
        conn = exchange.conn
        stream = exchange.stream
        conn.arm(Deadline.RESPONSE)
        try:
            response = await stream.response()
        except StreamClosedError as exc:
            await self._failed(exchange, exc)
            return
        if response.meta is not ResponseMeta.ORIGIN:
            page = await self.connector_failure(
                exchange.stream, exchange.host, exchange.ray, response.end_stream
            )
            await self._page(conn, page, exchange.host, exchange.ray, keep_alive=False)
            return
        if not _switched(response):
            # The origin refused the upgrade: its answer goes on as it is.
            conn.close_after()
            await self._relay(exchange, response, keep_alive=False)
            return
        headers = [
            (n, v)
            for n, v in response.headers
            if n.lower() not in ("content-length", "transfer-encoding")
        ]
        try:
            await conn.send_informational(101, headers)
        except ResponseError as exc:
            log.warning("undeliverable upgrade for %s ray=%s: %s", exchange.host, exchange.ray, exc)
            await self._page(conn, BAD_RESPONSE, exchange.host, exchange.ray, keep_alive=False)
            return
        await _pipe_raw(conn, stream, conn.take_leftover())

    async def connector_failure(
        self, stream: RequestStream, host: str, ray: str, ended: bool
    ) -> ErrorPage:
        """The page for a connector-made error response. Its reason's class picks the page;
        the connector's words (addresses, errors) go to the log under the Ray ID."""
        body = b""
        if not ended:
            with contextlib.suppress(StreamClosedError, TimeoutError):
                async with asyncio.timeout(_REASON_WAIT):
                    while len(body) < _MAX_REASON and (chunk := await stream.channel.read()):
                        body += chunk
        stream.channel.reset()
        if not body.startswith(_ORIGIN_ERROR_PREFIX):
            log.warning(
                "the connector could not reach the origin for %s ray=%s (it gave no reason)",
                host,
                ray,
            )
            return ORIGIN_FAILED
        first, _, rest = body[:_MAX_REASON].partition(b"\n")
        reason = first[len(_ORIGIN_ERROR_PREFIX) :].decode("latin-1").strip()
        detail = " | ".join(
            line.strip() for line in rest.decode("utf-8", "replace").splitlines() if line.strip()
        )
        log.warning(
            "the connector could not reach the origin for %s ray=%s: %s: %s",
            host,
            ray,
            reason,
            detail,
        )
        return origin_failure_page(reason)


async def _pipe_raw(conn: Http1Connection, stream: RequestStream, leftover: bytes) -> None:
    """Bytes both ways after a WebSocket upgrade until either side ends."""

    async def upstream() -> None:
        if leftover:
            await stream.channel.write(leftover)
        while data := await conn.read_raw():
            await stream.channel.write(data)
        stream.channel.end()

    async def downstream() -> None:
        while data := await stream.channel.read():
            await conn.write_raw(data)

    up = asyncio.ensure_future(upstream())
    down = asyncio.ensure_future(downstream())
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if down in done:
            up.cancel()
        else:
            # The eyeball closed: give the origin's last bytes a moment, then stop.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(down), 5.0)
            down.cancel()
    finally:
        for task in (up, down):
            task.cancel()
        for task in (up, down):
            with contextlib.suppress(BaseException):
                await task
        stream.channel.reset()


class _Exchange:
    """One eyeball request forwarded over a tunnel stream, until it is answered or given up.

    The eyeball connection holds it (:attr:`Http1Connection.exchange`) and calls
    :meth:`abandon` when the visitor leaves or a deadline passes; the fast path's answer
    comes to :meth:`answered` from the tunnel's read.
    """

    __slots__ = ("conn", "host", "listener", "ray", "request", "resent", "stream", "websocket")

    def __init__(
        self,
        listener: PublicListener,
        conn: Http1Connection,
        request: Request,
        stream: RequestStream,
        host: str,
        ray: str,
        websocket: bool,
    ) -> None:
        self.listener = listener
        self.conn = conn
        self.request = request
        self.stream = stream
        self.host = host
        self.ray = ray
        self.websocket = websocket
        #: This is the request's second stream (it is never sent a third time).
        self.resent = False

    def answered(self, stream: RequestStream) -> None:
        """From the tunnel's read: write a whole response now, else leave it to the task."""
        conn = self.conn
        answer = stream.answer
        if not stream.complete or answer is None:
            conn.continue_async(self.listener._answer_later(self))
            return
        keep_alive = False
        try:
            conn.respond_now(
                answer.status,
                answer.headers,
                stream.body,
                drop=HOP_BY_HOP,
                extra=self.listener.edge_headers(self.host, self.ray),
            )
            keep_alive = True
        except ResponseError as exc:
            log.warning("undeliverable response for %s ray=%s: %s", self.host, self.ray, exc)
            keep_alive = self._respond_page(BAD_RESPONSE, keep_alive=True)
        except ConnectionError:
            pass  # the visitor is gone: all we can do is close
        except Exception:
            # Called from the tunnel's read: a bug here must cost this request, not the tunnel.
            log.exception("request handling failed")
        finally:
            stream.session.finished(stream)
            conn.finish_fast(keep_alive)  # the connection lets go of the exchange

    def abandon(self, why: Deadline | None) -> None:
        """The visitor left (``why`` is None) or the answer is overdue: reset the stream (the
        connector stops the origin request). A fast request is finished here, with a 524
        page when it timed out; the task's waits raise the reason and it answers."""
        self.stream.cancel(
            ClientGone("the visitor went away")
            if why is None
            else TunnelTimeout("no answer in time")
        )
        conn = self.conn
        if conn.phase is not Phase.FAST:
            return
        if why is not None:
            log.warning("no answer in time from the tunnel for %s ray=%s", self.host, self.ray)
            self._respond_page(TUNNEL_TIMEOUT, keep_alive=False)
        self.finish()
        conn.finish_fast(False)

    def finish(self) -> None:
        """The pipeline is done with the stream (reset if still open)."""
        if self.conn.exchange is self:
            self.conn.exchange = None
        self.stream.session.finished(self.stream)

    def _respond_page(self, page: ErrorPage, *, keep_alive: bool) -> bool:
        """A page written at once (no task): whether the connection may live on."""
        extra: tuple[tuple[str, str], ...] = (("Cf-Ray", self.ray), *page.extra_headers())
        if not keep_alive:
            extra += (("Connection", "close"),)
        body = page.render(self.host, self.ray)
        try:
            self.conn.respond_now(
                page.status,
                [("Content-Type", page.content_type), ("Content-Length", str(len(body)))],
                [body],
                extra=extra,
            )
        except (ConnectionError, ResponseError):
            return False
        return keep_alive


#: Methods a proxy may send again after a failure (RFC 9110 §9.2.2).
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


def _resendable(exchange: _Exchange, error: StreamClosedError) -> bool:
    """Whether a request whose stream failed may go over another connection: the connector
    acknowledged none of it when its connection ended (QUIC tells; a connector killed or
    gone silent), it has no body (nothing of the visitor's was consumed), its method is
    idempotent (had the connector read it and died before acknowledging, the origin may see
    it twice), and it was not sent again already."""
    request = exchange.request
    return (
        isinstance(error, StreamUndelivered)
        and not exchange.resent
        and not exchange.websocket
        and not request.has_body
        and request.method in _IDEMPOTENT
    )


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


def _switched(response: ResponseReceived) -> bool:
    """Whether the origin accepted a WebSocket upgrade. HTTP/2 has no 101: a connector
    answers 200 either way (cloudflared's ``http2RespWriter`` turns the origin's 101 into
    200), so what tells an accepted upgrade from a refusal is the origin's
    ``Sec-WebSocket-Accept``, which the connector passes on with the 101's other headers."""
    return response.status in (101, 200) and any(
        len(name) == 20 and name.lower() == "sec-websocket-accept" for name, _ in response.headers
    )


def _target(request: Request) -> RequestTarget:
    """The target to route and forward: one normal path (raises :class:`BadRequestTarget`)."""
    return normalize_target(
        request.method.decode("ascii"),
        request.target.decode("latin-1"),
        request.host.decode("latin-1"),
    )
