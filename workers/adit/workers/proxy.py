"""Serving one tunnel stream from its matched ingress rule (cloudflared's ``proxy.Proxy``).

:meth:`OriginProxy.serve` never lets an origin or network failure escape: before the
response head was sent the edge gets ``502`` with ``src: cloudflared``; afterwards the
stream is reset. Every failure is logged with the rule index, the origin and a hint.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from adit.config.origin import (
    BastionService,
    HelloWorldService,
    HttpService,
    OriginOptions,
    Rule,
    SocksProxyService,
    StatusService,
    StreamService,
    UnixService,
)
from adit.ipc.telemetry import CONNECT_LATENCY_BUCKETS, Histogram
from adit.logs.formats import event, fields
from adit.protocol.hostnames import host_of_authority
from adit.workers.errors import (
    UNREACHABLE_MESSAGE,
    OriginError,
    OriginProtocolError,
    UnsupportedService,
)
from adit.workers.origins.dialer import Dialer, OriginKey, split_destination, streams_of
from adit.workers.origins.http1 import OriginConnection, OriginResponse
from adit.workers.origins.pipe import pipe, pipe_half_closing
from adit.workers.origins.pool import ConnectionPool
from adit.workers.origins.request import (
    BodyFraming,
    OriginRequestHead,
    build_request_head,
    tag_headers,
)
from adit.workers.quick_get import QuickExchange, QuickOwner, QuickStream
from adit.workers.stream import ResponseSource, StreamKind, TunnelStream

if TYPE_CHECKING:
    # Imported when first used: h2 (http2Origin), h11 (hello_world) and PyJWT (access) are
    # memory in every worker that serves none of them.
    from adit.workers.access import AccessGate
    from adit.workers.flow_limit import FlowLimiter
    from adit.workers.origins.helloworld import HelloWorldOrigin
    from adit.workers.origins.http2 import H2OriginConnection

__all__ = ["BODY_PROBE_SECONDS", "ORIGIN_ERROR_PREFIX", "OriginProxy", "ProxyStats"]

# The first line of the body of the connector's 502 tells the edge why (refused | timeout |
# tls); the lines after it are shown on the error page. cloudflared's 502 has no body, and the
# edge falls back to its generic page. (Not a header: the tunnel carries no headers for
# responses the connector makes itself, as cloudflared sends none.)
ORIGIN_ERROR_PREFIX = "adit-origin-error:"

# Go's Transport waits this long for the first byte of a body of unknown length on a
# GET-like request before it commits to chunked framing (net/http transfer.go).
BODY_PROBE_SECONDS = 0.2

#: A response body up to this size that has wholly arrived with its head goes to the tunnel
#: in the same call as the head (it is in memory already; larger ones are streamed).
WHOLE_BODY_LIMIT = 64 * 1024


@dataclass(slots=True)
class ProxyStats:
    """Counters behind ``cloudflared_tunnel_{total_requests,request_errors,...}``,
    ``cloudflared_tcp_*`` and ``cloudflared_proxy_*``; mutable.

    Counted where cloudflared counts (proxy/proxy.go): every stream is a request, an upgraded
    WebSocket or a TCP stream included, concurrent while it lasts; a response by code is an
    HTTP origin's (a 101, a stream's ack and a middleware refusal are none); TCP sessions are
    private-network flows only; the connect latency is a stream origin's dial and ack.
    """

    total_requests: int = 0
    request_errors: int = 0
    concurrent_requests: int = 0
    responses_by_code: dict[int, int] = field(default_factory=dict)
    tcp_active_sessions: int = 0
    tcp_total_sessions: int = 0
    #: Private TCP flows refused by ``--max-active-flows``
    #: (``flow_client_registrations_rate_limited_total{flow_type="tcp"}``).
    tcp_rate_limited: int = 0
    connect_stream_errors: int = 0
    connect_latency: Histogram = field(default_factory=lambda: Histogram(CONNECT_LATENCY_BUCKETS))

    def count_response(self, status: int) -> None:
        """One more response with ``status`` sent to the edge."""
        self.responses_by_code[status] = self.responses_by_code.get(status, 0) + 1


class _Body(msgspec.Struct, frozen=True):
    """The request body as it will be sent: a prefix already read, then maybe the stream."""

    framing: BodyFraming
    prefix: bytes = b""
    streamed: bool = False  # more body follows from stream.read()


_NO_BODY = _Body(BodyFraming.NONE)


class OriginProxy:
    """Serves tunnel streams against ingress rules for one worker.

    Holds the worker's keep-alive pool and the lazily started ``hello_world`` origin; call
    :meth:`aclose` on shutdown.
    """

    whole_body_limit = WHOLE_BODY_LIMIT

    def __init__(
        self,
        connector_id: uuid.UUID,
        tags: Mapping[str, str] | None = None,
        logger: logging.Logger | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = ProxyStats()
        self._log = logger or logging.getLogger("adit.workers.proxy")
        self._tags = tag_headers(connector_id, tags or {})
        self._pool: ConnectionPool[OriginConnection] = ConnectionPool(clock)
        self._h2_pool: ConnectionPool[H2OriginConnection] = ConnectionPool(clock)
        self._dialer = Dialer()
        self._hello_world: HelloWorldOrigin | None = None
        self._access: AccessGate | None = None

    async def aclose(self) -> None:
        """Close idle origin connections and stop the hello_world origin."""
        self._pool.close()
        self._h2_pool.close()
        if self._hello_world is not None:
            await self._hello_world.aclose()

    async def serve(self, stream: TunnelStream, rule: Rule) -> None:
        """Answer ``stream`` from ``rule``'s service; finishes or resets the stream."""
        self.stats.total_requests += 1
        self.stats.concurrent_requests += 1
        if self._log.isEnabledFor(logging.DEBUG):  # at debug, or while a ``tail`` listens
            self._log_request(stream, rule)
        await self._guarded(stream, rule, self._serve(stream, rule))

    def serve_quick(self, stream: QuickStream, rule: Rule, owner: QuickOwner) -> bool:
        """Start answering ``stream`` without a task when it is the simple case: a bodiless
        request to a plain-HTTP origin with an idle pooled connection (see
        :mod:`~adit.workers.quick_get`). False: not started, :meth:`serve` it."""
        request = stream.request
        if not request.end_stream or request.kind is not StreamKind.HTTP:
            return False
        service = rule.service
        if not isinstance(service, HttpService) or service.scheme != "http":
            return False
        options = rule.options
        access = options.access
        if (access is not None and access.required) or self._log.isEnabledFor(logging.DEBUG):
            return False
        key = OriginKey(service.host, service.port)
        connection = self._pool.checkout(key)
        if connection is None:
            return False  # a dial: the general path
        head = build_request_head(request, options, self._tags)
        if head.framing is not BodyFraming.NONE and head.framing is not BodyFraming.PROBE:
            self._pool.checkin(
                key,
                connection,
                max_idle=options.keep_alive_connections,
                idle_timeout=options.keep_alive_timeout,
            )
            return False
        try:
            connection.start_request(head.method, head.target, head.headers)
        except OriginError:
            # An invalid head (the general path says why) or a connection that died idle.
            connection.close()
            return False
        self.stats.total_requests += 1
        self.stats.concurrent_requests += 1
        QuickExchange(self, stream, rule, key, head, connection, owner)
        return True

    def quick_done(self, exchange: QuickExchange, whole: bytes) -> None:
        """A quick exchange's complete answer (its head in ``exchange.response``) goes to the
        edge in one call; the origin connection back to the pool."""
        stream = exchange.stream
        connection = exchange.connection
        response = exchange.response
        assert response is not None
        options = exchange.rule.options
        try:
            stream.send_whole(response.status, _response_headers(response), whole)
        except Exception as exc:
            # The stream went away meanwhile (the edge connection closed).
            self._log_failure(stream, exchange.rule, exc, "the request ended abruptly")
            self.stats.request_errors += 1
            with contextlib.suppress(Exception):
                stream.reset()
        else:
            self.stats.count_response(response.status)
        finally:
            self.stats.concurrent_requests -= 1
        if connection.reusable:
            self._pool.checkin(
                exchange.key,
                connection,
                max_idle=options.keep_alive_connections,
                idle_timeout=options.keep_alive_timeout,
            )
        else:
            connection.close()

    def quick_cancelled(self, exchange: QuickExchange) -> None:
        """The edge reset a quick exchange's stream: its origin connection is dropped (as a
        cancelled request's is)."""
        exchange.connection.close()
        self.stats.concurrent_requests -= 1
        with contextlib.suppress(Exception):
            exchange.stream.reset()

    def quick_resumed(self, exchange: QuickExchange) -> Coroutine[Any, Any, None]:
        """What a quick exchange that is not the simple case after all (a large or streamed
        body, a 101, an error, a pooled connection the origin had closed) becomes: the
        general path, from the request already sent, in a task."""
        stream, rule = exchange.stream, exchange.rule
        head = exchange.head
        request = _Request(head.method, head.target, head.headers, _NO_BODY, None)
        work = self._send_and_respond(
            stream, rule.options, exchange.key, request, exchange.connection, sent=True
        )
        return self._guarded(stream, rule, work)

    async def _guarded(
        self, stream: TunnelStream, rule: Rule, work: Coroutine[Any, Any, None]
    ) -> None:
        """Run ``work`` for ``stream`` (counted in by the caller): failures end the stream
        as described at the top."""
        try:
            await work
        except OriginError as exc:
            self._log_failure(stream, rule, exc, exc.hint)
            await self._abort(stream, exc)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                stream.reset()
            raise
        except Exception as exc:
            # The stream itself failed (the eyeball went away) or a bug: still end cleanly.
            self._log_failure(stream, rule, exc, "the request ended abruptly")
            await self._abort(stream)
        finally:
            self.stats.concurrent_requests -= 1

    async def serve_private(
        self, stream: TunnelStream, options: OriginOptions, limiter: FlowLimiter | None = None
    ) -> None:
        """A private-network TCP flow (cloudflared's ``ProxyTCP``): the edge names the
        ``ip:port`` itself, for a route of the account's to this tunnel; no ingress rule is
        involved. The bytes are piped both ways until either side ends.

        ``limiter`` (``--max-active-flows``, shared with the UDP sessions) may refuse it: a 502
        that says "flow rate limited" to the edge, as cloudflared's."""
        self.stats.total_requests += 1
        self.stats.concurrent_requests += 1
        self.stats.tcp_total_sessions += 1
        self.stats.tcp_active_sessions += 1
        if limiter is not None and not limiter.acquire():
            try:
                await self._refuse_flow(stream)
            finally:
                self.stats.concurrent_requests -= 1
                self.stats.tcp_active_sessions -= 1
            return
        try:
            await self._serve_private(stream, options)
        finally:
            if limiter is not None:
                limiter.release()

    async def _refuse_flow(self, stream: TunnelStream) -> None:
        self.stats.tcp_rate_limited += 1
        self._log.warning(
            "Too many concurrent flows being handled, rejecting tcp proxy",
            extra=fields(destAddr=stream.request.authority, connIndex=stream.request.conn_index),
        )
        try:
            await stream.send_response(
                502,
                [],
                source=ResponseSource.FLOW_RATE_LIMITED,
                end_stream=True,
                body=b"failed to start tcp flow due to rate limiting: too many active flows",
            )
        except Exception:
            with contextlib.suppress(Exception):
                stream.reset()

    async def _serve_private(self, stream: TunnelStream, options: OriginOptions) -> None:
        writer: asyncio.StreamWriter | None = None
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(
                "tcp proxy stream started",
                extra={
                    **fields(
                        destAddr=stream.request.authority, connIndex=stream.request.conn_index
                    ),
                    **event("tcp"),
                },
            )
        try:
            host, port = split_destination(stream.request.authority)
            with self._connecting():
                reader, writer = await self._dialer.dial(OriginKey(host, port), options)
                await stream.send_response(200, [], source=ResponseSource.ORIGIN)
            # A TCP connection end to end: a client's end of input still gets the answer.
            await pipe_half_closing(stream, reader, writer)
        except OriginError as exc:
            self._log.warning(
                "%s: %s",
                UNREACHABLE_MESSAGE,
                exc,
                extra=fields(
                    destAddr=stream.request.authority, connIndex=stream.request.conn_index
                ),
            )
            await self._abort(stream, exc)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                stream.reset()
            raise
        except Exception as exc:
            self._log.info(
                "private network flow ended: %s",
                exc,
                extra=fields(
                    destAddr=stream.request.authority, connIndex=stream.request.conn_index
                ),
            )
            await self._abort(stream)
        finally:
            if writer is not None:
                writer.close()
            self.stats.concurrent_requests -= 1
            self.stats.tcp_active_sessions -= 1

    @contextlib.contextmanager
    def _connecting(self) -> Iterator[None]:
        """A stream origin's dial and ack: ``cloudflared_proxy_connect_latency`` in whole
        milliseconds as Go counts them, or one ``connect_streams_errors``."""
        start = time.monotonic()
        try:
            yield
        except BaseException:
            self.stats.connect_stream_errors += 1
            raise
        self.stats.connect_latency.observe(float(int((time.monotonic() - start) * 1000)))

    async def _serve(self, stream: TunnelStream, rule: Rule) -> None:
        access = rule.options.access
        if access is not None and access.required and not await self._access_granted(stream, rule):
            # cloudflared's middleware: a bare 403, before any service is touched, counted as
            # a request error (logRequestError), not as an origin's response.
            await stream.send_response(403, [], source=ResponseSource.ORIGIN, end_stream=True)
            self.stats.request_errors += 1
            return
        service = rule.service
        if isinstance(service, StatusService):
            await stream.send_response(
                service.status, [], source=ResponseSource.ORIGIN, end_stream=True
            )
            self.stats.count_response(service.status)
            return
        if isinstance(service, StreamService | BastionService | SocksProxyService):
            await self._serve_stream(stream, rule)
            return
        head = build_request_head(stream.request, rule.options, self._tags)
        if isinstance(service, HttpService):
            key = _http_key(service, rule.options, head.host)
        elif isinstance(service, UnixService):
            key = _unix_key(service, rule.options, head.host)
        elif isinstance(service, HelloWorldService):
            if self._hello_world is None:
                from adit.workers.origins.helloworld import HelloWorldOrigin

                self._hello_world = HelloWorldOrigin(self._log)
            host, port = await self._hello_world.address()
            key = OriginKey(host, port, tls=True, no_tls_verify=True)
        else:
            raise UnsupportedService(f"service {service.url} is not supported yet")
        if key.tls and rule.options.http2_origin and stream.request.kind is StreamKind.HTTP:
            h2_key = msgspec.structs.replace(key, http2=True)
            await self._proxy_h2(stream, rule.options, h2_key, head)
            return
        await self._proxy_http(stream, rule.options, key, head)

    async def _access_granted(self, stream: TunnelStream, rule: Rule) -> bool:
        """``originRequest.access.required``: the request's Access JWT is valid for the rule."""
        from adit.workers.access import AccessDenied, AccessGate

        assert rule.options.access is not None
        if self._access is None:
            self._access = AccessGate()
        try:
            await self._access.check(stream.request.headers, rule.options.access)
        except AccessDenied as exc:
            self._log.info(
                "Request filtered by the Access JWT check due to: %s",
                exc,
                extra=fields(ingressRule=rule.index, connIndex=stream.request.conn_index),
            )
            return False
        return True

    async def _proxy_h2(
        self, stream: TunnelStream, options: OriginOptions, key: OriginKey, head: OriginRequestHead
    ) -> None:
        """``http2Origin``: HTTP/2 when the origin picks ``h2`` in ALPN, else HTTP/1.1."""
        from adit.workers.origins.http2 import H2OriginConnection, h2_request_headers

        if (http1 := self._pool.checkout(key)) is not None:
            # This origin answered HTTP/1.1 before; keep using it.
            await self._proxy_http(stream, options, key, head, http1)
            return
        connection = self._h2_pool.checkout(key)
        if connection is None:
            transport, early = await self._dialer.connect(key, options)
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                origin = OriginConnection(transport, early)
                await self._proxy_http(stream, options, key, head, origin)
                return
            connection = H2OriginConnection(*streams_of(transport, early))
        pooled = False
        pump: asyncio.Task[None] | None = None
        try:
            no_body = head.framing is BodyFraming.NONE
            await connection.send_request(
                h2_request_headers(head.method, head.target, head.host, head.headers),
                end_stream=no_body,
            )
            if not no_body:
                pump = asyncio.create_task(connection.send_body(_stream_chunks(stream)))
            status, headers = await connection.receive_response()
            await stream.send_response(status, headers, source=ResponseSource.ORIGIN)
            self.stats.count_response(status)
            async for chunk in connection.body():
                await stream.write(chunk)
            await stream.end()
            if pump is not None and (not pump.done() or pump.exception() is not None):
                return
            if connection.reusable:
                self._h2_pool.checkin(
                    key,
                    connection,
                    max_idle=options.keep_alive_connections,
                    idle_timeout=options.keep_alive_timeout,
                )
                pooled = True
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            if not pooled:
                connection.close()

    async def _serve_stream(self, stream: TunnelStream, rule: Rule) -> None:
        """TCP over WebSocket: ack the stream ourselves and bridge frames to the origin."""
        # Imported here: most configurations never proxy TCP, and the WebSocket codec
        # (hashlib with it) and the SOCKS server would be ~1 MiB of every worker's memory.
        from adit.workers.origins.socks import serve_socks
        from adit.workers.origins.wsbridge import ack_headers, bridge, jump_destination

        if stream.request.kind is not StreamKind.WEBSOCKET:
            raise UnsupportedService(
                f"{rule.service.url} serves WebSocket streams only, got a plain HTTP request"
            )
        service = rule.service
        socks = isinstance(service, SocksProxyService) or rule.options.proxy_type == "socks"
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        if not socks:
            if isinstance(service, BastionService):
                host, port = split_destination(jump_destination(stream.request))
            else:
                assert isinstance(service, StreamService)
                if not service.port:
                    split_destination(service.host)  # raises Go's "missing port" error
                host, port = service.host, service.port
        try:
            with self._connecting():
                if not socks:
                    reader, writer = await self._dialer.dial(OriginKey(host, port), rule.options)
                # The ack is no origin response (cloudflared's proxyStream counts none).
                await stream.send_response(
                    200, ack_headers(stream.request), source=ResponseSource.ORIGIN
                )
            if reader is not None and writer is not None:
                await bridge(stream, reader, writer)
            else:
                await serve_socks(stream, rule.options, self._dialer)
            await stream.end()
        finally:
            if writer is not None:
                writer.close()

    async def _proxy_http(
        self,
        stream: TunnelStream,
        options: OriginOptions,
        key: OriginKey,
        head: OriginRequestHead,
        connection: OriginConnection | None = None,
    ) -> None:
        body = await _resolve_body(stream, head.framing)
        headers = head.headers
        if body.framing is BodyFraming.CHUNKED:
            headers = (*headers, ("Transfer-Encoding", "chunked"))
        elif body.framing is BodyFraming.BUFFERED:
            headers = (*headers, ("Content-Length", str(len(body.prefix))))
        request = _Request(head.method, head.target, headers, body, head.content_length)

        if connection is None:
            connection = await self._checkout(key, options)
        await self._send_and_respond(stream, options, key, request, connection)

    async def _send_and_respond(
        self,
        stream: TunnelStream,
        options: OriginOptions,
        key: OriginKey,
        request: _Request,
        connection: OriginConnection,
        *,
        sent: bool = False,
    ) -> None:
        """The exchange on ``connection`` (``sent``: the bodiless request is written
        already), then the response to the tunnel."""
        body = request.body
        pump: asyncio.Task[None] | None = None
        pooled = False
        try:
            while True:
                try:
                    if sent:
                        sent = False
                        response = await connection.receive_response()
                    else:
                        pump, response = await self._exchange(connection, stream, request)
                    break
                except OriginProtocolError:
                    # A pooled connection the origin closed meanwhile: retry once on a fresh
                    # one when nothing was consumed from the stream (Go's Transport does too).
                    if not connection.reused or connection.response_bytes_seen or body.streamed:
                        raise
                    connection.close()
                    connection = OriginConnection(*await self._dialer.connect(key, options))

            if response.status == 101:
                if stream.request.kind is not StreamKind.WEBSOCKET:
                    raise OriginProtocolError("origin switched protocols without being asked to")
                # The origin's 101 (HTTP/2 says 200 for it; QUIC carries the 101 itself).
                await stream.send_response(101, response.headers, source=ResponseSource.ORIGIN)
                transport, ended = connection.upgrade()
                trailing = connection.trailing_data
                # A WebSocket is piped for as long as it lives: hold nothing of the exchange,
                # the connection's parse state included (its transport is the pipe's now).
                pooled = True  # i.e. not this frame's to close: closed after the pipe
                del body, request, response, connection
                try:
                    await pipe(stream, transport, trailing, ended=ended)
                finally:
                    transport.close()
                await stream.end()
                return

            # Most responses have all arrived with their head: then one tunnel write for all.
            whole = connection.whole_body(WHOLE_BODY_LIMIT)
            await stream.send_response(
                response.status,
                _response_headers(response),
                source=ResponseSource.ORIGIN,
                end_stream=whole is not None,
                body=whole or b"",
            )
            self.stats.count_response(response.status)
            if whole is None:
                async for chunk in connection.body():
                    await stream.write(chunk)
                await stream.end()
            if pump is not None and (not pump.done() or pump.exception() is not None):
                # The origin answered without taking the whole body (an early 413, say): the
                # response stands, but the connection is spent.
                return
            if connection.reusable:
                self._pool.checkin(
                    key,
                    connection,
                    max_idle=options.keep_alive_connections,
                    idle_timeout=options.keep_alive_timeout,
                )
                pooled = True
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            if not pooled:
                connection.close()

    async def _checkout(self, key: OriginKey, options: OriginOptions) -> OriginConnection:
        connection = self._pool.checkout(key)
        if connection is not None:
            return connection
        return OriginConnection(*await self._dialer.connect(key, options))

    async def _exchange(
        self, connection: OriginConnection, stream: TunnelStream, request: _Request
    ) -> tuple[asyncio.Task[None] | None, OriginResponse]:
        """Send the request, start the body, and wait for the final response head."""
        body = request.body
        length = request.content_length if body.framing is BodyFraming.LENGTH else None
        if body.framing is BodyFraming.BUFFERED:
            length = len(body.prefix)
        chunked = body.framing is BodyFraming.CHUNKED
        await connection.send_request(
            request.method,
            request.target,
            request.headers,
            body=body.prefix,
            content_length=length,
            chunked=chunked,
            end=not body.streamed,
        )
        if not body.streamed:
            # The common case (a GET): no task, the response head is awaited right here.
            return None, await connection.receive_response()
        pump = asyncio.create_task(_send_body(connection, stream))
        pump.add_done_callback(functools.partial(_interrupt_on_failure, connection))
        try:
            response = await connection.receive_response()
        except BaseException:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            raise
        return pump, response

    async def _abort(self, stream: TunnelStream, error: OriginError | None = None) -> None:
        self.stats.request_errors += 1
        try:
            if stream.response_started:
                stream.reset()
            elif error is not None and error.reason:
                # A short reason the edge can show; cloudflared's own 502 has no body.
                await stream.send_response(502, [], source=ResponseSource.CONNECTOR)
                text = f"{ORIGIN_ERROR_PREFIX} {error.reason}\n{error}\n{error.hint}\n"
                await stream.write(text.encode())
                await stream.end()
            else:
                await stream.send_response(
                    502, [], source=ResponseSource.CONNECTOR, end_stream=True
                )
        except Exception:
            # The stream is already gone; resetting is the most we can still try.
            with contextlib.suppress(Exception):
                stream.reset()

    def _log_request(self, stream: TunnelStream, rule: Rule) -> None:
        """cloudflared's ``logHTTPRequest``: ``GET https://host/path HTTP/1.1`` as an ``http``
        event. Unlike cloudflared, neither the query string nor the headers are logged: they
        carry tokens and cookies."""
        request = stream.request
        path = request.path.partition("?")[0]
        ray = next((v for n, v in request.headers if n.lower() == "cf-ray"), "")
        extra = {
            "connIndex": request.conn_index,
            "host": request.host,
            "path": path,
            "ingressRule": rule.index,
            "originService": rule.service.url,
        }
        if ray:
            extra["cfRay"] = ray
        self._log.debug(
            "%s https://%s%s HTTP/1.1",
            request.method,
            request.host,
            path,
            extra={**fields(**extra), **event("http")},
        )

    def _log_failure(self, stream: TunnelStream, rule: Rule, exc: Exception, hint: str) -> None:
        if stream.response_started:
            message = f"Error proxying response from the origin service: {exc}"
        elif isinstance(exc, OriginError):
            message = f"{UNREACHABLE_MESSAGE}: {exc}"
        else:
            message = f"Incoming request ended abruptly: {exc!r}"
        request = stream.request
        self._log.error(
            'error="%s" connIndex=%d ingressRule=%d originService=%s dest=%s%s hint="%s"',
            message,
            request.conn_index,
            rule.index,
            rule.service.url,
            request.authority,
            request.path,
            hint,
            extra={
                "connIndex": request.conn_index,
                "ingressRule": rule.index,
                "originService": rule.service.url,
                "hint": hint,
            },
        )


class _Request(msgspec.Struct, frozen=True):
    """What goes to the origin: the head (framing header included) and the body plan."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: _Body
    content_length: int | None


async def _resolve_body(stream: TunnelStream, framing: BodyFraming) -> _Body:
    """Settle PROBE and BUFFERED framings by reading from the stream as Go would."""
    if framing is BodyFraming.NONE:
        return _NO_BODY
    if framing in (BodyFraming.LENGTH, BodyFraming.CHUNKED):
        return _Body(framing, streamed=True)
    if framing is BodyFraming.BUFFERED:
        # disableChunkedEncoding with no Content-Length: WSGI origins cannot take chunked
        # bodies, so the body must be counted before it is sent.
        parts = []
        while data := await stream.read():
            parts.append(data)
        return _Body(BodyFraming.BUFFERED, prefix=b"".join(parts))
    if stream.request.end_stream:
        # A GET whose stream ended with its head (the normal case): no timer, no read.
        return _NO_BODY
    # Reads are cancel-safe (nothing is taken from the stream until a read returns), so a
    # probe that times out loses nothing.
    try:
        async with asyncio.timeout(BODY_PROBE_SECONDS):
            first = await stream.read()
    except TimeoutError:
        # Still waiting: commit to chunked; the body is read from the stream as it comes.
        return _Body(BodyFraming.CHUNKED, streamed=True)
    if not first:
        return _NO_BODY
    return _Body(BodyFraming.CHUNKED, prefix=first, streamed=True)


async def _stream_chunks(stream: TunnelStream) -> AsyncIterator[bytes]:
    while data := await stream.read():
        yield data


async def _send_body(connection: OriginConnection, stream: TunnelStream) -> None:
    while data := await stream.read():
        await connection.send_body(data)
    await connection.end_request()


def _interrupt_on_failure(connection: OriginConnection, pump: asyncio.Task[None]) -> None:
    """A body pump that failed ends the wait for the response head (and is retrieved)."""
    if not pump.cancelled() and (exc := pump.exception()) is not None:
        connection.interrupt(exc)


def _response_headers(response: OriginResponse) -> list[tuple[str, str]]:
    # Go's client moves Transfer-Encoding out of the header map; every other field stays.
    return [
        (name, value)
        for name, value in response.headers
        if len(name) != 17 or name.lower() != "transfer-encoding"
    ]


def _server_name(options: OriginOptions, host_header: str, default: str) -> str:
    # cloudflared applies matchSNItoHost per request after httpHostHeader, so it wins.
    if options.match_sni_to_host:
        return host_of_authority(host_header)
    return options.origin_server_name or default


def _http_key(service: HttpService, options: OriginOptions, host_header: str) -> OriginKey:
    if service.scheme != "https":
        return OriginKey(service.host, service.port)
    return OriginKey(
        service.host,
        service.port,
        tls=True,
        server_name=_server_name(options, host_header, service.host),
        ca_pool=options.ca_pool,
        no_tls_verify=options.no_tls_verify,
    )


def _unix_key(service: UnixService, options: OriginOptions, host_header: str) -> OriginKey:
    if not service.tls:
        return OriginKey("", 0, unix_path=service.path)
    return OriginKey(
        "",
        0,
        unix_path=service.path,
        tls=True,
        server_name=_server_name(options, host_header, host_of_authority(host_header)),
        ca_pool=options.ca_pool,
        no_tls_verify=options.no_tls_verify,
    )
