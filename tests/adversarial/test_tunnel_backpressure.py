"""Back-pressure on the tunnel connection must never stall a legitimate transfer (issue 13, 11).

Both ends stop reading what a peer sends while their own writes are blocked only as far as
that cannot deadlock two honest peers: a bulk transfer both ways at once (WebSockets echoing
megabytes through adit's edge and adit's connector) keeps moving.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
import websockets.asyncio.client

from adversary import probe, start_tenant
from harness import Edge, Processes

pytestmark = pytest.mark.process

HOST = "bulk.example.test"
MESSAGE = 1024 * 1024
MESSAGES = 24
SOCKETS = 4


async def _echo_both_ways(edge: Edge, number: int) -> tuple[str, str]:
    """Send MESSAGES megabytes while reading the echo: both directions full at once."""
    address, port = edge.http.rsplit(":", 1)
    sent, received = hashlib.sha256(), hashlib.sha256()
    async with websockets.asyncio.client.connect(
        f"ws://{HOST}/ws", host=address, port=int(port), open_timeout=10, max_size=None
    ) as ws:

        async def send() -> None:
            for n in range(MESSAGES):
                data = hashlib.sha256(f"{number}/{n}".encode()).digest() * (MESSAGE // 32)
                sent.update(data)
                await ws.send(data)

        async def receive() -> None:
            for _ in range(MESSAGES):
                data = await ws.recv()
                assert isinstance(data, bytes)
                received.update(data)

        await asyncio.gather(send(), receive())
    return sent.hexdigest(), received.hexdigest()


def test_bulk_both_ways_through_the_tunnel_never_stalls(
    processes: Processes, edge: Edge, ws_origin: int, tmp_path: Path
) -> None:
    start_tenant(
        processes,
        edge,
        "bulk",
        HOST,
        f"http://127.0.0.1:{ws_origin}",
        rules=[{"service": f"http://127.0.0.1:{ws_origin}"}],
    )

    async def all_sockets() -> list[tuple[str, str]]:
        return await asyncio.wait_for(
            asyncio.gather(*(_echo_both_ways(edge, n) for n in range(SOCKETS))), 90
        )

    results = asyncio.run(all_sockets())
    assert all(sent == received for sent, received in results)
    assert probe(edge.proc).close_wait() == 0
