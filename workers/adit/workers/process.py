"""The worker process: ipc, signals and heartbeats around a :class:`WorkerRuntime`.

Started by the supervisor as ``python -m adit.workers --slot N --runtime-dir D --parent-pid P``
(fork+exec, so nothing of the supervisor's loop, zmq context or threads is inherited). The
rest arrives on stdin as one framed :class:`~adit.ipc.messages.WorkerBoot` message: ``adit tunnel
run`` starts worker 0 before it has read its settings, and the worker imports what it needs to
dial while the settings are loaded. Order: read the boot message, set up logging, pin the CPU,
start uvloop and the runtime; ZeroMQ (the supervisor's channel) is imported once the first
connection registered or failed, so its import is not on the way to the first registration.
Events published before that wait in the outbox; SIGTERM needs no channel. The supervisor
keeps its end of stdin open and never writes again: end-of-file means it died, and the worker
drains (what a parent-death signal would do, without ctypes and prctl).

Signals never bypass the supervisor's drain: SIGINT (a terminal's Ctrl-C reaches the whole
process group) is ignored, SIGTERM is treated as ``Drain(grace_period)``. The heartbeat is a
task on the worker's own event loop, so a stuck loop stops heartbeating; the supervisor then
sends SIGABRT, for which ``faulthandler`` prints every thread's Python traceback to stderr
(the supervisor's log) before the process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import msgspec
import uvloop

from adit.ipc.messages import (
    ApplyIngress,
    Command,
    Drain,
    Event,
    Heartbeat,
    IngressSnapshot,
    Reconfigure,
    RecordRegistration,
    Start,
    WorkerSettings,
    decode_boot,
    read_frame,
)
from adit.ipc.rendezvous import WORKER_BOOT_ERROR
from adit.logs import LogSettings, configure_logging, parse_level
from adit.workers.runtime import WorkerRuntime, warm_up

if TYPE_CHECKING:
    import zmq.asyncio

    from adit.ipc.channels import WorkerChannel
    from adit.logs.live_stream import LogHub, LogPublisher

__all__ = [
    "HEARTBEAT_INTERVAL",
    "IPC_DEFER_LIMIT",
    "RuntimeLike",
    "WorkerOptions",
    "WorkerProcess",
    "main",
    "parse_worker_args",
]

log = logging.getLogger("adit.workers")

#: Seconds between heartbeats.
HEARTBEAT_INTERVAL = 0.5
#: Longest wait for the first connection's outcome before the supervisor's channel is opened
#: anyway (a slow edge must not keep Drain and Reconfigure commands from the worker).
IPC_DEFER_LIMIT = 2.0
_STDIN = 0
#: How long queued events may take to leave when the worker ends (the channel may still have
#: to be opened, ZeroMQ imported first).
_FLUSH_TIMEOUT = 3.0


class RuntimeLike(Protocol):
    """What the worker process needs of a data plane (``WorkerRuntime``'s interface)."""

    async def run(self) -> None: ...
    def begin_drain(self, grace: float) -> None: ...
    def apply_ingress(self, snapshot: IngressSnapshot) -> None: ...
    def reconfigure(self, settings: WorkerSettings) -> object: ...
    def record_registration(self, conn_index: int, protocol: str) -> None: ...
    @property
    def active_streams(self) -> int: ...


RuntimeFactory = Callable[[WorkerSettings, Callable[[Event], None]], RuntimeLike]


class WorkerProcess:
    """One worker's life: run the runtime from its ``Start``, talk to the supervisor, drain."""

    def __init__(
        self,
        start: Start,
        runtime_dir: Path,
        runtime_factory: RuntimeFactory = WorkerRuntime,
        early_signals: list[int] | None = None,
        parent_pid: int | None = None,
        watch_stdin: bool = True,
    ) -> None:
        self.start = start
        self._watch_stdin = watch_stdin
        self.slot = start.settings.slot
        self.runtime_dir = runtime_dir
        self._factory = runtime_factory
        self._parent_pid = parent_pid
        self._outbox: asyncio.Queue[Event] = asyncio.Queue()
        self._commands: asyncio.Queue[Command] = asyncio.Queue()
        self._runtime: RuntimeLike | None = None
        self._grace = start.settings.grace_period
        self._draining = False
        self._early_signals = early_signals if early_signals is not None else []
        #: Set by the first event other than a heartbeat: the channel may be opened now.
        self._ipc_due = asyncio.Event()
        self._channel: WorkerChannel | None = None

    def publish(self, event: Event) -> None:
        """Queue an event for the supervisor (safe to call from any task of this loop)."""
        self._outbox.put_nowait(event)
        if not isinstance(event, Heartbeat):
            self._ipc_due.set()

    async def run(self) -> int:
        """Serve until the runtime returns; the process's exit code."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        if self._watch_stdin:
            self._watch_parent(loop)
        ipc = asyncio.create_task(self._ipc(), name="ipc")
        try:
            return await self._serve()
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            if self._watch_stdin:
                with contextlib.suppress(OSError, ValueError):
                    loop.remove_reader(_STDIN)
            # Whatever was published must still reach the supervisor: open the channel now
            # if the first connection's outcome never came.
            self._ipc_due.set()
            await self._flush(ipc)
            ipc.cancel()
            await asyncio.gather(ipc, return_exceptions=True)

    def _on_sigterm(self) -> None:
        self._commands.put_nowait(Drain(self._grace))

    async def _ipc(self) -> None:
        """Open the supervisor's channel once due, then pump commands and events."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ipc_due.wait(), IPC_DEFER_LIMIT)
        # In a thread: a request that arrives right after the registration is not held up.
        await asyncio.to_thread(_import_all, ("zmq.asyncio", "adit.ipc.channels"))
        import zmq.asyncio

        from adit.ipc.channels import WorkerChannel

        context = zmq.asyncio.Context()
        channel = WorkerChannel(context, self.runtime_dir, self.slot)
        self._channel = channel
        hub, publisher = self._publish_logs(context)
        try:
            await asyncio.gather(
                self._receive_commands(channel),
                self._send_events(channel),
                *([publisher.watch()] if publisher is not None else []),
            )
        finally:
            self._channel = None
            hub.close()
            if publisher is not None:
                publisher.shutdown()
            channel.close()
            context.term()

    def _publish_logs(self, context: zmq.asyncio.Context) -> tuple[LogHub, LogPublisher | None]:
        """This worker's records for ``tail``, and the hub a ``/logs`` stream here reads."""
        import zmq

        from adit.logs.live_stream import LogPublisher, install_hub

        hub = install_hub(context, self.runtime_dir)
        try:
            publisher = LogPublisher.bind(
                zmq.Context.shadow(context.underlying), self.runtime_dir, {"slot": self.slot}
            )
        except zmq.ZMQError as exc:
            log.warning("Cannot publish logs for tail error=%r", str(exc))
            return hub, None
        return hub, publisher

    def _watch_parent(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drain when the supervisor's end of stdin closes (it died, or it already had)."""

        def readable() -> None:
            try:
                data = os.read(_STDIN, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                return  # the supervisor writes nothing after the boot message
            loop.remove_reader(_STDIN)
            log.error("The supervisor exited; draining")
            self._on_sigterm()

        try:
            loop.add_reader(_STDIN, readable)
        except (OSError, ValueError, NotImplementedError):
            log.warning("Cannot watch stdin: this worker will not notice its supervisor's death")
        if self._parent_pid is not None and os.getppid() != self._parent_pid:
            readable()

    async def _serve(self) -> int:
        if self._early_signals:
            # SIGTERM while booting: the supervisor is stopping, nothing to serve.
            log.info("Drained before start")
            return 0
        settings = self.start.settings
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
            elif isinstance(command, RecordRegistration):
                runtime.record_registration(command.conn_index, command.protocol)
            elif isinstance(command, Start):
                log.warning("Ignored a Start command: the settings came with the boot message")

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

    async def _flush(self, ipc: asyncio.Task[None]) -> None:
        """Give queued events a bounded chance to leave before the sockets close."""
        outbox = asyncio.ensure_future(self._outbox.join())
        try:
            await asyncio.wait(
                {outbox, ipc}, timeout=_FLUSH_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            outbox.cancel()
        if ipc.done() and not ipc.cancelled() and ipc.exception() is not None:
            log.error("No channel to the supervisor error=%r", str(ipc.exception()))

    async def _heartbeat(self, runtime: RuntimeLike) -> None:
        pid = os.getpid()
        lag = 0.0
        while True:
            self.publish(Heartbeat(self.slot, pid, lag, runtime.active_streams))
            before = time.monotonic()
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            lag = max(0.0, time.monotonic() - before - HEARTBEAT_INTERVAL)


def _import_all(names: tuple[str, ...]) -> None:
    for name in names:
        importlib.import_module(name)


class WorkerOptions(msgspec.Struct, frozen=True):
    """The worker's command line: what is known before the settings are."""

    slot: int
    runtime_dir: Path
    parent_pid: int | None = None


_USAGE = "usage: python -m adit.workers --slot N --runtime-dir DIR [--parent-pid PID]\n"


def parse_worker_args(argv: list[str]) -> WorkerOptions | None:
    """``--slot N --runtime-dir DIR [--parent-pid PID]`` (``--name=value`` too), else ``None``.

    By hand: argparse would cost more import time than the rest of this function.
    """
    values: dict[str, str] = {}
    items = iter(argv)
    for item in items:
        name, sep, value = item.partition("=")
        if name not in ("--slot", "--runtime-dir", "--parent-pid") or name in values:
            return None
        if not sep:
            value = next(items, "")
        if not value:
            return None
        values[name] = value
    try:
        slot = int(values["--slot"])
        parent = values.get("--parent-pid")
        return WorkerOptions(slot, Path(values["--runtime-dir"]), int(parent) if parent else None)
    except (KeyError, ValueError):
        return None


def main(
    argv: list[str] | None = None,
    early_signals: list[int] | None = None,
    stdin: BinaryIO | None = None,
) -> int:
    """Entry point of ``python -m adit.workers``; returns the exit code.

    ``early_signals`` collects SIGTERMs that arrived before the event loop took over (see
    ``__main__``); one means the supervisor is stopping. The boot message is read from
    ``stdin`` (default: this process's, which is then watched for the supervisor's death).
    """
    early = [] if early_signals is None else early_signals
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, _frame: early.append(signum))
    options = parse_worker_args(sys.argv[1:] if argv is None else argv)
    if options is None:
        sys.stderr.write(_USAGE)
        return WORKER_BOOT_ERROR
    warm_up()
    # Blocks until the supervisor knows the settings (all imports above are done by then).
    data = read_frame(sys.stdin.buffer if stdin is None else stdin)
    if data is None:
        # The supervisor closed the pipe without settings: it failed to load them and has
        # said why. Nothing to add.
        return WORKER_BOOT_ERROR
    try:
        boot = decode_boot(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        sys.stderr.write(f"adit worker: unreadable boot message: {exc}\n")
        return WORKER_BOOT_ERROR
    if boot.start.settings.slot != options.slot:
        sys.stderr.write(f"adit worker: settings for slot {boot.start.settings.slot}\n")
        return WORKER_BOOT_ERROR
    configure_logging(
        LogSettings(boot.loglevel, boot.output, boot.logfile, boot.log_directory),
        context={"slot": options.slot},
        rotate=False,
    )
    # SIGABRT (sent by the supervisor to a stuck worker) prints every thread's traceback.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    if options.parent_pid is not None and os.getppid() != options.parent_pid:
        log.error("The supervisor exited before this worker started")
        return WORKER_BOOT_ERROR
    if boot.cpu is not None:
        try:
            os.sched_setaffinity(0, {boot.cpu})
        except OSError as exc:
            log.warning("Cannot pin to CPU %d error=%r", boot.cpu, str(exc))
    worker = WorkerProcess(
        boot.start,
        options.runtime_dir,
        early_signals=early,
        parent_pid=options.parent_pid,
        watch_stdin=stdin is None,
    )
    if not gc.isenabled():
        # Off while importing when started as ``python -m adit.workers`` (see ``__main__``).
        # Everything allocated so far is still in the youngest generation: the first
        # collection after enable() would trace all of it (15-20 ms, before the first dial).
        # The imported modules live as long as the process, so they go to the permanent
        # generation instead and are never traced.
        gc.freeze()
        gc.enable()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(worker.run())


if __name__ == "__main__":  # pragma: no cover - python -m adit.workers.process
    sys.exit(main())
