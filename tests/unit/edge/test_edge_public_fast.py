"""The public listener's fast path: bodiless requests forwarded from ``data_received`` and
answered from the tunnel's read when the whole response is in it, else by the serving task.

The edge's real objects (store, registry, listener, tunnel session, eyeball connection) talk
to a sans-IO connector (``ConnectorTunnelConnection``); the two sockets are stand-ins that
keep what is written, so each test decides exactly which bytes arrive in which read.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import uuid
from typing import Any

import pytest

from adit.edge.http1 import Http1Connection
from adit.edge.public import PublicListener
from adit.edge.registry import ConnectionRegistry, LiveConnection
from adit.edge.store import Store
from adit.edge.tunnel_session import EdgeIdentity, TunnelSession
from adit.protocol.headers import RequestType, ResponseMeta
from adit.protocol.http2 import ConnectorTunnelConnection, RequestReceived
from asynctests import uvloop_test

_GET = b"GET /file HTTP/1.1\r\nHost: app.example.com\r\nAccept: */*\r\n\r\n"
_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "5"), ("Connection", "close")]


class _Socket:
    """A transport that keeps what is written."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def writelines(self, parts: list[bytes]) -> None:
        self.out.extend(bytes(p) for p in parts)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Edge:
    """One tunnel connection (registered, serialised headers) and eyeball connections."""

    def __init__(self) -> None:
        store = Store(":memory:")
        account = store.create_account("fast")
        tunnel = store.create_tunnel(account.tag, "fast")
        store.add_zone(account.tag, "example.com")
        store.route_hostname(account.tag, tunnel.id, "app.example.com")
        registry = ConnectionRegistry()
        self.listener = PublicListener(store, registry, location="tst", scheme="https")
        self.session = TunnelSession(store, registry, EdgeIdentity("tst"))
        self.session.live = LiveConnection(
            tunnel_id=tunnel.id,
            account_tag=account.tag,
            connection_id=uuid.uuid4(),
            client_id=uuid.uuid4(),
            conn_index=0,
            location="tst",
            origin_ip="127.0.0.1",
            opened_at=datetime.datetime.now(datetime.UTC),
            client_version="test",
            arch="test",
            features=(),
            handle=self.session,
        )
        registry.add(self.session.live)
        self.session.serialize_headers = True
        self.tunnel = _Socket()
        self.session.connection_made(self.tunnel)  # type: ignore[arg-type]
        self.connector = ConnectorTunnelConnection()
        self.connector.initiate()

    async def start(self) -> None:
        await settle()
        self.requests()  # the edge's preface and control stream
        self.session.data_received(self.connector.data_to_send())
        await settle()
        self.requests()  # SETTINGS acknowledged

    def eyeball(self) -> tuple[Http1Connection, _Socket]:
        conn = self.listener.http1_protocol()
        socket = _Socket()
        conn.connection_made(socket)  # type: ignore[arg-type]
        return conn, socket

    def requests(self) -> list[RequestReceived]:
        """What the edge sent the connector since last asked: the requests among it."""
        events = self.connector.receive_data(self.tunnel.take())
        return [
            e
            for e in events
            if isinstance(e, RequestReceived) and e.request_type is not RequestType.CONTROL_STREAM
        ]

    def answer(
        self,
        stream_id: int,
        body: bytes = b"hello",
        headers: list[tuple[str, str]] | None = None,
        meta: ResponseMeta = ResponseMeta.ORIGIN,
    ) -> bytes:
        """The connector's bytes for a whole response (head and body, END_STREAM)."""
        self.connector.send_response(stream_id, 200, headers or _HEADERS, meta=meta)
        self.connector.send_data(stream_id, body, end_stream=True)
        return self.connector.data_to_send()


async def settle() -> None:
    """Let callbacks and woken tasks run (bounded)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def _started() -> tuple[_Edge, Http1Connection, _Socket]:
    """An edge with its tunnel session up, and one eyeball connection to it."""
    edge = _Edge()
    await edge.start()
    conn, socket = edge.eyeball()
    return edge, conn, socket


@uvloop_test
async def test_whole_response_from_the_tunnel_read() -> None:
    edge, conn, socket = await _started()
    conn.data_received(_GET)
    await settle()
    (request,) = edge.requests()
    assert request.end_stream and request.path == "/file"
    edge.session.data_received(edge.answer(request.stream_id))
    # Written from the tunnel's read, before any task ran.
    response = socket.take()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 5\r\n" in response and b"\r\nCf-Ray: " in response
    assert b"Connection" not in response  # the origin's hop-by-hop header is not passed on
    assert response.endswith(b"\r\n\r\nhello")
    assert not socket.closed
    assert edge.session.channels.keys() == {edge.session.control.stream_id}  # type: ignore[union-attr]
    # The connection serves the next request the same way.
    conn.data_received(_GET)
    await settle()
    (second,) = edge.requests()
    edge.session.data_received(edge.answer(second.stream_id, b"again", [("X-A", "1")]))
    assert socket.take().endswith(b"Transfer-Encoding: chunked\r\n\r\n5\r\nagain\r\n0\r\n\r\n")


@uvloop_test
async def test_answered_requests_leave_nothing_to_the_cyclic_collector() -> None:
    # A request's objects (its exchange, tunnel stream and channel, the answer) must go with
    # their last reference: left in a reference cycle, they wait for the cyclic collector,
    # whose runs cost the edge ~3 % of its instructions a request at ~15 objects each.
    edge, conn, socket = await _started()
    cyclic = ("RequestStream", "StreamChannel", "_Exchange", "ResponseReceived", "Request")
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            # Fast path: the whole answer in one read.
            conn.data_received(_GET)
            await settle()
            (request,) = edge.requests()
            edge.session.data_received(edge.answer(request.stream_id))
            # The task's path: the body in a later read.
            conn.data_received(_GET)
            await settle()
            (request,) = edge.requests()
            edge.connector.send_response(request.stream_id, 200, _HEADERS)
            edge.session.data_received(edge.connector.data_to_send())
            await settle()
            edge.connector.send_data(request.stream_id, b"hello", end_stream=True)
            edge.session.data_received(edge.connector.data_to_send())
            await settle()
        assert socket.take().count(b"HTTP/1.1 200 OK") == 6
        gc.collect()
        left = sorted({type(o).__name__ for o in gc.garbage} & set(cyclic))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()
    assert left == []


@uvloop_test
async def test_a_body_broken_in_the_heads_read_gets_400_even_if_an_answer_came_first() -> None:
    # The visitor's head and a chunked body that breaks arrive in one read. On a loaded machine
    # the edge can be preempted right after it forwarded the head, and the connector's answer
    # (an origin that answers heads at once) read before the body's uploader ever ran: the
    # uploader is made to run only after that answer here.
    edge, conn, socket = await _started()
    upload = edge.listener._upload

    async def upload_after_the_answer(exchange: Any) -> None:
        (request,) = edge.requests()
        edge.session.data_received(edge.answer(request.stream_id))
        await upload(exchange)

    edge.listener._upload = upload_after_the_answer  # type: ignore[method-assign]
    conn.data_received(
        b"POST /upload HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0x5\r\nhi\r\n0\r\n\r\n"
    )
    for _ in range(5):
        await settle()
    reply = socket.take()
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:80]
    assert b"\r\nConnection: close\r\n" in reply
    assert b"200 OK" not in reply


@uvloop_test
async def test_pipelined_requests_answered_in_order() -> None:
    edge, conn, socket = await _started()
    conn.data_received(_GET + _GET.replace(b"/file", b"/second"))
    await settle()
    (first,) = edge.requests()  # the second waits for the first's answer
    edge.session.data_received(edge.answer(first.stream_id, b"one.."))
    await settle()
    (second,) = edge.requests()
    assert second.path == "/second"
    edge.session.data_received(edge.answer(second.stream_id, b"two.."))
    out = socket.take()
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert out.index(b"one..") < out.index(b"two..")


@uvloop_test
async def test_body_in_a_later_read_goes_through_the_task() -> None:
    edge, conn, socket = await _started()
    conn.data_received(_GET)
    await settle()
    (request,) = edge.requests()
    edge.connector.send_response(request.stream_id, 200, _HEADERS)
    edge.session.data_received(edge.connector.data_to_send())
    await settle()
    # No body bytes are there yet: the head goes at once (a stream of events shows it).
    assert socket.take().startswith(b"HTTP/1.1 200 OK\r\n")
    edge.connector.send_data(request.stream_id, b"hel")
    edge.session.data_received(edge.connector.data_to_send())
    await settle()
    edge.connector.send_data(request.stream_id, b"lo", end_stream=True)
    edge.session.data_received(edge.connector.data_to_send())
    await settle()
    assert socket.take() == b"hello"
    # And back on the fast path for the next request.
    conn.data_received(_GET)
    await settle()
    (second,) = edge.requests()
    edge.session.data_received(edge.answer(second.stream_id))
    assert socket.take().endswith(b"hello")
    assert not socket.closed


@uvloop_test
async def test_connector_error_gets_the_origin_error_page(caplog: pytest.LogCaptureFixture) -> None:
    edge, conn, socket = await _started()
    conn.data_received(_GET)
    await settle()
    (request,) = edge.requests()
    reply = edge.answer(
        request.stream_id,
        b"adit-origin-error: refused\ndial tcp: refused",
        meta=ResponseMeta.CONNECTOR,
    )
    edge.session.data_received(reply)
    await settle()
    response = socket.take()
    assert response.startswith(b"HTTP/1.1 502 ")
    assert b"refused the connection" in response  # the reason's class is shown...
    assert b"dial tcp" not in response  # ...its detail only logged, with the Ray ID
    ray = response.split(b"Cf-Ray: ", 1)[1].split(b"\r\n", 1)[0].decode()
    assert any(
        ray in r.getMessage() and "dial tcp: refused" in r.getMessage() for r in caplog.records
    )
    assert not socket.closed


@uvloop_test
async def test_body_not_matching_its_length_gets_a_502_page() -> None:
    edge, conn, socket = await _started()
    conn.data_received(_GET)
    await settle()
    (request,) = edge.requests()
    edge.session.data_received(edge.answer(request.stream_id, b"too long"))
    await settle()
    response = socket.take()
    assert response.startswith(b"HTTP/1.1 502 ") and b"too long" not in response
    assert not socket.closed  # nothing was sent: the connection goes on


@uvloop_test
async def test_head_request_gets_no_body() -> None:
    edge, conn, socket = await _started()
    conn.data_received(_GET.replace(b"GET", b"HEAD"))
    await settle()
    (request,) = edge.requests()
    assert request.method == "HEAD"
    edge.connector.send_response(request.stream_id, 200, _HEADERS, end_stream=True)
    edge.session.data_received(edge.connector.data_to_send())
    response = socket.take()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(b"\r\n\r\n")
    assert b"Content-Length: 5" in response


@uvloop_test
async def test_http10_response_without_length_ends_with_the_connection() -> None:
    edge, conn, socket = await _started()
    conn.data_received(b"GET /file HTTP/1.0\r\nHost: app.example.com\r\n\r\n")
    await settle()
    (request,) = edge.requests()
    edge.session.data_received(edge.answer(request.stream_id, b"plain", [("X-A", "1")]))
    await settle()
    response = socket.take()
    assert b"Connection: close\r\n" in response and response.endswith(b"\r\n\r\nplain")
    assert socket.closed


@uvloop_test
async def test_reset_stream_gets_the_stream_failed_page() -> None:
    edge, conn, socket = await _started()
    conn.data_received(_GET)
    await settle()
    (request,) = edge.requests()
    edge.connector.reset_stream(request.stream_id)
    edge.session.data_received(edge.connector.data_to_send())
    await settle()
    response = socket.take()
    assert response.startswith(b"HTTP/1.1 502 ") and b"Connection: close" in response
    assert socket.closed


@uvloop_test
async def test_tunnel_lost_before_the_answer() -> None:
    edge, conn, socket = await _started()
    conn.data_received(_GET)
    await settle()
    edge.session.connection_lost(None)
    await settle()
    assert socket.take().startswith(b"HTTP/1.1 502 ")
    assert socket.closed


@uvloop_test
async def test_eyeball_gone_before_the_answer() -> None:
    edge, conn, socket = await _started()
    conn.data_received(_GET)
    await settle()
    (request,) = edge.requests()
    conn.connection_lost(None)
    await settle()
    edge.session.data_received(edge.answer(request.stream_id))
    await settle()
    assert socket.take() == b""
    assert len(edge.session.channels) == 1  # only the control stream is left
    assert conn.serving is not None
    await asyncio.wait_for(conn.serving, 1.0)


@uvloop_test
async def test_unknown_host_is_answered_by_the_task() -> None:
    edge, conn, socket = await _started()
    conn.data_received(_GET.replace(b"app.example.com", b"other.example.com"))
    await settle()
    assert edge.requests() == []
    assert socket.take().startswith(b"HTTP/1.1 404 ")
    assert not socket.closed


@uvloop_test
async def test_next_request_waits_for_an_answer_left_to_the_task() -> None:
    edge, conn, socket = await _started()
    conn.data_received(_GET)
    await settle()
    (first,) = edge.requests()
    edge.connector.send_response(first.stream_id, 200, _HEADERS)
    edge.session.data_received(edge.connector.data_to_send())  # head only: to the task
    conn.data_received(_GET.replace(b"/file", b"/second"))  # before the task ran
    await settle()
    assert edge.requests() == []  # not forwarded while the first is being answered
    edge.connector.send_data(first.stream_id, b"first", end_stream=True)
    edge.session.data_received(edge.connector.data_to_send())
    await settle()
    (second,) = edge.requests()
    assert second.path == "/second"
    edge.session.data_received(edge.answer(second.stream_id, b"secnd"))
    await settle()
    out = socket.take()
    assert out.index(b"first") < out.index(b"secnd")


@uvloop_test
async def test_whole_bodies_are_credited_to_the_connection_window() -> None:
    # 40 MiB through a 32 MiB connection window: the later answers need the earlier credit.
    edge, conn, socket = await _started()
    body = b"b" * (1 << 20)
    for _ in range(40):
        conn.data_received(_GET)
        await settle()
        (request,) = edge.requests()
        headers = [("Content-Length", str(len(body)))]
        edge.session.data_received(edge.answer(request.stream_id, body, headers))
        response = socket.take()
        assert response.endswith(b"\r\n\r\n" + body)
    assert not socket.closed


def _second_session(edge: _Edge) -> tuple[TunnelSession, _Socket, ConnectorTunnelConnection]:
    """Another registered connection of the same tunnel, with its connector."""
    listener = edge.listener
    session = TunnelSession(listener.store, listener.registry, EdgeIdentity("tst"))
    first = edge.session.live
    assert first is not None
    session.live = LiveConnection(
        tunnel_id=first.tunnel_id,
        account_tag=first.account_tag,
        connection_id=uuid.uuid4(),
        client_id=first.client_id,
        conn_index=1,
        location="tst",
        origin_ip="127.0.0.1",
        opened_at=datetime.datetime.now(datetime.UTC),
        client_version="test",
        arch="test",
        features=(),
        handle=session,
    )
    listener.registry.add(session.live)
    session.serialize_headers = True
    tunnel = _Socket()
    session.connection_made(tunnel)  # type: ignore[arg-type]
    connector = ConnectorTunnelConnection()
    connector.initiate()
    connector.receive_data(tunnel.take())
    session.data_received(connector.data_to_send())
    connector.receive_data(tunnel.take())
    return session, tunnel, connector


@pytest.mark.parametrize("method", [b"GET", b"POST"])
@uvloop_test
async def test_a_request_its_lost_connection_never_acknowledged_goes_over_another(
    method: bytes,
) -> None:
    edge, conn, socket = await _started()
    # QUIC tells which streams the connector acknowledged nothing of (HTTP/2 cannot).
    edge.session.undelivered = lambda stream_id: True  # type: ignore[method-assign]
    conn.data_received(_GET.replace(b"GET", method, 1))
    await settle()
    (lost,) = edge.requests()
    second, tunnel, connector = _second_session(edge)
    edge.session.connection_lost(ConnectionError("no answer from the peer"))
    await settle()
    events = connector.receive_data(tunnel.take())
    again = [e for e in events if isinstance(e, RequestReceived) and e.path == "/file"]
    if method == b"POST":
        # Not idempotent: had the connector read it before dying, the origin would see it
        # twice. The visitor gets the error page.
        assert again == []
        assert socket.take().startswith(b"HTTP/1.1 502 ")
        return
    (request,) = again
    connector.send_response(request.stream_id, 200, _HEADERS)
    connector.send_data(request.stream_id, b"hello", end_stream=True)
    second.data_received(connector.data_to_send())
    await settle()
    response = socket.take()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(b"\r\n\r\nhello")
    assert lost.stream_id == request.stream_id  # each connection numbers its own streams


@uvloop_test
async def test_a_lost_connection_that_may_have_read_the_request_is_not_resent() -> None:
    edge, conn, socket = await _started()
    conn.data_received(_GET)
    await settle()
    edge.requests()
    _second_session(edge)
    edge.session.connection_lost(ConnectionError("reset"))  # HTTP/2: no proof either way
    await settle()
    assert socket.take().startswith(b"HTTP/1.1 502 ")
