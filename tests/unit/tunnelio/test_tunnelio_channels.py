"""TunnelIO and StreamChannel on a real socket pair: bodies, back-pressure, resets, loss."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import pytest

from adit.protocol.http2 import (
    ConnectorTunnelConnection,
    EdgeTunnelConnection,
    Event,
    RequestReceived,
    ResponseReceived,
)
from adit.tunnelio import HIGH_WATER, StreamChannel, StreamClosedError, TunnelIO
from asynctests import uvloop_test

pytestmark = pytest.mark.timeout(60)


class _Edge(TunnelIO[EdgeTunnelConnection]):
    def __init__(self) -> None:
        super().__init__(EdgeTunnelConnection())
        self.responses: asyncio.Queue[ResponseReceived] = asyncio.Queue()

    def on_event(self, event: Event) -> None:
        if isinstance(event, ResponseReceived):
            self.responses.put_nowait(event)


class _Connector(TunnelIO[ConnectorTunnelConnection]):
    def __init__(self) -> None:
        super().__init__(ConnectorTunnelConnection())
        self.requests: asyncio.Queue[StreamChannel] = asyncio.Queue()

    def on_event(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            self.requests.put_nowait(self.channel(event.stream_id))


async def _pair() -> tuple[_Edge, _Connector, socket.socket, socket.socket]:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    _, edge = await loop.create_connection(_Edge, sock=a)
    _, connector = await loop.create_connection(_Connector, sock=b)
    return edge, connector, a, b


async def _open(edge: _Edge, connector: _Connector) -> tuple[StreamChannel, StreamChannel]:
    sid = edge.conn.send_request("POST", "/", "h.test", [])
    edge_side = edge.channel(sid)
    edge.flush()
    connector_side = await asyncio.wait_for(connector.requests.get(), 5)
    return edge_side, connector_side


@uvloop_test
async def test_a_body_larger_than_every_window_arrives_whole_and_in_order() -> None:
    edge, connector, *_ = await _pair()
    up, down = await _open(edge, connector)
    body = bytes(range(256)) * 40_000  # ~10 MiB: beyond the stream and connection windows

    async def send() -> None:
        for offset in range(0, len(body), 300_000):
            await up.write(body[offset : offset + 300_000])
        up.end()

    async def receive() -> bytes:
        got = bytearray()
        while chunk := await down.read():
            got += chunk
        return bytes(got)

    _, got = await asyncio.wait_for(asyncio.gather(send(), receive()), 30)
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    edge.close_transport()
    connector.close_transport()


@uvloop_test
async def test_a_writer_waits_while_nobody_reads_then_goes_on() -> None:
    edge, connector, *_ = await _pair()
    up, down = await _open(edge, connector)
    chunk = b"x" * (1 << 20)
    written = [0]

    async def write_forever() -> None:
        for _ in range(10_000):
            await up.write(chunk)
            written[0] += len(chunk)

    writer = asyncio.ensure_future(write_forever())
    # The stream window (4 MiB) plus HIGH_WATER bound what can be in flight unread.
    for _ in range(100):
        await asyncio.sleep(0.01)
        if edge.conn.pending(up.stream_id) > HIGH_WATER:
            break
    await asyncio.sleep(0.05)
    stalled_at = written[0]
    assert not writer.done()
    assert edge.conn.pending(up.stream_id) > HIGH_WATER
    assert stalled_at < 16 * len(chunk)
    received = 0
    while received < 12 * len(chunk):
        received += len(await asyncio.wait_for(down.read(), 5))
    await asyncio.sleep(0.05)
    assert written[0] > stalled_at
    writer.cancel()
    edge.close_transport()
    connector.close_transport()


@uvloop_test
async def test_a_reset_wakes_the_reader_and_refuses_the_writer() -> None:
    edge, connector, *_ = await _pair()
    up, down = await _open(edge, connector)
    reader = asyncio.ensure_future(down.read())
    await asyncio.sleep(0)
    up.reset()
    with pytest.raises(StreamClosedError):
        await asyncio.wait_for(reader, 5)
    with pytest.raises(StreamClosedError):
        await up.write(b"late")
    edge.close_transport()
    connector.close_transport()


@uvloop_test
async def test_losing_the_socket_wakes_every_waiting_stream() -> None:
    edge, connector, a, _b = await _pair()
    _, down = await _open(edge, connector)
    reader = asyncio.ensure_future(down.read())
    await asyncio.sleep(0)
    edge.close_transport()
    with pytest.raises(StreamClosedError):
        await asyncio.wait_for(reader, 5)
    assert await asyncio.wait_for(connector.lost, 5)
    a.close()


@uvloop_test
async def test_a_lone_request_goes_out_at_once_and_busy_ones_are_joined() -> None:
    edge, connector, *_ = await _pair()
    # One stream open: the request reaches the socket within the call, nothing is held.
    sid = edge.conn.send_request("GET", "/", "h.test", [], end_stream=True)
    edge.channel(sid)
    edge.flush()
    assert edge._held == []
    await asyncio.wait_for(connector.requests.get(), 5)
    # Several open: their output waits for the end of the loop iteration, then goes as one.
    for _ in range(3):
        edge.channel(edge.conn.send_request("GET", "/", "h.test", [], end_stream=True))
        edge.flush()
    assert len(edge._held) == 2  # the first of these went alone (two open), the others wait
    for _ in range(3):
        await asyncio.wait_for(connector.requests.get(), 5)
    assert edge._held == []
    edge.close_transport()
    connector.close_transport()


@uvloop_test
async def test_many_small_pieces_read_back_in_order_across_compactions() -> None:
    edge, connector, *_ = await _pair()
    _, down = await _open(edge, connector)
    pieces = [b"%d;" % n for n in range(1000)]
    for piece in pieces[:300]:
        down._feed(piece, 0)
    got = [await down.read() for _ in range(200)]  # past the compaction point, not empty
    for piece in pieces[300:]:
        down._feed(piece, 0)
    while down.ready and len(got) < len(pieces):
        got.append(await down.read())
    assert got == pieces
    assert not down.ready
    edge.close_transport()
    connector.close_transport()
