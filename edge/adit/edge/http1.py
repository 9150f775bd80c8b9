"""Server-side HTTP/1.1 as an asyncio protocol: what the public and API listeners share.

Requests are parsed by :mod:`adit.edge.http1_request` (llhttp, strict); responses are
serialised here, the head in one build and bodies passed through as they are.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import operator
import re
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol, cast

from adit.edge.http1_request import (
    MAX_HEADER_BYTES,
    BadRequest,
    HeadersTooLarge,
    Request,
    RequestParser,
    RequestTimeout,
)
from adit.edge.limits import ConnectionTracker, Deadline
from adit.protocol.headers import wire_bytes
from adit.tunnelio import release_waiter

if TYPE_CHECKING:
    from adit.edge.access.gate import ConnectionMemo

__all__ = [
    "MAX_HEADER_BYTES",
    "READ_SIZE",
    "BadRequest",
    "Exchange",
    "FastHandler",
    "HeadersTooLarge",
    "Http1Connection",
    "Phase",
    "Request",
    "RequestParser",
    "RequestTimeout",
    "ResponseError",
    "reason_phrase",
]

log = logging.getLogger("adit.edge.http")

READ_SIZE = 256 * 1024

#: Cloudflare's own codes that HTTP has no phrase for.
_EXTRA_REASONS = {524: b"A Timeout Occurred", 530: b"Origin Unreachable"}
_REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
_REASONS.update(_EXTRA_REASONS)
# Response headers whose lower-cased names the framing logic looks at.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})
# RFC 9110 §5.6.2 tokens: what a header name is made of.
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
# Response header names found to be tokens (bounded: a connector may send any name).
_TOKEN_NAMES: set[str] = set()
_MAX_TOKEN_NAMES = 4096
_name_of = operator.itemgetter(0)
# Control bytes but HTAB (CR and LF included: each line must hold exactly one of each).
_CONTROLS = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])
_STATUS_LINES: dict[int, str] = {
    code: f"HTTP/1.1 {code} {phrase.decode('ascii')}\r\n" for code, phrase in _REASONS.items()
}


def reason_phrase(status: int) -> bytes:
    """The reason phrase for a status line (empty when unknown, as HTTP allows)."""
    return _REASONS.get(status, b"")


def _status_line(status: int) -> str:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} \r\n"


class ResponseError(Exception):
    """A response cannot be delivered as HTTP/1.1: a bad status, header name or value, a body
    longer or shorter than its Content-Length... (nothing of it is written)."""


Handler = Callable[["Http1Connection", Request], Awaitable[bool]]
#: Answers a request that cannot be served (:class:`BadRequest` and its kinds), between
#: responses; the connection closes after it.
ErrorHandler = Callable[["Http1Connection", BadRequest], Awaitable[None]]


class Exchange(Protocol):
    """A request forwarded somewhere (a tunnel stream), as the connection sees it."""

    def abandon(self, why: Deadline | None) -> None:
        """Stop the work: the client went away (``None``) or ``why`` expired. A fast request
        is then finished here (:meth:`Http1Connection.finish_fast`); a task's waits on the
        exchange end with an error it answers."""


#: Takes a complete request without a body from ``data_received``, without the serving task:
#: returns ``None`` to leave it to ``handle`` (before doing anything), or the exchange it
#: started, and later calls :meth:`Http1Connection.finish_fast` or
#: :meth:`Http1Connection.continue_async`.
FastHandler = Callable[["Http1Connection", Request], Exchange | None]


class Phase(enum.Enum):
    """Where a connection is in its life. Each phase has its way out: a deadline (the
    sweep's), the peer's end, or the work's."""

    IDLE = "idle"  # waiting for a request head (IDLE or HEAD deadline)
    FAST = "fast"  # a bodiless request forwarded from data_received; no task awake
    SERVING = "serving"  # the task serves a request (its waits arm their deadlines)
    UPGRADED = "upgraded"  # raw bytes both ways after a 101, until either side ends
    CLOSED = "closed"


class Stage(enum.Enum):
    """How far the current response got."""

    NONE = "none"  # nothing yet
    HELD = "held"  # the head is built and held for the next write: it can still be dropped
    SENT = "sent"  # bytes of it reached the socket


class BodyMode(enum.Enum):
    """How the response body is framed."""

    NONE = "none"  # no body (HEAD, 204, 304)
    LENGTH = "length"  # under a Content-Length
    CHUNKED = "chunked"
    CLOSE = "close"  # to an HTTP/1.0 client: ends with the connection


# The members as module constants: on Python 3.11 ``Phase.IDLE`` is an attribute lookup
# through the enum's metaclass (~150 ns), and a request tests phases and stages a dozen times.
_IDLE, _FAST, _SERVING, _UPGRADED, _CLOSED = (
    Phase.IDLE,
    Phase.FAST,
    Phase.SERVING,
    Phase.UPGRADED,
    Phase.CLOSED,
)
_NOTHING_SENT, _HELD, _SENT = Stage.NONE, Stage.HELD, Stage.SENT
_NO_BODY, _LENGTH, _CHUNKED, _TO_CLOSE = (
    BodyMode.NONE,
    BodyMode.LENGTH,
    BodyMode.CHUNKED,
    BodyMode.CLOSE,
)
_WAIT_NONE, _WAIT_IDLE, _WAIT_HEAD, _WAIT_BODY, _WAIT_SEND, _WAIT_RESPONSE = (
    Deadline.NONE,
    Deadline.IDLE,
    Deadline.HEAD,
    Deadline.BODY,
    Deadline.SEND,
    Deadline.RESPONSE,
)


class Http1Connection(asyncio.Protocol):
    """One server-side HTTP/1.1 connection, as the protocol of its transport.

    Bytes go straight from ``data_received`` into the parser (no stream buffer in between);
    a task per connection answers the requests in order with ``handle``. The handler reads
    a request's body with :meth:`read_body` and answers with :meth:`start_response`,
    :meth:`send_body` and :meth:`end_response` (or :meth:`respond_simple`). Reading pauses
    while more than :data:`READ_SIZE` bytes wait for the handler (back-pressure).

    With a ``fast`` handler, a bodiless request that arrives whole while the task waits for
    the next one is offered to it from ``data_received``: a response that is all there then
    goes out with :meth:`respond_now` from a callback, and the task is not woken at all.

    With a ``tracker`` every wait has a deadline (:mod:`adit.edge.limits`) and the listener's
    caps apply; the peer's end (EOF or a lost socket) abandons the :attr:`exchange` in
    flight, so its work stops too.
    """

    def __init__(
        self,
        handle: Handler,
        on_error: ErrorHandler,
        fast: FastHandler | None = None,
        *,
        tracker: ConnectionTracker | None = None,
    ) -> None:
        self._handle = handle
        self._on_error = on_error
        self._fast = fast
        self._tracker = tracker
        self._timeouts = tracker.timeouts if tracker is not None else ()
        self.phase = _IDLE
        #: When the current wait expires (loop time), and what is awaited.
        self.deadline = math.inf
        self._waiting_for = _WAIT_NONE
        #: Seconds of waiting on the request body still allowed (the minimum rate's credit).
        self._body_allowance = 0.0
        #: The request forwarded and not yet answered (set by the handler).
        self.exchange: Exchange | None = None
        self._continuation: Coroutine[object, object, bool] | None = None
        self.parser = RequestParser()
        self.request = Request()
        self.transport: asyncio.Transport | None = None
        #: The client's address ("" when the transport has none).
        self.client_ip = ""
        #: What Access remembers for this connection (made at its first use).
        self.access_memo: ConnectionMemo | None = None
        #: The serialised request headers it repeats that no process cache keeps (its cookie):
        #: see ``encode_serialized_headers``.
        self.coded: dict[tuple[str, str], bytes] = {}
        #: The task serving this connection (done once it is closed).
        self.serving: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._buffered = 0
        self._reading_paused = False
        self._writing_paused = False
        self._eof = False
        self._over_ssl = False
        self._draining = False  # the edge shuts down: this response is the last
        self._raw: deque[bytes] | None = None
        self._held: list[bytes] = []
        self._error: BadRequest | None = None
        # The request in progress.
        self._body_done = True
        self._continue_sent = False
        self._keep_alive = False
        # The response in progress.
        self._stage = _NOTHING_SENT
        self._body_mode = _NO_BODY
        self._remaining: int | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start serving (or close at once when a cap of the listener is reached)."""
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else ""
        if self._tracker is not None and not self._tracker.admit(self):
            self.phase = _CLOSED
            self._tracker = None  # never counted in
            transport.close()
            return
        self._over_ssl = transport.get_extra_info("sslcontext") is not None
        # The first head is due within the head timeout of the connection (not of its
        # first byte: a client that says nothing is a slow client too).
        self._arm(_WAIT_HEAD)
        if self._tracker is not None and self._tracker.draining:
            # Accepted before the listener closed (its handshake ended after): its first
            # request is answered, and is its last.
            self._draining = True
        self.serving = self._loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        """Parse what arrived (or keep it raw after switching protocols)."""
        self._buffered += len(data)
        phase = self.phase
        if self._raw is not None:
            self._raw.append(data)
        elif self.parser.after_upgrade is not None:
            # Not ours to parse until the handler says whether it switches protocols.
            self.parser.after_upgrade += data
        elif self._error is None:
            try:
                self.parser.feed(data)
            except BadRequest as exc:
                # Requests parsed before the bad bytes are still answered first.
                self._error = exc
        if phase is _IDLE:
            if self.parser.events:
                self._serve_fast()
            elif self._waiting_for is _WAIT_IDLE and self.parser.in_message:
                self._arm(_WAIT_HEAD)  # a head began: it is due in the head timeout
        elif phase is _SERVING and not self._body_done:
            self._credit_body(len(data))
        if self._buffered > READ_SIZE and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        if self.phase is _FAST or (self.phase is _IDLE and not self._actionable()):
            return  # nothing for the task yet
        self._wake()

    def eof_received(self) -> bool:
        """The client finished sending. Between requests that ends the connection; while a
        request's body is read, that request; once a request is whole, the client has given
        up on it (as Go's server and nginx take it): its exchange is abandoned."""
        self._eof = True
        if self.phase is _FAST or (self.phase is _SERVING and self._body_done):
            self._abandon(None)
        self._wake()
        return not self._over_ssl  # half-close: a 400 for a broken body can still go out

    def connection_lost(self, exc: Exception | None) -> None:
        """Abandon the exchange in flight and wake whatever waits: reads end, writes fail."""
        self.phase = _CLOSED
        self._eof = True
        self._abandon(None)
        self._wake()
        release_waiter(self._drain_waiter)
        self._drain_waiter = None
        if self._tracker is not None:
            self._tracker.release(self)

    def pause_writing(self) -> None:
        """The transport's buffer is full."""
        self._writing_paused = True

    def resume_writing(self) -> None:
        """The transport's buffer drained."""
        self._writing_paused = False
        release_waiter(self._drain_waiter)
        self._drain_waiter = None

    # -- deadlines -----------------------------------------------------------------------------

    def arm(self, waiting_for: Deadline) -> None:
        """The connection waits for ``waiting_for`` from now on (its timeout applies)."""
        self._arm(waiting_for)

    def _arm(self, waiting_for: Deadline) -> None:
        if self._timeouts:
            self._waiting_for = waiting_for
            self.deadline = self._loop.time() + self._timeouts[waiting_for]

    def _credit_body(self, size: int) -> None:
        """Body bytes arrived: each buys waiting time at the minimum rate, up to the timeout."""
        if not self._timeouts:
            return
        assert self._tracker is not None
        limits = self._tracker.limits
        timeout = limits.body_timeout
        credit = size / limits.body_min_rate if limits.body_min_rate else timeout
        if self._waiting_for is _WAIT_BODY:
            self.deadline = min(self.deadline + credit, self._loop.time() + timeout)
        else:
            self._body_allowance = min(self._body_allowance + credit, timeout)

    def expire(self) -> None:
        """The sweep found the deadline passed: end the wait the phase is in."""
        waiting_for = self._waiting_for
        self.deadline = math.inf
        self._waiting_for = _WAIT_NONE
        phase = self.phase
        if phase is _IDLE:
            if waiting_for is _WAIT_HEAD and self.parser.in_message:
                self._error = RequestTimeout("the request head did not arrive in time")
                self._wake()
            else:
                self.close()  # an idle keep-alive connection, or one that never spoke
        elif phase is _FAST:
            self._abandon(waiting_for)
        elif phase is _SERVING:
            if self._stage is _SENT or waiting_for is _WAIT_SEND:
                self.abort()  # nothing useful can be said any more
            elif waiting_for is _WAIT_BODY:
                self._error = RequestTimeout("the request body stalled")
                self._wake()
            elif self.exchange is not None:
                self._abandon(waiting_for)
            else:
                self.abort()
        elif phase is _UPGRADED:
            self.abort()

    def _abandon(self, why: Deadline | None) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.abandon(why)

    @property
    def awaiting_request(self) -> bool:
        """Whether a request is due: the connection is new (its client connected to send
        one) or a head has begun."""
        return self.phase is _IDLE and (
            self._waiting_for is _WAIT_HEAD or self.parser.in_message or bool(self.parser.events)
        )

    def drain(self) -> None:
        """The edge shuts down: close now if idle between requests, else after the response
        in progress. A new connection is not idle: its client connected to send a request
        (closing it would fail that request, where a keep-alive client retries), so its
        first request is answered (within the head timeout) and is its last."""
        self._draining = True
        self._keep_alive = False  # the response in progress, if any, is the last
        if self.phase is _IDLE and not self.awaiting_request:
            self.close()

    # -- reading -------------------------------------------------------------------------------

    def _wake(self) -> None:
        release_waiter(self._waiter)
        self._waiter = None

    def _actionable(self) -> bool:
        """Whether the idle task has something to do (a request, an error, the end)."""
        parser = self.parser
        return bool(
            parser.events
            or self._error is not None
            or parser.after_upgrade is not None
            or self._eof
            or self._continuation is not None
        )

    # -- the fast path -------------------------------------------------------------------------

    def _serve_fast(self) -> None:
        """Offer whole bodiless requests to the fast handler while it takes them."""
        events = self.parser.events
        fast = self._fast
        # Never past a request the task still has to answer (a continuation not yet taken).
        while (
            fast is not None
            and len(events) >= 2
            and self.phase is _IDLE
            and self._continuation is None
        ):
            request = events[0]
            if (
                type(request) is not Request
                or events[1] != b""
                or request.upgrade
                or self._error is not None
                or self._writing_paused
                or self._draining
            ):
                return
            self._begin(request)
            self._body_done = True
            self.phase = _FAST
            if self._timeouts:  # _arm, inlined on the fast path
                self._waiting_for = _WAIT_RESPONSE
                self.deadline = self._loop.time() + self._timeouts[_WAIT_RESPONSE]
            try:
                exchange = fast(self, request)
            except Exception:
                # As in the task: a bug in one request's handling costs only its connection.
                log.exception("request handling failed")
                self.close()
                return
            if exchange is None:
                self.phase = _IDLE
                return
            self.exchange = exchange
            events.popleft()
            events.popleft()
        if not events:
            self._buffered = 0
            if self._reading_paused and self.transport is not None:
                self._reading_paused = False
                self.transport.resume_reading()

    def finish_fast(self, keep_alive: bool) -> None:
        """The fast request is answered (with :meth:`respond_now`); serve on or close."""
        self.exchange = None
        if self.phase is _CLOSED:
            return  # the client went away meanwhile
        if not (keep_alive and self.keeps_alive):
            self.close()
            self._wake()
            return
        self._next_request_due()
        self._serve_fast()
        if self.phase is _FAST or not self._actionable():
            return
        self._wake()

    def continue_async(self, answer: Coroutine[object, object, bool]) -> None:
        """The fast request needs the task after all: it awaits ``answer`` (keep-alive)."""
        if self.phase is not _FAST or self.serving is None or self.serving.done():
            answer.close()  # nobody left to await it
            self.close()
            return
        self.phase = _SERVING
        self._continuation = answer
        self._wake()

    def _next_request_due(self) -> None:
        """Back to waiting for a request: a head begun is due in the head timeout."""
        self.phase = _IDLE
        self.exchange = None
        if self._timeouts:  # _arm, inlined: once a request
            parser = self.parser
            waiting_for = _WAIT_HEAD if parser.in_message or parser.events else _WAIT_IDLE
            self._waiting_for = waiting_for
            self.deadline = self._loop.time() + self._timeouts[waiting_for]

    async def _wait_for_data(self) -> None:
        """Wait for ``data_received`` (or the end), letting the socket be read again."""
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        waiter = self._waiter = self._loop.create_future()
        await waiter

    async def _next_event(self) -> Request | bytes | None:
        """The next parser event, reading as needed; ``None`` at the end of the input."""
        parser = self.parser
        events = parser.events
        while not events:
            if self._error is not None:
                raise self._error
            if parser.after_upgrade is not None:
                try:
                    parser.resume()
                except BadRequest as exc:
                    self._error = exc
                continue
            if self._eof:
                if parser.in_message:
                    raise BadRequest("the connection closed in the middle of a request")
                return None
            await self._wait_for_data()
        return events.popleft()

    async def next_request(self) -> Request | None:
        """The next request's head, or ``None`` once the client closed between requests.

        Raises :class:`BadRequest` (or :class:`HeadersTooLarge`) on bad input.
        """
        event = await self._next_event()
        if event is None:
            return None
        assert isinstance(event, Request)
        self._begin(event)
        events = self.parser.events
        if events and events[0] == b"":
            events.popleft()  # a request without a body ended with its head
            self._body_done = True
        self.phase = _SERVING
        if self._timeouts:  # _arm, inlined: until the handler says what it waits for, its
            # answer is due in the response timeout
            self._waiting_for = _WAIT_RESPONSE
            self.deadline = self._loop.time() + self._timeouts[_WAIT_RESPONSE]
        return event

    def _begin(self, request: Request) -> None:
        self.request = request
        self._body_done = False
        self._continue_sent = False
        self._keep_alive = request.keep_alive and not self._draining
        self._stage = _NOTHING_SENT
        if self._timeouts:
            self._body_allowance = self._timeouts[_WAIT_BODY]

    async def _next_step(self) -> Request | Coroutine[object, object, bool] | None:
        """What the serving task does next: a request, a fast request's continuation, or
        ``None`` at the end. Waiting here is being idle: the fast handler may run meanwhile."""
        parser = self.parser
        while True:
            phase = self.phase
            if phase is _CLOSED:
                return None
            continuation = self._continuation
            if continuation is not None:
                self._continuation = None
                return continuation
            if phase is _IDLE and (
                parser.events
                or self._error is not None
                or parser.after_upgrade is not None
                or self._eof
            ):
                return await self.next_request()
            await self._wait_for_data()

    def broken_body(self) -> BadRequest | None:
        """The parse error that ends the current request's body, when the parser has met it
        already: that body can never end, whatever of it is still queued. (An error after the
        body's end belongs to a later request, answered after this one.)"""
        if self._error is None or self._body_done or b"" in self.parser.events:
            return None
        return self._error

    async def read_body(self) -> bytes:
        """The next chunk of the current request's body; ``b""`` once it ended.

        Waiting for it is bounded by the body's allowance (stalls and the minimum rate)."""
        if self._body_done:
            return b""
        if not self.parser.events and self._timeouts:
            self._waiting_for = _WAIT_BODY
            self.deadline = self._loop.time() + self._body_allowance
            try:
                event = await self._next_event()
            finally:
                if self._waiting_for is _WAIT_BODY:
                    self._body_allowance = max(0.0, self.deadline - self._loop.time())
        else:
            event = await self._next_event()
        if event is None:
            raise BadRequest("the connection closed in the middle of a request")
        assert isinstance(event, bytes)
        if not event:
            self._body_done = True
        return event

    async def drain_body(self) -> None:
        """Read and discard what is left of the current request's body.

        A client waiting for ``100 Continue`` sends nothing: then the connection is closed
        after the response instead.
        """
        if self.expects_continue:
            self.close_after()
            return
        while not self._body_done:
            await self.read_body()

    def close_after(self) -> None:
        """The response about to be sent is the connection's last (``Connection: close``)."""
        self._keep_alive = False

    @property
    def expects_continue(self) -> bool:
        """The client waits for ``100 Continue`` before it sends the body."""
        return (
            self.request.expect_continue
            and not self._continue_sent
            and not self._body_done
            and not self.parser.events
            and self.request.http_version == "1.1"
        )

    def take_leftover(self) -> bytes:
        """Switch to raw bytes (after a 101): what the client sent after the request head.

        From then on :meth:`read_raw` and :meth:`write_raw` carry the connection, with no
        deadline of ours: either side ends it.
        """
        leftover = self.parser.after_upgrade or b""
        self.parser.after_upgrade = None
        self._raw = deque()
        if self.phase is _SERVING:
            self.phase = _UPGRADED
        self.deadline = math.inf
        self._waiting_for = _WAIT_NONE
        return leftover

    async def read_raw(self) -> bytes:
        """After :meth:`take_leftover`: the next bytes the client sent; ``b""`` at its end."""
        raw = self._raw
        assert raw is not None
        while not raw:
            if self._eof:
                return b""
            await self._wait_for_data()
        data = raw.popleft() if len(raw) == 1 else b"".join(raw)
        raw.clear()
        return data

    async def write_raw(self, data: bytes) -> None:
        """After :meth:`take_leftover`: bytes to the client, honouring back-pressure."""
        await self._write(data, True)

    # -- writing -------------------------------------------------------------------------------

    async def _write(self, data: bytes, flush: bool) -> None:
        if data:
            self._held.append(data)
        if flush and self._held:
            if self.phase is _CLOSED or self.transport is None:
                raise ConnectionResetError("the client went away")
            held, self._held = self._held, []
            if len(held) == 1:
                self.transport.write(held[0])
            else:
                self.transport.writelines(held)
            self._stage = _SENT
            if self._writing_paused:
                await self._drained()

    async def _drained(self) -> None:
        """Wait until the client takes what the socket holds (in the send timeout)."""
        saved = (self._waiting_for, self.deadline)
        upgraded = self.phase is _UPGRADED
        if not upgraded:
            self._arm(_WAIT_SEND)
        try:
            while self._writing_paused and self.phase is not _CLOSED:
                waiter = self._drain_waiter = self._loop.create_future()
                await waiter
        finally:
            # Another wait of the same task group (an upload next to a response) may have
            # armed its own deadline meanwhile; else its earlier one applies again.
            if not upgraded and self._waiting_for is _WAIT_SEND:
                self._waiting_for, self.deadline = saved

    async def send_continue(self) -> None:
        """``100 Continue``, if the client waits for it."""
        if self.expects_continue:
            self._continue_sent = True
            await self._write(b"HTTP/1.1 100 Continue\r\n\r\n", True)
            self._stage = _NOTHING_SENT  # an interim response: the final one is still to come

    async def send_informational(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        """A 1xx response (``101 Switching Protocols``), headers as given (checked as a final
        response's are: :class:`ResponseError` for any that would break HTTP)."""
        if not 100 <= status < 200:
            raise ResponseError(f"status {status} is not informational")
        _check_names(headers)
        lines = [_status_line(status)]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers)
        lines.append("\r\n")
        await self._write(_encode_head(lines), True)

    async def start_response(
        self,
        status: int,
        headers: Sequence[tuple[str, str]],
        *,
        drop: frozenset[str] = frozenset(),
        flush: bool = True,
    ) -> None:
        """The status line and headers of the final response.

        Header text is latin-1 decoded bytes (one char a byte). Framing is ours: a given
        Content-Length is kept, else the body is chunked (or, to an HTTP/1.0 client, ends
        with the connection); Transfer-Encoding and Connection headers given are replaced.
        Headers whose lower-cased name is in ``drop`` are left out (a proxy's hop-by-hop set).
        ``flush=False`` holds the head for the next write, so a small response leaves in one.
        Raises :class:`ResponseError` (nothing written) for a status, name or value that
        would break HTTP/1.1 (RFC 9110 §5), or a Content-Length that is not one number.
        """
        await self._write(self._head(status, headers, drop), flush)

    def _head(
        self,
        status: int,
        headers: Sequence[tuple[str, str]],
        drop: frozenset[str],
        extra: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        if not 200 <= status <= 599:
            raise ResponseError(f"status {status} is not a final status")
        request = self.request
        keep_alive = self._keep_alive
        head_only = request.method == b"HEAD" or status in (204, 304)
        length: int | None = None
        lines = [_status_line(status)]
        noted = _noted_lengths(drop)
        if not _TOKEN_NAMES.issuperset(map(_name_of, headers)):
            _check_names(headers)
        for name, value in headers:
            if len(name) not in noted:
                lines.append(f"{name}: {value}\r\n")
                continue
            lowered = name.lower()
            if lowered in drop:
                continue
            if lowered in _FRAMING:
                if lowered == "content-length":
                    if value.isdigit() and value.isascii() and len(value) <= 18:
                        given = int(value)  # the usual case, without a call
                    else:
                        given = _content_length(value)
                    if length is not None:
                        if given != length:
                            raise ResponseError("two different Content-Length values")
                        continue  # the same value twice: once is enough
                    length = given
                elif lowered == "transfer-encoding":
                    continue
                elif lowered == "connection":
                    if "close" in value.lower():
                        keep_alive = False
                    continue
            lines.append(f"{name}: {value}\r\n")
        for name, value in extra:
            lines.append(f"{name}: {value}\r\n")  # the edge's own (Cf-Ray, Connection)
        if head_only:
            mode = _NO_BODY
        elif length is not None:
            mode = _LENGTH
        elif request.http_version == "1.1":
            mode = _CHUNKED
            lines.append("Transfer-Encoding: chunked\r\n")
        else:
            mode = _TO_CLOSE
            keep_alive = False
        if not keep_alive:
            lines.append("Connection: close\r\n")
        elif request.http_version == "1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        head = _encode_head(lines)
        self._keep_alive = keep_alive
        self._body_mode = mode
        self._remaining = length if mode is _LENGTH else None
        self._stage = _HELD
        return head

    async def send_body(self, data: bytes, *, flush: bool = True) -> None:
        """Body bytes, passed through (no copy); ``flush=False`` holds them for the next."""
        if self._body_mode is _NO_BODY or not data:
            if flush:
                await self._write(b"", True)
            return
        remaining = self._remaining  # not None exactly under a Content-Length
        if remaining is not None:
            self._remaining = remaining = remaining - len(data)
            if remaining < 0:
                raise ResponseError("response body longer than its Content-Length")
        elif self._body_mode is _CHUNKED:
            self._held.append(b"%x\r\n" % len(data))
            self._held.append(data)
            await self._write(b"\r\n", flush)
            return
        await self._write(data, flush)

    async def end_response(self) -> None:
        """The response is complete; everything held is written."""
        if self._remaining:
            raise ResponseError("response body shorter than its Content-Length")
        await self._write(b"0\r\n\r\n" if self._body_mode is _CHUNKED else b"", True)

    def discard_response(self) -> bool:
        """Drop a response none of which was written (its head held): True when a response
        may still be sent instead, False when bytes of it already went out."""
        if self._stage is _SENT:
            return False
        self._held.clear()
        self._stage = _NOTHING_SENT
        self._remaining = None
        return True

    async def respond_simple(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """A complete small response in one write."""
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            *extra,
        ]
        await self.start_response(status, headers, flush=False)
        await self.send_body(body, flush=False)
        await self.end_response()

    def respond_now(
        self,
        status: int,
        headers: Sequence[tuple[str, str]],
        body: list[bytes],
        *,
        drop: frozenset[str] = frozenset(),
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        """A whole response at once, from a callback: head (``extra`` headers appended),
        ``body`` and its framing in one write, with no wait for the socket's buffer (the
        fast path takes no request while it is full). Raises :class:`ResponseError` (nothing
        written) for a response that cannot be delivered (a bad head, a body that does not
        match its Content-Length), ConnectionResetError when the client is gone."""
        if self.phase is _CLOSED or self.transport is None:
            raise ConnectionResetError("the client went away")
        parts = [self._head(status, headers, drop, extra)]
        mode = self._body_mode
        if mode is not _NO_BODY:
            size = 0
            for chunk in body:
                size += len(chunk)
            if mode is _LENGTH:
                if size != self._remaining:
                    self._stage = _NOTHING_SENT
                    raise ResponseError("response body does not match its Content-Length")
                parts.extend(body)
            elif mode is _CHUNKED:
                if size:
                    parts.append(b"%x\r\n" % size)
                    parts.extend(body)
                    parts.append(b"\r\n0\r\n\r\n")
                else:
                    parts.append(b"0\r\n\r\n")
            else:
                parts.extend(body)
        self._remaining = None
        self._stage = _SENT
        self.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    @property
    def keeps_alive(self) -> bool:
        """Whether the response sent lets the connection live on (once the body is read)."""
        return self._stage is not _NOTHING_SENT and self._keep_alive

    @property
    def reusable(self) -> bool:
        """Whether another request may follow on this connection now."""
        return self.keeps_alive and self._body_done

    @property
    def responded(self) -> bool:
        """Whether the current request's response has begun (its head is built)."""
        return self._stage is not _NOTHING_SENT

    def close(self) -> None:
        """Close the socket (what is written still goes out)."""
        self.phase = _CLOSED
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close the socket at once, dropping what it still holds."""
        self.phase = _CLOSED
        if self.transport is not None:
            self.transport.abort()

    async def _serve(self) -> None:
        """Answer requests until the connection ends; ``handle`` returns keep-alive."""
        try:
            while True:
                try:
                    step = await self._next_step()
                except BadRequest as exc:
                    # Only ever between responses: answer with the placeholder (close).
                    self.request = Request()
                    self.phase = _SERVING
                    await self._on_error(self, exc)
                    break
                if step is None:
                    break
                if type(step) is Request:
                    keep = await self._handle(self, step)
                else:
                    keep = await cast(Coroutine[object, object, bool], step)
                if not keep or not self.keeps_alive:
                    break
                await self.drain_body()
                if not self.reusable or self.phase is _CLOSED:
                    break  # (the socket may have gone while the response went out)
                self._next_request_due()
        except (ConnectionError, OSError, BadRequest, ResponseError):
            pass
        except Exception:
            # A bug in one request's handling must cost that connection, never the listener.
            log.exception("request handling failed")
        finally:
            self.exchange = None
            self.close()


_NOTED_BY_DROP: dict[frozenset[str], frozenset[int]] = {}


def _noted_lengths(drop: frozenset[str]) -> frozenset[int]:
    """The lengths of the response header names framing or ``drop`` care about: a name of
    another length passes unexamined (most do; no lower-casing them)."""
    lengths = _NOTED_BY_DROP.get(drop)
    if lengths is None:
        lengths = frozenset(len(name) for name in drop | _FRAMING)
        if len(_NOTED_BY_DROP) < 64:  # drop sets are a handful of constants
            _NOTED_BY_DROP[drop] = lengths
    return lengths


def _content_length(value: str) -> int:
    # One decimal number, nothing else (int() would take "+5", " 5 " and "5_0").
    stripped = value.strip(" \t")
    if not stripped.isdigit() or not stripped.isascii() or len(stripped) > 18:
        raise ResponseError(f"bad Content-Length {value!r}")
    return int(stripped)


def _check_names(headers: Sequence[tuple[str, str]]) -> None:
    """Raise :class:`ResponseError` unless every name is a token (RFC 9110 §5.1); remember
    the names that are (most responses carry the same few dozen: the usual check is one
    set operation in C)."""
    for name, _ in headers:
        if name in _TOKEN_NAMES:
            continue
        if not _TOKEN.fullmatch(name):
            raise ResponseError(f"response header name {name!r} is not a token")
        if len(_TOKEN_NAMES) < _MAX_TOKEN_NAMES:
            _TOKEN_NAMES.add(name)


def _encode_head(lines: list[str]) -> bytes:
    """The head's bytes; :class:`ResponseError` if a value holds a control character but
    HTAB (RFC 9110 §5.5: CR, LF and NUL would split or cut the head)."""
    data = wire_bytes("".join(lines))
    # Each line ends in CR LF, and those must be its only control bytes: with one LF a line
    # and two control bytes a line, every other control byte is absent (two passes in C).
    count = len(lines)
    if data.count(b"\n") != count or len(data) - len(data.translate(None, _CONTROLS)) != 2 * count:
        raise ResponseError("a response header holds a control character")
    return data
