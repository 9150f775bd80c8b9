"""An eyeball connection's life (``Http1Connection`` with a ``ConnectionTracker``): every phase
has a deadline or an event that ends it, the listener's caps hold, and a response that would
break HTTP/1.1 is refused before any of it is written.

The connection runs on a real event loop over a stand-in transport that keeps what is
written; the sweep's expiry is called directly (``expire``), so no test waits for a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adit.edge.http1 import (
    BadRequest,
    Http1Connection,
    Phase,
    Request,
    RequestTimeout,
    ResponseError,
)
from adit.edge.limits import ConnectionTracker, Deadline, Limits
from asynctests import uvloop_test

_GET = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
_POST = b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 100\r\n\r\n"
LIMITS = Limits(
    header_timeout=10,
    keepalive_timeout=400,
    body_timeout=30,
    body_min_rate=500,
    response_timeout=100,
    max_connections=5,
    max_connections_per_ip=3,
)


class _Transport:
    """Keeps what is written; closing it tells the protocol, as a socket's would."""

    def __init__(self, ip: str = "192.0.2.1") -> None:
        self.out = bytearray()
        self.closed = False
        self.aborted = False
        self.ip = ip
        self.protocol: Http1Connection | None = None

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.ip, 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.out += part

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Exchange:
    """A forwarded request: records why it was abandoned; the fast one finishes then."""

    def __init__(self, conn: Http1Connection) -> None:
        self.conn = conn
        self.abandoned: list[Deadline | None] = []
        self.answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def abandon(self, why: Deadline | None) -> None:
        self.abandoned.append(why)
        if not self.answer.done():
            self.answer.set_exception(ConnectionAbortedError(str(why)))
            self.answer.exception()  # retrieved: the handler may not be waiting for it yet
        if self.conn.phase is Phase.FAST:
            self.conn.finish_fast(False)


class _Server:
    """Handlers like the public listener's, against stand-in exchanges."""

    def __init__(self, *, fast: bool) -> None:
        self.tracker = ConnectionTracker(LIMITS)
        self.exchanges: list[_Exchange] = []
        self.errors: list[BadRequest] = []
        self.fast = fast

    def connect(self, ip: str = "192.0.2.1") -> tuple[Http1Connection, _Transport]:
        conn = Http1Connection(
            self._handle, self._error, self._fast if self.fast else None, tracker=self.tracker
        )
        transport = _Transport(ip)
        transport.protocol = conn
        conn.connection_made(transport)  # type: ignore[arg-type]
        return conn, transport

    def _fast(self, conn: Http1Connection, request: Request) -> _Exchange | None:
        if request.has_body:
            return None
        exchange = _Exchange(conn)
        self.exchanges.append(exchange)
        return exchange

    async def _handle(self, conn: Http1Connection, request: Request) -> bool:
        exchange = _Exchange(conn)
        self.exchanges.append(exchange)
        conn.exchange = exchange
        try:
            while await conn.read_body():
                pass
        except RequestTimeout as exc:
            await conn.respond_simple(408, str(exc).encode(), content_type="text/plain")
            return False
        conn.arm(Deadline.RESPONSE)
        try:
            await exchange.answer
        except ConnectionAbortedError:
            if exchange.abandoned == [Deadline.RESPONSE]:
                await conn.respond_simple(524, b"late", content_type="text/plain")
            return False
        await conn.respond_simple(200, b"ok", content_type="text/plain")
        return True

    async def _error(self, conn: Http1Connection, exc: BadRequest) -> None:
        self.errors.append(exc)
        status = 408 if isinstance(exc, RequestTimeout) else 400
        await conn.respond_simple(status, b"no", content_type="text/plain")


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def _answer(server: _Server) -> None:
    server.exchanges[-1].answer.set_result(None)


def _finish_fast(conn: Http1Connection) -> None:
    conn.respond_now(200, [("Content-Length", "2")], [b"ok"])
    conn.finish_fast(True)


@uvloop_test
async def test_a_connection_that_never_speaks_is_closed_silently() -> None:
    server = _Server(fast=True)
    conn, transport = server.connect()
    await settle()
    assert conn.phase is Phase.IDLE and conn.deadline < math.inf
    conn.expire()
    await settle()
    assert transport.closed and transport.out == b""
    assert len(server.tracker) == 0


@uvloop_test
async def test_a_slow_head_gets_408_and_a_close() -> None:
    server = _Server(fast=True)
    conn, transport = server.connect()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: a")
    await settle()
    conn.expire()
    await settle()
    assert transport.out.startswith(b"HTTP/1.1 408 ")
    assert transport.closed
    assert isinstance(server.errors[0], RequestTimeout)


@uvloop_test
async def test_an_idle_keep_alive_connection_is_closed_after_its_timeout() -> None:
    server = _Server(fast=True)
    conn, transport = server.connect()
    conn.data_received(_GET)
    _finish_fast(conn)
    await settle()
    assert conn.phase is Phase.IDLE
    loop = asyncio.get_running_loop()
    assert conn.deadline == pytest.approx(loop.time() + LIMITS.keepalive_timeout, abs=1)
    # A head that begins is due in the head timeout, not the keep-alive one.
    conn.data_received(b"GET /")
    assert conn.deadline == pytest.approx(loop.time() + LIMITS.header_timeout, abs=1)
    conn.expire()
    await settle()
    assert transport.out.endswith(b"no") and transport.closed


@uvloop_test
async def test_a_fast_request_out_of_time_is_abandoned() -> None:
    server = _Server(fast=True)
    conn, transport = server.connect()
    conn.data_received(_GET)
    assert conn.phase is Phase.FAST
    loop = asyncio.get_running_loop()
    assert conn.deadline == pytest.approx(loop.time() + LIMITS.response_timeout, abs=1)
    conn.expire()
    await settle()
    assert server.exchanges[0].abandoned == [Deadline.RESPONSE]
    assert transport.closed


@pytest.mark.parametrize("end", ["eof", "lost"])
@uvloop_test
async def test_a_visitor_who_leaves_abandons_the_request(end: str) -> None:
    for fast in (True, False):
        server = _Server(fast=fast)
        conn, _ = server.connect()
        conn.data_received(_GET)
        await settle()
        if end == "eof":
            conn.eof_received()
        else:
            conn.connection_lost(None)
        await settle()
        assert server.exchanges[0].abandoned == [None], fast
        assert conn.phase is Phase.CLOSED
        assert conn.serving is not None
        await asyncio.wait_for(conn.serving, 1)


@uvloop_test
async def test_eof_in_the_middle_of_a_body_ends_the_request_not_the_exchange() -> None:
    server = _Server(fast=True)
    conn, transport = server.connect()
    conn.data_received(_POST + b"x" * 10)
    await settle()
    conn.eof_received()
    await settle()
    assert server.exchanges[0].abandoned == []  # the body read fails instead
    assert transport.closed


@uvloop_test
async def test_a_stalled_body_gets_408() -> None:
    server = _Server(fast=True)
    conn, transport = server.connect()
    conn.data_received(_POST + b"x" * 10)
    await settle()
    assert conn.phase is Phase.SERVING and conn.deadline < math.inf
    conn.expire()
    await settle()
    assert transport.out.startswith(b"HTTP/1.1 408 ")
    assert transport.closed


@uvloop_test
async def test_the_body_deadline_follows_the_minimum_rate() -> None:
    server = _Server(fast=True)
    conn, _ = server.connect()
    conn.data_received(_POST)
    await settle()
    loop = asyncio.get_running_loop()
    first = conn.deadline
    assert first == pytest.approx(loop.time() + LIMITS.body_timeout, abs=1)
    conn.data_received(b"x" * 10)  # 10 bytes at 500 B/s buy 0.02 s
    await settle()
    # Reading took the bytes and waits again, with the allowance left (plus the credit).
    assert conn.deadline == pytest.approx(first + 0.02, abs=0.5)
    assert conn.deadline <= loop.time() + LIMITS.body_timeout + 0.01


@uvloop_test
async def test_a_response_out_of_time_is_abandoned_in_the_task() -> None:
    server = _Server(fast=False)
    conn, transport = server.connect()
    conn.data_received(_GET)
    await settle()
    conn.expire()
    await settle()
    assert server.exchanges[0].abandoned == [Deadline.RESPONSE]
    assert transport.out.startswith(b"HTTP/1.1 524 ")


@uvloop_test
async def test_a_client_that_does_not_read_is_cut() -> None:
    server = _Server(fast=False)
    conn, transport = server.connect()
    conn.pause_writing()
    conn.data_received(_GET)
    await settle()
    _answer(server)
    await settle()  # the response is written; the socket's buffer stays full
    assert transport.out.startswith(b"HTTP/1.1 200 ")
    conn.expire()
    await settle()
    assert transport.aborted


@uvloop_test
async def test_drain_closes_idle_connections_and_ends_busy_ones_after_their_response() -> None:
    server = _Server(fast=False)
    # Idle between requests: its client retries a request it sends as the close arrives.
    idle, idle_transport = server.connect()
    idle.data_received(_GET)
    await settle()
    _answer(server)
    await settle()
    busy, busy_transport = server.connect("192.0.2.2")
    busy.data_received(_GET)
    await settle()
    server.tracker.drain()
    await settle()
    assert idle_transport.closed and not busy_transport.closed
    _answer(server)
    await settle()
    assert b"\r\nConnection: close\r\n" in busy_transport.out
    assert busy_transport.is_closing()
    await asyncio.wait_for(server.tracker.wait_empty(), 1)


@uvloop_test
async def test_drain_answers_the_first_request_of_a_new_connection() -> None:
    # A new connection is not idle: its client connected to send a request, which a close
    # would fail (it was never answered, nothing tells the client it may retry). So are those
    # whose TLS handshake ends once the listener is closed (accepted before it closed).
    server = _Server(fast=False)
    fresh, fresh_transport = server.connect()
    server.tracker.drain()
    late, late_transport = server.connect("192.0.2.3")
    await settle()
    assert not fresh_transport.closed and not late_transport.closed
    assert server.tracker.awaiting() == 2
    for conn, transport in ((fresh, fresh_transport), (late, late_transport)):
        conn.data_received(_GET)
        await settle()
        _answer(server)
        await settle()
        assert transport.out.startswith(b"HTTP/1.1 200 ")
        assert b"\r\nConnection: close\r\n" in transport.out
        assert transport.is_closing()
    assert server.tracker.awaiting() == 0
    await asyncio.wait_for(server.tracker.wait_empty(), 1)


@uvloop_test
async def test_caps_per_address_and_per_listener() -> None:
    server = _Server(fast=True)
    same = [server.connect("192.0.2.1") for _ in range(4)]
    assert [t.closed for _, t in same] == [False, False, False, True]
    others = [server.connect(f"192.0.2.{i}") for i in (2, 3, 4)]
    assert [t.closed for _, t in others] == [False, False, True]  # 5 in all
    same[0][0].connection_lost(None)
    assert not server.connect("192.0.2.9")[1].closed


_INPUTS = ["get", "post", "body", "partial", "eof", "lost", "expire", "answer", "paused"]


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.lists(st.sampled_from(_INPUTS), max_size=12))
def test_every_phase_has_a_way_out(fast: bool, inputs: list[str]) -> None:
    """Whatever arrives in whatever order, a connection is closed, or waits with a deadline
    (a lost peer and an expired deadline both end what is in progress)."""

    async def run() -> None:
        server = _Server(fast=fast)
        conn, transport = server.connect()
        actions: dict[str, Callable[[], object]] = {
            "get": lambda: conn.data_received(_GET),
            "post": lambda: conn.data_received(_POST),
            "body": lambda: conn.data_received(b"y" * 50),
            "partial": lambda: conn.data_received(b"GET /x HTTP/1.1\r\n"),
            "eof": conn.eof_received,
            "lost": transport.close,
            "expire": conn.expire,
            "answer": lambda: _answer_any(server, conn),
            "paused": conn.pause_writing,
        }
        for name in inputs:
            if _closed(conn):
                break
            actions[name]()
            await settle()
            assert conn.phase is Phase.CLOSED or conn.deadline < math.inf, (name, conn.phase)
        # And the way out is taken: expiring (repeatedly, as the sweep would) ends it.
        for _ in range(6):
            if _closed(conn):
                break
            conn.expire()
            await settle()
        assert conn.phase in (Phase.CLOSED, Phase.IDLE)
        if conn.phase is Phase.IDLE:
            conn.expire()
            await settle()
        assert conn.phase is Phase.CLOSED
        await settle()
        assert conn.serving is not None and conn.serving.done()
        assert len(server.tracker) == 0

    asyncio.run(run())


def _closed(conn: Http1Connection) -> bool:
    return conn.phase is Phase.CLOSED  # (a function: mypy narrows attributes across awaits)


def _answer_any(server: _Server, conn: Http1Connection) -> None:
    if conn.phase is Phase.FAST:
        with contextlib.suppress(ResponseError, ConnectionError):
            conn.respond_now(200, [("Content-Length", "2")], [b"ok"])
        conn.finish_fast(True)
    elif server.exchanges and not server.exchanges[-1].answer.done():
        server.exchanges[-1].answer.set_result(None)


# -- responses that would break HTTP/1.1 ----------------------------------------------------------

BAD_HEADERS = [
    [("X-A", "a\x00b")],
    [("X-A", "a\rb")],
    [("X-A", "a\nb")],
    [("X-A", "a\x7fb")],
    [("", "v")],
    [("Transfer-Encoding ", "chunked")],
    [("X A", "v")],
    [("X:A", "v")],
    [("X: A", "v")],
    [("X\nA", "v")],
    [("Caf\xe9", "v")],
    [("Content-Length", "+5")],
    [("Content-Length", " 5x")],
    [("Content-Length", "5"), ("Content-Length", "6")],
]


@pytest.mark.parametrize("headers", BAD_HEADERS, ids=repr)
@uvloop_test
async def test_a_response_that_breaks_http_is_refused_before_any_byte(
    headers: list[tuple[str, str]],
) -> None:
    server = _Server(fast=True)
    conn, transport = server.connect()
    conn.data_received(_GET)
    with pytest.raises(ResponseError):
        conn.respond_now(200, headers, [b"abcde"])
    assert transport.out == b""
    # The same connection can still answer (with a page).
    conn.respond_now(502, [("Content-Length", "3")], [b"bad"])
    assert transport.out.startswith(b"HTTP/1.1 502 ")


@pytest.mark.parametrize("status", [0, 42, 101, 199, 600, 1000])
@uvloop_test
async def test_a_status_that_is_not_final_is_refused(status: int) -> None:
    server = _Server(fast=True)
    conn, transport = server.connect()
    conn.data_received(_GET)
    with pytest.raises(ResponseError):
        conn.respond_now(status, [], [b""])
    assert transport.out == b""


@uvloop_test
async def test_tab_and_latin1_values_and_a_repeated_equal_length_pass() -> None:
    server = _Server(fast=True)
    conn, transport = server.connect()
    conn.data_received(_GET)
    conn.respond_now(
        200,
        [("X-T", "a\tb \xe9"), ("Content-Length", "2"), ("Content-Length", "2")],
        [b"ok"],
    )
    assert transport.out.count(b"Content-Length: 2\r\n") == 1
    assert b"X-T: a\tb \xe9\r\n" in transport.out


@uvloop_test
async def test_the_sweep_expires_what_is_due_and_stops_when_empty() -> None:
    quick = Limits(header_timeout=0.05, keepalive_timeout=5, body_timeout=5, response_timeout=5)
    assert quick.sweep_interval == pytest.approx(0.02, abs=0.01)
    tracker = ConnectionTracker(quick)
    server = _Server(fast=True)
    server.tracker = tracker
    _, silent_transport = server.connect()
    talking, talking_transport = server.connect("192.0.2.2")
    talking.data_received(_GET)  # FAST: due in the response timeout
    async with asyncio.timeout(2):
        while not silent_transport.closed:
            await asyncio.sleep(0.01)
    assert not talking_transport.closed
    _finish_fast(talking)
    talking_transport.close()
    await settle()
    assert len(tracker) == 0
    await asyncio.sleep(0.1)
    assert tracker._sweeper is None  # no timer left behind once the listener is empty
