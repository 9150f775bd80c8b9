"""Raw bytes both ways between a tunnel stream and an upgraded origin connection.

Used after a WebSocket upgrade (PROTOCOL.md §4.7): the bytes are the eyeball's frames,
unmodified. Like cloudflared's ``stream.Pipe`` with no grace period, the pipe ends as soon as
either direction ends; the caller then closes both sides.

An idle WebSocket is mostly this pipe waiting, a thousand of them at a time: the calling task
copies edge→origin itself and a single task copies origin→edge (no second task and no
``asyncio.wait`` bookkeeping per stream, see :func:`race`).

A private-network flow is a TCP connection end to end, and :func:`pipe_half_closing` carries
it as one: each direction's end is passed on (the edge's end of the stream as a FIN to the
destination, the destination's FIN as the end of the stream) and the other direction goes on
until it ends too, so a client that ends its input (``echo PING | adit access tcp ...``)
still gets the answer. cloudflared's ``Pipe`` ends both directions at the first end instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from adit.tunnelio import StreamClosedError
from adit.workers.origins.dialer import READ_LIMIT
from adit.workers.stream import TunnelStream

__all__ = ["pipe", "pipe_half_closing", "race"]


class _Race:
    """The bookkeeping of one :func:`race` (slots, not closures: a thousand idle ones add up)."""

    __slots__ = ("consumed", "failure", "other", "racing", "requested", "task")

    def __init__(self, task: asyncio.Task[Any], other: asyncio.Task[None]) -> None:
        self.task = task
        self.other = other
        self.requested = False  # we asked to cancel ``task``
        self.consumed = False  # ...and that request was delivered and taken back
        self.racing = True
        self.failure: Exception | None = None

    def wake(self, _: asyncio.Future[None]) -> None:
        """``other`` ended: interrupt ``here``."""
        if self.racing:
            self.requested = True
            self.task.cancel()

    def ours(self) -> bool:
        """Whether the CancelledError being handled is our own wake-up alone."""
        if self.requested and not self.consumed and self.task.uncancel() == 0:
            self.consumed = True
            return True
        return False


async def race(here: Coroutine[Any, Any, None], there: Coroutine[Any, Any, None]) -> None:
    """Run ``here`` in this task and ``there`` in a new one until either ends or fails.

    The other one is then stopped; errors of either simply end the race (the callers treat
    every way a direction ends alike). Cancelling the calling task cancels both and raises.
    ``there`` ending interrupts ``here`` by cancelling this task, a request taken back before
    returning (as ``asyncio.timeout`` does), so the caller never sees it.
    """
    task = asyncio.current_task()
    assert task is not None
    state = _Race(task, asyncio.ensure_future(there))
    other = state.other
    other.add_done_callback(state.wake)
    try:
        try:
            await here
        except asyncio.CancelledError:
            if not state.ours():
                raise
        except Exception as exc:
            state.failure = exc
        finally:
            state.racing = False
            other.remove_done_callback(state.wake)
            other.cancel()
        try:
            await other
        except asyncio.CancelledError:
            # ``other`` cancelled by us is expected; this task being cancelled is not.
            if task.cancelling() and not state.ours():
                raise
        except Exception as exc:
            state.failure = state.failure or exc
        if state.requested and not state.consumed:
            # The wake-up came as ``here`` ended by itself: deliver it now, not to the caller.
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                if not state.ours():
                    raise
    finally:
        if not other.done():
            other.cancel()


def pipe(
    stream: TunnelStream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    initial: bytes = b"",
) -> Coroutine[Any, Any, None]:
    """Copy edge→origin and origin→edge until one direction ends or fails (await it)."""
    # The race itself is what the caller awaits: no frame of our own per open stream.
    return race(_edge_to_origin(stream, writer), _origin_to_edge(stream, reader, initial))


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


async def pipe_half_closing(
    stream: TunnelStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Copy both ways until both directions ended, each end passed on to the other side; a
    failure of either direction (a reset, a broken socket) stops both and is raised."""
    tasks = (
        asyncio.ensure_future(_edge_to_origin(stream, writer)),
        asyncio.ensure_future(_origin_to_edge_then_end(stream, reader)),
    )
    up, down = tasks
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            failure = task.exception()
            if failure is None:
                continue
            # The destination ended first and the edge then dropped the stream (its client
            # was told and left): the flow is over, not broken.
            over = down in done and not down.cancelled() and down.exception() is None
            if task is up and isinstance(failure, StreamClosedError) and over:
                continue
            raise failure
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


async def _origin_to_edge_then_end(stream: TunnelStream, reader: asyncio.StreamReader) -> None:
    await _origin_to_edge(stream, reader, b"")
    await stream.end()
