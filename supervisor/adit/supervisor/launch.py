"""The connector's start: worker processes first, then the supervisor's event loop.

A worker is a fresh interpreter (fork+exec) that spends most of its start-up importing. The
:class:`Supervisor` here starts the workers as soon as the settings are known, before the
supervisor itself imports asyncio, uvloop and ZeroMQ and binds its sockets
(:mod:`adit.supervisor.app`), so both boot at the same time on different CPUs. A worker that
connects before the supervisor bound simply retries (``adit.ipc.channels``). This module
imports nothing heavy: it is what ``adit tunnel run`` loads before the settings.
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
from typing import Any

from adit.ipc.rendezvous import create_runtime_directory, remove_runtime_directory
from adit.supervisor.settings import SupervisorSettings
from adit.supervisor.state import SupervisorState

__all__ = [
    "EarlyWorkers",
    "Supervisor",
    "start_workers",
    "worker_argv",
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


def worker_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The supervisor's environment without what only the supervisor may use."""
    env = dict(os.environ if environ is None else environ)
    for key in _PRIVATE_ENV:
        env.pop(key, None)
    return env


def _affinity() -> list[int]:
    """The CPUs this process may run on (empty when the platform cannot tell)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def worker_argv(
    settings: SupervisorSettings, slot: int, cpu: int | None, runtime_dir: Path
) -> list[str]:
    """``python -m adit.workers ...`` for the worker of ``slot``."""
    log_settings = settings.log
    argv = [
        sys.executable, "-m", "adit.workers",
        "--slot", str(slot),
        "--runtime-dir", str(runtime_dir),
        "--parent-pid", str(os.getpid()),
        "--loglevel", log_settings.level,
        "--output", log_settings.output,
    ]  # fmt: skip
    if cpu is not None:
        argv += ["--cpu", str(cpu)]
    if log_settings.logfile:
        argv += ["--logfile", log_settings.logfile]
    elif log_settings.log_directory:
        argv += ["--log-directory", log_settings.log_directory]
    return argv


@dataclass
class EarlyWorkers:
    """Worker processes started before the supervisor's loop, waiting to be adopted by it."""

    runtime_dir: Path
    #: slot -> (process, the CPU it was started pinned to)
    processes: dict[int, tuple[subprocess.Popen[bytes], int | None]] = field(default_factory=dict)

    def take(self, slot: int, cpu: int | None) -> subprocess.Popen[bytes] | None:
        """The process started for ``slot`` if it matches what the supervisor wants now."""
        found = self.processes.pop(slot, None)
        if found is None:
            return None
        process, started_cpu = found
        if started_cpu != cpu:
            _kill(process)
            return None
        return process

    def discard(self) -> None:
        """Kill the processes nobody adopted (the supervisor failed before it could)."""
        for process, _ in self.processes.values():
            _kill(process)
        self.processes.clear()


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=2.0)


def start_workers(settings: SupervisorSettings, cpus: list[int]) -> EarlyWorkers:
    """Create the socket directory and start every worker slot's process.

    A slot whose process cannot be started is left out: the supervisor starts it again and
    reports the error the usual way.
    """
    layout = SupervisorState(settings, cpus=cpus)
    early = EarlyWorkers(create_runtime_directory())
    for slot, record in sorted(layout.workers.items()):
        argv = worker_argv(settings, slot, record.cpu, early.runtime_dir)
        try:
            process = subprocess.Popen(
                argv, env=worker_environment(), stdin=subprocess.DEVNULL, close_fds=True
            )
        except OSError:
            continue
        early.processes[slot] = (process, record.cpu)
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
