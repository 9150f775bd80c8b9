"""The connector's start: worker processes first, then the supervisor's event loop.

A worker is a fresh interpreter (fork+exec) that spends most of its start-up importing. So
``adit tunnel run`` starts worker 0 first thing (``adit.supervisor.spawn.prestart``, before it
imports click or reads its config); the worker imports what it needs to dial while the
settings are loaded, then reads them from its stdin (:class:`~adit.ipc.messages.WorkerBoot`,
see ``adit.workers.process``). :class:`Supervisor` sends worker 0 its boot message as soon
as the settings are known, before the supervisor itself imports asyncio, uvloop and ZeroMQ
and binds its sockets (:mod:`adit.supervisor.app`); the other workers are started by the
supervisor's loop. A worker that connects before the
supervisor bound simply retries (``adit.ipc.channels``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adit.ipc.messages import Start, WorkerBoot, encode, frame
from adit.ipc.rendezvous import create_runtime_directory, remove_runtime_directory
from adit.supervisor.spawn import WorkerChild, spawn_worker, take_prestarted

if TYPE_CHECKING:
    from adit.supervisor.settings import SupervisorSettings

__all__ = [
    "EarlyWorkers",
    "Supervisor",
    "collect_again",
    "send_boot",
    "start_workers",
    "worker_boot",
]


def _affinity() -> list[int]:
    """The CPUs this process may run on (empty when the platform cannot tell)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def worker_boot(settings: SupervisorSettings, start: Start, cpu: int | None) -> WorkerBoot:
    """The boot message of the worker that ``start`` is for."""
    log = settings.log
    return WorkerBoot(
        start=start,
        cpu=cpu,
        loglevel=log.level,
        output=log.output,
        logfile=log.logfile,
        log_directory=log.log_directory,
    )


def send_boot(process: WorkerChild, boot: WorkerBoot) -> None:
    """Write ``boot`` (framed) to the worker's stdin once, without waiting for the worker.

    A pipe holds 64 KiB; a larger message (many ingress rules, a CA bundle) would block until
    the worker, still importing, reads it. A thread writes it to a duplicate of the pipe's
    descriptor, so the caller never waits and may close its own at any time.
    """
    if process.booted or process.stdin is None:
        return
    process.booted = True
    data = frame(encode(boot))
    fd = os.dup(process.stdin)

    def write() -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            pass  # a worker that died first is noticed by its exit, not here
        finally:
            os.close(fd)

    threading.Thread(target=write, name=f"boot-{boot.start.settings.slot}", daemon=True).start()


def collect_again() -> None:
    """Turn the cyclic garbage collector on again if ``adit.cli.main`` turned it off.

    What exists by now (modules, settings) lives as long as the process: it goes to the
    permanent generation, so the first collection does not trace all of it at once.
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


class EarlyWorkers:
    """Worker processes started before the supervisor's loop, waiting to be adopted by it."""

    def __init__(self, runtime_dir: Path, processes: dict[int, WorkerChild] | None = None) -> None:
        self.runtime_dir = runtime_dir
        #: slot -> process (already sent its boot message)
        self.processes: dict[int, WorkerChild] = {} if processes is None else processes

    def take(self, slot: int) -> WorkerChild | None:
        """The process started for ``slot``, once."""
        return self.processes.pop(slot, None)

    def discard(self) -> None:
        """Kill the processes nobody adopted (the supervisor failed before it could)."""
        for process in self.processes.values():
            _kill(process)
        self.processes.clear()


def _kill(process: WorkerChild) -> None:
    process.close_stdin()
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        process.wait(timeout=2.0)


def start_workers(settings: SupervisorSettings, cpus: list[int]) -> EarlyWorkers:
    """Start the first worker slot's process (adopting a prestarted one) and send it its boot
    message.

    Only that one: it dials connection 0, the first registration. The other slots' workers
    would spend their ~0.2 s of imports on the same two CPUs as worker 0's dial and the
    supervisor's own imports; the supervisor's loop starts them once it runs (their
    connections wait a registration stagger for connection 0 anyway). A slot whose process
    cannot be started is left out: the supervisor starts it again and reports the error the
    usual way.
    """
    from adit.supervisor.state import SupervisorState

    layout = SupervisorState(settings, cpus=cpus)
    found = take_prestarted()
    early = EarlyWorkers(Path(found[0]) if found else create_runtime_directory())
    for slot, record in sorted(layout.workers.items())[:1]:
        if slot == 0 and found is not None:
            process = found[1]
        else:
            try:
                process = spawn_worker(slot, early.runtime_dir)
            except OSError:
                continue
        send_boot(process, worker_boot(settings, Start(layout.worker_settings(slot)), record.cpu))
        early.processes[slot] = process
    return early


class Supervisor:
    """``adit tunnel run``'s supervisor: starts the workers now, runs the loop in :meth:`run`.

    Takes the arguments of :class:`adit.supervisor.app.Supervisor` and passes them on.
    """

    def __init__(
        self,
        settings: SupervisorSettings,
        *,
        reload: Callable[[], SupervisorSettings] | None = None,
        **options: Any,
    ) -> None:
        self.settings = settings
        self._reload = reload
        self._options = options
        self._cpus = _affinity()
        self._early = start_workers(settings, self._cpus)
        #: After :meth:`run`: the message for stderr when the exit code is not 0.
        self.failure: str | None = None

    def run(self) -> int:
        """Run until drained or failed; the process exit code."""
        from adit.supervisor.app import Supervisor as SupervisorLoop

        collect_again()
        try:
            loop = SupervisorLoop(
                self.settings, reload=self._reload, early=self._early, **self._options
            )
            code = loop.run()
        finally:
            self._early.discard()
            remove_runtime_directory(self._early.runtime_dir)
        self.failure = loop.failure
        return code
