"""The connector's start: worker processes first, then the supervisor's event loop.

A worker is a fresh interpreter (fork+exec) that spends most of its start-up importing. So
``adit tunnel run`` starts worker 0 first thing (:func:`prestart`, before it imports click or
reads its config); the worker imports what it needs to dial while the settings are loaded,
then reads them from its stdin (:class:`~adit.ipc.messages.WorkerBoot`, see
``adit.workers.process``). :class:`Supervisor` sends every worker its boot message as soon as
the settings are known, before the supervisor itself imports asyncio, uvloop and ZeroMQ and
binds its sockets (:mod:`adit.supervisor.app`). A worker that connects before the supervisor
bound simply retries (``adit.ipc.channels``).

This module imports nothing heavy at the top: :func:`prestart` runs before anything else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adit.ipc.rendezvous import create_runtime_directory, remove_runtime_directory

if TYPE_CHECKING:
    from adit.ipc.messages import Start, WorkerBoot
    from adit.supervisor.settings import SupervisorSettings

__all__ = [
    "EarlyWorkers",
    "Supervisor",
    "discard_prestarted",
    "prestart",
    "prestarted",
    "send_boot",
    "spawn_worker",
    "start_workers",
    "wants_prestart",
    "worker_argv",
    "worker_boot",
    "worker_environment",
]

#: Variables meant for the supervisor alone (systemd's notify and socket activation).
_PRIVATE_ENV = (
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)
#: ``adit tunnel ... run`` arguments after which no tunnel runs (help and version).
_NO_RUN = frozenset({"-h", "--help", "-v", "-V", "--version"})


def worker_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The supervisor's environment without what only the supervisor may use."""
    env = dict(os.environ if environ is None else environ)
    for key in _PRIVATE_ENV:
        env.pop(key, None)
    return env


def _affinity() -> list[int]:
    """The CPUs this process may run on (empty when the platform cannot tell)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def worker_argv(slot: int, runtime_dir: Path) -> list[str]:
    """``python -m adit.workers ...`` for the worker of ``slot`` (the rest comes on stdin)."""
    return [
        sys.executable, "-m", "adit.workers",
        "--slot", str(slot),
        "--runtime-dir", str(runtime_dir),
        "--parent-pid", str(os.getpid()),
    ]  # fmt: skip


def worker_boot(settings: SupervisorSettings, start: Start, cpu: int | None) -> WorkerBoot:
    """The boot message of the worker that ``start`` is for."""
    from adit.ipc.messages import WorkerBoot

    log = settings.log
    return WorkerBoot(
        start=start,
        cpu=cpu,
        loglevel=log.level,
        output=log.output,
        logfile=log.logfile,
        log_directory=log.log_directory,
    )


def spawn_worker(slot: int, runtime_dir: Path) -> subprocess.Popen[bytes]:
    """Start the worker process of ``slot``; it waits for :func:`send_boot` on its stdin."""
    return subprocess.Popen(
        worker_argv(slot, runtime_dir),
        env=worker_environment(),
        stdin=subprocess.PIPE,
        close_fds=True,
    )


def send_boot(process: subprocess.Popen[bytes], boot: WorkerBoot) -> None:
    """Write ``boot`` to the worker's stdin and close it, without waiting for the worker.

    A pipe holds 64 KiB; a larger message (many ingress rules, a CA bundle) would block until
    the worker, still importing, reads it. A thread writes it, so the caller never waits.
    """
    import threading

    from adit.ipc.messages import encode

    pipe = process.stdin
    if pipe is None:
        return
    process.stdin = None
    data = encode(boot)

    def write() -> None:
        # A worker that died first is noticed by its exit, not here.
        with contextlib.suppress(OSError, ValueError):
            pipe.write(data)
        with contextlib.suppress(OSError, ValueError):
            pipe.close()

    threading.Thread(target=write, name=f"boot-{boot.start.settings.slot}", daemon=True).start()


@dataclass
class _Prestarted:
    runtime_dir: Path
    process: subprocess.Popen[bytes]


@dataclass
class _Pending:
    """The prestarted worker of this process until a supervisor adopts it."""

    worker: _Prestarted | None = None

    def pop(self) -> _Prestarted | None:
        found, self.worker = self.worker, None
        return found


_pending = _Pending()


def wants_prestart(args: list[str]) -> bool:
    """Whether ``adit`` ``args`` look like ``tunnel [...] run [...]`` that will run a tunnel.

    A cheap guess made before click parses anything: a wrong "yes" costs one worker process
    that exits when its stdin closes, a wrong "no" only the head start.
    """
    return (
        len(args) >= 2
        and args[0] == "tunnel"
        and "run" in args[1:]
        and not _NO_RUN.intersection(args)
    )


def prestart(args: list[str]) -> None:
    """Start worker 0 now if ``args`` (``adit``'s arguments) will run a tunnel.

    The process imports while the settings are loaded; :func:`start_workers` adopts it and
    sends its boot message. Never raises: without a prestarted worker the start is only slower.
    """
    if _pending.worker is not None or not wants_prestart(args):
        return
    import atexit

    try:
        runtime_dir = create_runtime_directory()
    except OSError:
        return
    try:
        process = spawn_worker(0, runtime_dir)
    except OSError:
        remove_runtime_directory(runtime_dir)
        return
    _pending.worker = _Prestarted(runtime_dir, process)
    # The command may still end before a supervisor adopts it (bad flags, no settings).
    atexit.register(discard_prestarted)


def prestarted() -> bool:
    """Whether a prestarted worker waits to be adopted."""
    return _pending.worker is not None


def discard_prestarted() -> None:
    """Stop the prestarted worker (the settings could not be loaded) and remove its directory."""
    found = _pending.pop()
    if found is not None:
        # Closing its stdin without a boot message makes the worker exit quietly.
        if found.process.stdin is not None:
            with contextlib.suppress(OSError):
                found.process.stdin.close()
        _kill(found.process)
        remove_runtime_directory(found.runtime_dir)


@dataclass
class EarlyWorkers:
    """Worker processes started before the supervisor's loop, waiting to be adopted by it."""

    runtime_dir: Path
    #: slot -> process (already sent its boot message)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def take(self, slot: int) -> subprocess.Popen[bytes] | None:
        """The process started for ``slot``, once."""
        return self.processes.pop(slot, None)

    def discard(self) -> None:
        """Kill the processes nobody adopted (the supervisor failed before it could)."""
        for process in self.processes.values():
            _kill(process)
        self.processes.clear()


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=2.0)


def start_workers(settings: SupervisorSettings, cpus: list[int]) -> EarlyWorkers:
    """Start every worker slot's process (adopting a prestarted one) and send it its boot message.

    A slot whose process cannot be started is left out: the supervisor starts it again and
    reports the error the usual way.
    """
    from adit.ipc.messages import Start
    from adit.supervisor.state import SupervisorState

    layout = SupervisorState(settings, cpus=cpus)
    found = _pending.pop()
    early = EarlyWorkers(found.runtime_dir if found else create_runtime_directory())
    for slot, record in sorted(layout.workers.items()):
        if slot == 0 and found is not None:
            process = found.process
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
