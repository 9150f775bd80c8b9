"""ZeroMQ plumbing between the supervisor and its workers (``ipc://`` in a private directory).

Topology (the supervisor binds everything, workers only connect):

* ``ipc://<dir>/events``: one PULL in the supervisor; every worker PUSHes its events there.
* ``ipc://<dir>/worker-<slot>``: one PUSH per worker slot in the supervisor; the worker of that
  slot PULLs its commands from it. The supervisor binds a fresh socket for every spawn, so a
  restarted worker never receives commands meant for its predecessor.

Every ``zmq.asyncio.Context`` is created after ``exec`` in the process that uses it (never
inherited through ``fork``). Bytes that do not decode are logged and dropped: a confused peer
must not take the receiver down.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio

from adit.ipc.messages import Command, Event, decode_command, decode_event, encode
from adit.ipc.rendezvous import (
    WORKER_BOOT_ERROR,
    create_runtime_directory,
    events_endpoint,
    remove_runtime_directory,
    worker_endpoint,
)

__all__ = [
    "WORKER_BOOT_ERROR",
    "CommandSender",
    "EventReceiver",
    "WorkerChannel",
    "create_runtime_directory",
    "events_endpoint",
    "remove_runtime_directory",
    "worker_endpoint",
]

log = logging.getLogger("adit.ipc")

#: How long a closing socket may keep flushing queued messages (milliseconds).
_LINGER_MS = 2000


def _unlink_endpoint(endpoint: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(endpoint.removeprefix("ipc://"))


def _retry_soon(socket: zmq.asyncio.Socket) -> None:
    """Retry a connect to a socket not bound yet after 10 ms (then backing off to 1 s).

    A worker may be started before its supervisor binds (the supervisor starts it first and
    sets up ZeroMQ while it boots); zmq's default first retry would come only after 100 ms.
    """
    socket.setsockopt(zmq.RECONNECT_IVL, 10)
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)


class EventReceiver:
    """The supervisor's PULL socket for worker events."""

    def __init__(self, context: zmq.asyncio.Context, directory: Path) -> None:
        self.endpoint = events_endpoint(directory)
        self._socket = context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(self.endpoint)

    async def receive(self) -> Event:
        """The next event that decodes; malformed messages are logged and skipped."""
        while True:
            data = await self._socket.recv()
            try:
                return decode_event(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning(
                    "Dropped a malformed worker event error=%r size=%d", str(exc), len(data)
                )

    def close(self) -> None:
        """Close the socket (pending events are discarded)."""
        self._socket.close(linger=0)


class CommandSender:
    """The supervisor's PUSH socket to one worker process (one per spawn)."""

    def __init__(self, context: zmq.asyncio.Context, directory: Path, slot: int) -> None:
        self.endpoint = worker_endpoint(directory, slot)
        # A predecessor's socket file may remain after a crash; binding needs the name free.
        _unlink_endpoint(self.endpoint)
        self._socket = context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(self.endpoint)

    async def send(self, command: Command) -> None:
        """Send ``command``; waits until the worker has connected."""
        await self._socket.send(encode(command))

    def close(self) -> None:
        """Close the socket; unsent commands are dropped (their worker is gone)."""
        self._socket.close(linger=0)


class WorkerChannel:
    """A worker's end: PULL commands from its slot's endpoint, PUSH events to the supervisor."""

    def __init__(self, context: zmq.asyncio.Context, directory: Path, slot: int) -> None:
        self._commands = context.socket(zmq.PULL)
        self._commands.setsockopt(zmq.LINGER, 0)
        _retry_soon(self._commands)
        self._commands.connect(worker_endpoint(directory, slot))
        self._events = context.socket(zmq.PUSH)
        _retry_soon(self._events)
        # Events queued just before exit (ConnectionUnregistered, the last stats) still go out.
        self._events.setsockopt(zmq.LINGER, _LINGER_MS)
        self._events.connect(events_endpoint(directory))

    async def receive_command(self) -> Command:
        """The next command that decodes; malformed messages are logged and skipped."""
        while True:
            data = await self._commands.recv()
            try:
                return decode_command(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning(
                    "Dropped a malformed supervisor command error=%r size=%d", str(exc), len(data)
                )

    async def send_event(self, event: Event) -> None:
        """Queue ``event`` for the supervisor."""
        await self._events.send(encode(event))

    def close(self) -> None:
        """Close both sockets, letting queued events flush for a bounded time."""
        self._commands.close(linger=0)
        self._events.close(linger=_LINGER_MS)
