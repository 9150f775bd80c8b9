"""A bug met while handling one QUIC connection costs that connection, never the listener.

The edge's QUIC listener shares one UDP socket among every connection: an exception that left
its datagram handler would reach the event loop (logged, the rest of the datagram's events
dropped, the connection's timer not armed again). Here a session whose event handler raises
(standing for any bug) is driven by a real aioquic client through a real listener on a
stand-in transport: the connection is closed with INTERNAL_ERROR and forgotten, the error is
logged with its traceback, and the listener goes on taking connections.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import cast

import pytest
from aioquic.quic import events

from adit.edge.ca import EdgeCA
from adit.edge.quic_listener import QuicListener, QuicTunnelSession, edge_quic_configuration
from adit.edge.registry import ConnectionRegistry
from adit.edge.store import Store
from adit.edge.tunnel_session import EdgeIdentity, TunnelSession
from adit.protocol.http2 import ErrorCode
from adit.protocol.quic_engine import TunnelQuicConnection
from adit.protocol.quic_tunnel import HandshakeDone
from adit.workers.quic_dial import connector_quic_configuration
from asynctests import uvloop_test

EDGE = ("127.0.0.1", 7844)
CLIENT = ("127.0.0.9", 50000)


class _Wire:
    """The listener's transport: what it sends is kept for the client."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: object) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


class _Buggy(QuicTunnelSession):
    """A session with a bug: its handler of the end of the handshake raises."""

    def on_event(self, event: object) -> None:
        if isinstance(event, HandshakeDone):
            raise RuntimeError("a bug in an event handler")
        super().on_event(event)


def _listener(tmp_path: Path) -> tuple[QuicListener, _Wire, list[TunnelSession]]:
    leaf = EdgeCA.load_or_create(tmp_path).tunnel_leaf()
    closed: list[TunnelSession] = []

    def new_session(quic: TunnelQuicConnection, listener: QuicListener) -> QuicTunnelSession:
        def on_closed(session: TunnelSession) -> None:
            closed.append(session)
            listener.forget(session)

        return _Buggy(
            quic,
            cast(Store, None),  # never asked: the connection does not register
            ConnectionRegistry(),
            EdgeIdentity(location="test"),
            listener=listener,
            on_closed=on_closed,
        )

    listener = QuicListener(
        edge_quic_configuration(leaf.cert_chain_pem, leaf.key_pem),
        new_session,
        max_connections=10,
        max_connections_per_ip=10,
    )
    wire = _Wire()
    listener.connection_made(cast(asyncio.DatagramTransport, wire))
    return listener, wire, closed


@uvloop_test
async def test_a_bug_in_a_session_closes_that_connection_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listener, wire, closed = _listener(tmp_path)
    loop = asyncio.get_running_loop()
    client = TunnelQuicConnection(
        configuration=connector_quic_configuration(EdgeCA.load_or_create(tmp_path).cert_pem)
    )
    client.connect(EDGE, now=loop.time())
    terminated: events.ConnectionTerminated | None = None
    with caplog.at_level(logging.ERROR, logger="adit.quic"):
        for _ in range(500):
            for data, _ in client.datagrams_to_send(now=loop.time()):
                listener.datagram_received(data, CLIENT)
            sent, wire.sent = wire.sent, []
            for data in sent:
                client.receive_datagram(data, EDGE, now=loop.time())
            while (event := client.next_event()) is not None:
                if isinstance(event, events.ConnectionTerminated):
                    terminated = event
            timer = client.get_timer()
            if timer is not None and timer <= loop.time():
                client.handle_timer(now=loop.time())
            if terminated is not None and closed:
                break
            await asyncio.sleep(0.01)
    # The connection ended with INTERNAL_ERROR (the application's code: HTTP/2's), was
    # forgotten by the listener, and the bug was logged with its traceback.
    assert terminated is not None and terminated.error_code == ErrorCode.INTERNAL_ERROR
    assert closed and listener.stats().sessions == 0 and listener.stats().routes == 0
    assert any(
        "internal error" in r.getMessage() and r.exc_info is not None for r in caplog.records
    ), caplog.text
