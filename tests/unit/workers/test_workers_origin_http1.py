"""The origin HTTP/1.1 client (httptools) against local origins that send exact bytes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from adit.config.origin import HttpService, OriginOptions, Rule
from adit.workers.errors import OriginProtocolError
from adit.workers.origins.dialer import Dialer, OriginKey
from adit.workers.origins.http1 import (
    MAX_RESPONSE_HEAD,
    OriginConnection,
    serialise_request_head,
)
from adit.workers.proxy import ORIGIN_ERROR_PREFIX, OriginProxy
from adit.workers.stream import IncomingRequest, ResponseSource, StreamKind
from asynctests import asynctest

pytestmark = pytest.mark.timeout(30)


@dataclass
class ScriptedOrigin:
    """Answers the n-th request (over all connections) with ``replies[n]``, byte for byte.

    Reads each request head, then its body (Content-Length or chunked), and records both.
    ``close_after`` closes the connection after every reply.
    """

    replies: list[bytes]
    close_after: bool = False
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while len(self.requests) < len(self.replies):
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                lowered = head.lower()
                if b"\r\ncontent-length:" in lowered:
                    length = int(lowered.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                elif b"\r\ntransfer-encoding: chunked" in lowered:
                    body = await reader.readuntil(b"0\r\n\r\n")
                reply = self.replies[len(self.requests)]
                self.requests.append(head + body)
                writer.write(reply)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedOrigin]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            await self._server.wait_closed()

    async def connect(self) -> OriginConnection:
        return OriginConnection(
            *await Dialer().connect(OriginKey("127.0.0.1", self.port), OriginOptions())
        )


async def fetch(
    connection: OriginConnection, method: str = "GET"
) -> tuple[int, list[tuple[str, str]], bytes]:
    await connection.send_request(method, "/p?q=1", [("Host", "origin.test")])
    response = await connection.receive_response()
    body = b"".join([chunk async for chunk in connection.body()])
    return response.status, response.headers, body


# --------------------------------------------------------------------------- responses


@asynctest
async def test_content_length_body_and_keep_alive() -> None:
    origin = ScriptedOrigin([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"] * 2)
    async with origin.running():
        connection = await origin.connect()
        assert await fetch(connection) == (200, [("Content-Length", "5")], b"hello")
        assert connection.reusable
        assert await fetch(connection) == (200, [("Content-Length", "5")], b"hello")
        assert connection.reused and origin.connections == 1
        connection.close()
    assert origin.requests[0] == b"GET /p?q=1 HTTP/1.1\r\nHost: origin.test\r\n\r\n"


@asynctest
async def test_body_split_over_many_writes_bypasses_the_parser_unchanged() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, several socket reads
    origin = ScriptedOrigin([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body])
    async with origin.running():
        connection = await origin.connect()
        assert (await fetch(connection))[2] == body
        assert connection.reusable
        connection.close()


@asynctest
async def test_one_connection_parses_every_framing_in_turn() -> None:
    # The parser is kept after a response it saw whole and renewed after one whose body
    # bypassed it, a HEAD, or an interim response: each next answer must still parse.
    big = bytes(range(256)) * 1024
    replies = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nc",
        b"HTTP/1.1 204 No Content\r\nX-N: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast",
    ]
    methods = ["GET", "GET", "GET", "HEAD", "GET", "GET", "GET"]
    expected = [
        (200, b"ok"),
        (200, big),
        (200, b"abc"),
        (200, b""),
        (201, b"c"),
        (204, b""),
        (200, b"last"),
    ]
    origin = ScriptedOrigin(replies)
    async with origin.running():
        connection = await origin.connect()
        for method, (status, body) in zip(methods, expected, strict=True):
            got_status, _, got_body = await fetch(connection, method)
            assert (got_status, got_body) == (status, body)
            assert connection.reusable
        assert origin.connections == 1
        connection.close()


@asynctest
async def test_chunked_response() -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
        b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer-X: t\r\n\r\n"
    )
    origin = ScriptedOrigin([reply])
    async with origin.running():
        connection = await origin.connect()
        status, headers, body = await fetch(connection)
        assert (status, body) == (200, b"abcdefg")
        # Trailers are not added to the head; Transfer-Encoding is the proxy's to drop.
        assert headers == [("Transfer-Encoding", "chunked"), ("X-A", "1")]
        assert connection.reusable
        connection.close()


@asynctest
async def test_close_delimited_body_ends_with_the_connection() -> None:
    origin = ScriptedOrigin(
        [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"], close_after=True
    )
    async with origin.running():
        connection = await origin.connect()
        assert await fetch(connection) == (200, [("Content-Type", "text/plain")], b"until the end")
        assert not connection.reusable
        connection.close()


@asynctest
async def test_non_chunked_transfer_coding_is_close_delimited() -> None:
    origin = ScriptedOrigin(
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8bdata"], close_after=True
    )
    async with origin.running():
        connection = await origin.connect()
        assert (await fetch(connection))[2] == b"\x1f\x8bdata"
        assert not connection.reusable
        connection.close()


@asynctest
async def test_interim_responses_are_skipped() -> None:
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    )
    origin = ScriptedOrigin([reply, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    async with origin.running():
        connection = await origin.connect()
        assert await fetch(connection) == (201, [("Content-Length", "2")], b"ok")
        assert connection.reusable
        assert (await fetch(connection))[0] == 200
        connection.close()


@asynctest
async def test_switching_protocols_keeps_the_bytes_after_the_head() -> None:
    reply = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: abc\r\n\r\n\x81\x02hi"
    )
    origin = ScriptedOrigin([reply])
    async with origin.running():
        connection = await origin.connect()
        await connection.send_request("GET", "/ws", [("Host", "o"), ("Upgrade", "websocket")])
        response = await connection.receive_response()
        assert response.status == 101
        assert ("Sec-WebSocket-Accept", "abc") in response.headers
        assert connection.trailing_data == b"\x81\x02hi"
        assert not connection.reusable
        connection.close()


@asynctest
async def test_head_response_has_no_body_and_the_connection_is_reused() -> None:
    origin = ScriptedOrigin(
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/html\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        ]
    )
    async with origin.running():
        connection = await origin.connect()
        status, headers, body = await fetch(connection, "HEAD")
        assert (status, body) == (200, b"")
        assert ("Content-Length", "1234") in headers
        assert connection.reusable
        assert (await fetch(connection))[2] == b"abc"
        connection.close()


@pytest.mark.parametrize("status", [204, 304])
@asynctest
async def test_no_body_statuses(status: int) -> None:
    reply = b'HTTP/1.1 %d X\r\nETag: "e"\r\n\r\n' % status
    origin = ScriptedOrigin([reply, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz"])
    async with origin.running():
        connection = await origin.connect()
        assert await fetch(connection) == (status, [("ETag", '"e"')], b"")
        assert connection.reusable
        assert (await fetch(connection))[2] == b"z"
        connection.close()


@asynctest
async def test_connection_close_from_the_origin_is_not_reusable() -> None:
    origin = ScriptedOrigin(
        [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"]
    )
    async with origin.running():
        connection = await origin.connect()
        assert (await fetch(connection))[2] == b"ok"
        assert not connection.reusable
        connection.close()


@asynctest
async def test_http10_response_is_not_reusable() -> None:
    origin = ScriptedOrigin([b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    async with origin.running():
        connection = await origin.connect()
        assert (await fetch(connection))[2] == b"ok"
        assert not connection.reusable
        connection.close()


@asynctest
async def test_bytes_beyond_content_length_spend_the_connection() -> None:
    origin = ScriptedOrigin([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"])
    async with origin.running():
        connection = await origin.connect()
        assert (await fetch(connection))[2] == b"ok"
        assert not connection.reusable
        connection.close()


@asynctest
async def test_header_case_order_repeats_and_latin1_bytes_survive() -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nset-COOKIE: a=1\r\nX-Cafe: caf\xe9 \xff\r\n"
        b"Set-Cookie: b=2\r\nContent-Length: 0\r\n\r\n"
    )
    origin = ScriptedOrigin([reply])
    async with origin.running():
        connection = await origin.connect()
        _, headers, _ = await fetch(connection)
        assert headers == [
            ("set-COOKIE", "a=1"),
            ("X-Cafe", "caf\xe9 \xff"),
            ("Set-Cookie", "b=2"),
            ("Content-Length", "0"),
        ]
        assert [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers][1] == (
            b"X-Cafe",
            b"caf\xe9 \xff",
        )
        connection.close()


@asynctest
async def test_bare_lf_line_ends_are_accepted() -> None:
    origin = ScriptedOrigin([b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"])
    async with origin.running():
        connection = await origin.connect()
        assert await fetch(connection) == (200, [("Content-Length", "2")], b"ok")
        connection.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"SPDY/9 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
@asynctest
async def test_malformed_responses_raise(reply: bytes) -> None:
    origin = ScriptedOrigin([reply], close_after=True)
    async with origin.running():
        connection = await origin.connect()
        with pytest.raises(OriginProtocolError, match="malformed response"):
            await fetch(connection)
        connection.close()


@asynctest
async def test_truncated_body_raises() -> None:
    origin = ScriptedOrigin(
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], close_after=True
    )
    async with origin.running():
        connection = await origin.connect()
        with pytest.raises(OriginProtocolError, match="before the response body was complete"):
            await fetch(connection)
        connection.close()


@asynctest
async def test_closed_without_a_response_raises() -> None:
    origin = ScriptedOrigin([b""], close_after=True)
    async with origin.running():
        connection = await origin.connect()
        with pytest.raises(OriginProtocolError, match="before responding"):
            await fetch(connection)
        assert not connection.response_bytes_seen
        connection.close()


@asynctest
async def test_oversized_response_head_is_refused() -> None:
    filler = b"X-Filler: " + b"f" * 8000 + b"\r\n"
    reply = b"HTTP/1.1 200 OK\r\n" + filler * (MAX_RESPONSE_HEAD // len(filler) + 2) + b"\r\n"
    origin = ScriptedOrigin([reply], close_after=True)
    async with origin.running():
        connection = await origin.connect()
        with pytest.raises(OriginProtocolError, match="head larger than"):
            await fetch(connection)
        connection.close()


# --------------------------------------------------------------------------- requests


@asynctest
async def test_request_bodies_with_length_and_chunked() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    origin = ScriptedOrigin([ok, ok, ok])
    async with origin.running():
        connection = await origin.connect()
        head = [("Host", "o"), ("Content-Length", "6")]
        await connection.send_request("POST", "/a", head, body=b"abc", content_length=6, end=False)
        await connection.send_body(b"def")
        await connection.end_request()
        await connection.receive_response()
        assert [c async for c in connection.body()] == []
        assert connection.reusable

        chunked = [("Host", "o"), ("Transfer-Encoding", "chunked")]
        await connection.send_request("PUT", "/b", chunked, body=b"x" * 17, chunked=True, end=False)
        await connection.send_body(b"yz")
        await connection.end_request()
        await connection.receive_response()
        assert [c async for c in connection.body()] == []

        await connection.send_request(
            "POST", "/c", [("Host", "o"), ("Content-Length", "2")], body=b"hi", content_length=2
        )
        await connection.receive_response()
        assert [c async for c in connection.body()] == []
        connection.close()
    assert origin.requests == [
        b"POST /a HTTP/1.1\r\nHost: o\r\nContent-Length: 6\r\n\r\nabcdef",
        b"PUT /b HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"11\r\n" + b"x" * 17 + b"\r\n2\r\nyz\r\n0\r\n\r\n",
        b"POST /c HTTP/1.1\r\nHost: o\r\nContent-Length: 2\r\n\r\nhi",
    ]


@asynctest
async def test_request_body_must_match_its_content_length() -> None:
    origin = ScriptedOrigin([])
    async with origin.running():
        connection = await origin.connect()
        head = [("Host", "o"), ("Content-Length", "2")]
        await connection.send_request("POST", "/", head, content_length=2, end=False)
        with pytest.raises(OriginProtocolError, match="longer than"):
            await connection.send_body(b"abc")
        await connection.send_body(b"a")
        with pytest.raises(OriginProtocolError, match="shorter than"):
            await connection.end_request()
        connection.close()


def test_request_head_serialisation() -> None:
    head = serialise_request_head(
        "GET", "/x?y=%20", [("Host", "h"), ("x-Case", "Caf\xe9"), ("X-Rep", "1"), ("X-Rep", "2")]
    )
    assert (
        head
        == b"GET /x?y=%20 HTTP/1.1\r\nHost: h\r\nx-Case: Caf\xe9\r\nX-Rep: 1\r\nX-Rep: 2\r\n\r\n"
    )
    # Text outside latin-1 goes as UTF-8 (as the h11 client did).
    assert "\u2603".encode() in serialise_request_head("GET", "/", [("X", "\u2603")])
    assert b"X: a\tb\r\n" in serialise_request_head("GET", "/", [("X", "a\tb")])


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/", [("X", "a\r\nInjected: 1")]),
        ("GET", "/", [("X", "a\nb")]),
        ("GET", "/", [("X", "a\x00b")]),
        ("GET", "/", [("X", "a\x7fb")]),
        ("GET", "/", [("X", "a\rb")]),
        ("GET", "/", [("X", "\u2603\n")]),
        ("GET", "/", [("Bad Name", "v")]),
        ("GET", "/", [("Bad:Name", "v")]),
        ("GET", "/", [("Na\nme", "v")]),
        ("GET", "/", [("", "v")]),
        ("GET", "/a b", []),
        ("G ET", "/", []),
    ],
)
def test_request_head_refuses_what_would_break_framing(
    method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    with pytest.raises(OriginProtocolError, match="invalid request"):
        serialise_request_head(method, target, headers)


# --------------------------------------------------------------------------- through the proxy


class EndedStream:
    """A tunnel stream whose request already ended (a GET with END_STREAM)."""

    def __init__(self, request: IncomingRequest) -> None:
        self.request = request
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.writes: list[bytes] = []
        self.ended = False
        self.was_reset = False
        self.source: ResponseSource | None = None

    async def read(self) -> bytes:
        return b""

    async def send_response(
        self,
        status: int,
        headers: list[tuple[str, str]],
        *,
        source: ResponseSource = ResponseSource.ORIGIN,
        end_stream: bool = False,
        body: bytes = b"",
    ) -> None:
        self.status, self.headers, self.ended = status, headers, end_stream
        self.source = source
        if body:
            self.writes.append(body)

    async def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def end(self) -> None:
        self.ended = True

    def reset(self) -> None:
        self.was_reset = True

    @property
    def response_started(self) -> bool:
        return self.status is not None


def get_request(kind: StreamKind = StreamKind.HTTP) -> IncomingRequest:
    return IncomingRequest(kind, "GET", "/", "app.test", "app.test", (("accept", "*/*"),))


def rule_for(port: int) -> Rule:
    url = f"http://127.0.0.1:{port}"
    return Rule(0, "", "", None, HttpService("http", "127.0.0.1", port, url), OriginOptions())


@contextlib.asynccontextmanager
async def proxy() -> AsyncIterator[OriginProxy]:
    origin_proxy = OriginProxy(uuid.UUID(int=1), {}, logging.getLogger("test.http1"))
    try:
        yield origin_proxy
    finally:
        await origin_proxy.aclose()


@asynctest
async def test_a_pooled_get_creates_no_task() -> None:
    ok = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    origin = ScriptedOrigin([ok, ok])
    created: list[object] = []
    loop = asyncio.get_running_loop()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[Any]:
        created.append(coro)
        return asyncio.Task(coro, loop=loop)

    async with origin.running(), proxy() as origin_proxy:
        rule = rule_for(origin.port)
        first = EndedStream(get_request())
        await origin_proxy.serve(first, rule)  # dials: a fresh connection
        loop.set_task_factory(factory)
        try:
            second = EndedStream(get_request())
            await origin_proxy.serve(second, rule)
        finally:
            loop.set_task_factory(None)
    assert created == []
    assert (second.status, b"".join(second.writes), second.ended) == (200, b"hi", True)
    # Go's client drops Transfer-Encoding from the header map.
    assert second.headers == []
    assert origin.connections == 1


@asynctest
async def test_malformed_response_becomes_a_502_with_a_hint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    origin = ScriptedOrigin([b"NOT HTTP AT ALL\r\n\r\n"], close_after=True)
    async with origin.running(), proxy() as origin_proxy:
        stream = EndedStream(get_request())
        await origin_proxy.serve(stream, rule_for(origin.port))
    assert (stream.status, stream.source, stream.ended) == (502, ResponseSource.CONNECTOR, True)
    assert not b"".join(stream.writes).startswith(ORIGIN_ERROR_PREFIX.encode())
    assert "malformed response from origin" in caplog.text
    assert OriginProtocolError.hint in caplog.text


@asynctest
async def test_unrequested_switching_protocols_is_a_502() -> None:
    reply = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"
    origin = ScriptedOrigin([reply])
    async with origin.running(), proxy() as origin_proxy:
        stream = EndedStream(get_request())
        await origin_proxy.serve(stream, rule_for(origin.port))
    assert stream.status == 502


@asynctest
async def test_origin_closing_after_each_response_is_served_on_fresh_connections() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
    # The origin answers one request per connection but says keep-alive, then closes.
    origin = ScriptedOrigin([ok, ok], close_after=True)
    async with origin.running(), proxy() as origin_proxy:
        rule = rule_for(origin.port)
        for _ in range(2):
            stream = EndedStream(get_request())
            await origin_proxy.serve(stream, rule)
            assert (stream.status, stream.writes) == (200, [b"a"])
    assert origin.connections == 2


@asynctest
async def test_slow_consumer_gets_every_byte_of_a_large_body() -> None:
    body = bytes(range(256)) * 32768  # 8 MiB: reading the origin pauses while the tunnel lags
    origin = ScriptedOrigin([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body])
    async with origin.running():
        connection = await origin.connect()
        await connection.send_request("GET", "/", [("Host", "o")])
        await connection.receive_response()
        received = bytearray()
        async for chunk in connection.body():
            received += chunk
            await asyncio.sleep(0.001)
        assert received == body
        assert connection.reusable
        connection.close()


async def _upgrading_origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers 101 plus the first upgraded bytes in one write, then echoes until EOF."""
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nfirst;"
        )
        await writer.drain()
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
    finally:
        writer.close()


class UpgradedStream(EndedStream):
    """A WebSocket stream: the edge sends ``frames`` after the response, then ends."""

    def __init__(self, request: IncomingRequest, frames: list[bytes]) -> None:
        super().__init__(request)
        self.inbound: asyncio.Queue[bytes] = asyncio.Queue()
        self.frames = frames
        self.got = asyncio.Event()

    async def read(self) -> bytes:
        return await self.inbound.get()

    async def send_response(
        self,
        status: int,
        headers: list[tuple[str, str]],
        *,
        source: ResponseSource = ResponseSource.ORIGIN,
        end_stream: bool = False,
        body: bytes = b"",
    ) -> None:
        await super().send_response(
            status, headers, source=source, end_stream=end_stream, body=body
        )
        for frame in self.frames:
            self.inbound.put_nowait(frame)

    async def write(self, data: bytes) -> None:
        self.writes.append(data)
        if b"".join(self.writes).endswith(b"HELLO"):
            self.inbound.put_nowait(b"")  # the eyeball ends once its echo arrived


@asynctest
async def test_websocket_upgrade_pipes_trailing_bytes_then_both_ways() -> None:
    server = await asyncio.start_server(_upgrading_origin, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with proxy() as origin_proxy:
            stream = UpgradedStream(get_request(StreamKind.WEBSOCKET), [b"hello"])
            await asyncio.wait_for(origin_proxy.serve(stream, rule_for(port)), 10)
    finally:
        server.close()
        await server.wait_closed()
    assert stream.status == 101  # the origin's (HTTP/2 says 200 for it on the wire)
    assert ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in stream.headers
    assert b"".join(stream.writes) == b"first;HELLO"
    assert stream.ended and not stream.was_reset


class FailingUpload(EndedStream):
    """A POST whose eyeball goes away after the first piece of the body."""

    def __init__(self) -> None:
        super().__init__(
            IncomingRequest(StreamKind.HTTP, "POST", "/up", "app.test", "app.test", ())
        )
        self.reads = 0

    async def read(self) -> bytes:
        self.reads += 1
        if self.reads == 1:
            return b"part"
        raise ConnectionResetError("the eyeball went away")


@asynctest
async def test_a_failed_upload_ends_the_wait_for_a_response() -> None:
    # The origin waits for the end of a chunked body that never comes (and so never answers).
    origin = ScriptedOrigin([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    async with origin.running(), proxy() as origin_proxy:
        stream = FailingUpload()
        await asyncio.wait_for(origin_proxy.serve(stream, rule_for(origin.port)), 10)
    assert (stream.status, stream.ended) == (502, True)
    assert origin_proxy.stats.request_errors == 1
