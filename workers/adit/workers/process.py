"""The worker process: ipc, signals and heartbeats around a :class:`WorkerRuntime`.

Started by the supervisor as ``python -m adit.workers --slot N --runtime-dir D [--cpu C]``
(fork+exec, so nothing of the supervisor's loop, zmq context or threads is inherited). Order:
pin the CPU, set up logging, ignore SIGINT, then start uvloop and create the zmq context.

Signals never bypass the supervisor's drain: SIGINT (a terminal's Ctrl-C reaches the whole
process group) is ignored, SIGTERM is treated as ``Drain(grace_period)``. The heartbeat is a
task on the worker's own event loop, so a stuck loop stops heartbeating; the supervisor then
sends SIGABRT, for which ``faulthandler`` prints every thread's Python traceback to stderr
(the supervisor's log) before the process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import faulthandler
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import uvloop
import zmq.asyncio

from adit.ipc.channels import WORKER_BOOT_ERROR, WorkerChannel
from adit.ipc.messages import (
    ApplyIngress,
    Command,
    Drain,
    Event,
    Heartbeat,
    IngressSnapshot,
    Reconfigure,
    Start,
    WorkerSettings,
)
from adit.logs import LogSettings, configure_logging, parse_level
from adit.workers.runtime import WorkerRuntime

__all__ = [
    "HEARTBEAT_INTERVAL",
    "RUNTIME_OVERRIDE_ENV",
    "STUCK_HOOK_ENV",
    "RuntimeLike",
    "WorkerProcess",
    "main",
]

log = logging.getLogger("adit.workers")

#: Seconds between heartbeats.
HEARTBEAT_INTERVAL = 0.5
#: How long a fresh worker waits for its ``Start`` command before giving up.
START_TIMEOUT = 30.0
#: Test seam only: ``module:Class`` or ``/path/file.py:Class`` of a stand-in runtime.
RUNTIME_OVERRIDE_ENV = "ADIT_TEST_WORKER_RUNTIME"
#: Test seam only: when set to ``1``, SIGUSR2 blocks this worker's event loop for good.
STUCK_HOOK_ENV = "ADIT_TEST_STUCK_ON_SIGUSR2"
_PR_SET_PDEATHSIG = 1


class RuntimeLike(Protocol):
    """What the worker process needs of a data plane (``WorkerRuntime``'s interface)."""

    async def run(self) -> None: ...
    def begin_drain(self, grace: float) -> None: ...
    def apply_ingress(self, snapshot: IngressSnapshot) -> None: ...
    def reconfigure(self, settings: WorkerSettings) -> object: ...
    @property
    def active_streams(self) -> int: ...


RuntimeFactory = Callable[[WorkerSettings, Callable[[Event], None]], RuntimeLike]


def _runtime_factory() -> RuntimeFactory:
    spec = os.environ.get(RUNTIME_OVERRIDE_ENV, "")
    if not spec:
        return WorkerRuntime
    module_name, _, attr = spec.rpartition(":")
    if module_name.endswith(".py"):
        from importlib import util  # the test seam only: not on a real worker's start-up path

        file_spec = util.spec_from_file_location("adit_test_worker_runtime", module_name)
        assert file_spec is not None and file_spec.loader is not None
        module = util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    factory: RuntimeFactory = getattr(module, attr)
    return factory


class WorkerProcess:
    """One worker's life: connect, await Start, run the runtime, drain on command."""

    def __init__(
        self,
        slot: int,
        runtime_dir: Path,
        runtime_factory: RuntimeFactory = WorkerRuntime,
        early_signals: list[int] | None = None,
    ) -> None:
        self.slot = slot
        self.runtime_dir = runtime_dir
        self._factory = runtime_factory
        self._outbox: asyncio.Queue[Event] = asyncio.Queue()
        self._commands: asyncio.Queue[Command] = asyncio.Queue()
        self._runtime: RuntimeLike | None = None
        self._grace = 30.0
        self._draining = False
        self._early_signals = early_signals if early_signals is not None else []

    def publish(self, event: Event) -> None:
        """Queue an event for the supervisor (safe to call from any task of this loop)."""
        self._outbox.put_nowait(event)

    async def run(self) -> int:
        """Serve until the runtime returns; the process's exit code."""
        context = zmq.asyncio.Context()
        channel = WorkerChannel(context, self.runtime_dir, self.slot)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        if os.environ.get(STUCK_HOOK_ENV) == "1":
            loop.add_signal_handler(signal.SIGUSR2, _block_forever)
        if self._early_signals:
            self._on_sigterm()
        tasks = [
            asyncio.create_task(self._receive_commands(channel), name="commands"),
            asyncio.create_task(self._send_events(channel), name="events"),
        ]
        try:
            return await self._serve()
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            await self._flush(channel)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            channel.close()
            context.term()

    def _on_sigterm(self) -> None:
        self._commands.put_nowait(Drain(self._grace))

    async def _serve(self) -> int:
        try:
            first = await asyncio.wait_for(self._commands.get(), START_TIMEOUT)
        except TimeoutError:
            log.error("No Start command from the supervisor within %.0fs", START_TIMEOUT)
            return WORKER_BOOT_ERROR
        if isinstance(first, Drain):
            log.info("Drained before start")
            return 0
        if isinstance(first, ApplyIngress):
            log.error("The first command was not Start")
            return WORKER_BOOT_ERROR
        settings = first.settings
        if settings.slot != self.slot:
            log.error("Start for slot %d sent to slot %d", settings.slot, self.slot)
            return WORKER_BOOT_ERROR
        self._grace = settings.grace_period
        try:
            runtime = self._factory(settings, self.publish)
        except Exception:
            log.exception("Cannot build the worker runtime")
            return WORKER_BOOT_ERROR
        self._runtime = runtime
        log.info("Worker started pid=%d connIndexes=%s", os.getpid(), settings.conn_indexes)
        heartbeat = asyncio.create_task(self._heartbeat(runtime), name="heartbeat")
        dispatch = asyncio.create_task(self._dispatch(runtime), name="dispatch")
        try:
            await runtime.run()
        except Exception:
            log.exception("Worker runtime failed")
            return 1
        finally:
            for task in (heartbeat, dispatch):
                task.cancel()
            await asyncio.gather(heartbeat, dispatch, return_exceptions=True)
        if getattr(runtime, "fatal", None):
            # Unusable settings found after start (the runtime builds its rules off the
            # first dial's path): a boot error, so the supervisor does not respawn in a loop.
            return WORKER_BOOT_ERROR
        log.info("Worker finished")
        return 0

    async def _dispatch(self, runtime: RuntimeLike) -> None:
        while True:
            command = await self._commands.get()
            if isinstance(command, Drain):
                if not self._draining:
                    log.info("Draining grace=%.1fs", command.grace)
                self._draining = True
                runtime.begin_drain(command.grace)
            elif isinstance(command, ApplyIngress):
                self._apply_ingress(runtime, command)
            elif isinstance(command, Reconfigure):
                if command.settings.slot != self.slot:
                    log.error("Ignored settings for slot %d", command.settings.slot)
                    continue
                self._grace = command.settings.grace_period
                runtime.reconfigure(command.settings)
            elif isinstance(command, Start):
                log.warning("Ignored a second Start command")

    def _apply_ingress(self, runtime: RuntimeLike, command: ApplyIngress) -> None:
        if command.loglevel:
            logging.getLogger().setLevel(parse_level(command.loglevel) or logging.INFO)
        try:
            runtime.apply_ingress(command.snapshot)
        except Exception:
            # The supervisor validated the same snapshot; keep the rules in force if not.
            log.exception("Cannot apply ingress version %d", command.snapshot.version)
            return
        log.info("Applied ingress version %d", command.snapshot.version)

    async def _receive_commands(self, channel: WorkerChannel) -> None:
        while True:
            self._commands.put_nowait(await channel.receive_command())

    async def _send_events(self, channel: WorkerChannel) -> None:
        while True:
            event = await self._outbox.get()
            await channel.send_event(event)
            self._outbox.task_done()

    async def _flush(self, channel: WorkerChannel) -> None:
        """Give queued events a bounded chance to leave before the sockets close."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outbox.join(), 2.0)

    async def _heartbeat(self, runtime: RuntimeLike) -> None:
        pid = os.getpid()
        lag = 0.0
        while True:
            self.publish(Heartbeat(self.slot, pid, lag, runtime.active_streams))
            before = time.monotonic()
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            lag = max(0.0, time.monotonic() - before - HEARTBEAT_INTERVAL)


def _block_forever() -> None:
    """The test-only stuck loop: a callback that never returns (see :data:`STUCK_HOOK_ENV`)."""
    log.warning("Blocking the event loop (test hook)")
    while True:
        time.sleep(3600)


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM (i.e. a drain) if the supervisor dies without stopping us."""
    # The symbols already loaded into this process (libc among them): find_library("c") would
    # run ``ldconfig -p`` in a subprocess on every worker start.
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m adit.workers")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--runtime-dir", type=Path, required=True)
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--loglevel", default="info")
    parser.add_argument("--output", default="default")
    parser.add_argument("--logfile", default=None)
    parser.add_argument("--log-directory", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, early_signals: list[int] | None = None) -> int:
    """Entry point of ``python -m adit.workers``; returns the exit code.

    ``early_signals`` collects SIGTERMs that arrived before the event loop took over (see
    ``__main__``); each becomes a drain once the worker runs.
    """
    early = [] if early_signals is None else early_signals
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, _frame: early.append(signum))
    try:
        args = _parse_args(argv)
    except SystemExit:
        return WORKER_BOOT_ERROR
    configure_logging(
        LogSettings(args.loglevel, args.output, args.logfile, args.log_directory),
        context={"slot": args.slot},
        rotate=False,
    )
    # SIGABRT (sent by the supervisor to a stuck worker) prints every thread's traceback.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    _die_with_parent()
    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        log.error("The supervisor exited before this worker started")
        return WORKER_BOOT_ERROR
    if args.cpu is not None:
        try:
            os.sched_setaffinity(0, {args.cpu})
        except OSError as exc:
            log.warning("Cannot pin to CPU %d error=%r", args.cpu, str(exc))
    try:
        factory = _runtime_factory()
    except (ImportError, AttributeError, AssertionError):
        log.exception("Cannot load the worker runtime")
        return WORKER_BOOT_ERROR
    worker = WorkerProcess(args.slot, args.runtime_dir, factory, early_signals=early)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(worker.run())


if __name__ == "__main__":  # pragma: no cover - python -m adit.workers.process
    sys.exit(main())
