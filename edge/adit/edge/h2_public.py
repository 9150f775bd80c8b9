"""HTTP/2 visitors on the HTTPS listener: the I/O around :mod:`adit.edge.h2_visitor`.

A connection whose TLS handshake chose ALPN ``h2`` is served here, one task per visitor
stream, through the same seam as HTTP/1.1 (:meth:`PublicListener.open_stream`: route, Access,
header policy, a tunnel stream each). Flow control is end to end:

* upload: a visitor's body bytes are acknowledged to it (its window reopened) only once the
  tunnel stream took them (:meth:`StreamChannel.write` waits on the connector's window), so a
  connection holds at most :data:`~adit.edge.h2_visitor.CONNECTION_WINDOW` of them;
* download: the next chunk is read from the tunnel (which reopens the connector's window)
  only once the visitor's window and the socket took the one before, so a visitor that does
  not read holds the origin, never the edge's memory; one that takes nothing for the body
  timeout loses its stream.

The listener's deadlines apply per stream (the response and body timeouts, the send
timeout) and per connection (the head timeout for the preface and first request, the
keep-alive timeout while no stream is open); the listener's connection caps count an HTTP/2
connection as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, cast

from adit.edge.access.gate import FLOW_BODY_TOO_LARGE, MAX_FLOW_BODY, ConnectionMemo, FlowRequest
from adit.edge.h2_visitor import (
    Closed,
    RequestBody,
    RequestEnded,
    RequestHead,
    StreamAborted,
    VisitorH2,
    WindowOpened,
)
from adit.edge.h2_websocket import (
    UNSUPPORTED_PROTOCOL,
    WEBSOCKET,
    WEBSOCKET_REFUSED,
    response_headers,
    upgrade_accepted,
    websocket_request,
)
from adit.edge.http1 import ResponseError
from adit.edge.http1_request import Request
from adit.edge.limits import ConnectionTracker
from adit.edge.pages import (
    BAD_REQUEST,
    BAD_RESPONSE,
    REQUEST_TIMEOUT,
    STREAM_FAILED,
    TUNNEL_DOWN,
    TUNNEL_TIMEOUT,
    ErrorPage,
)
from adit.protocol.headers import ResponseMeta
from adit.tunnelio import StreamClosedError, release_waiter

if TYPE_CHECKING:
    from adit.edge.public import Opened, PublicListener
    from adit.edge.tunnel_session import RequestStream

__all__ = ["Http2Connection"]

log = logging.getLogger("adit.edge.public")

_CANCEL = 0x8
#: After a visitor ends its WebSocket stream, how long the origin's last frames may take.
_WEBSOCKET_LINGER = 5.0
#: A connection accepted as the edge began draining: how long its first requests may take to
#: arrive before it gets GOAWAY anyway (seconds).
_LATE_DRAIN_WAIT = 1.0


class _StreamGone(Exception):
    """The visitor's stream (or its connection) ended: nothing more goes to it."""


class _VisitorStream:
    """One request stream: its body as it arrives, and the task that serves it (none while
    a bodiless request waits on the fast path: see :meth:`Http2Connection._fast`)."""

    __slots__ = (
        "answer_by",
        "body",
        "ended",
        "fast",
        "id",
        "reset",
        "task",
        "timed_out",
        "tunnel",
        "waiter",
    )

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        #: When the tunnel must have answered (the listener's sweep checks it, see
        #: :meth:`Http2Connection.expire`); ``timed_out``: it did not.
        self.answer_by = math.inf
        self.timed_out = False
        self.tunnel: RequestStream | None = None
        self.body: deque[tuple[bytes, int]] = deque()
        self.ended = False
        self.reset = False
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        #: On the fast path (no task yet): the request, its tunnel stream and Ray ID.
        self.fast: tuple[Request, Opened, str] | None = None

    def wake(self) -> None:
        release_waiter(self.waiter)


class Http2Connection(asyncio.Protocol):
    """One visitor's HTTP/2 connection (the transport's protocol after ALPN chose ``h2``)."""

    def __init__(self, listener: PublicListener, tracker: ConnectionTracker | None) -> None:
        self._listener = listener
        self._tracker = tracker
        limits = tracker.limits if tracker is not None else None
        self._head_timeout = limits.header_timeout if limits else math.inf
        self._idle_timeout = limits.keepalive_timeout if limits else math.inf
        self._body_timeout = limits.body_timeout if limits else math.inf
        self._response_timeout = limits.response_timeout if limits else math.inf
        self._h2 = VisitorH2()
        self._streams: dict[int, _VisitorStream] = {}
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        #: What Access remembers for this connection (made at its first use).
        self.access_memo: ConnectionMemo | None = None
        #: The serialised request headers it repeats that no process cache keeps (its cookie):
        #: see ``encode_serialized_headers``.
        self.coded: dict[tuple[str, str], bytes] = {}
        #: When the connection's own wait expires: the preface and first request, or the
        #: next request while no stream is open.
        self._wait_until = math.inf
        self._writing_paused = False
        self._closed = False
        self._draining = False
        #: Senders waiting for a window or the socket.
        self._senders: set[asyncio.Future[None]] = set()
        self._flush_scheduled = False
        #: Whether a request came on this connection yet.
        self._requested = False
        #: Asked to drain before any request came: GOAWAY once the first read's streams began.
        self._drain_after_first_read = False

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send our preface (or close at once when a cap of the listener is reached)."""
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else ""
        if self._tracker is not None and not self._tracker.admit(self):
            self._tracker = None
            self._closed = True
            transport.close()
            return
        self.deadline = self._loop.time() + self._head_timeout
        self._h2.start()
        self._flush()
        if self._tracker is not None and self._tracker.draining:
            # Accepted before the listener closed (its handshake ended after): its first
            # read's streams are served, then GOAWAY (see drain).
            self.drain()

    def data_received(self, data: bytes) -> None:
        """Feed the state machine and act on its events."""
        if self._closed:
            return
        # Bodiless requests for the fast path, forwarded once the whole read is taken: a
        # stream reset in the read that opened it is never forwarded (as with its task,
        # cancelled before it ran), so a rapid-reset flood does not reach the tunnel.
        fast: list[tuple[_VisitorStream, Request]] = []
        for event in self._h2.receive(data, self._loop.time()):
            if type(event) is RequestHead:
                self._requested = True
                request = event.request
                begun = self._open(event)
                if event.ended and not event.protocol and request.method != b"CONNECT":
                    fast.append((begun, request))
                else:
                    self._start(begun, self._serve(begun, request, event.protocol))
            elif type(event) is RequestBody:
                stream = self._streams.get(event.stream_id)
                if stream is None:
                    self._h2.acknowledge(event.stream_id, event.flow)
                else:
                    stream.body.append((event.data, event.flow))
                    stream.wake()
            elif type(event) is RequestEnded:
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.ended = True
                    stream.wake()
            elif type(event) is StreamAborted:
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.reset = True
                    if stream.task is not None:
                        stream.task.cancel()
                    elif stream.fast is not None:
                        self._drop_fast(stream, "the visitor went away")
            elif type(event) is WindowOpened:
                self._wake_senders()
            elif type(event) is Closed:
                log.info("HTTP/2 connection from %s ends: %s", self.client_ip, event.reason)
                self._shut()
                break
        for begun, request in fast:
            if begun.reset or self._closed:
                self._done(begun)
            elif not self._fast(begun, request):
                self._start(begun, self._serve(begun, request, b""))
        if self._drain_after_first_read and self._streams:
            self._drain_now()  # the streams of this read are served; no new one after them
        self._flush()

    def eof_received(self) -> bool:
        """The visitor closed its side: nothing more can come, so no stream goes on."""
        self._shut()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Every stream's task ends (each resets its tunnel stream)."""
        self._shut()
        if self._tracker is not None:
            self._tracker.release(self)
            self._tracker = None

    def pause_writing(self) -> None:
        """The socket's buffer is full: read no more either. Frames the edge must answer
        (PING, SETTINGS) would otherwise pile up unsent behind a visitor that does not read
        (CVE-2019-9512, -9515); its requests wait in the kernel instead."""
        self._writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """The socket's buffer drained."""
        self._writing_paused = False
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()
        self._wake_senders()

    # -- Tracked -------------------------------------------------------------------------------

    @property
    def deadline(self) -> float:
        """The first of the connection's own wait and its streams' waits for an answer (the
        listener's sweep reads it once an interval: no timer per stream)."""
        first = self._wait_until
        for stream in self._streams.values():
            first = min(first, stream.answer_by)
        return first

    @deadline.setter
    def deadline(self, value: float) -> None:
        self._wait_until = value

    def expire(self) -> None:
        """A wait passed: a stream the tunnel did not answer in time is cancelled (its task
        answers 524); a connection with no request in time gets GOAWAY and is closed."""
        now = self._loop.time()
        for stream in list(self._streams.values()):
            if stream.answer_by <= now:
                stream.answer_by = math.inf
                stream.timed_out = True
                if stream.tunnel is not None:
                    stream.tunnel.cancel(StreamClosedError("no answer in time"))
                    if stream.task is None and stream.fast is not None:
                        self._answer_later(stream)  # its task answers 524
        if self._wait_until > now:
            return
        self._wait_until = math.inf
        if not self._streams:
            self._h2.close()
            self._flush()
            self._close_transport()

    def drain(self) -> None:
        """The edge shuts down: GOAWAY; close once the streams in progress are done.

        A connection that has not brought a request yet (accepted just before the listener
        closed, or its handshake ended after) likely has its first requests on the way: a
        GOAWAY before it reads our preface, then a close racing its bytes (a reset), is a
        failed request for the client (curl: "Error in the HTTP2 framing layer"). As HTTP/1.1
        answers such a connection's first request, the streams of its first read are served,
        then GOAWAY (or after a moment if nothing comes)."""
        if self._draining or self._closed or self._drain_after_first_read:
            return
        if not self._requested:
            self._drain_after_first_read = True
            self._loop.call_later(_LATE_DRAIN_WAIT, self._drain_now)
            return
        self._drain_now()

    def _drain_now(self) -> None:
        if self._draining or self._closed:
            return
        self._draining = True
        self._drain_after_first_read = False
        self._h2.drain()
        self._flush()
        if not self._streams:
            self._close_transport()

    def abort(self) -> None:
        """Close at once."""
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- streams -------------------------------------------------------------------------------

    def _open(self, event: RequestHead) -> _VisitorStream:
        stream = _VisitorStream(event.stream_id)
        stream.ended = event.ended
        self._streams[stream.id] = stream
        self.deadline = math.inf  # each stream's waits have their own deadlines now
        return stream

    def _start(self, stream: _VisitorStream, work: Coroutine[object, object, None]) -> None:
        task = self._loop.create_task(work)
        # Not the task's own ``finally``: a stream reset in the read that opened it has its
        # task cancelled before it ever runs (then nothing of it was forwarded either).
        task.add_done_callback(lambda _: self._done(stream))
        stream.task = task

    # -- the fast path: a bodiless request answered from the tunnel's read, no task ------------

    def _fast(self, stream: _VisitorStream, request: Request) -> bool:
        """Forward a bodiless request at the end of the read that brought it; its answer is
        written from the tunnel's read when all of it came there (:meth:`_answered`), as
        HTTP/1.1's fast path does: no task per stream, nor its futures and wake-ups (about 5 %
        of the edge's CPU per HTTP/2 request). False leaves the request to the task (a refusal is
        decided again there, and only that decision is logged)."""
        listener = self._listener
        ray = listener._ray()
        opened = listener.open_stream(request, self, ray, log_refusal=False)
        if isinstance(opened, tuple):
            return False
        tunnel = opened.stream
        stream.tunnel = tunnel
        stream.fast = (request, opened, ray)
        if opened.websocket:
            # (Only an HTTP/1.1 upgrade asks for one; never taken here, but served if so.)
            self._answer_later(stream)
            return True
        stream.answer_by = self._loop.time() + self._response_timeout
        tunnel.on_answer = lambda _: self._answered(stream)
        return True

    def _answered(self, stream: _VisitorStream) -> None:
        """From the tunnel's read: a whole origin response that the visitor's windows take
        goes out now, head and body in one DATA frame; anything else goes to a task."""
        tunnel, fast = stream.tunnel, stream.fast
        assert tunnel is not None and fast is not None
        answer = tunnel.answer
        if (
            answer is None
            or not tunnel.complete
            or answer.meta is not ResponseMeta.ORIGIN
            or self._writing_paused
            or stream.reset
            or self._closed
        ):
            self._answer_later(stream)
            return
        request, opened, ray = fast
        try:
            body = tunnel.body
            size = 0
            for chunk in body:
                size += len(chunk)
            head_only = request.method == b"HEAD" or answer.status in (204, 304)
            ended = answer.end_stream or head_only or not size
            if not ended and size > self._h2.window(stream.id):
                self._answer_later(stream)  # the task sends it as the windows open
                return
            headers = [*answer.headers, *self._listener.edge_headers(opened.host, ray)]
            try:
                self._h2.respond(stream.id, answer.status, headers, end_stream=ended)
            except ResponseError:
                self._answer_later(stream)  # the task logs it and answers with a page
                return
            if not ended:
                data = body[0] if len(body) == 1 else b"".join(body)
                self._h2.send_data(stream.id, data, end_stream=True)
            self._flush()
        except Exception:
            # Called from the tunnel's read: a bug here must cost this stream, not the tunnel.
            log.exception("HTTP/2 request handling failed ray=%s", ray)
            self._h2.reset(stream.id)
        stream.answer_by = math.inf
        # Done with each other: no cycle through the callback left to the collector.
        tunnel.on_answer = None
        stream.fast = None
        tunnel.session.finished(tunnel)
        self._done(stream)

    def _answer_later(self, stream: _VisitorStream) -> None:
        """A fast stream whose answer is not whole, not the origin's, failed or is overdue:
        its task takes it from where it is."""
        tunnel, fast = stream.tunnel, stream.fast
        assert tunnel is not None and fast is not None
        tunnel.on_answer = None
        request, opened, ray = fast
        stream.fast = None
        self._start(stream, self._serve(stream, request, b"", opened, ray))

    def _drop_fast(self, stream: _VisitorStream, why: str) -> None:
        """The visitor (or its connection) left a fast stream: the tunnel stream is reset, so
        that the connector stops the origin request."""
        tunnel = stream.tunnel
        assert tunnel is not None
        stream.fast = None
        stream.answer_by = math.inf
        tunnel.cancel(StreamClosedError(why))
        tunnel.session.finished(tunnel)
        self._done(stream)

    def _done(self, stream: _VisitorStream) -> None:
        self._streams.pop(stream.id, None)
        # A body the stream did not take is the connection's window still: give it back.
        flow = sum(flow for _, flow in stream.body)
        stream.body.clear()
        if flow:
            self._h2.acknowledge(stream.id, flow)
        if not self._streams:
            if self._draining:
                self._close_transport()
            else:
                self.deadline = self._loop.time() + self._idle_timeout
        self._flush()

    async def _serve(
        self,
        stream: _VisitorStream,
        request: Request,
        protocol: bytes,
        given: Opened | None = None,
        ray: str = "",
    ) -> None:
        """Serve a stream: route and forward it, or (``given``, from the fast path) answer
        the tunnel stream it already has."""
        listener = self._listener
        ray = ray or listener._ray()
        tunnel: RequestStream | None = None
        try:
            if given is not None:
                tunnel = given.stream
                await self._exchange(stream, request, tunnel, given.host, ray, given.websocket)
                return
            if request.method == b"CONNECT":
                if protocol.lower() != WEBSOCKET:
                    # A plain CONNECT (a proxy's tunnel) is not a route's; another protocol
                    # over extended CONNECT is not carried.
                    await self._page(
                        stream, UNSUPPORTED_PROTOCOL if protocol else BAD_REQUEST, "-", ray
                    )
                    return
                # WebSocket over HTTP/2 (RFC 8441): forwarded as the HTTP/1.1 upgrade.
                request = websocket_request(request, secrets.token_bytes(16))
            opened = listener.open_stream(request, self, ray)
            if (
                isinstance(opened, tuple)
                and opened[0] is TUNNEL_DOWN
                and await listener.tunnel_moved(opened[1])
            ):
                opened = listener.open_stream(request, self, ray)
            if isinstance(opened, tuple):
                page, host = opened
                if isinstance(page, FlowRequest):
                    page = await self._access_flow(stream, request, page)
                await self._page(stream, page, host, ray)
                return
            tunnel = opened.stream
            await self._exchange(stream, request, tunnel, opened.host, ray, opened.websocket)
        except _StreamGone as exc:
            # The visitor took nothing in the send timeout (or the connection ended).
            log.info("HTTP/2 stream from %s ended ray=%s: %s", self.client_ip, ray, exc)
            self._h2.reset(stream.id, _CANCEL)
            if tunnel is not None:
                tunnel.cancel(StreamClosedError("the visitor stopped reading"))
        except asyncio.CancelledError:
            # The visitor reset the stream, or the connection is gone.
            if tunnel is not None:
                tunnel.cancel(StreamClosedError("the visitor went away"))
        except Exception:
            # A bug in one stream's handling costs that stream, never the connection.
            log.exception("HTTP/2 request handling failed ray=%s", ray)
            self._h2.reset(stream.id)
        finally:
            if tunnel is not None:
                tunnel.session.finished(tunnel)

    async def _exchange(
        self,
        stream: _VisitorStream,
        request: Request,
        tunnel: RequestStream,
        host: str,
        ray: str,
        websocket: bool = False,
    ) -> None:
        uploader: asyncio.Task[None] | None = None
        if request.has_body:
            uploader = self._loop.create_task(self._upload(stream, tunnel))
        try:
            # The response timeout as a deadline the listener's sweep checks (expire), not an
            # asyncio.timeout: a timer armed and cancelled per stream was a twentieth of the
            # edge's CPU per HTTP/2 request.
            stream.tunnel = tunnel
            stream.answer_by = self._loop.time() + self._response_timeout
            try:
                response = await tunnel.response()
            except StreamClosedError as exc:
                if stream.timed_out:
                    log.warning("no answer in time from the tunnel for %s ray=%s", host, ray)
                    await self._page(stream, TUNNEL_TIMEOUT, host, ray)
                    return
                if _stalled(uploader):
                    await self._page(stream, REQUEST_TIMEOUT, host, ray)
                    return
                log.warning("tunnel stream failed for %s ray=%s: %s", host, ray, exc)
                await self._page(stream, STREAM_FAILED, host, ray)
                return
            finally:
                stream.answer_by = math.inf
            if response.meta is not ResponseMeta.ORIGIN:
                page = await self._listener.connector_failure(
                    tunnel, host, ray, response.end_stream
                )
                await self._page(stream, page, host, ray)
                return
            if websocket:
                if upgrade_accepted(response.headers):
                    await self._websocket(stream, tunnel, response.headers, host, ray)
                    return
                if 200 <= response.status < 300:
                    # Over HTTP/1.1 a refusal is any answer but 101; over HTTP/2 a 2xx is the
                    # acceptance (RFC 8441 §5), so an origin's 200 must not pass as one.
                    log.warning("the origin did not accept the WebSocket for %s ray=%s", host, ray)
                    await self._page(stream, WEBSOCKET_REFUSED, host, ray)
                    return
            head_only = request.method == b"HEAD" or response.status in (204, 304)
            ended = response.end_stream or head_only
            headers = [*response.headers, *self._listener.edge_headers(host, ray)]
            try:
                self._h2.respond(stream.id, response.status, headers, end_stream=ended)
            except ResponseError as exc:
                log.warning("undeliverable response for %s ray=%s: %s", host, ray, exc)
                await self._page(stream, BAD_RESPONSE, host, ray)
                return
            self._flush()
            if ended:
                return
            await self._download(stream, tunnel)
        finally:
            if uploader is not None:
                uploader.cancel()
                with contextlib.suppress(BaseException):
                    await uploader

    async def _websocket(
        self,
        stream: _VisitorStream,
        tunnel: RequestStream,
        headers: Sequence[tuple[str, str]],
        host: str,
        ray: str,
    ) -> None:
        """The origin accepted the upgrade: the visitor gets 200 (RFC 8441 §5), then frames
        go both ways, each direction flow-controlled as a body is, until either side ends.
        Like an upgraded HTTP/1.1 connection, a quiet WebSocket is the peers' business: no
        idle deadline of ours, but the send timeout still ends one whose visitor stopped
        reading."""
        out = [*response_headers(headers), *self._listener.edge_headers(host, ray)]
        try:
            self._h2.respond(stream.id, 200, out, end_stream=False)
        except ResponseError as exc:
            log.warning("undeliverable upgrade for %s ray=%s: %s", host, ray, exc)
            await self._page(stream, BAD_RESPONSE, host, ray)
            return
        self._flush()
        up = self._loop.create_task(self._upload(stream, tunnel, math.inf))
        down = self._loop.create_task(self._download(stream, tunnel, math.inf))
        try:
            done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if up in done and not up.exception():
                # The visitor ended its side (after its close frame): the origin's last
                # frames (the close echoed) get a moment.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(down), _WEBSOCKET_LINGER)
        finally:
            for task in (up, down):
                task.cancel()
            for task in (up, down):
                with contextlib.suppress(BaseException):
                    await task
        if not down.cancelled() and down.exception() is None:
            return
        self._h2.reset(stream.id, _CANCEL)
        self._flush()
        tunnel.cancel(StreamClosedError("the WebSocket ended"))

    async def _download(
        self, stream: _VisitorStream, tunnel: RequestStream, idle: float | None = None
    ) -> None:
        if tunnel.complete:
            # The whole body came with the answer, held for the fast path (see
            # :meth:`_answered`), which left it to this task: it goes as the windows open.
            chunks = [chunk for chunk in tunnel.body if chunk]
            for index, chunk in enumerate(chunks):
                await self._send(stream, chunk, end=index == len(chunks) - 1)
            if not chunks:
                self._h2.end_stream(stream.id)
                self._flush()
            return
        channel = tunnel.channel
        idle = self._response_timeout if idle is None else idle
        while True:
            try:
                if channel.ready:
                    chunk = await channel.read()  # no wait, so no timer to arm and cancel
                else:
                    async with asyncio.timeout(_seconds(idle)):
                        chunk = await channel.read()
            except (TimeoutError, StreamClosedError):
                # The body broke (or stalled) after the head went out: the visitor must
                # not take a cut body for a whole one.
                self._h2.reset(stream.id)
                self._flush()
                return
            if not chunk:
                break
            if channel.exhausted:
                # The body's last chunk carries END_STREAM: no empty DATA frame after it.
                await self._send(stream, chunk, end=True)
                return
            await self._send(stream, chunk)
        self._h2.end_stream(stream.id)
        self._flush()

    async def _send(self, stream: _VisitorStream, data: bytes, *, end: bool = False) -> None:
        """Body bytes to the visitor as its windows and the socket take them (``end``: the
        last piece ends the stream)."""
        view = memoryview(data)
        while view:
            if self._closed or stream.reset:
                raise _StreamGone
            window = 0 if self._writing_paused else self._h2.window(stream.id)
            if window <= 0:
                if not self._h2.stream_open(stream.id):
                    raise _StreamGone
                await self._writable()
                continue
            piece = view[:window]
            view = view[len(piece) :]
            self._h2.send_data(stream.id, bytes(piece), end_stream=end and not view)
            self._flush()

    async def _writable(self) -> None:
        """Until a window grows or the socket drains; the send timeout ends the stream."""
        waiter = self._loop.create_future()
        self._senders.add(waiter)
        try:
            async with asyncio.timeout(_seconds(self._body_timeout)):
                await waiter
        except TimeoutError:
            raise _StreamGone("the visitor took no response bytes in time") from None
        finally:
            self._senders.discard(waiter)

    def _wake_senders(self) -> None:
        senders, self._senders = self._senders, set()
        for waiter in senders:
            release_waiter(waiter)

    async def _upload(
        self, stream: _VisitorStream, tunnel: RequestStream, idle: float | None = None
    ) -> None:
        """The visitor's body into the tunnel stream; each piece is acknowledged to the
        visitor once the tunnel took it. A body that stalls past the body timeout fails the
        stream (the answer is then a 408)."""
        channel = tunnel.channel
        idle = self._body_timeout if idle is None else idle
        try:
            while True:
                while not stream.body:
                    if stream.ended:
                        channel.end()
                        return
                    if stream.reset or self._closed:
                        raise _StreamGone
                    stream.waiter = self._loop.create_future()
                    try:
                        async with asyncio.timeout(_seconds(idle)):
                            await stream.waiter
                    finally:
                        stream.waiter = None
                data, flow = stream.body.popleft()
                await channel.write(data)
                self._h2.acknowledge(stream.id, flow)
                self._flush()
        except TimeoutError:
            tunnel.cancel(StreamClosedError("the request body stalled"))
            raise

    async def _access_flow(
        self, stream: _VisitorStream, request: Request, flow: FlowRequest
    ) -> ErrorPage:
        """The login flow's answer, given the request's body (bounded)."""
        access = self._listener.access
        assert access is not None
        body = bytearray()
        try:
            while True:
                while not stream.body:
                    if stream.ended:
                        method = request.method.decode("latin-1")
                        return await access.login_flow(flow, method, bytes(body))
                    if stream.reset or self._closed:
                        raise _StreamGone
                    stream.waiter = self._loop.create_future()
                    try:
                        async with asyncio.timeout(_seconds(self._body_timeout)):
                            await stream.waiter
                    finally:
                        stream.waiter = None
                data, flow_credit = stream.body.popleft()
                body += data
                self._h2.acknowledge(stream.id, flow_credit)
                self._flush()
                if len(body) > MAX_FLOW_BODY:
                    return FLOW_BODY_TOO_LARGE
        except TimeoutError:
            raise _StreamGone from None

    async def _page(self, stream: _VisitorStream, page: ErrorPage, host: str, ray: str) -> None:
        body = page.render(host, ray)
        headers = [
            ("Content-Type", page.content_type),
            ("Content-Length", str(len(body))),
            ("Cf-Ray", ray),
            *page.extra_headers(),
        ]
        if not self._h2.stream_open(stream.id):
            return
        self._h2.respond(stream.id, page.status, headers, end_stream=False)
        self._flush()
        await self._send(stream, body)
        self._h2.end_stream(stream.id)
        self._flush()

    # -- the socket ----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what h2 has queued, once per turn of the loop: the frames of every stream
        that moved in this turn leave in one TLS record batch and one system call."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        self._flush_scheduled = False
        data = self._h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _shut(self) -> None:
        """No more of this connection: every stream's task is cancelled, the socket closed
        once what is written went out."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams.values()):
            stream.reset = True
            if stream.task is not None:
                stream.task.cancel()
            elif stream.fast is not None:
                self._drop_fast(stream, "the visitor went away")
        self._wake_senders()
        self._close_transport()

    def _close_transport(self) -> None:
        self._closed = True
        self._write_out()  # a GOAWAY or the last frames go before the close
        if self.transport is not None:
            self.transport.close()


def _stalled(uploader: asyncio.Task[None] | None) -> bool:
    """Whether the request body stalled (the upload ended on the body timeout)."""
    if uploader is None or not uploader.done() or uploader.cancelled():
        return False
    return isinstance(uploader.exception(), TimeoutError)


def _seconds(timeout: float) -> float | None:
    """A limit as ``asyncio.timeout`` takes it (None: no limit)."""
    return None if timeout == math.inf else timeout


class AlpnSwitch(asyncio.Protocol):
    """An HTTPS connection until its handshake is done: then the protocol ALPN chose
    (``h2``, else HTTP/1.1) takes over the transport (``set_protocol``; a transport without
    it, as tests' stand-ins, goes on calling this one, which passes everything on)."""

    def __init__(self, listener: PublicListener) -> None:
        self._listener = listener
        self._chosen: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The handshake is done (asyncio calls this after it): hand over."""
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol: asyncio.Protocol
        if chosen == "h2":
            protocol = Http2Connection(self._listener, self._listener.tracker)
        else:
            protocol = self._listener.http1_protocol()
        self._chosen = protocol
        set_protocol = getattr(transport, "set_protocol", None)
        if set_protocol is not None:
            set_protocol(protocol)
        protocol.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        """Passed on (only without ``set_protocol``)."""
        assert self._chosen is not None
        self._chosen.data_received(data)

    def eof_received(self) -> bool | None:
        """Passed on (only without ``set_protocol``)."""
        assert self._chosen is not None
        return self._chosen.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        """Passed on (only without ``set_protocol``)."""
        if self._chosen is not None:
            self._chosen.connection_lost(exc)

    def pause_writing(self) -> None:
        """Passed on (only without ``set_protocol``)."""
        if self._chosen is not None:
            self._chosen.pause_writing()

    def resume_writing(self) -> None:
        """Passed on (only without ``set_protocol``)."""
        if self._chosen is not None:
            self._chosen.resume_writing()
