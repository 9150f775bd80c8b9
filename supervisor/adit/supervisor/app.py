"""The connector's main process: spawns workers, dispatches one queue of inputs, never a stream.

Everything that happens to the supervisor becomes an item on one ``asyncio.Queue``: signals
(their handlers only enqueue), worker events from ZeroMQ, worker exits (a pidfd becoming
readable), clock ticks, watchdog periods, a changed credentials file and the result of
reloading the settings (read in a thread: resolving a tunnel name may ask the edge's API).
One dispatcher feeds each item to :class:`SupervisorState` and carries out the actions it
returns, so decisions are made in one place and in order.

Workers are started by fork+exec (``posix_spawn`` of ``python -m adit.workers``,
``adit.supervisor.spawn``), so no child inherits this process's event loop, zmq context or
threads. A worker's ``Start`` goes to its stdin as its boot message
(``adit.supervisor.launch``); every later command goes through ZeroMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import uvloop
import zmq
import zmq.asyncio

from adit.ipc.channels import (
    WORKER_BOOT_ERROR,
    CommandSender,
    EventReceiver,
    create_runtime_directory,
    remove_runtime_directory,
)
from adit.ipc.messages import Command, ConnectionRegistered, Event, Start
from adit.logs import fields, parse_level
from adit.metrics_listener import (
    MetricsListenerError,
    MetricsServer,
    bind_metrics_socket,
    format_address,
)
from adit.supervisor.config_view import config_routes, quicktunnel_json, versioned_config_json
from adit.supervisor.diag_endpoints import diag_routes
from adit.supervisor.errors import SupervisorError
from adit.supervisor.launch import EarlyWorkers, send_boot, worker_boot
from adit.supervisor.pidfile import write_pidfile
from adit.supervisor.predecessors import Inherited, Predecessors
from adit.supervisor.settings import SupervisorSettings
from adit.supervisor.signals import SignalReceived, install_signal_handlers, remove_signal_handlers
from adit.supervisor.spawn import WorkerChild, spawn_worker, worker_environment
from adit.supervisor.state import (
    Action,
    Exit,
    KillWorkers,
    LoadSettings,
    Notify,
    PrepareUpgrade,
    SendCommand,
    SetLogLevel,
    SignalWorker,
    SpawnWorker,
    SupervisorState,
    VerifyAffinity,
    WritePidfile,
)
from adit.supervisor.stats import WorkerSample
from adit.supervisor.upgrade import (
    UPGRADE_FORMAT,
    InheritedWorker,
    UpgradeHandover,
    UpgradeRefused,
    exec_upgrade,
    preflight,
)
from adit.systemd import Notifier, SystemdNotifier

if TYPE_CHECKING:
    import psutil
    from prometheus_client import CollectorRegistry

    from adit.logs.live_stream import LogPublisher

__all__ = [
    "EXIT_POLL_INTERVAL",
    "Supervisor",
    "WorkerExited",
    "watchdog_interval",
    "worker_environment",
]

log = logging.getLogger("adit.supervisor")

#: How often a worker's exit is polled for where the kernel has no pidfd to wait on. Timers
#: (respawn backoff, drain deadline, stuck workers) need no polling: the dispatcher wakes at
#: the state's next deadline.
EXIT_POLL_INTERVAL = 0.1
#: How often the credentials file's modification time is compared.
CREDENTIALS_POLL_INTERVAL = 2.0


@dataclass(frozen=True)
class WorkerExited:
    """A worker process ended (queue item)."""

    slot: int
    pid: int
    returncode: int


@dataclass(frozen=True)
class _Tick:
    """A deadline of the state passed, or exits are due a poll (not queued)."""


@dataclass(frozen=True)
class _WatchdogDue:
    """Half of ``WATCHDOG_USEC`` passed (queue item)."""


@dataclass(frozen=True)
class _CredentialsChanged:
    """The credentials file's modification time changed (queue item)."""


@dataclass(frozen=True)
class _SettingsLoaded:
    """The reload finished: new settings or the reason they were rejected (queue item)."""

    settings: SupervisorSettings | None
    error: str | None = None


@dataclass(frozen=True)
class _UpgradeChecked:
    """The upgrade's preflight finished: the installed code's settings, or why not."""

    settings: bytes | None
    error: str | None = None


@dataclass(frozen=True)
class _PredecessorsChanged:
    """An old worker of an upgrade registered, lost a connection, or exited (queue item)."""


_Input = (
    SignalReceived
    | WorkerExited
    | _Tick
    | _WatchdogDue
    | _CredentialsChanged
    | _SettingsLoaded
    | _UpgradeChecked
    | _PredecessorsChanged
    | Event
)
SettingsLoader = Callable[[], SupervisorSettings]


def watchdog_interval(
    environ: dict[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds when systemd's watchdog is on for this process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 2_000_000


def _file_signature(path: str | None) -> tuple[int, int, int] | None:
    if not path:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


class _WorkerHandle:
    """A running worker process, its command socket and its outbox task."""

    def __init__(self, slot: int, process: WorkerChild, sender: CommandSender) -> None:
        self.slot = slot
        self.process = process
        self.sender = sender
        self.outbox: asyncio.Queue[Command] = asyncio.Queue()
        self.task = asyncio.create_task(self._send_commands(), name=f"commands-{slot}")
        self.pidfd: int | None = None

    async def _send_commands(self) -> None:
        while True:
            command = await self.outbox.get()
            await self.sender.send(command)

    def close(self) -> None:
        self.task.cancel()
        self.sender.close()
        self.process.close_stdin()
        if self.pidfd is not None:
            with contextlib.suppress(OSError, ValueError):
                asyncio.get_running_loop().remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None


def _refusal(exc: Exception) -> str | None:
    """The user's message when a settings loader refused (bad config), else ``None`` (a bug).

    In-process loaders raise click's exceptions; the lean supervisor's loader
    (:mod:`adit.supervisor.lean`) raises its own. click is not imported for this: a process
    that never imported it cannot have raised its exceptions.
    """
    from adit.supervisor.lean import SettingsRefused

    if isinstance(exc, SettingsRefused):
        return str(exc)
    click = sys.modules.get("click")
    if click is not None and isinstance(exc, click.ClickException):
        return str(exc.format_message())
    return None


class Supervisor:
    """Runs one connector: workers, signals, sd_notify, pidfile, metrics and readiness."""

    def __init__(
        self,
        settings: SupervisorSettings,
        *,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        reload: SettingsLoader | None = None,
        early: EarlyWorkers | None = None,
        upgrade_args: list[str] | None = None,
        inherited: Inherited | None = None,
    ) -> None:
        self.settings = settings
        #: ``adit``'s arguments for an upgrade's parser child (``None``: cannot upgrade).
        self._upgrade_args = upgrade_args
        #: The old workers and metrics listener of the upgrade this process came from.
        self._inherited = inherited
        self._predecessors: Predecessors | None = None
        self._metrics_socket: socket.socket | None = None
        #: Worker processes started before this loop (adit.supervisor.launch), to adopt.
        self._early = early
        self._notifier = notifier
        self._clock = clock
        self._reload = reload
        self._followups: list[Action] = []
        self._watchdog = watchdog_interval()
        self._processes: dict[int, psutil.Process] = {}
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.state = SupervisorState(settings, cpus=cpus)
        #: After :meth:`run`: the message for stderr when the exit code is not 0.
        self.failure: str | None = None
        self._inbox: asyncio.Queue[_Input] = asyncio.Queue()
        self._handles: dict[int, _WorkerHandle] = {}
        self._runtime_dir: Path | None = None
        self._context: zmq.asyncio.Context | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Built at the first scrape: prometheus_client is not needed to start the workers.
        self._registry: CollectorRegistry | None = None

    def run(self) -> int:
        """Run until drained or failed; the process exit code."""
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(self._main())

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        notifier = self._notifier or SystemdNotifier()
        self._notifier = notifier
        metrics_server = MetricsServer(
            self.state.ready_body,
            self._render_metrics,
            routes={
                **diag_routes(self.state),
                **config_routes(self._config_json, self._quicktunnel),
                "/upgrade": self._upgrade_json,
            },
        )
        install_signal_handlers(loop, self._inbox.put_nowait)
        self._runtime_dir = (
            self._early.runtime_dir if self._early is not None else create_runtime_directory()
        )
        self._context = zmq.asyncio.Context()
        events = EventReceiver(self._context, self._runtime_dir)
        pumps: list[asyncio.Task[None]] = []
        publisher = _publish_logs(self._context, self._runtime_dir)
        if publisher is not None:
            pumps.append(asyncio.create_task(publisher.watch(), name="logs"))
        try:
            log.info("Generated Connector ID: %s", self.settings.connector_id)
            log.info("Initial protocol %s", self.settings.initial_protocol)
            try:
                sock = (
                    self._inherited.metrics_socket
                    if self._inherited is not None and self._inherited.metrics_socket is not None
                    else bind_metrics_socket(self.settings.metrics_address)
                )
            except (SupervisorError, MetricsListenerError) as exc:
                self.failure = str(exc)
                return 1
            self._metrics_socket = sock
            await metrics_server.start(sock)
            log.info("Starting metrics server on %s/metrics", format_address(sock))
            _note_metrics_address(self._runtime_dir, format_address(sock))
            pumps = [
                asyncio.create_task(self._pump_events(events), name="events"),
                asyncio.create_task(self._watch_credentials(), name="credentials"),
            ]
            if self._watchdog is not None:
                pumps.append(asyncio.create_task(self._watchdog_pings(), name="watchdog"))
            adopted: list[Action] = []
            if self._inherited is not None and self._inherited.workers:
                adopted = self._adopt_predecessors(self._inherited)
            return await self._dispatch([*adopted, *self.state.start(self._clock())])
        finally:
            if self._predecessors is not None:
                self._predecessors.close()
            remove_signal_handlers(loop)
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._kill_all()
            if self._early is not None:
                self._early.discard()
            await metrics_server.close()
            events.close()
            if publisher is not None:
                publisher.shutdown()
            self._context.term()
            notifier.close()
            remove_runtime_directory(self._runtime_dir)

    async def _dispatch(self, initial: list[Action]) -> int:
        pending = list(initial)
        while True:
            while pending:
                code = self._perform(pending.pop(0))
                if code is not None:
                    return code
                pending = self._followups + pending
                self._followups = []
            item = await self._next_input()
            now = self._clock()
            if isinstance(item, SignalReceived):
                pending = self.state.handle_signal(item.signum, now)
            elif isinstance(item, WorkerExited):
                self._forget_worker(item.slot, item.pid)
                pending = self.state.worker_exited(item.slot, item.pid, item.returncode, now)
            elif isinstance(item, _Tick):
                self._poll_exits()
                pending = self.state.tick(now)
            elif isinstance(item, _WatchdogDue):
                pending = self.state.watchdog(now)
            elif isinstance(item, _CredentialsChanged):
                pending = self.state.request_reload("credentials file changed", now)
            elif isinstance(item, _SettingsLoaded):
                if item.settings is not None:
                    pending = self.state.settings_loaded(item.settings, now)
                    self.settings = self.state.settings
                else:
                    pending = self.state.settings_rejected(item.error or "unknown error", now)
            elif isinstance(item, _UpgradeChecked):
                pending = self._upgrade(item, now)
            elif isinstance(item, _PredecessorsChanged):
                pending = self._predecessors_changed(now)
            else:
                pending = self.state.handle_event(item, now)
                if isinstance(item, ConnectionRegistered):
                    self._drain_predecessors()

    def _perform(self, action: Action) -> int | None:
        if isinstance(action, SpawnWorker):
            self._spawn(action.slot)
        elif isinstance(action, SendCommand):
            handle = self._handles.get(action.slot)
            if handle is None:
                pass
            elif isinstance(action.command, Start):
                # Once, on stdin; a worker started early by launch was sent it already.
                cpu = self.state.workers[action.slot].cpu
                send_boot(handle.process, worker_boot(self.settings, action.command, cpu))
            else:
                handle.outbox.put_nowait(action.command)
        elif isinstance(action, Notify):
            assert self._notifier is not None
            self._notifier.notify(action.state)
        elif isinstance(action, WritePidfile):
            if self.settings.pidfile:
                write_pidfile(self.settings.pidfile, os.getpid())
        elif isinstance(action, KillWorkers):
            self._kill_all()
        elif isinstance(action, VerifyAffinity):
            self._verify_affinity(action)
        elif isinstance(action, SignalWorker):
            handle = self._handles.get(action.slot)
            if handle is not None and handle.process.pid == action.pid:
                with contextlib.suppress(ProcessLookupError):
                    handle.process.send_signal(action.signum)
        elif isinstance(action, LoadSettings):
            self._load_settings()
        elif isinstance(action, PrepareUpgrade):
            self._prepare_upgrade()
        elif isinstance(action, SetLogLevel):
            logging.getLogger().setLevel(parse_level(action.level) or logging.INFO)
        elif isinstance(action, Exit):
            self.failure = action.failure
            return action.code
        return None

    def _spawn(self, slot: int) -> None:
        assert self._runtime_dir is not None and self._context is not None
        record = self.state.workers[slot]
        sender = CommandSender(self._context, self._runtime_dir, slot)
        try:
            early = self._early.take(slot) if self._early is not None else None
            process = early or spawn_worker(slot, self._runtime_dir)
        except OSError as exc:
            sender.close()
            log.error("Cannot start worker error=%r", str(exc), extra=fields(slot=slot))
            # Handled like a worker that exited with its boot-error code: stop, do not flap.
            record.pid = -1
            record.started_at = self._clock()
            self._inbox.put_nowait(WorkerExited(slot, -1, WORKER_BOOT_ERROR))
            return
        handle = _WorkerHandle(slot, process, sender)
        self._handles[slot] = handle
        self._watch_exit(handle)
        for action in self.state.worker_started(slot, process.pid, self._clock()):
            self._perform(action)

    def _watch_exit(self, handle: _WorkerHandle) -> None:
        """Enqueue :class:`WorkerExited` as soon as the process ends (pidfd: no SIGCHLD)."""
        loop = asyncio.get_running_loop()
        process = handle.process

        def on_readable() -> None:
            code = process.poll()
            if code is not None:
                if handle.pidfd is not None:
                    loop.remove_reader(handle.pidfd)
                self._inbox.put_nowait(WorkerExited(handle.slot, process.pid, code))

        try:
            handle.pidfd = os.pidfd_open(process.pid)
        except (OSError, AttributeError):
            return  # no pidfd (old kernel): _poll_exits() finds the exit within EXIT_POLL_INTERVAL
        loop.add_reader(handle.pidfd, on_readable)

    def _poll_exits(self) -> None:
        for handle in list(self._handles.values()):
            if handle.pidfd is None and (code := handle.process.poll()) is not None:
                self._inbox.put_nowait(WorkerExited(handle.slot, handle.process.pid, code))

    def _forget_worker(self, slot: int, pid: int) -> None:
        handle = self._handles.get(slot)
        if handle is not None and handle.process.pid == pid:
            del self._handles[slot]
            handle.close()

    def _kill_all(self) -> None:
        for handle in list(self._handles.values()):
            if handle.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    handle.process.send_signal(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                handle.process.wait(timeout=2.0)
            handle.close()
        self._handles.clear()

    def _verify_affinity(self, action: VerifyAffinity) -> None:
        try:
            affinity = sorted(os.sched_getaffinity(action.pid))
        except (OSError, AttributeError):
            return
        if affinity != [action.cpu]:
            log.warning(
                "Worker is not pinned to its CPU",
                extra=fields(slot=action.slot, cpu=action.cpu, affinity=affinity),
            )
        else:
            log.debug("Worker pinned", extra=fields(slot=action.slot, cpu=action.cpu))

    def _load_settings(self) -> None:
        """Run the loader in a thread; its outcome comes back through the inbox."""
        loader = self._reload
        if loader is None:
            self._inbox.put_nowait(_SettingsLoaded(None, "reloading is not available"))
            return

        def load() -> _SettingsLoaded:
            try:
                return _SettingsLoaded(loader())
            except Exception as exc:  # a loader bug must not take the connector down
                refusal = _refusal(exc)
                if refusal is not None:
                    return _SettingsLoaded(None, refusal)
                log.exception("Reloading the settings failed")
                return _SettingsLoaded(None, f"{type(exc).__name__}: {exc}")

        async def run() -> None:
            result = await asyncio.get_running_loop().run_in_executor(None, load)
            self._inbox.put_nowait(result)

        task = asyncio.create_task(run(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _handover(self, settings: bytes) -> UpgradeHandover:
        """What the installed code gets across the ``exec``: every live worker."""
        assert self._runtime_dir is not None
        workers = [
            InheritedWorker(
                slot=handle.slot,
                pid=handle.process.pid,
                stdin=handle.process.stdin,
                conn_indexes=list(self.state.workers[handle.slot].conn_indexes),
                registered=sorted(
                    i for i, r in self.state.registered.items() if r.slot == handle.slot
                ),
            )
            for handle in self._handles.values()
            if handle.process.poll() is None and handle.slot in self.state.workers
        ]
        sock = self._metrics_socket
        return UpgradeHandover(
            format=UPGRADE_FORMAT,
            from_version=self.settings.version,
            settings=settings,
            args=list(self._upgrade_args or []),
            inherited_dir=str(self._runtime_dir),
            workers=workers,
            metrics_fd=sock.fileno() if sock is not None else None,
        )

    def _prepare_upgrade(self) -> None:
        """Run the preflight in a thread; its outcome comes back through the inbox."""
        args = self._upgrade_args
        if args is None:
            self._inbox.put_nowait(
                _UpgradeChecked(None, "this connector was not started by `adit tunnel run`")
            )
            return
        config_path = self.settings.config_path
        # Built here, on the loop, from the state of now: the check child reads its shape.
        sample = self._handover(b"")

        def check() -> _UpgradeChecked:
            try:
                settings, _ = preflight(
                    args,
                    config_path,
                    lambda data: msgspec.structs.replace(sample, settings=data),
                )
            except UpgradeRefused as exc:
                return _UpgradeChecked(None, str(exc))
            except Exception as exc:  # a bug in the check must not take the connector down
                log.exception("Checking the installed adit failed")
                return _UpgradeChecked(None, f"{type(exc).__name__}: {exc}")
            return _UpgradeChecked(settings)

        async def run() -> None:
            result = await asyncio.get_running_loop().run_in_executor(None, check)
            self._inbox.put_nowait(result)

        task = asyncio.create_task(run(), name="upgrade")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _upgrade(self, checked: _UpgradeChecked, now: float) -> list[Action]:
        """``exec`` the installed code that passed the preflight (never returns), or refuse."""
        if checked.settings is None:
            return self.state.upgrade_refused(checked.error or "unknown error", now)
        from adit.supervisor.state import Phase

        if self.state.phase is not Phase.RUNNING:
            return self.state.upgrade_refused("the connector began shutting down", now)
        assert self._runtime_dir is not None and self._notifier is not None
        handover = self._handover(checked.settings)
        # Signals that were queued and not handled yet go across the exec.
        queued: list[int] = []
        kept: list[_Input] = []
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if isinstance(item, SignalReceived):
                queued.append(item.signum)
            else:
                kept.append(item)
        log.info(
            "Upgrading in place: exec of the installed adit",
            extra=fields(workers=len(handover.workers)),
        )
        # No RELOADING=1: systemd would show the unit as "reloading" for the exec's second,
        # and an upgrade must look to `systemctl is-active` like nothing happened (it is not
        # a reload systemd asked for, so none is owed). STATUS= says what is going on.
        self._notifier.notify(f"STATUS=upgrading in place from adit {self.state.settings.version}")
        try:
            exec_upgrade(msgspec.structs.replace(handover, early_signals=queued), self._runtime_dir)
        except OSError as exc:
            for item in kept:
                self._inbox.put_nowait(item)
            for signum in queued:
                self._inbox.put_nowait(SignalReceived(signum))
            self._notifier.notify("READY=1")
            return self.state.upgrade_refused(f"exec failed: {exc}", now)

    def _adopt_predecessors(self, inherited: Inherited) -> list[Action]:
        """Take over the old workers of the upgrade this process came from."""
        assert self._context is not None
        try:
            predecessors = Predecessors(
                inherited, self._context, lambda: self._inbox.put_nowait(_PredecessorsChanged())
            )
        except (OSError, zmq.ZMQError) as exc:
            # Without their endpoints they cannot be told to drain: their stdin's end of file
            # tells them (they drain at once, before the new workers registered).
            log.error(
                "Cannot adopt the old workers; they drain now error=%r",
                str(exc),
                extra=fields(runtimeDir=str(inherited.runtime_dir)),
            )
            for worker in inherited.workers:
                if worker.stdin is not None:
                    with contextlib.suppress(OSError):
                        os.close(worker.stdin)
            return []
        self._predecessors = predecessors
        predecessors.start(self.settings.version)
        return self.state.adopt_predecessors(predecessors.connections)

    def _predecessors_changed(self, now: float) -> list[Action]:
        predecessors = self._predecessors
        if predecessors is None:
            return []
        actions = self.state.predecessors_changed(
            predecessors.connections, alive=not predecessors.done, now=now
        )
        if predecessors.done:
            predecessors.close()
            self._predecessors = None
        return actions

    def _drain_predecessors(self) -> None:
        if self._predecessors is None:
            return
        wanted = set(range(self.settings.ha_connections))
        registered = [i for i in self.state.registered if i in wanted]
        self._predecessors.drain_covered(registered, wanted, self.settings.grace_period)

    async def _watch_credentials(self) -> None:
        path = self.state.settings.credentials_path
        seen = _file_signature(path)
        while True:
            await asyncio.sleep(CREDENTIALS_POLL_INTERVAL)
            current_path = self.state.settings.credentials_path
            current = _file_signature(current_path)
            if current_path == path and current != seen and current is not None:
                self._inbox.put_nowait(_CredentialsChanged())
            path, seen = current_path, current

    async def _watchdog_pings(self) -> None:
        assert self._watchdog is not None
        while True:
            await asyncio.sleep(self._watchdog)
            self._inbox.put_nowait(_WatchdogDue())

    def _sample_workers(self) -> Iterator[WorkerSample]:
        import psutil

        for record in self.state.workers.values():
            pid = record.pid
            if pid is None or pid < 0:
                continue
            rss: int | None = None
            cpu: float | None = None
            try:
                process = self._processes.get(pid)
                if process is None:
                    process = self._processes[pid] = psutil.Process(pid)
                rss = process.memory_info().rss
                times = process.cpu_times()
                cpu = times.user + times.system
            except psutil.Error:
                self._processes.pop(pid, None)
            yield WorkerSample(record.slot, record.restarts, record.loop_lag, rss, cpu)
        live = {w.pid for w in self.state.workers.values()}
        for pid in [p for p in self._processes if p not in live]:
            del self._processes[pid]

    async def _pump_events(self, events: EventReceiver) -> None:
        while True:
            self._inbox.put_nowait(await events.receive())

    async def _next_input(self) -> _Input:
        """The next queued input, or a tick once the state's next deadline has passed."""
        deadline = self.state.next_deadline()
        if any(handle.pidfd is None for handle in self._handles.values()):
            poll = self._clock() + EXIT_POLL_INTERVAL
            deadline = poll if deadline is None else min(deadline, poll)
        if deadline is None or not self._inbox.empty():
            return await self._inbox.get()
        timeout = deadline - self._clock()
        if timeout <= 0:
            return _Tick()
        try:
            return await asyncio.wait_for(self._inbox.get(), timeout)
        except TimeoutError:
            return _Tick()

    def _upgrade_json(self) -> tuple[str, bytes]:
        """``/upgrade``: what ``adit upgrade-restart --pid`` waits on (this process's pid and
        running version, the upgrades refused and the last reason)."""
        body = {
            "pid": os.getpid(),
            "version": self.state.settings.version,
            "upgrading": self.state.upgrading,
            "upgradeFailures": self.state.stats.upgrade_failures,
            "upgradeError": self.state.upgrade_error,
        }
        return "application/json", msgspec.json.encode(body)

    def _quicktunnel(self) -> bytes:
        return quicktunnel_json(self.settings.quick_tunnel_url)

    def _config_json(self) -> bytes:
        """``/config``: the ingress snapshot in force (a reload or a push replaces it)."""
        settings = self.state.settings
        return versioned_config_json(settings.ingress, settings.max_active_flows)

    def _render_metrics(self) -> bytes:
        from adit.supervisor.metrics import build_registry, render_metrics

        if self._registry is None:
            self._registry = build_registry(
                self.state.stats,
                self._sample_workers,
                quick_tunnel_url=self.settings.quick_tunnel_url,
            )
        return render_metrics(self._registry)


def _publish_logs(context: zmq.asyncio.Context, runtime_dir: Path) -> LogPublisher | None:
    """The supervisor's records for ``tail`` (a worker's ``/logs`` stream subscribes)."""
    from adit.logs.live_stream import LogPublisher

    try:
        return LogPublisher.bind(zmq.Context.shadow(context.underlying), runtime_dir, {})
    except zmq.ZMQError as exc:
        log.warning("Cannot publish logs for tail error=%r", str(exc))
        return None


def _note_metrics_address(runtime_dir: Path, address: str) -> None:
    """Where the metrics server listens, for the workers' management ``/metrics`` (tail's
    diagnostics relay it): a file in the private runtime directory."""
    from adit.logs.live_stream import METRICS_ADDRESS_FILE

    path = runtime_dir / METRICS_ADDRESS_FILE
    try:
        tmp = path.with_name(f".{METRICS_ADDRESS_FILE}.tmp")
        tmp.write_text(address, encoding="ascii")
        tmp.replace(path)
    except OSError as exc:
        log.warning("Cannot note the metrics address for management error=%r", str(exc))
