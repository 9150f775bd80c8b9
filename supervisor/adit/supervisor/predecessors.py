"""The workers of the code a supervisor upgraded from: adopted, kept serving, then drained.

After an in-place upgrade (``adit.supervisor.upgrade``) the new supervisor is the parent of
the old workers: same pid, their stdin's write ends inherited. They still talk ZeroMQ on the
old runtime directory's endpoints (their code has those names), so the new supervisor binds
those again (their sockets reconnect by themselves) and keeps them apart from its own
workers, which start in a fresh directory with the same slots and connection indexes.

Make before break: an old worker is told to ``Drain`` only once the new workers registered
every connection index it held (:func:`due_for_drain`); until then both serve, each with its
own edge connections (the edge keeps every registration: ``adit.edge.registry`` lists them,
and the new workers register under the new process's connector id). A new worker that does
not register within :data:`REGISTER_TIMEOUT` is reported; its old worker keeps serving, so an
upgrade never reduces capacity. The edge may route to an old worker until it unregisters; its
in-flight streams finish within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from adit.ipc.messages import (
    ConnectionLost,
    ConnectionRegistered,
    ConnectionUnregistered,
    Drain,
    Event,
)
from adit.ipc.rendezvous import events_endpoint, remove_runtime_directory
from adit.logs import fields
from adit.supervisor.spawn import WorkerChild
from adit.supervisor.upgrade_handover import InheritedWorker

if TYPE_CHECKING:
    import zmq.asyncio

    from adit.ipc.channels import CommandSender, EventReceiver

__all__ = ["REGISTER_TIMEOUT", "Inherited", "Predecessors", "due_for_drain"]

log = logging.getLogger("adit.supervisor")

#: Seconds the new workers get to register an old worker's connections before the upgrade
#: says that slot stays on the old code (its old worker keeps serving until they do).
REGISTER_TIMEOUT = 60.0


@dataclass(frozen=True)
class Inherited:
    """What an upgrade hands the new supervisor: the old workers and the metrics listener."""

    runtime_dir: Path
    workers: list[InheritedWorker]
    from_version: str
    metrics_socket: socket.socket | None = None


def due_for_drain(
    conn_indexes: Collection[int], registered: Collection[int], wanted: Collection[int]
) -> bool:
    """Whether an old worker that held ``conn_indexes`` may drain: the new workers registered
    each of them that is still ``wanted`` (all ``wanted`` ones, if none is)."""
    still = [index for index in conn_indexes if index in wanted]
    return all(index in registered for index in (still or wanted))


@dataclass
class _Old:
    worker: InheritedWorker
    process: WorkerChild
    sender: CommandSender
    registered: set[int] = field(default_factory=set)
    drained: bool = False
    pidfd: int | None = None


class Predecessors:
    """The adopted old workers: their events, their drain, their exit."""

    def __init__(
        self,
        inherited: Inherited,
        context: zmq.asyncio.Context,
        on_change: Callable[[], None],
    ) -> None:
        from adit.ipc.channels import CommandSender, EventReceiver

        self.runtime_dir = inherited.runtime_dir
        self.from_version = inherited.from_version
        self._on_change = on_change
        # The old supervisor's socket files remain; binding needs the names free.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(events_endpoint(self.runtime_dir).removeprefix("ipc://"))
        self._events: EventReceiver = EventReceiver(context, self.runtime_dir)
        self._old: dict[int, _Old] = {}
        for worker in inherited.workers:
            process = WorkerChild(worker.pid, worker.stdin)
            process.booted = True
            old = _Old(worker, process, CommandSender(context, self.runtime_dir, worker.slot))
            old.registered.update(worker.registered)
            self._old[worker.pid] = old
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def connections(self) -> int:
        """Connections the old workers still have registered."""
        return sum(len(old.registered) for old in self._old.values())

    @property
    def done(self) -> bool:
        """Every old worker exited."""
        return not self._old

    def start(self, version: str) -> None:
        """Watch the old workers' events and exits; report a slow new generation."""
        loop = asyncio.get_running_loop()
        self._tasks.append(asyncio.create_task(self._pump(), name="predecessor-events"))
        self._tasks.append(asyncio.create_task(self._report_late(), name="predecessor-timer"))
        for old in self._old.values():
            self._watch_exit(loop, old)
        log.info(
            "Upgraded in place; the old workers serve until the new ones registered",
            extra=fields(fromVersion=self.from_version, version=version, oldWorkers=len(self._old)),
        )

    def drain_covered(
        self, registered: Iterable[int], wanted: Collection[int], grace: float
    ) -> None:
        """Tell each old worker whose connections the new workers registered to drain."""
        current = set(registered)
        for old in self._old.values():
            if old.drained or not due_for_drain(old.worker.conn_indexes, current, wanted):
                continue
            old.drained = True
            log.info(
                "Draining the old worker: the new workers registered its connections",
                extra=fields(slot=old.worker.slot, pid=old.worker.pid),
            )
            task = asyncio.create_task(old.sender.send(Drain(grace)))
            self._tasks.append(task)

    def close(self) -> None:
        """Stop watching; old workers still alive find their stdin closed and drain."""
        for task in self._tasks:
            task.cancel()
        for old in list(self._old.values()):
            self._forget(old)
        self._events.close()

    def _forget(self, old: _Old) -> None:
        self._old.pop(old.worker.pid, None)
        old.sender.close()
        old.process.close_stdin()
        if old.pidfd is not None:
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(old.pidfd)
            os.close(old.pidfd)
            old.pidfd = None

    def _watch_exit(self, loop: asyncio.AbstractEventLoop, old: _Old) -> None:
        def on_exit() -> None:
            code = old.process.poll()
            if code is None:
                return
            log.info(
                "Old worker exited code=%d",
                code,
                extra=fields(slot=old.worker.slot, pid=old.worker.pid),
            )
            self._forget(old)
            if self.done:
                log.info("Upgrade finished: every old worker drained and exited")
                self._events.close()
                remove_runtime_directory(self.runtime_dir)
            self._on_change()

        try:
            old.pidfd = os.pidfd_open(old.worker.pid)
        except OSError:
            # Gone already (or no pidfd): find out on the next look.
            self._tasks.append(asyncio.create_task(self._poll_exit(old, on_exit)))
            return
        loop.add_reader(old.pidfd, on_exit)

    async def _poll_exit(self, old: _Old, on_exit: Callable[[], None]) -> None:
        while old.worker.pid in self._old:
            on_exit()
            await asyncio.sleep(0.1)

    async def _pump(self) -> None:
        while self._old:
            event = await self._events.receive()
            if self._note(event):
                self._on_change()

    def _note(self, event: Event) -> bool:
        if not isinstance(event, ConnectionRegistered | ConnectionUnregistered | ConnectionLost):
            return False  # heartbeats and stats of the old workers: not this supervisor's
        olds = [o for o in self._old.values() if o.worker.slot == event.slot]
        for old in olds:
            if isinstance(event, ConnectionRegistered):
                old.registered.add(event.conn_index)
            else:
                old.registered.discard(event.conn_index)
        return bool(olds)

    async def _report_late(self) -> None:
        await asyncio.sleep(REGISTER_TIMEOUT)
        for old in self._old.values():
            if not old.drained:
                log.warning(
                    "The new workers did not register this slot's connections within %.0fs; "
                    "its old worker keeps serving them",
                    REGISTER_TIMEOUT,
                    extra=fields(slot=old.worker.slot, pid=old.worker.pid),
                )
