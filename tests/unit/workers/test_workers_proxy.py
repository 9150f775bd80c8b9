"""OriginProxy against real origins on 127.0.0.1, with an in-memory edge side.

``FakeTunnelStream`` stands in for the edge (the transport is not under test); the origins
are real servers written here with h11, ``websockets`` and ``ssl``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import ipaddress
import json
import logging
import os
import socket
import ssl
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import ServerConnection, serve

import ports
from adit.config.origin import (
    BastionService,
    HelloWorldService,
    HttpService,
    IpRule,
    OriginOptions,
    Rule,
    SocksProxyService,
    StatusService,
    StreamService,
    UnixService,
)
from adit.protocol.websocket import (
    Frame,
    FrameDecoder,
    Opcode,
    Role,
    WebSocketConnection,
    encode_frame,
)
from adit.workers.edge_connection import WARP_ROUTING
from adit.workers.errors import UNREACHABLE_MESSAGE
from adit.workers.proxy import OriginProxy
from adit.workers.stream import IncomingRequest, ResponseSource, StreamKind
from asynctests import asynctest

CONNECTOR_ID = uuid.UUID("5b8a4c2e-9d51-4b0f-8a52-0c1d2e3f4a5b")
PUBLIC_HOST = "app.example.com"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

pytestmark = pytest.mark.timeout(30)


# --------------------------------------------------------------------------- the edge side


class FakeTunnelStream:
    """The edge's end of one tunnel stream, in memory (implements ``TunnelStream``)."""

    def __init__(self, request: IncomingRequest, body: list[bytes] | None = None) -> None:
        self.request = request
        self._incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self._eof = False
        for chunk in body or []:
            self.feed(chunk)
        if body is not None:
            self.feed_eof()
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.source: ResponseSource | None = None
        self.writes: list[bytes] = []
        self.ended = False
        self.was_reset = False
        self.finished = asyncio.Event()
        self._wrote = asyncio.Condition()

    def feed(self, data: bytes) -> None:
        self._incoming.put_nowait(data)

    def feed_eof(self) -> None:
        self._incoming.put_nowait(b"")

    async def read(self) -> bytes:
        if self._eof:
            return b""
        data = await self._incoming.get()
        if not data:
            self._eof = True
        return data

    async def send_response(
        self,
        status: int,
        headers: list[tuple[str, str]],
        *,
        source: ResponseSource = ResponseSource.ORIGIN,
        end_stream: bool = False,
        body: bytes = b"",
    ) -> None:
        assert self.status is None, "response sent twice"
        self.status, self.headers, self.source = status, list(headers), source
        if body:
            self.writes.append(body)
        if end_stream:
            self.ended = True
            self.finished.set()

    async def write(self, data: bytes) -> None:
        assert self.status is not None and not self.ended
        async with self._wrote:
            self.writes.append(data)
            self._wrote.notify_all()

    async def end(self) -> None:
        assert self.status is not None
        self.ended = True
        self.finished.set()

    def reset(self) -> None:
        self.was_reset = True
        self.finished.set()

    @property
    def response_started(self) -> bool:
        return self.status is not None

    @property
    def body(self) -> bytes:
        return b"".join(self.writes)

    async def wait_for_body(self, predicate: Callable[[bytes], bool]) -> bytes:
        async with self._wrote:
            await self._wrote.wait_for(lambda: predicate(self.body))
        return self.body

    async def wait_for_bytes(self, expected: bytes) -> None:
        await self.wait_for_body(lambda body: expected in body)

    def header_values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def incoming(
    path: str = "/",
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    kind: StreamKind = StreamKind.HTTP,
    authority: str = PUBLIC_HOST,
) -> IncomingRequest:
    return IncomingRequest(
        kind=kind,
        method=method,
        path=path,
        authority=authority,
        host=authority.split(":", maxsplit=1)[0],
        headers=tuple(headers or []),
    )


def http_rule(port: int, scheme: str = "http", host: str = "127.0.0.1", **options: object) -> Rule:
    service = HttpService(scheme, host, port, f"{scheme}://{host}:{port}")
    return Rule(3, "", "", None, service, OriginOptions(**options))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- origins


@dataclass
class Seen:
    """A request as the origin received it."""

    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body_sha256: str = ""
    body_length: int = 0

    def values(self, name: str) -> list[str]:
        return [v.decode() for n, v in self.headers if n.lower() == name.lower().encode()]

    def names(self) -> list[str]:
        return [n.decode() for n, _ in self.headers]


class Reply:
    """What a handler uses to answer (over h11, so framing is correct)."""

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter) -> None:
        self._conn, self._writer = conn, writer

    async def send(self, *events: h11.Event) -> None:
        for event in events:
            self._writer.write(self._conn.send(event) or b"")
        await self._writer.drain()

    async def simple(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        framing = [("Content-Length", str(len(body)))]
        await self.send(
            h11.Response(status_code=status, headers=[*headers, *framing]),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )

    def raw(self, data: bytes) -> None:
        self._writer.write(data)


Handler = Callable[[Seen, Reply], Awaitable[None]]


async def ok_handler(seen: Seen, reply: Reply) -> None:
    await reply.simple(200, [("Content-Type", "text/plain")], seen.body_sha256.encode())


@dataclass
class Origin:
    """An h11 origin that records connections and requests."""

    handler: Handler = ok_handler
    context: ssl.SSLContext | None = None
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[object]] = field(default_factory=set)

    async def start(self, unix_path: str = "") -> Origin:
        if self.context is not None:
            self.context.sni_callback = self._sni
        if unix_path:
            self._server = await asyncio.start_unix_server(self._serve, unix_path, ssl=self.context)
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _sni(self, _sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.server_names.append(name)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await _server_event(conn, reader)
                if not isinstance(event, h11.Request):
                    return
                digest, length = hashlib.sha256(), 0
                while isinstance(part := await _server_event(conn, reader), h11.Data):
                    digest.update(part.data)
                    length += len(part.data)
                seen = Seen(
                    event.method.decode(),
                    event.target.decode(),
                    list(event.headers.raw_items()),
                    digest.hexdigest(),
                    length,
                )
                self.requests.append(seen)
                await self.handler(seen, Reply(conn, writer))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (OSError, h11.ProtocolError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()


async def _server_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await reader.read(65536))
    return event


@contextlib.asynccontextmanager
async def running(origin: Origin, unix_path: str = "") -> AsyncIterator[Origin]:
    await origin.start(unix_path)
    try:
        yield origin
    finally:
        await origin.stop()


@contextlib.asynccontextmanager
async def proxy_for_test(
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[OriginProxy]:
    kwargs = {"clock": clock} if clock is not None else {}
    proxy = OriginProxy(CONNECTOR_ID, {"env": "prod"}, logging.getLogger("test.proxy"), **kwargs)
    try:
        yield proxy
    finally:
        await proxy.aclose()


def free_port() -> int:
    return ports.free_port()


def blob(size: int) -> bytes:
    return hashlib.sha256(b"seed").digest() * (size // 32) + b"x" * (size % 32)


# --------------------------------------------------------------------------- HTTP


@asynctest
async def test_headers_forwarded_in_order_with_case_and_repeats() -> None:
    async def handler(seen: Seen, reply: Reply) -> None:
        await reply.simple(
            201,
            [
                ("Set-Cookie", "a=1"),
                ("X-MiXeD-CaSe", "yes"),
                ("Set-Cookie", "b=2"),
                ("Connection", "keep-alive"),
            ],
            b"created",
        )

    async with running(Origin(handler)) as origin, proxy_for_test() as proxy:
        stream = FakeTunnelStream(
            incoming(
                "/a/b?x=1",
                headers=[
                    ("x-first", "1"),
                    ("X-Repeat", "a"),
                    ("accept", "*/*"),
                    ("X-Repeat", "b"),
                    ("connection", "x-drop-me, close"),
                    ("x-drop-me", "gone"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-connection", "keep-alive"),
                    ("te", "trailers"),
                    ("upgrade", "h2c"),
                    ("transfer-encoding", "chunked"),
                    ("cf-cloudflared-proxy-connection-upgrade", "nope"),
                    ("Cf-Ray", "8f00-AMS"),
                ],
            ),
            body=[],
        )
        await proxy.serve(stream, http_rule(origin.port))

    (seen,) = origin.requests
    assert (seen.method, seen.target) == ("GET", "/a/b?x=1")
    assert seen.names() == [
        "Host",
        "x-first",
        "X-Repeat",
        "accept",
        "X-Repeat",
        "Cf-Ray",
        "Cf-Warp-Tag-Id",
        "Cf-Warp-Tag-Env",
        "Connection",
    ]
    assert seen.values("x-repeat") == ["a", "b"]
    assert seen.values("host") == [PUBLIC_HOST]
    assert seen.values("cf-warp-tag-id") == [str(CONNECTOR_ID)]
    assert seen.values("cf-warp-tag-env") == ["prod"]
    assert seen.values("connection") == ["keep-alive"]
    assert seen.values("user-agent") == []
    assert stream.status == 201
    assert stream.source is ResponseSource.ORIGIN
    assert stream.headers == [
        ("Set-Cookie", "a=1"),
        ("X-MiXeD-CaSe", "yes"),
        ("Set-Cookie", "b=2"),
        ("Connection", "keep-alive"),
        ("Content-Length", "7"),
    ]
    assert stream.body == b"created"
    assert stream.ended and not stream.was_reset
    assert proxy.stats.total_requests == 1
    assert proxy.stats.responses_by_code == {201: 1}
    assert proxy.stats.concurrent_requests == 0


@asynctest
async def test_http_host_header_moves_public_host_to_x_forwarded_host() -> None:
    async with running(Origin()) as origin, proxy_for_test() as proxy:
        stream = FakeTunnelStream(
            incoming(headers=[("x-forwarded-host", "spoofed"), ("user-agent", "curl/8")]), body=[]
        )
        await proxy.serve(stream, http_rule(origin.port, http_host_header="internal.local"))
    (seen,) = origin.requests
    assert seen.values("host") == ["internal.local"]
    assert seen.values("x-forwarded-host") == [PUBLIC_HOST]
    assert seen.values("user-agent") == ["curl/8"]


@asynctest
async def test_post_large_body_with_content_length() -> None:
    payload = blob(10 * 1024 * 1024)
    chunks = [payload[i : i + 65536] for i in range(0, len(payload), 65536)]
    async with running(Origin()) as origin, proxy_for_test() as proxy:
        stream = FakeTunnelStream(
            incoming("/upload", "POST", headers=[("content-length", str(len(payload)))]),
            body=chunks,
        )
        await proxy.serve(stream, http_rule(origin.port))
    (seen,) = origin.requests
    assert seen.body_length == len(payload)
    assert seen.body_sha256 == hashlib.sha256(payload).hexdigest()
    assert seen.values("content-length") == [str(len(payload))]
    assert seen.values("transfer-encoding") == []
    assert stream.body == hashlib.sha256(payload).hexdigest().encode()


@asynctest
async def test_post_without_length_is_chunked_and_streamed() -> None:
    payload = blob(10 * 1024 * 1024 + 7)
    chunks = [payload[i : i + 100_000] for i in range(0, len(payload), 100_000)]
    async with running(Origin()) as origin, proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming("/upload", "POST"), body=chunks)
        await proxy.serve(stream, http_rule(origin.port))
    (seen,) = origin.requests
    assert seen.values("transfer-encoding") == ["chunked"]
    assert seen.body_sha256 == hashlib.sha256(payload).hexdigest()
    assert stream.status == 200


@asynctest
async def test_disable_chunked_encoding_sends_a_length() -> None:
    async with running(Origin()) as origin, proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming("/wsgi", "PUT"), body=[b"abc", b"def"])
        await proxy.serve(stream, http_rule(origin.port, disable_chunked_encoding=True))
    (seen,) = origin.requests
    assert seen.values("content-length") == ["6"]
    assert seen.values("transfer-encoding") == []
    assert seen.body_sha256 == hashlib.sha256(b"abcdef").hexdigest()


@asynctest
async def test_get_without_body_sends_no_framing_headers() -> None:
    async with running(Origin()) as origin, proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming(), body=[])
        await proxy.serve(stream, http_rule(origin.port))
    (seen,) = origin.requests
    assert seen.values("content-length") == []
    assert seen.values("transfer-encoding") == []


@asynctest
async def test_get_with_late_body_is_chunked() -> None:
    async with running(Origin()) as origin, proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming("/", "GET"))
        task = asyncio.create_task(proxy.serve(stream, http_rule(origin.port)))
        await asyncio.sleep(0.3)  # longer than the 200 ms body probe: no event to await here
        stream.feed(b"late")
        stream.feed_eof()
        await task
    (seen,) = origin.requests
    assert seen.values("transfer-encoding") == ["chunked"]
    assert seen.body_length == 4


@asynctest
async def test_large_response_body() -> None:
    payload = blob(10 * 1024 * 1024)

    async def handler(seen: Seen, reply: Reply) -> None:
        await reply.simple(200, [("Content-Type", "application/octet-stream")], payload)

    async with running(Origin(handler)) as origin, proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming("/big"), body=[])
        await proxy.serve(stream, http_rule(origin.port))
    assert hashlib.sha256(stream.body).digest() == hashlib.sha256(payload).digest()
    assert len(stream.writes) > 1
    assert stream.ended


@asynctest
async def test_streamed_response_reaches_edge_before_origin_finishes() -> None:
    stream = FakeTunnelStream(incoming("/events"), body=[])
    sent_last = asyncio.Event()
    edge_writes_before_end: list[int] = []

    async def handler(seen: Seen, reply: Reply) -> None:
        await reply.send(
            h11.Response(status_code=200, headers=[("Content-Type", "text/event-stream")])
        )
        for n in range(3):
            await reply.send(h11.Data(data=f"event {n}\n".encode()))
            # The next piece goes out only once the edge saw this one: a buffering proxy
            # would deadlock here (and time out).
            await stream.wait_for_bytes(f"event {n}\n".encode())
        edge_writes_before_end.append(len(stream.writes))
        sent_last.set()
        await reply.send(h11.EndOfMessage())

    async with running(Origin(handler)) as origin, proxy_for_test() as proxy:
        await proxy.serve(stream, http_rule(origin.port))
    assert sent_last.is_set()
    assert edge_writes_before_end[0] >= 3
    assert stream.body == b"event 0\nevent 1\nevent 2\n"
    assert stream.header_values("transfer-encoding") == []


@asynctest
async def test_keep_alive_reuses_one_connection() -> None:
    async with running(Origin()) as origin, proxy_for_test() as proxy:
        for _ in range(5):
            stream = FakeTunnelStream(incoming(), body=[])
            await proxy.serve(stream, http_rule(origin.port))
            assert stream.status == 200
    assert len(origin.requests) == 5
    assert origin.connections == 1


@asynctest
async def test_pool_expires_idle_connections() -> None:
    now = [1000.0]
    async with running(Origin()) as origin, proxy_for_test(clock=lambda: now[0]) as proxy:
        rule = http_rule(origin.port, keep_alive_timeout=90.0)
        await proxy.serve(FakeTunnelStream(incoming(), body=[]), rule)
        now[0] += 89.0
        await proxy.serve(FakeTunnelStream(incoming(), body=[]), rule)
        assert origin.connections == 1
        now[0] += 91.0
        await proxy.serve(FakeTunnelStream(incoming(), body=[]), rule)
        assert origin.connections == 2


@asynctest
async def test_origin_closing_idle_connection_is_retried_transparently() -> None:
    async with running(Origin()) as origin, proxy_for_test() as proxy:
        await proxy.serve(FakeTunnelStream(incoming(), body=[]), http_rule(origin.port))
        for task in list(origin._tasks):  # the origin drops its idle keep-alive connection
            task.cancel()
        stream = FakeTunnelStream(incoming(), body=[])
        await proxy.serve(stream, http_rule(origin.port))
    assert stream.status == 200
    assert origin.connections == 2


@asynctest
async def test_stale_pooled_connection_is_retried_on_a_fresh_one() -> None:
    per_connection: dict[int, int] = {}

    async def handler(seen: Seen, reply: Reply) -> None:
        task = id(asyncio.current_task())
        per_connection[task] = per_connection.get(task, 0) + 1
        if per_connection[task] == 2:
            raise OSError("origin dropped a kept-alive connection as the request arrived")
        await reply.simple(200, [], b"fine")

    async with running(Origin(handler)) as origin, proxy_for_test() as proxy:
        await proxy.serve(FakeTunnelStream(incoming(), body=[]), http_rule(origin.port))
        stream = FakeTunnelStream(incoming(), body=[])
        await proxy.serve(stream, http_rule(origin.port))
    assert (stream.status, stream.body) == (200, b"fine")
    assert origin.connections == 2
    assert len(origin.requests) == 3
    assert proxy.stats.request_errors == 0


@asynctest
async def test_early_response_without_reading_body_is_forwarded() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming("/up", "POST"))
        task = asyncio.create_task(proxy.serve(stream, http_rule(port)))
        stream.feed(b"x" * 1000)
        await stream.finished.wait()
        stream.feed(b"y" * 1000)
        stream.feed_eof()
        await task
    assert (stream.status, stream.body) == (413, b"big")
    assert stream.ended and not stream.was_reset


@asynctest
async def test_connection_close_response_is_not_pooled() -> None:
    async def handler(seen: Seen, reply: Reply) -> None:
        await reply.simple(200, [("Connection", "close")], b"bye")

    async with running(Origin(handler)) as origin, proxy_for_test() as proxy:
        for _ in range(3):
            await proxy.serve(FakeTunnelStream(incoming(), body=[]), http_rule(origin.port))
    assert origin.connections == 3


@asynctest
async def test_origin_refused_gives_502_from_connector(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    async with proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming("/x"), body=[])
        with caplog.at_level(logging.ERROR, logger="test.proxy"):
            await proxy.serve(stream, http_rule(port))
    assert stream.status == 502
    assert stream.source is ResponseSource.CONNECTOR
    assert stream.ended
    assert stream.headers == []
    body = b"".join(stream.writes)
    assert body.startswith(b"adit-origin-error: refused\n")
    assert b"connect: connection refused" in body
    (record,) = caplog.records
    message = record.getMessage()
    assert UNREACHABLE_MESSAGE in message
    assert "ingressRule=3" in message
    assert f"originService=http://127.0.0.1:{port}" in message
    assert "hint=" in message
    assert proxy.stats.request_errors == 1
    assert proxy.stats.concurrent_requests == 0


@pytest.fixture
def unaccepting_port() -> Iterator[int]:
    """A listener whose accept backlog is full, so new connects hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


@asynctest
async def test_connect_timeout(unaccepting_port: int, caplog: pytest.LogCaptureFixture) -> None:
    async with proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming(), body=[])
        with caplog.at_level(logging.ERROR, logger="test.proxy"):
            await asyncio.wait_for(
                proxy.serve(stream, http_rule(unaccepting_port, connect_timeout=0.3)), 10
            )
    assert (stream.status, stream.source) == (502, ResponseSource.CONNECTOR)
    assert "timeout" in caplog.records[0].getMessage()
    assert "connectTimeout" in caplog.records[0].getMessage()


@asynctest
async def test_truncated_response_resets_stream() -> None:
    async def handler(seen: Seen, reply: Reply) -> None:
        reply.raw(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly a little")
        raise OSError("origin crashed")

    async with running(Origin(handler)) as origin, proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming(), body=[])
        await proxy.serve(stream, http_rule(origin.port))
    assert stream.status == 200
    assert stream.was_reset and not stream.ended
    assert proxy.stats.request_errors == 1


@asynctest
async def test_unix_socket_origin(tmp_path: Path) -> None:
    path = str(tmp_path / "origin.sock")
    async with running(Origin(), unix_path=path) as origin, proxy_for_test() as proxy:
        rule = Rule(0, "", "", None, UnixService(path, False, f"unix:{path}"))
        for _ in range(2):
            stream = FakeTunnelStream(incoming("/sock"), body=[])
            await proxy.serve(stream, rule)
            assert stream.status == 200
    assert origin.requests[0].values("host") == [PUBLIC_HOST]
    assert origin.connections == 1


@asynctest
async def test_http_status_service() -> None:
    async with proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming(), body=[])
        await proxy.serve(stream, Rule(1, "", "", None, StatusService(418, "http_status:418")))
    assert (stream.status, stream.headers, stream.source) == (418, [], ResponseSource.ORIGIN)
    assert stream.ended and stream.writes == []
    assert proxy.stats.responses_by_code == {418: 1}


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def ws_incoming(*extra: tuple[str, str]) -> IncomingRequest:
    return incoming(
        kind=StreamKind.WEBSOCKET,
        headers=[("sec-websocket-key", WS_KEY), ("sec-websocket-version", "13"), *extra],
    )


@asynctest
async def test_stream_service_is_a_websocket_server_bridging_to_tcp() -> None:
    server, port = await _echo_server()
    service = StreamService("tcp", "127.0.0.1", port, f"tcp://127.0.0.1:{port}")
    client = WebSocketConnection(Role.CLIENT)
    async with server, proxy_for_test() as proxy:
        stream = FakeTunnelStream(ws_incoming())
        task = asyncio.create_task(proxy.serve(stream, Rule(0, "", "", None, service)))
        stream.feed(client.send_data(b"hello ") + client.send_data(b"origin"))
        body = await stream.wait_for_body(lambda b: payloads(b) == b"hello origin")
        assert (stream.status, stream.source) == (200, ResponseSource.ORIGIN)
        assert stream.headers == [
            ("Connection", "Upgrade"),
            ("Sec-Websocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("Upgrade", "websocket"),
        ]
        seen = len(body)
        stream.feed(client.send_ping(b"hb"))
        await stream.wait_for_body(lambda b: len(b) > seen)
        assert client.receive(stream.body[seen:]) == [Frame(True, Opcode.PONG, b"hb")]
        seen = len(stream.body)
        stream.feed(client.send_close(1000))
        await asyncio.wait_for(task, 10)
        (frame,) = client.receive(stream.body[seen:])
        assert frame.opcode == Opcode.CLOSE and client.closed
        assert stream.ended and not stream.was_reset
    # As cloudflared counts it: a request, one connect timed, the ack no origin response,
    # and no TCP session (those are private flows).
    stats = proxy.stats
    assert (stats.total_requests, stats.concurrent_requests, stats.responses_by_code) == (1, 0, {})
    assert (stats.connect_latency.snapshot().count, stats.connect_stream_errors) == (1, 0)
    assert stats.tcp_total_sessions == 0


@asynctest
async def test_stream_origin_eof_sends_a_close_frame() -> None:
    async def hello_and_bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(hello_and_bye, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    service = StreamService("ssh", "127.0.0.1", port, f"ssh://127.0.0.1:{port}")
    async with server, proxy_for_test() as proxy:
        stream = FakeTunnelStream(ws_incoming())
        await asyncio.wait_for(proxy.serve(stream, Rule(0, "", "", None, service)), 10)
    frames = WebSocketConnection(Role.CLIENT).receive(stream.body)
    assert [(f.opcode, f.payload) for f in frames] == [
        (Opcode.BINARY, b"banner\r\n"),
        (Opcode.CLOSE, struct.pack("!H", 1000)),
    ]


@asynctest
async def test_unmasked_client_frames_are_refused_with_1002() -> None:
    server, port = await _echo_server()
    service = StreamService("tcp", "127.0.0.1", port, f"tcp://127.0.0.1:{port}")
    async with server, proxy_for_test() as proxy:
        stream = FakeTunnelStream(ws_incoming(), body=[encode_frame(Opcode.BINARY, b"bare")])
        await asyncio.wait_for(proxy.serve(stream, Rule(0, "", "", None, service)), 10)
    assert stream.body == encode_frame(Opcode.CLOSE, struct.pack("!H", 1002))


@asynctest
async def test_bastion_destination_from_the_jump_header() -> None:
    server, port = await _echo_server()
    client = WebSocketConnection(Role.CLIENT)
    async with server, proxy_for_test() as proxy:
        stream = FakeTunnelStream(
            ws_incoming(("cf-access-jump-destination", f"tcp://127.0.0.1:{port}/some/path"))
        )
        task = asyncio.create_task(proxy.serve(stream, Rule(0, "", "", None, BastionService())))
        stream.feed(client.send_data(b"via bastion"))
        await stream.wait_for_bytes(b"via bastion")
        stream.feed_eof()
        await asyncio.wait_for(task, 10)
    assert stream.status == 200


@asynctest
async def test_bastion_without_destination_is_cloudflareds_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with proxy_for_test() as proxy:
        stream = FakeTunnelStream(ws_incoming(), body=[])
        with caplog.at_level(logging.ERROR, logger="test.proxy"):
            await proxy.serve(stream, Rule(2, "", "", None, BastionService()))
    assert (stream.status, stream.source) == (502, ResponseSource.CONNECTOR)
    message = caplog.records[0].getMessage()
    assert (
        "Did not receive final destination from client. The --destination flag is likely "
        "not set on the client side"
    ) in message
    assert "ingressRule=2 originService=bastion" in message


@asynctest
async def test_stream_service_refuses_plain_http_and_reports_refused_origins(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = StreamService("ssh", "127.0.0.1", free_port(), "ssh://127.0.0.1:x")
    async with proxy_for_test() as proxy:
        plain = FakeTunnelStream(incoming(), body=[])
        await proxy.serve(plain, Rule(0, "", "", None, service))
        refused = FakeTunnelStream(ws_incoming(), body=[])
        await proxy.serve(refused, Rule(0, "", "", None, service))
    assert (plain.status, plain.source) == (502, ResponseSource.CONNECTOR)
    assert (refused.status, refused.source) == (502, ResponseSource.CONNECTOR)
    assert refused.body.startswith(b"adit-origin-error: refused\n")
    # Only the refused dial is a connect error (the plain request never dialled).
    assert (proxy.stats.connect_stream_errors, proxy.stats.request_errors) == (1, 2)
    assert proxy.stats.connect_latency.snapshot().count == 0


def payloads(body: bytes) -> bytes:
    """The payloads of the server frames in ``body`` (a trailing partial frame is ignored)."""
    return b"".join(f.payload for f in FrameDecoder(expect_masked=False).feed(body))


@asynctest
async def test_socks_proxy_follows_ip_rules() -> None:
    server, port = await _echo_server()
    async with server:
        for rules, expected in [
            ((IpRule("127.0.0.0/8", (port,), allow=True),), 0x00),
            ((IpRule("127.0.0.1/32", (), allow=False), IpRule("0.0.0.0/0", (), True)), 0x02),
            ((), 0x02),
        ]:
            client = WebSocketConnection(Role.CLIENT)
            async with proxy_for_test() as proxy:
                stream = FakeTunnelStream(ws_incoming())
                rule = Rule(0, "", "", None, SocksProxyService(), OriginOptions(ip_rules=rules))
                task = asyncio.create_task(proxy.serve(stream, rule))
                stream.feed(client.send_data(b"\x05\x01\x00"))
                request = b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
                stream.feed(client.send_data(request + struct.pack("!H", port)))
                await stream.wait_for_body(lambda b: len(payloads(b)) >= 12)
                decoded = payloads(stream.body)
                assert decoded[:2] == b"\x05\x00"
                assert decoded[2:4] == bytes([5, expected])
                if expected == 0:
                    stream.feed(client.send_data(b"socks!"))
                    await stream.wait_for_bytes(b"socks!")
                stream.feed_eof()
                await asyncio.wait_for(task, 10)


# --------------------------------------------------------------------------- TLS


@dataclass
class Certificate:
    pem_path: Path
    context: ssl.SSLContext


def make_certificate(tmp_path: Path) -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "origin.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("origin.test"),
                    x509.DNSName(PUBLIC_HOST),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_path = tmp_path / "origin.pem"
    pem_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = tmp_path / "origin.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pem_path, key_path)
    return Certificate(pem_path, context)


@asynctest
async def test_https_self_signed_refused_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert = make_certificate(tmp_path)
    async with running(Origin(context=cert.context)) as origin, proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming(), body=[])
        with caplog.at_level(logging.ERROR, logger="test.proxy"):
            await proxy.serve(stream, http_rule(origin.port, "https"))
    assert (stream.status, stream.source) == (502, ResponseSource.CONNECTOR)
    assert origin.requests == []
    assert "noTLSVerify" in caplog.records[0].getMessage()


@asynctest
async def test_https_no_tls_verify(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path)
    async with running(Origin(context=cert.context)) as origin, proxy_for_test() as proxy:
        for _ in range(2):
            stream = FakeTunnelStream(incoming(), body=[])
            await proxy.serve(stream, http_rule(origin.port, "https", no_tls_verify=True))
            assert stream.status == 200
    assert origin.connections == 1


@asynctest
async def test_https_ca_pool_verifies_by_ip(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path)
    async with running(Origin(context=cert.context)) as origin, proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming(), body=[])
        await proxy.serve(stream, http_rule(origin.port, "https", ca_pool=str(cert.pem_path)))
    assert stream.status == 200
    assert origin.server_names == [None]  # no SNI for an IP address


@asynctest
async def test_sni_follows_origin_server_name(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path)
    async with running(Origin(context=cert.context)) as origin, proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming(), body=[])
        rule = http_rule(
            origin.port, "https", ca_pool=str(cert.pem_path), origin_server_name="origin.test"
        )
        await proxy.serve(stream, rule)
    assert stream.status == 200
    assert origin.server_names == ["origin.test"]


@asynctest
async def test_sni_matches_request_host(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path)
    async with running(Origin(context=cert.context)) as origin, proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming(authority=f"{PUBLIC_HOST}:443"), body=[])
        rule = http_rule(origin.port, "https", ca_pool=str(cert.pem_path), match_sni_to_host=True)
        await proxy.serve(stream, rule)
    assert stream.status == 200
    assert origin.server_names == [PUBLIC_HOST]


@asynctest
async def test_https_origin_by_name_uses_host_as_sni(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path)
    async with running(Origin(context=cert.context)) as origin, proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming(), body=[])
        await proxy.serve(stream, http_rule(origin.port, "https", "localhost", no_tls_verify=True))
    assert stream.status == 200
    assert origin.server_names == ["localhost"]


# --------------------------------------------------------------------------- WebSocket


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame, written out by hand (independent of the code under test)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload))
    else:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, len(payload))
    return head + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, 2)
            offset = 4
        if len(data) < offset + length:
            break
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


def websocket_request(path: str = "/ws") -> tuple[IncomingRequest, str]:
    key = base64.b64encode(os.urandom(16)).decode()
    request = incoming(
        path,
        kind=StreamKind.WEBSOCKET,
        headers=[
            ("sec-websocket-key", key),
            ("sec-websocket-version", "13"),
            ("cf-cloudflared-proxy-connection-upgrade", "websocket"),
        ],
    )
    accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
    return request, accept


async def run_websocket_echo(proxy: OriginProxy, rule: Rule) -> FakeTunnelStream:
    request, accept = websocket_request()
    stream = FakeTunnelStream(request)
    task = asyncio.create_task(proxy.serve(stream, rule))
    stream.feed(client_frame(0x1, b"hello"))
    stream.feed(client_frame(0x2, b"\x00\x01" * 500))
    await stream.wait_for_body(lambda body: len(server_frames(body)) >= 2)
    # The origin's 101, as the transport gets it (HTTP/2 says 200 for it on the wire).
    assert stream.status == 101
    assert stream.header_values("sec-websocket-accept") == [accept]
    assert [v.lower() for v in stream.header_values("upgrade")] == ["websocket"]
    assert server_frames(stream.body)[:2] == [(0x1, b"hello"), (0x2, b"\x00\x01" * 500)]
    stream.feed_eof()
    await task
    assert stream.ended
    return stream


@asynctest
async def test_websocket_echo_through_websockets_server() -> None:
    seen_headers: list[list[tuple[str, str]]] = []

    async def echo(connection: ServerConnection) -> None:
        assert connection.request is not None
        seen_headers.append(list(connection.request.headers.raw_items()))
        with contextlib.suppress(Exception):
            async for message in connection:
                await connection.send(message)

    async with serve(echo, "127.0.0.1", 0) as server, proxy_for_test() as proxy:
        port = next(iter(server.sockets)).getsockname()[1]
        await run_websocket_echo(proxy, http_rule(port))
    (headers,) = seen_headers
    names = [n.lower() for n, _ in headers]
    assert ("Upgrade", "websocket") in headers
    assert ("Connection", "Upgrade") in headers
    assert ("Sec-Websocket-Version", "13") in headers
    assert names.count("sec-websocket-version") == 1
    assert "cf-cloudflared-proxy-connection-upgrade" not in names
    assert ("Cf-Warp-Tag-Id", str(CONNECTOR_ID)) in headers


@asynctest
async def test_websocket_refused_by_origin_is_forwarded() -> None:
    async def handler(seen: Seen, reply: Reply) -> None:
        await reply.simple(404, [("Content-Type", "text/plain")], b"no websockets here")

    async with running(Origin(handler)) as origin, proxy_for_test() as proxy:
        request, _ = websocket_request()
        stream = FakeTunnelStream(request, body=[])
        await proxy.serve(stream, http_rule(origin.port))
    assert (stream.status, stream.body) == (404, b"no websockets here")
    assert stream.ended


# --------------------------------------------------------------------------- hello_world

HELLO = Rule(0, "", "", None, HelloWorldService())


@asynctest
async def test_hello_world_routes() -> None:
    async with proxy_for_test() as proxy:
        page = FakeTunnelStream(incoming("/", headers=[("x-probe", "42")]), body=[])
        await proxy.serve(page, HELLO)
        health = FakeTunnelStream(incoming("/_health"), body=[])
        await proxy.serve(health, HELLO)
        uptime = FakeTunnelStream(incoming("/uptime"), body=[])
        await proxy.serve(uptime, HELLO)
        post = FakeTunnelStream(incoming("/", "POST", [("content-length", "5")]), body=[b"hello"])
        await proxy.serve(post, HELLO)

    assert page.status == 200
    assert page.header_values("content-type") == ["text/html; charset=utf-8"]
    assert b"Congrats! You created a tunnel!" in page.body
    assert f"Host: {PUBLIC_HOST}".encode() in page.body
    assert b"Header: x-probe, Value: [42]" in page.body
    assert b"Body: hello" in post.body
    assert (health.status, health.body) == (200, b"ok")
    document = json.loads(uptime.body)
    assert set(document) == {"startTime", "uptime"}
    assert uptime.header_values("content-type") == ["application/json"]


@asynctest
async def test_hello_world_websocket_echo() -> None:
    async with proxy_for_test() as proxy:
        await run_websocket_echo(proxy, HELLO)


@asynctest
async def test_hello_world_sse_streams_until_cancelled() -> None:
    async with proxy_for_test() as proxy:
        stream = FakeTunnelStream(incoming("/sse?freq=10ms"), body=[])
        task = asyncio.create_task(proxy.serve(stream, HELLO))
        body = await stream.wait_for_body(lambda body: body.count(b"\n\n") >= 3)
        assert body.startswith(b"0\n\n1\n\n2\n\n")
        assert stream.header_values("content-type") == ["text/event-stream; charset=utf-8"]
        assert len(stream.writes) >= 3
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert stream.was_reset
    assert proxy.stats.concurrent_requests == 0


# --------------------------------------------------------------------------- private flows


def private_incoming(port: int) -> IncomingRequest:
    return incoming(kind=StreamKind.TCP, method="CONNECT", authority=f"127.0.0.1:{port}")


@asynctest
async def test_a_private_flow_passes_the_clients_end_on_and_the_answer_still_comes() -> None:
    ends: list[bytes] = []

    async def answer_at_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # everything, up to the client's end
        ends.append(request)
        writer.write(b"got " + request)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_at_eof, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    async with server, proxy_for_test() as proxy:
        stream = FakeTunnelStream(private_incoming(port), body=[b"PI", b"NG"])
        await asyncio.wait_for(proxy.serve_private(stream, WARP_ROUTING), 10)
    assert ends == [b"PING"]
    assert (stream.status, stream.source) == (200, ResponseSource.ORIGIN)
    assert stream.body == b"got PING"
    assert stream.ended and not stream.was_reset
    stats = proxy.stats
    assert (stats.tcp_total_sessions, stats.tcp_active_sessions, stats.total_requests) == (1, 0, 1)
    assert (stats.connect_latency.snapshot().count, stats.responses_by_code) == (1, {})


@asynctest
async def test_a_private_flow_ends_its_stream_when_the_destination_closes_first() -> None:
    async def banner_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(banner_and_close, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    async with server, proxy_for_test() as proxy:
        stream = FakeTunnelStream(private_incoming(port))
        task = asyncio.create_task(proxy.serve_private(stream, WARP_ROUTING))
        await asyncio.wait_for(stream.finished.wait(), 10)
        # The stream ended our way; the edge's end (its client told) ends the flow.
        assert stream.ended and stream.body == b"bye\r\n" and not task.done()
        stream.feed_eof()
        await asyncio.wait_for(task, 10)
    assert not stream.was_reset


@asynctest
async def test_a_private_flow_to_a_closed_port_is_a_502_with_the_reason() -> None:
    async with proxy_for_test() as proxy:
        stream = FakeTunnelStream(private_incoming(free_port()))
        await asyncio.wait_for(proxy.serve_private(stream, WARP_ROUTING), 10)
    assert (stream.status, stream.source) == (502, ResponseSource.CONNECTOR)
    assert stream.body.startswith(b"adit-origin-error: refused\n")
