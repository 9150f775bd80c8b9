"""Raw bytes both ways between a tunnel stream and an upgraded origin connection.

Used after a WebSocket upgrade (PROTOCOL.md §4.7): the bytes are the eyeball's frames,
unmodified. Like cloudflared's ``stream.Pipe`` with no grace period, the pipe ends as soon as
either direction ends; the caller then closes both sides.

An idle WebSocket is mostly this pipe waiting, a thousand of them at a time: the calling task
copies edge→origin itself and the origin's transport callbacks copy origin→edge, with a task
only while a write is under way (no second task, coroutine or StreamReader per idle stream).

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

from adit.tunnelio import StreamClosedError, release_waiter
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


class _OriginSide(asyncio.Protocol):
    """The origin's socket while :func:`pipe` runs: its bytes go to the tunnel from the
    transport's own callbacks, through a short-lived task only while there is something to
    write (an idle WebSocket has no task, coroutine, StreamReader or read future for this
    direction), and its end interrupts the task that copies the other way."""

    __slots__ = (
        "consumed",
        "drain",
        "ended",
        "over",
        "queued",
        "queued_size",
        "reading_paused",
        "requested",
        "sender",
        "stream",
        "task",
        "transport",
        "write_paused",
    )

    def __init__(
        self, stream: TunnelStream, transport: asyncio.Transport, task: asyncio.Task[Any]
    ) -> None:
        self.stream = stream
        self.transport = transport
        self.task = task  # the pipe's caller, copying edge→origin
        self.queued: list[bytes] = []
        self.queued_size = 0
        self.sender: asyncio.Task[None] | None = None
        self.reading_paused = False
        self.ended = False  # the origin ended its side (or the connection went)
        self.over = False  # the pipe is over: nothing more goes either way
        self.requested = False  # we asked to cancel ``task``
        self.consumed = False  # ...and that request was delivered and taken back
        self.write_paused = False
        self.drain: asyncio.Future[None] | None = None

    # -- the transport's callbacks ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.over:
            return
        self.queued.append(data)
        self.queued_size += len(data)
        if self.sender is None:
            self.sender = self.task.get_loop().create_task(self._send())
        if self.queued_size >= READ_LIMIT and not self.reading_paused:
            # The tunnel takes the bytes slower than the origin sends them.
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._origin_ended()
        return True  # the pipe's caller closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.write_paused = False
        release_waiter(self.drain)
        self._origin_ended()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        release_waiter(self.drain)

    # -- origin→edge -----------------------------------------------------------------------------

    async def _send(self) -> None:
        try:
            while self.queued and not self.over:
                data = self.queued.pop(0)
                self.queued_size -= len(data)
                await self.stream.write(data)
        except Exception:
            # A failed write ends the pipe like any other end of a direction.
            self.sender = None
            self.finish()
            return
        self.sender = None
        if self.over:
            return
        if self.ended:
            self.finish()
        elif self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def _origin_ended(self) -> None:
        self.ended = True
        if self.sender is None:
            self.finish()  # else once what the origin sent before its end is written

    def finish(self) -> None:
        """The origin→edge direction is over: interrupt the caller (see :class:`_Race`)."""
        if not self.over:
            self.over = True
            self.requested = True
            self.task.cancel()

    def ours(self) -> bool:
        """Whether the CancelledError being handled is our own wake-up alone."""
        if self.requested and not self.consumed and self.task.uncancel() == 0:
            self.consumed = True
            return True
        return False


async def pipe(
    stream: TunnelStream,
    transport: asyncio.Transport,
    initial: bytes = b"",
    *,
    ended: bool = False,
) -> None:
    """Copy edge→origin and origin→edge until one direction ends or fails.

    ``transport`` is the origin's (its protocol is replaced for the pipe's life), ``initial``
    what the origin sent before (after its 101) and ``ended`` whether it already ended its
    side. The calling task copies edge→origin; the origin's bytes go from the transport's
    callbacks (:class:`_OriginSide`). Cancelling the calling task stops both and raises.
    """
    task = asyncio.current_task()
    assert task is not None
    side = _OriginSide(stream, transport, task)
    transport.set_protocol(side)
    if initial:
        side.data_received(initial)
    if ended:
        side._origin_ended()
    loop = task.get_loop()
    try:
        try:
            while not side.over:
                data = await stream.read()
                if not data:
                    if transport.can_write_eof() and not transport.is_closing():
                        transport.write_eof()
                    break
                transport.write(data)
                while side.write_paused and not transport.is_closing():
                    side.drain = waiter = loop.create_future()
                    try:
                        await waiter
                    finally:
                        side.drain = None
        except asyncio.CancelledError:
            if not side.ours():
                raise
        except Exception:  # noqa: S110 - a failed direction simply ends the pipe
            pass
        finally:
            side.over = True
        if side.requested and not side.consumed:
            # The wake-up came as this direction ended by itself: take it now, not the caller.
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                if not side.ours():
                    raise
    finally:
        if side.sender is not None:
            side.sender.cancel()


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
