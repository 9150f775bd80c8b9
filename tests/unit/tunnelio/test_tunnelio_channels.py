"""TunnelIO and StreamChannel on a real socket pair: bodies, back-pressure, resets, loss."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import pytest

from adit.protocol.http2 import (
    ConnectorTunnelConnection,
    EdgeTunnelConnection,
    ErrorCode,
    Event,
    RequestReceived,
    ResponseReceived,
    TunnelSettings,
)
from adit.protocol.http2_frames import (
    FrameReader,
    FrameType,
    parse_goaway,
    ping_frame,
    settings_frame,
)
from adit.protocol.http2_limits import FrameLimits, RateLimit
from adit.protocol.liveness import LivenessSettings
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


def _frame_kinds(data: bytes) -> list[int]:
    kinds = []
    while data:
        length = int.from_bytes(data[:3], "big")
        kinds.append(data[3])
        data = data[9 + length :]
    return kinds


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
    # The first of these went alone (two open), the others wait: two HEADERS frames held.
    assert _frame_kinds(b"".join(edge._held)) == [FrameType.HEADERS, FrameType.HEADERS]
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


@uvloop_test
async def test_bulk_both_ways_at_once_never_deadlocks() -> None:
    """Both ends write more than the socket buffers hold while the other does the same: each
    must go on reading while its own writes wait, or both wait for ever."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    for sock in (a, b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    _, edge = await loop.create_connection(_Edge, sock=a)
    _, connector = await loop.create_connection(_Connector, sock=b)
    up, down = await _open(edge, connector)
    body = bytes(range(256)) * 64 * 1024  # 16 MiB each way: beyond every window and buffer

    async def send(channel: StreamChannel) -> None:
        for offset in range(0, len(body), 256 * 1024):
            await channel.write(body[offset : offset + 256 * 1024])
        channel.end()

    async def receive(channel: StreamChannel) -> bytes:
        got = bytearray()
        while chunk := await channel.read():
            got += chunk
        return bytes(got)

    *_, got_up, got_down = await asyncio.wait_for(
        asyncio.gather(send(up), send(down), receive(down), receive(up)), 30
    )
    assert got_up == got_down == body
    edge.close_transport()
    connector.close_transport()


class _LenientEdge(TunnelIO[EdgeTunnelConnection]):
    """An edge that lets a peer ping as fast as it likes (only the owed answers are capped)."""

    def __init__(self) -> None:
        limits = FrameLimits(ping=RateLimit(burst=10**9, rate=0))
        super().__init__(EdgeTunnelConnection(TunnelSettings(limits=limits)))


@uvloop_test
async def test_a_peer_that_never_reads_its_answers_stops_being_read() -> None:
    loop = asyncio.get_running_loop()
    a, peer = socket.socketpair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setblocking(False)
    _, edge = await loop.create_connection(_LenientEdge, sock=a)
    pings = b"".join(ping_frame(n.to_bytes(8, "big")) for n in range(1000))
    sent = 0
    for _ in range(2000):  # 2,000,000 PINGs at most, written as far as the edge takes them
        try:
            sent += peer.send(pings)
        except BlockingIOError:
            if edge.reading_paused:
                break
        await asyncio.sleep(0)
    assert edge.reading_paused, f"still reading after {sent // 17} PINGs"
    assert not edge.closed
    # What the edge holds for this peer is bounded: the transport's buffer and the answers
    # owed (the protocol closes the connection beyond its cap).
    assert edge.transport is not None
    assert edge.transport.get_write_buffer_size() < 1 << 20
    assert edge.conn.owed_control_frames <= FrameLimits().max_owed_control
    # The peer reads at last: the edge's writes drain and it reads again.
    for _ in range(1000):
        try:
            while peer.recv(1 << 16):
                pass
        except BlockingIOError:
            pass
        await asyncio.sleep(0.001)
        if not _reading_paused(edge):
            break
    assert not _reading_paused(edge)
    edge.close_transport()
    peer.close()


def _reading_paused(io: TunnelIO[EdgeTunnelConnection]) -> bool:
    return io.reading_paused


@uvloop_test
async def test_a_protocol_error_ends_in_a_goaway_with_its_code() -> None:
    """REVIEW item 3: the GOAWAY says why (here FLOW_CONTROL_ERROR), not always 1."""
    loop = asyncio.get_running_loop()
    a, peer = socket.socketpair()
    _, edge = await loop.create_connection(_Edge, sock=a)
    peer.sendall(settings_frame([(0x4, 2**31)]))  # an initial window beyond 2^31-1
    await asyncio.wait_for(edge.lost, 5)
    peer.settimeout(5)
    wire = b""
    while chunk := peer.recv(65536):
        wire += chunk
    frames = FrameReader(1 << 24, expect_preface=True).feed(wire)
    goaways = [parse_goaway(payload) for kind, _, _, payload in frames if kind == FrameType.GOAWAY]
    assert goaways == [(0, ErrorCode.FLOW_CONTROL_ERROR)]
    peer.close()


FAST = LivenessSettings(interval=0.1, allowance=0.15, timeout=0.6)


class _WatchfulEdge(TunnelIO[EdgeTunnelConnection]):
    def __init__(self) -> None:
        super().__init__(EdgeTunnelConnection(), FAST)
        self.changes: list[tuple[float, bool]] = []

    def on_responsive(self, responsive: bool) -> None:
        self.changes.append((self._loop.time(), responsive))


@uvloop_test
async def test_a_silent_peer_is_unresponsive_then_dropped() -> None:
    loop = asyncio.get_running_loop()
    a, peer = socket.socketpair()
    _, edge = await loop.create_connection(_WatchfulEdge, sock=a)
    started = loop.time()
    peer.sendall(settings_frame())  # then nothing: frozen
    await asyncio.wait_for(edge.lost, 5)
    took = loop.time() - started
    assert [responsive for _, responsive in edge.changes] == [False]
    unresponsive_after = edge.changes[0][0] - started
    assert FAST.interval + FAST.allowance - 0.01 <= unresponsive_after < FAST.timeout
    assert FAST.timeout - 0.01 <= took < FAST.timeout + 1.0
    peer.close()


@uvloop_test
async def test_a_peer_that_answers_pings_stays() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    _, edge = await loop.create_connection(_WatchfulEdge, sock=a)
    _, connector = await loop.create_connection(_Connector, sock=b)
    await asyncio.sleep(FAST.timeout * 3)  # idle the whole time: kept alive by PINGs alone
    assert not edge.closed and edge.changes == []
    edge.close_transport()
    connector.close_transport()
