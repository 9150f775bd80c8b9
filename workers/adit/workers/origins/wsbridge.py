"""TCP over WebSocket: the connector as the WebSocket server end of a stream service.

For ``tcp://``, ``ssh://``, ``rdp://``, ``smb://`` (any non-HTTP scheme) and bastion rules,
cloudflared answers the edge's WebSocket stream itself (PROTOCOL.md §4.7,
``connection.AckConnection``) and unwraps frames to a raw TCP connection. This module holds
the pieces: the acknowledgement headers, the bastion destination, and the bridge that moves
frame payloads to the origin and origin bytes into binary frames.
"""

from __future__ import annotations

import asyncio

from adit.protocol.websocket import (
    CloseCode,
    Opcode,
    Role,
    WebSocketConnection,
    WebSocketError,
    accept_key,
)
from adit.workers.errors import BastionDestinationMissing
from adit.workers.origins.dialer import READ_LIMIT
from adit.workers.origins.pipe import race
from adit.workers.stream import IncomingRequest, TunnelStream

__all__ = ["JUMP_DESTINATION_HEADER", "ack_headers", "bridge", "jump_destination"]

JUMP_DESTINATION_HEADER = "cf-access-jump-destination"
_DATA = frozenset({Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY})


def _header(request: IncomingRequest, name: str) -> str:
    return next((v for n, v in request.headers if n.lower() == name), "")


def ack_headers(request: IncomingRequest) -> list[tuple[str, str]]:
    """cloudflared's ``websocket.NewResponseHeader``: the 101 it sends (as 200 on HTTP/2)."""
    return [
        ("Connection", "Upgrade"),
        ("Sec-Websocket-Accept", accept_key(_header(request, "sec-websocket-key"))),
        ("Upgrade", "websocket"),
    ]


def jump_destination(request: IncomingRequest) -> str:
    """``host:port`` from ``Cf-Access-Jump-Destination``, scheme and path stripped.

    As cloudflared's ``carrier.ResolveBastionDest``: ``tcp://db:5432/x`` -> ``db:5432``.
    """
    value = _header(request, JUMP_DESTINATION_HEADER).strip()
    if not value:
        raise BastionDestinationMissing(
            "Did not receive final destination from client. The --destination flag is "
            "likely not set on the client side"
        )
    scheme, sep, rest = value.partition("://")
    if sep and scheme and rest:
        value = rest.split("/", 1)[0].rpartition("@")[2]
    return value.split("/", 1)[0]


async def bridge(
    stream: TunnelStream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    ws: WebSocketConnection | None = None,
    initial: bytes = b"",
) -> None:
    """Unwrap the edge's WebSocket frames to the origin socket and wrap the origin's bytes.

    Returns when either side ends (cloudflared's ``stream.Pipe``): the peer's close frame is
    answered, the origin's EOF becomes a close frame (1000). The caller closes both sides.
    ``ws`` and ``initial`` continue a conversation already started (the SOCKS handshake).
    """
    ws = ws or WebSocketConnection(Role.SERVER)
    if initial:
        writer.write(initial)
    lock = asyncio.Lock()

    async def send(data: bytes) -> None:
        # Pongs (from the reading task) and data frames (from the writing task) must not
        # interleave inside a frame when a write waits for flow control.
        if data:
            async with lock:
                await stream.write(data)

    async def edge_to_origin() -> None:
        while data := await stream.read():
            try:
                frames = ws.receive(data)
            except WebSocketError:
                await send(ws.data_to_send())
                return
            await send(ws.data_to_send())
            for frame in frames:
                if frame.opcode in _DATA:
                    writer.write(frame.payload)
                elif frame.opcode == Opcode.CLOSE:
                    await writer.drain()
                    return
            await writer.drain()

    async def origin_to_edge() -> None:
        while data := await reader.read(READ_LIMIT):
            await send(ws.send_data(data))
        await send(ws.send_close(CloseCode.NORMAL))

    # Either direction ending or failing ends the bridge, as in cloudflared.
    await race(edge_to_origin(), origin_to_edge())
