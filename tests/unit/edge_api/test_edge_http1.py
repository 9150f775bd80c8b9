"""The edge's HTTP/1.1 server side (llhttp parsing, our serialisation) on real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from adit.edge.http1 import (
    MAX_HEADER_BYTES,
    READ_SIZE,
    BadRequest,
    HeadersTooLarge,
    Http1Connection,
    Request,
    RequestParser,
    reason_phrase,
)

Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# -- the server under test ----------------------------------------------------------------------


async def _handle(conn: Http1Connection, request: Request) -> bool:
    path = request.target
    if path == b"/echo":
        await conn.send_continue()
        body = bytearray()
        while chunk := await conn.read_body():
            body += chunk
        payload = request.method + b" " + path + b" " + bytes(body)
        await conn.respond_simple(200, payload, content_type="text/plain")
        return True
    if path == b"/slow-upload":
        return await _slow_upload(conn)
    if path == b"/stream":
        await conn.start_response(200, [("Content-Type", "text/plain")])
        await conn.send_body(b"first,")
        await conn.send_body(b"second")
        await conn.end_response()
        return True
    if path == b"/empty":
        await conn.start_response(204, [("X-Empty", "yes")])
        await conn.end_response()
        return True
    if path == b"/latin":
        await conn.respond_simple(
            200, b"ok", content_type="text/plain", extra=(("X-Latin", "caf\xe9 \xff"),)
        )
        return True
    if path == b"/crlf":
        await conn.respond_simple(
            200, b"ok", content_type="text/plain", extra=(("X-Bad", "a\r\nInjected: 1"),)
        )
        return True
    if path == b"/hop-by-hop":
        hop = [("Connection", "close"), ("Keep-Alive", "timeout=5"), ("X-Kept", "1")]
        await conn.start_response(
            200, [*hop, ("Content-Length", "0")], drop=frozenset({"connection", "keep-alive"})
        )
        await conn.end_response()
        return True
    if path == b"/odd-status":
        await conn.respond_simple(599, b"", content_type="text/plain")
        return True
    if path == b"/ws":
        await conn.send_informational(101, [("Upgrade", "websocket"), ("Connection", "Upgrade")])
        data = conn.take_leftover()
        while True:
            if data:
                await conn.write_raw(data.upper())
            data = await conn.read_raw()
            if not data:
                return False
    # As the public listener does: a body not forwarded is read and dropped first.
    await conn.drain_body()
    await conn.respond_simple(404, b"no such path", content_type="text/plain")
    return True


async def _slow_upload(conn: Http1Connection) -> bool:
    """Read one piece, then hold off until the socket is no longer read: report what waits."""
    received = len(await conn.read_body())
    assert conn.transport is not None
    async with asyncio.timeout(10):
        while conn.transport.is_reading():
            await asyncio.sleep(0.01)
    queued = sum(len(e) for e in conn.parser.events if isinstance(e, bytes))
    while chunk := await conn.read_body():
        received += len(chunk)
    await conn.respond_simple(200, b"%d %d" % (queued, received), content_type="text/plain")
    return True


async def _bad_request(conn: Http1Connection, exc: BadRequest) -> None:
    status = 431 if isinstance(exc, HeadersTooLarge) else 400
    await conn.respond_simple(status, b"bad", content_type="text/plain")


async def _with_server(test: Callable[[int], Awaitable[None]]) -> None:
    connections: list[Http1Connection] = []

    def protocol() -> Http1Connection:
        conn = Http1Connection(_handle, _bad_request)
        connections.append(conn)
        return conn

    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(20):
            await test(port)
            # Every connection the test made has ended on the server too.
            await asyncio.gather(*(c.serving for c in connections if c.serving is not None))
    finally:
        server.close()
        await server.wait_closed()


def _run(test: Callable[[int], Awaitable[None]]) -> None:
    # The edge runs on uvloop, whose transports differ from asyncio's in small ways.
    uvloop.run(_with_server(test))


async def _connect(port: int) -> Client:
    return await asyncio.open_connection("127.0.0.1", port)


class Response:
    """A response as a client reads it."""

    def __init__(self, status_line: bytes, headers: list[tuple[bytes, bytes]], body: bytes):
        self.status_line = status_line
        self.status = int(status_line.split(b" ")[1])
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name), None)


async def _read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head[:-4].split(b"\r\n")
    headers = [(n, v) for n, _, v in (line.partition(b": ") for line in lines)]
    response = Response(status_line, headers, b"")
    if head_only or response.status in (204, 304) or response.status < 200:
        return response
    length = response.header(b"content-length")
    if length is not None:
        response.body = await reader.readexactly(int(length))
    elif response.header(b"transfer-encoding") == b"chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                break
            del body[-2:]
        response.body = bytes(body[:-2])
    else:
        response.body = await reader.read()
    return response


async def _closed(reader: asyncio.StreamReader) -> bool:
    return await reader.read(1) == b""


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


# -- the parser alone ---------------------------------------------------------------------------


def _events(data: bytes) -> list[Request | bytes]:
    parser = RequestParser()
    parser.feed(data)
    return list(parser.events)


def test_pipelined_requests_come_out_in_order_with_their_bodies() -> None:
    events = _events(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
    )
    shape = [e.target if isinstance(e, Request) else e for e in events]
    assert shape == [b"/a", b"", b"/b", b"abc", b"", b"/c", b"de", b""]
    first, second, third = (e for e in events if isinstance(e, Request))
    assert (first.has_body, second.has_body, third.has_body) == (False, True, True)
    assert second.headers == [(b"Host", b"x"), (b"Content-Length", b"3")]


def test_keep_alive_follows_version_and_connection_header() -> None:
    def keep_alive(head: bytes) -> bool:
        request = _events(head + b"\r\n")[0]
        assert isinstance(request, Request)
        return request.keep_alive

    assert keep_alive(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert not keep_alive(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
    assert not keep_alive(b"GET / HTTP/1.0\r\n")
    assert keep_alive(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n")


@pytest.mark.parametrize(
    "head",
    [
        # Both framings: the classic smuggling pair.
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n",
        b"GET / HTTP/1.1\r\n",  # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n folded: y\r\n",
        b"G\x00T / HTTP/1.1\r\nHost: x\r\n",
        b"GET / HTTP/1.1\nHost: x\n",  # bare LF
        # A body on an upgrade request would be parsed as the next request.
        b"POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Content-Length: 20\r\n",
    ],
)
def test_malformed_and_ambiguous_requests_are_rejected(head: bytes) -> None:
    with pytest.raises(BadRequest):
        _events(head + b"\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")


def test_invalid_chunk_size_is_rejected() -> None:
    with pytest.raises(BadRequest):
        _events(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n")


def test_head_limit_holds_whole_trickled_and_never_ending() -> None:
    big = b"X-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n"
    with pytest.raises(HeadersTooLarge):
        _events(b"GET / HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    parser = RequestParser()
    with pytest.raises(HeadersTooLarge):  # noqa: PT012 - the limit trips part-way
        parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        for _ in range(MAX_HEADER_BYTES // 1024 + 2):
            parser.feed(b"b" * 1024)
    # Just under the limit, in small pieces, passes: no chunk is counted twice.
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"c" * 900) for i in range(60)
    )
    parser = RequestParser()
    for offset in range(0, len(head), 700):
        parser.feed(head[offset : offset + 700])
    parser.feed(b"\r\n")
    assert isinstance(parser.events[0], Request)


@pytest.mark.parametrize("split", [1, 2, 3, 20_000, 60_000, 99_000])
def test_head_over_the_limit_in_two_reads_is_too_large(split: int) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"d" * 100_000 + b"\r\n\r\n"
    parser = RequestParser()
    with pytest.raises(HeadersTooLarge):  # noqa: PT012 - either read may trip it
        parser.feed(head[:split])
        parser.feed(head[split:])
    assert not parser.events


@pytest.mark.parametrize("split", [10, 30_000, 40_000, 50_000])
def test_head_under_the_limit_spanning_reads_passes_with_what_follows(split: int) -> None:
    # One 50 KiB header across three reads, the end of the head straddling two of them,
    # and a body and a pipelined request behind it.
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nCookie: " + b"e" * 50_000
    data = head + b"\r\n\r\nabcGET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    cut = len(head) + 2  # between the two CRLFs that end the head
    parser = RequestParser()
    parser.feed(data[:split])
    parser.feed(data[split:cut])
    parser.feed(data[cut:])
    targets = [e.target for e in parser.events if isinstance(e, Request)]
    assert targets == [b"/", b"/next"]


def test_reason_phrases() -> None:
    assert reason_phrase(200) == b"OK"
    assert reason_phrase(101) == b"Switching Protocols"
    assert reason_phrase(530) == b"Origin Unreachable"
    assert reason_phrase(599) == b""


# -- on sockets ---------------------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async def test(port: int) -> None:
        reader, writer = await _connect(port)
        for i in range(3):
            writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-N: %d\r\n\r\n" % i)
            response = await _read_response(reader)
            assert response.status_line == b"HTTP/1.1 200 OK"
            assert response.body == b"GET /echo "
            assert response.header(b"connection") is None
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = await _read_response(reader)
        assert response.header(b"connection") == b"close"
        assert await _closed(reader)
        await _close(writer)

    _run(test)


def test_http10_closes_unless_it_asks_for_keep_alive() -> None:
    async def test(port: int) -> None:
        reader, writer = await _connect(port)
        writer.write(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        response = await _read_response(reader)
        assert response.header(b"connection") == b"keep-alive"
        assert response.status_line.startswith(b"HTTP/1.1 200")
        writer.write(b"GET /echo HTTP/1.0\r\n\r\n")
        response = await _read_response(reader)
        assert response.header(b"connection") == b"close"
        assert await _closed(reader)
        await _close(writer)

    _run(test)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def test(port: int) -> None:
        reader, writer = await _connect(port)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst"
            b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nthi\r\n2\r\nrd\r\n0\r\n\r\n"
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        bodies = [(await _read_response(reader)).body for _ in range(4)]
        assert bodies == [
            b"POST /echo first",
            b"first,second",
            b"POST /echo third",
            b"no such path",
        ]
        await _close(writer)

    _run(test)


def test_request_body_is_streamed_in_pieces() -> None:
    async def test(port: int) -> None:
        reader, writer = await _connect(port)
        body = bytes(range(256)) * 4096  # 1 MiB, more than one read
        writer.write(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        for offset in range(0, len(body), 100_000):
            writer.write(body[offset : offset + 100_000])
            await writer.drain()
        response = await _read_response(reader)
        assert response.body == b"PUT /echo " + body
        await _close(writer)

    _run(test)


def test_a_body_the_handler_does_not_read_stops_the_socket_reads() -> None:
    async def test(port: int) -> None:
        reader, writer = await _connect(port)
        size = 16 * 1024 * 1024
        writer.write(b"PUT /slow-upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"u" * size)
        response = await _read_response(reader)
        queued, received = (int(n) for n in response.body.split())
        assert received == size
        assert queued <= 2 * READ_SIZE  # the rest waited in the kernel and the client
        await _close(writer)

    _run(test)


def test_expect_100_continue_is_answered_before_the_body() -> None:
    async def test(port: int) -> None:
        reader, writer = await _connect(port)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await _read_response(reader)
        assert interim.status_line == b"HTTP/1.1 100 Continue"
        writer.write(b"body")
        response = await _read_response(reader)
        assert response.body == b"POST /echo body"
        # A request that is answered without reading its body: the connection closes.
        writer.write(
            b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        response = await _read_response(reader)
        assert response.status == 404
        assert response.header(b"connection") == b"close"
        assert await _closed(reader)
        await _close(writer)

    _run(test)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * (MAX_HEADER_BYTES + 1) + b"\r\n\r\n", 431),
        (b"garbage\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
    ],
)
def test_bad_requests_get_an_answer_and_a_close(request_bytes: bytes, status: int) -> None:
    async def test(port: int) -> None:
        reader, writer = await _connect(port)
        writer.write(request_bytes)
        response = await _read_response(reader)
        assert response.status == status
        assert response.header(b"connection") == b"close"
        assert await _closed(reader)
        await _close(writer)

    _run(test)


def test_bad_request_after_a_good_one_on_the_same_connection() -> None:
    async def test(port: int) -> None:
        reader, writer = await _connect(port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nBad Name: x\r\n\r\n")
        assert (await _read_response(reader)).status == 200
        assert (await _read_response(reader)).status == 400
        assert await _closed(reader)
        await _close(writer)

    _run(test)


def test_websocket_upgrade_keeps_bytes_sent_with_the_head() -> None:
    async def test(port: int) -> None:
        reader, writer = await _connect(port)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            b"early bytes;"
        )
        response = await _read_response(reader, head_only=True)
        assert response.status_line == b"HTTP/1.1 101 Switching Protocols"
        assert response.header(b"upgrade") == b"websocket"
        assert await reader.readexactly(12) == b"EARLY BYTES;"
        writer.write(b"GET / HTTP/1.1\r\n\r\n")  # raw now: not parsed
        assert await reader.readexactly(18) == b"GET / HTTP/1.1\r\n\r\n"
        writer.write_eof()
        assert await _closed(reader)
        await _close(writer)

    _run(test)


def test_upgrade_the_handler_declines_goes_on_as_http() -> None:
    async def test(port: int) -> None:
        reader, writer = await _connect(port)
        writer.write(
            b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
            b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert (await _read_response(reader)).body == b"GET /echo "
        assert (await _read_response(reader)).body == b"first,second"
        await _close(writer)

    _run(test)


def test_response_framing_and_header_bytes() -> None:
    async def test(port: int) -> None:
        reader, writer = await _connect(port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await _read_response(reader)
        assert response.header(b"transfer-encoding") == b"chunked"
        assert response.body == b"first,second"
        writer.write(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await _read_response(reader, head_only=True)
        assert response.header(b"content-length") == b"11"  # what a GET would get, no body
        writer.write(b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await _read_response(reader)
        assert response.status_line == b"HTTP/1.1 204 No Content"
        assert response.header(b"content-length") is None
        assert response.header(b"transfer-encoding") is None
        writer.write(b"GET /latin HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await _read_response(reader)
        assert response.header(b"x-latin") == b"caf\xe9 \xff"
        writer.write(b"GET /odd-status HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await _read_response(reader)
        assert response.status_line == b"HTTP/1.1 599 "
        # The HEAD and 204 left no stray bytes: this request's answer parses cleanly.
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _read_response(reader)).body == b"GET /echo "
        await _close(writer)

    _run(test)


def test_dropped_hop_by_hop_headers_neither_show_nor_close() -> None:
    async def test(port: int) -> None:
        reader, writer = await _connect(port)
        for _ in range(2):
            writer.write(b"GET /hop-by-hop HTTP/1.1\r\nHost: x\r\n\r\n")
            response = await _read_response(reader)
            assert response.headers == [(b"X-Kept", b"1"), (b"Content-Length", b"0")]
        await _close(writer)

    _run(test)


def test_http10_client_gets_a_close_delimited_body() -> None:
    async def test(port: int) -> None:
        reader, writer = await _connect(port)
        writer.write(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        response = await _read_response(reader)
        assert response.header(b"transfer-encoding") is None
        assert response.header(b"connection") == b"close"
        assert response.body == b"first,second"
        await _close(writer)

    _run(test)


def test_header_with_cr_lf_is_never_written() -> None:
    async def test(port: int) -> None:
        reader, writer = await _connect(port)
        writer.write(b"GET /crlf HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await reader.read() == b""
        await _close(writer)

    _run(test)
