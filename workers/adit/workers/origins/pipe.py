"""Raw bytes both ways between a tunnel stream and an upgraded origin connection.

Used after a WebSocket upgrade (PROTOCOL.md §4.7): the bytes are the eyeball's frames,
unmodified. Like cloudflared's ``stream.Pipe`` with no grace period, the pipe ends as soon as
either direction ends; the caller then closes both sides.

An idle WebSocket is mostly this pipe waiting, a thousand of them at a time: the calling task
copies edge→origin itself and a single task copies origin→edge (no second task and no
``asyncio.wait`` bookkeeping per stream, see :func:`race`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from adit.workers.origins.dialer import READ_LIMIT
from adit.workers.stream import TunnelStream

__all__ = ["pipe", "race"]


async def race(here: Coroutine[Any, Any, None], there: Coroutine[Any, Any, None]) -> None:
    """Run ``here`` in this task and ``there`` in a new one until either ends or fails.

    The other one is then stopped; errors of either simply end the race (the callers treat
    every way a direction ends alike). Cancelling the calling task cancels both and raises.
    ``there`` ending interrupts ``here`` by cancelling this task, a request taken back before
    returning (as ``asyncio.timeout`` does), so the caller never sees it.
    """
    task = asyncio.current_task()
    assert task is not None
    other = asyncio.ensure_future(there)
    requested = False  # we asked to cancel this task
    consumed = False  # ...and that request was delivered and taken back
    racing = True

    def wake(_: asyncio.Future[None]) -> None:
        nonlocal requested
        if racing:
            requested = True
            task.cancel()

    def ours() -> bool:
        """Whether the CancelledError being handled is our own wake-up alone."""
        nonlocal consumed
        if requested and not consumed and task.uncancel() == 0:
            consumed = True
            return True
        return False

    other.add_done_callback(wake)
    try:
        try:
            with contextlib.suppress(Exception):
                await here
        except asyncio.CancelledError:
            if not ours():
                raise
        finally:
            racing = False
            other.remove_done_callback(wake)
            other.cancel()
        try:
            with contextlib.suppress(Exception):
                await other
        except asyncio.CancelledError:
            # ``other`` cancelled by us is expected; this task being cancelled is not.
            if task.cancelling() and not ours():
                raise
        if requested and not consumed:
            # The wake-up came as ``here`` ended by itself: deliver it now, not to the caller.
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                if not ours():
                    raise
    finally:
        if not other.done():
            other.cancel()


async def pipe(
    stream: TunnelStream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    initial: bytes = b"",
) -> None:
    """Copy edge→origin and origin→edge until one direction ends or fails."""
    await race(_edge_to_origin(stream, writer), _origin_to_edge(stream, reader, initial))


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
