"""Raw bytes both ways between a tunnel stream and an upgraded origin connection.

Used after a WebSocket upgrade (PROTOCOL.md §4.7): the bytes are the eyeball's frames,
unmodified. Like cloudflared's ``stream.Pipe`` with no grace period, the pipe ends as soon as
either direction ends; the caller then closes both sides.
"""

from __future__ import annotations

import asyncio
import contextlib

from adit.workers.origins.dialer import READ_LIMIT
from adit.workers.stream import TunnelStream

__all__ = ["pipe"]


async def pipe(
    stream: TunnelStream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    initial: bytes = b"",
) -> None:
    """Copy edge→origin and origin→edge until one direction ends or fails."""
    upstream = asyncio.create_task(_edge_to_origin(stream, writer))
    downstream = asyncio.create_task(_origin_to_edge(stream, reader, initial))
    tasks = {upstream, downstream}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            # Errors in either direction simply end the pipe; the caller logs nothing more.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _edge_to_origin(stream: TunnelStream, writer: asyncio.StreamWriter) -> None:
    while True:
        data = await stream.read()
        if not data:
            if writer.can_write_eof():
                writer.write_eof()
            return
        writer.write(data)
        await writer.drain()


async def _origin_to_edge(
    stream: TunnelStream, reader: asyncio.StreamReader, initial: bytes
) -> None:
    if initial:
        await stream.write(initial)
    while True:
        data = await reader.read(READ_LIMIT)
        if not data:
            return
        await stream.write(data)
