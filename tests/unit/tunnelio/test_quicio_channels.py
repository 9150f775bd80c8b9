"""QuicIO and its stream channels over real UDP sockets: joined reads, batched credit, writers.

An edge and a connector on 127.0.0.1, each a minimal :class:`QuicIO` on the tunnel's QUIC
connection types (the edge's CA and leaf), on uvloop as adit's processes run them.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any, cast

import pytest
from aioquic._buffer import Buffer
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.packet import pull_quic_header

from adit.edge.ca import EdgeCA
from adit.edge.quic_listener import edge_quic_configuration
from adit.protocol.http2 import Event, RequestReceived, ResponseReceived
from adit.protocol.quic_engine import TunnelQuicConfiguration, TunnelQuicConnection
from adit.protocol.quic_tunnel import ConnectorQuicConnection, EdgeQuicConnection
from adit.quicio import QuicIO, QuicStreamChannel
from adit.tunnelio import HIGH_WATER, StreamChannel, TunnelIO
from adit.workers.quic_dial import connector_quic_configuration
from asynctests import uvloop_test

pytestmark = pytest.mark.timeout(60)


class _Edge(QuicIO):
    conn: EdgeQuicConnection

    def __init__(self, quic: TunnelQuicConnection) -> None:
        TunnelIO.__init__(self, EdgeQuicConnection(quic))
        self.responses: asyncio.Queue[ResponseReceived] = asyncio.Queue()
        self.conn.open_control_stream()

    def on_event(self, event: Event) -> None:
        if isinstance(event, ResponseReceived):
            self.responses.put_nowait(event)


class _Connector(QuicIO):
    conn: ConnectorQuicConnection

    def __init__(self, quic: TunnelQuicConnection) -> None:
        TunnelIO.__init__(self, ConnectorQuicConnection(quic))
        self.requests: asyncio.Queue[StreamChannel] = asyncio.Queue()

    def on_event(self, event: Event) -> None:
        if isinstance(event, RequestReceived) and event.stream_id != 0:
            self.requests.put_nowait(self.channel(event.stream_id))


class _EdgeSocket(asyncio.DatagramProtocol):
    """The edge's UDP socket: the first Initial makes the connection, the rest go to it."""

    def __init__(self, configuration: TunnelQuicConfiguration) -> None:
        self.configuration = configuration
        self.transport: asyncio.DatagramTransport | None = None
        self.edge: _Edge | None = None
        self.ready: asyncio.Future[_Edge] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        if self.edge is None:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
            quic = TunnelQuicConnection(
                configuration=self.configuration,
                original_destination_connection_id=header.destination_cid,
            )
            self.edge = _Edge(quic)
            transport = self.transport
            assert transport is not None
            self.edge.start_quic(transport.sendto, addr, client=False)
            self.ready.set_result(self.edge)
        self.edge.datagram_received(data, addr)


class _ConnectorSocket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.connector: _Connector | None = None

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        if self.connector is not None:
            self.connector.datagram_received(data, addr)


async def _pair(state: Path, window: int) -> tuple[_Edge, _Connector, list[Any]]:
    loop = asyncio.get_running_loop()
    ca = EdgeCA.load_or_create(state)
    leaf = ca.tunnel_leaf()
    server = edge_quic_configuration(leaf.cert_chain_pem, leaf.key_pem)
    client = connector_quic_configuration(ca.cert_pem)
    for config in (server, client):
        config.max_stream_data = window
        config.max_data = 2 * window
    edge_udp, edge_socket = await loop.create_datagram_endpoint(
        lambda: _EdgeSocket(server), local_addr=("127.0.0.1", 0)
    )
    address = edge_udp.get_extra_info("sockname")
    connector_udp, connector_socket = await loop.create_datagram_endpoint(
        _ConnectorSocket, remote_addr=address
    )
    connector = _Connector(TunnelQuicConnection(configuration=client))
    connector_socket.connector = connector
    connector.start_quic(lambda d, _a: connector_udp.sendto(d), address, client=True)
    await asyncio.wait_for(connector.handshake, 10)
    edge = await asyncio.wait_for(edge_socket.ready, 10)
    await asyncio.wait_for(edge.handshake, 10)
    return edge, connector, [edge_udp, connector_udp]


async def _download(edge: _Edge, connector: _Connector, body: bytes) -> tuple[bytes, int]:
    """The connector answers a GET with ``body`` in 64 KiB writes; the edge reads it all.
    Returns what the edge read and in how many reads."""
    sid = edge.conn.send_request("GET", "/big", "h.test", [], end_stream=True)
    down = edge.channel(sid)
    edge.flush()
    up = await asyncio.wait_for(connector.requests.get(), 10)
    connector.conn.send_response(up.stream_id, 200, [])

    async def send() -> None:
        for offset in range(0, len(body), 65536):
            await up.write(body[offset : offset + 65536])
        up.end()

    sender = asyncio.create_task(send())
    await asyncio.wait_for(edge.responses.get(), 10)
    pieces = []
    while chunk := await asyncio.wait_for(down.read(), 20):
        pieces.append(chunk)
    await asyncio.wait_for(sender, 10)
    return b"".join(pieces), len(pieces)


@uvloop_test
async def test_a_body_beyond_both_windows_arrives_whole_in_reads_of_many_packets(
    tmp_path: Path,
) -> None:
    # 64 KiB stream and 128 KiB connection windows: the body moves only as the reader's
    # credit raises them (a credit that flushed nothing would leave the sender stuck).
    edge, connector, sockets = await _pair(tmp_path, window=64 * 1024)
    try:
        body = bytes(range(256)) * 8192  # 2 MiB, ~1,800 packets
        received, reads = await _download(edge, connector, body)
        assert hashlib.sha256(received).digest() == hashlib.sha256(body).digest()
        # A read takes every piece that is waiting: far fewer reads than packets.
        assert reads < len(body) // 1200 // 2
    finally:
        for udp in sockets:
            udp.close()


@uvloop_test
async def test_a_writer_beyond_the_high_water_mark_is_woken_as_the_queue_drains(
    tmp_path: Path,
) -> None:
    edge, connector, sockets = await _pair(tmp_path, window=6 * 1024 * 1024)
    try:
        body = bytes(3 * HIGH_WATER + 12345)  # the writer waits for room several times
        sid = edge.conn.send_request("POST", "/up", "h.test", [])
        up = edge.channel(sid)
        assert isinstance(up, QuicStreamChannel)
        edge.flush()
        down = await asyncio.wait_for(connector.requests.get(), 10)

        async def send() -> None:
            await up.write(body)  # one write: well beyond HIGH_WATER queued at once
            assert not edge._writing  # a writer leaves the set the flush walks
            up.end()

        sender = asyncio.create_task(send())
        received = bytearray()
        while chunk := await asyncio.wait_for(down.read(), 20):
            received += chunk
        await asyncio.wait_for(sender, 10)
        assert bytes(received) == body
    finally:
        for udp in sockets:
            udp.close()


@uvloop_test
async def test_a_reader_back_after_the_window_filled_frees_the_sender_at_once(
    tmp_path: Path,
) -> None:
    # The sender fills the 64 KiB stream window, everything is acknowledged and nothing is
    # in flight: only the reader's credit can move it on (nothing else would flush it).
    edge, connector, sockets = await _pair(tmp_path, window=64 * 1024)
    try:
        sid = edge.conn.send_request("GET", "/big", "h.test", [], end_stream=True)
        down = edge.channel(sid)
        edge.flush()
        up = await asyncio.wait_for(connector.requests.get(), 10)
        connector.conn.send_response(up.stream_id, 200, [])
        body = bytes(range(256)) * 1024  # 256 KiB: four windows
        writer = asyncio.create_task(up.write(body))
        await asyncio.wait_for(edge.responses.get(), 10)
        await asyncio.sleep(0.3)  # the window is full and every packet acknowledged
        started = asyncio.get_running_loop().time()
        received = bytearray()
        while len(received) < len(body):
            received += await asyncio.wait_for(down.read(), 5)
        assert bytes(received) == body
        assert asyncio.get_running_loop().time() - started < 1.0
        await asyncio.wait_for(writer, 5)
    finally:
        for udp in sockets:
            udp.close()
