"""The supervisor's decisions, without I/O: inputs in, actions out, time passed in.

:class:`SupervisorState` receives signals, worker events, worker exits and clock ticks and
answers with a list of actions (:class:`SpawnWorker`, :class:`SendCommand`, :class:`Notify`,
:class:`WritePidfile`, :class:`KillWorkers`, :class:`Exit`) that
:class:`adit.supervisor.app.Supervisor` carries out.

Invariants:

* Phases only move forward: STARTING → RUNNING → DRAINING (STARTING → DRAINING directly when
  the first connection is refused for good or a signal arrives before any registration).
* A refusal the edge marks retryable is retried by its worker; one it does not stops that
  connection until new connection settings arrive. With every connection refused for good and
  none registered, the supervisor stops with exit code 1.
* ``READY=1`` and the pidfile happen exactly once, on the first ``ConnectionRegistered`` (or,
  in the new code of an in-place upgrade, when it adopts old workers that serve).
* Nothing is spawned once DRAINING; DRAINING ends in exactly one :class:`Exit`, when the last
  worker is gone, when the drain deadline passes (after :class:`KillWorkers`), or at once on a
  second SIGTERM/SIGINT.
* A worker without a heartbeat for ``worker_timeout`` gets SIGABRT once (its faulthandler
  prints every thread's traceback), then SIGKILL after :data:`ABORT_GRACE`; its exit is then
  handled like any crash. ``WATCHDOG=1`` is only sent while no live worker is overdue.
* A reload (SIGHUP or a changed credentials file) is bracketed by ``RELOADING=1`` and
  ``READY=1`` once RUNNING, whether the new settings are accepted or rejected; a rejected one
  changes nothing but the reload metrics and ``STATUS=``.
* An upgrade (SIGUSR2) is only begun while RUNNING with no reload or upgrade in progress: one
  :class:`PrepareUpgrade`, answered by :meth:`SupervisorState.upgrade_refused` (nothing
  changes but the upgrade metric and ``STATUS=``) or by the ``exec`` of the installed code
  (``adit.supervisor.upgrade``), which sends no ``RELOADING=1`` (systemd did not ask for a
  reload, and the unit must stay "active" throughout). While the old workers of
  the upgrade serve, a failure of the new ones is logged, not acted on: the supervisor stops
  only once they are gone.
"""

from __future__ import annotations

import enum
import logging
import signal
from dataclasses import dataclass, field, replace

import msgspec

from adit.ipc.messages import (
    ApplyIngress,
    Command,
    ConnectionLost,
    ConnectionRegistered,
    ConnectionUnregistered,
    Drain,
    Event,
    Heartbeat,
    IngressSnapshot,
    Reconfigure,
    RecordRegistration,
    RegistrationRefused,
    RemoteConfigReceived,
    Start,
    StatsSnapshot,
    WorkerSettings,
)
from adit.ipc.rendezvous import WORKER_BOOT_ERROR
from adit.logs import fields
from adit.supervisor.settings import SupervisorSettings
from adit.supervisor.stats import TunnelStats

__all__ = [
    "ABORT_GRACE",
    "BOOT_TIMEOUT",
    "FAST_FAILURE_SECONDS",
    "HEARTBEAT_STALE",
    "MAX_FAST_FAILURES",
    "Action",
    "Exit",
    "KillWorkers",
    "LoadSettings",
    "Notify",
    "Phase",
    "PrepareUpgrade",
    "SendCommand",
    "SetLogLevel",
    "SignalWorker",
    "SpawnWorker",
    "SupervisorState",
    "VerifyAffinity",
    "WorkerRecord",
    "WritePidfile",
    "restart_delay",
    "split_conn_indexes",
]

log = logging.getLogger("adit.supervisor")

#: A worker that dies sooner than this after its start counts as a fast failure.
FAST_FAILURE_SECONDS = 10.0
#: Consecutive fast failures of one slot after which the supervisor gives up.
MAX_FAST_FAILURES = 5
#: Seconds a SIGABRTed worker gets to print its traceback and die before SIGKILL.
ABORT_GRACE = 2.0
#: A fresh worker's first heartbeat may take this long (imports, Start, runtime set-up).
BOOT_TIMEOUT = 15.0
#: A heartbeat older than this makes a worker unhealthy for systemd's watchdog.
HEARTBEAT_STALE = 1.5
_SIGNAL_WORDS = {signal.SIGTERM: "terminated", signal.SIGINT: "interrupt"}


class Phase(enum.Enum):
    """Where the supervisor is in its life."""

    STARTING = "starting"  # workers up, no connection registered yet
    RUNNING = "running"  # at least one registration succeeded
    DRAINING = "draining"  # workers told to drain; waiting for them to exit


# Actions are msgspec Structs, not dataclasses: the state is imported before the first worker
# gets its settings, and each frozen dataclass costs about a millisecond to create.


class SpawnWorker(msgspec.Struct, frozen=True):
    """Start the worker process of ``slot`` and send it ``Start``."""

    slot: int


class SendCommand(msgspec.Struct, frozen=True):
    """Send ``command`` to the worker of ``slot``."""

    slot: int
    command: Command


class Notify(msgspec.Struct, frozen=True):
    """An ``sd_notify`` state string (``READY=1``, ``STOPPING=1``, ``STATUS=...``)."""

    state: str


class WritePidfile(msgspec.Struct, frozen=True):
    """Write the supervisor's PID to ``--pidfile``."""


class KillWorkers(msgspec.Struct, frozen=True):
    """SIGKILL every live worker."""


class VerifyAffinity(msgspec.Struct, frozen=True):
    """Check (and report) that worker ``pid`` runs only on ``cpu``."""

    slot: int
    pid: int
    cpu: int


class SignalWorker(msgspec.Struct, frozen=True):
    """Send ``signum`` to worker ``pid`` of ``slot``."""

    slot: int
    pid: int
    signum: int


class LoadSettings(msgspec.Struct, frozen=True):
    """Read the config and credentials again; report with ``settings_loaded``/``_rejected``."""


class PrepareUpgrade(msgspec.Struct, frozen=True):
    """Check the installed code in a child; ``exec`` it if it starts, else report the refusal
    with ``upgrade_refused``."""


class SetLogLevel(msgspec.Struct, frozen=True):
    """Change the supervisor's own log level."""

    level: str


class Exit(msgspec.Struct, frozen=True):
    """Stop the supervisor with ``code``; ``failure`` is the message for stderr."""

    code: int
    failure: str | None = None


Action = (
    SpawnWorker
    | SendCommand
    | Notify
    | WritePidfile
    | KillWorkers
    | VerifyAffinity
    | SignalWorker
    | LoadSettings
    | SetLogLevel
    | PrepareUpgrade
    | Exit
)


def split_conn_indexes(ha_connections: int, workers: int) -> list[list[int]]:
    """Connection ``i`` goes to worker ``i % workers`` (workers without one get an empty list)."""
    shares: list[list[int]] = [[] for _ in range(workers)]
    for index in range(ha_connections):
        shares[index % workers].append(index)
    return shares


def restart_delay(fast_failures: int) -> float:
    """Backoff before respawning a worker: 0.5 s doubling per fast failure, at most 30 s."""
    if fast_failures <= 0:
        return 0.5
    return float(min(30.0, 0.5 * 2**fast_failures))


@dataclass
class WorkerRecord:
    """What the supervisor knows of one worker slot."""

    slot: int
    conn_indexes: list[int]
    cpu: int | None = None
    pid: int | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    fast_failures: int = 0
    restarts: int = 0
    last_heartbeat: float | None = None
    loop_lag: float = 0.0
    active_streams: int = 0
    heartbeat_seen: bool = False
    #: When the supervisor sent SIGABRT to a stuck process of this slot (``None``: never).
    aborted_at: float | None = None
    killed: bool = False
    #: A reload removed this slot: its process drains and is not replaced.
    retiring: bool = False

    @property
    def alive(self) -> bool:
        """A process is running (or starting) in this slot."""
        return self.pid is not None


@dataclass
class SupervisorState:
    """Pure decision logic of the supervisor (see the module docstring for the invariants)."""

    settings: SupervisorSettings
    cpus: list[int] = field(default_factory=list)
    phase: Phase = Phase.STARTING
    workers: dict[int, WorkerRecord] = field(default_factory=dict)
    registered: dict[int, ConnectionRegistered] = field(default_factory=dict)
    stats: TunnelStats = field(init=False)
    exit_code: int = 0
    failure: str | None = None
    drain_deadline: float | None = None
    exited: bool = False
    #: Why the last reload was rejected (``None`` after a successful one).
    reload_error: str | None = None
    #: A reload is in progress and ``RELOADING=1`` was sent.
    bracketed: bool = False
    #: Settings are being loaded; another request meanwhile loads once more afterwards.
    loading: bool = False
    reload_queued: bool = False
    retrying: set[int] = field(default_factory=set)
    #: Connection indexes the edge refused for good (with the cause), until new settings.
    refused: dict[int, str] = field(default_factory=dict)
    #: The protocol of each connection index's latest registration, kept for the life of the
    #: process as cloudflared's tracker keeps it (tunnelstate/conntracker.go:40-60).
    protocols: dict[int, str] = field(default_factory=dict)
    #: An upgrade's preflight runs (SIGUSR2): nothing else may begin meanwhile.
    upgrading: bool = False
    #: Why the last upgrade was refused (``None``: none was).
    upgrade_error: str | None = None
    #: Connections still registered by the workers of the code this process upgraded from
    #: (``adit.supervisor.predecessors``): they count for ``/ready`` until they drained.
    inherited_connections: int = 0
    #: Old workers of that upgrade are still alive (another upgrade waits for them to exit).
    inheriting: bool = False
    #: SIGUSR2 arrived while something else was under way: the upgrade begins after it.
    upgrade_queued: bool = False
    #: Why this supervisor would have stopped while the old workers of its upgrade served.
    deferred_failure: str | None = None
    _last_status: str = ""

    def __post_init__(self) -> None:
        self.stats = TunnelStats(self.settings.version)
        self.stats.config_version = self.settings.ingress.version
        pin = self.settings.pin_cpus and 0 < self.settings.workers <= len(self.cpus)
        shares = split_conn_indexes(self.settings.ha_connections, self.settings.workers)
        for slot, share in enumerate(shares):
            cpu = self.cpus[slot] if pin else None
            self.workers[slot] = WorkerRecord(slot=slot, conn_indexes=share, cpu=cpu)

    # -- queries ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """``/ready`` answers 200: at least one connection registered and not draining."""
        return self.phase is not Phase.DRAINING and bool(
            self.registered or self.inherited_connections
        )

    @property
    def ready_connections(self) -> int:
        """Connections registered and serving; none once draining began (they unregister
        at once, so /ready's count and status never disagree while the events arrive)."""
        if self.phase is Phase.DRAINING:
            return 0
        return len(self.registered) + self.inherited_connections

    def ready_body(self) -> tuple[int, dict[str, object]]:
        """``/ready``'s status code and JSON body, as cloudflared's ``ReadyServer`` builds it."""
        status = 200 if self.ready else 503
        return status, {
            "status": status,
            "readyConnections": self.ready_connections,
            "connectorId": self.settings.connector_id,
        }

    def worker_settings(self, slot: int) -> WorkerSettings:
        """The ``Start`` payload of ``slot``."""
        s = self.settings
        return WorkerSettings(
            slot=slot,
            connector_id=s.connector_id,
            account_tag=s.account_tag,
            tunnel_secret=s.tunnel_secret,
            tunnel_id=s.tunnel_id,
            conn_indexes=list(self.workers[slot].conn_indexes),
            edges=list(s.edges),
            edge_ca_pem=s.edge_ca_pem,
            ingress=s.ingress,
            grace_period=s.grace_period,
            retries=s.retries,
            loglevel=s.log.level,
            tags=dict(s.tags),
            features=list(s.features),
            version=s.version,
            ha_connections=s.ha_connections,
            protocol=s.protocol,
            max_edge_addr_retries=s.max_edge_addr_retries,
            post_quantum=s.post_quantum,
            max_active_flows=s.max_active_flows,
            label=s.label,
            management_hostname=s.management_hostname,
            management_diagnostics=s.management_diagnostics,
        )

    # -- inputs ----------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Spawn every worker slot."""
        return [SpawnWorker(slot) for slot in sorted(self.workers)]

    def worker_started(self, slot: int, pid: int, now: float) -> list[Action]:
        """The process of ``slot`` was created: hand it its settings."""
        record = self.workers[slot]
        record.pid = pid
        record.started_at = now
        record.restart_at = None
        record.heartbeat_seen = False
        record.last_heartbeat = None
        record.aborted_at = None
        record.killed = False
        log.info(
            "Started worker pid=%d",
            pid,
            extra=fields(slot=slot, cpu=record.cpu, connIndexes=record.conn_indexes),
        )
        # What the other connections registered over, as a new cloudflared connection would
        # find its tracker.
        known = [
            SendCommand(slot, RecordRegistration(index, protocol))
            for index, protocol in sorted(self.protocols.items())
        ]
        if not self._protocols_shared:
            known = []
        return [SendCommand(slot, Start(self.worker_settings(slot))), *known, *self._status()]

    def handle_signal(self, signum: int, now: float) -> list[Action]:
        """SIGTERM/SIGINT: drain, and at once on the second; SIGHUP: reload."""
        if signum == signal.SIGHUP:
            return self.request_reload("SIGHUP", now)
        if signum == signal.SIGUSR2:
            return self.request_upgrade(now)
        if signum not in _SIGNAL_WORDS:
            log.info("Ignored signal %s", signal.Signals(signum).name)
            return []
        if self.phase is Phase.DRAINING:
            log.info("Second %s: exiting immediately", signal.Signals(signum).name)
            return self._exit_now(KillWorkers(), code=128 + signum)
        word = _SIGNAL_WORDS[signal.Signals(signum)]
        log.info("Initiating graceful shutdown due to signal %s ...", word)
        return self._begin_drain(self.settings.grace_period, now)

    def handle_event(self, event: Event, now: float) -> list[Action]:
        """A worker's event."""
        if isinstance(event, Heartbeat):
            return self._on_heartbeat(event, now)
        if isinstance(event, StatsSnapshot):
            self.stats.update(event)
            return []
        if isinstance(event, ConnectionRegistered):
            return self._on_registered(event)
        if isinstance(event, RegistrationRefused):
            return self._on_refused(event, now)
        if isinstance(event, ConnectionLost):
            self._forget_connection(event.slot, event.conn_index)
            self.retrying.add(event.conn_index)
            self.stats.timer_retries = len(self.retrying)
            # The worker already logged the failure with its details; keep one line per event.
            log.debug(
                "Connection terminated",
                extra=fields(
                    connIndex=event.conn_index, error=event.error, retryIn=round(event.retry_in, 3)
                ),
            )
            return self._status()
        if isinstance(event, RemoteConfigReceived):
            return self._on_remote_config(event)
        if isinstance(event, ConnectionUnregistered):
            self._forget_connection(event.slot, event.conn_index)
            # Likewise logged by the worker.
            log.debug("Worker reported an unregistration", extra=fields(connIndex=event.conn_index))
            return self._status()
        raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover - Event is closed

    def worker_exited(self, slot: int, pid: int, returncode: int, now: float) -> list[Action]:
        """The process of ``slot`` ended with ``returncode`` (negative: killed by a signal)."""
        record = self.workers[slot]
        if record.pid != pid:
            return []
        record.pid = None
        record.active_streams = 0
        self.stats.drop_slot(slot)
        self._forget_connections(slot)
        for index in record.conn_indexes:
            self.refused.pop(index, None)  # a new process of this slot asks the edge again
        if record.retiring and slot < self.settings.workers and self.phase is not Phase.DRAINING:
            # Retired, then wanted again by a later reload before it was gone: start it anew.
            record.retiring = False
            record.restart_at = now
            return self._status()
        if record.retiring:
            del self.workers[slot]
            log.info("Retired worker exited code=%d", returncode, extra=fields(slot=slot, pid=pid))
            if self.phase is Phase.DRAINING and not any(w.alive for w in self.workers.values()):
                return self._exit_now(code=self.exit_code, failure=self.failure)
            return self._status()
        if self.phase is Phase.DRAINING:
            log.info("Worker exited code=%d", returncode, extra=fields(slot=slot, pid=pid))
            if not any(w.alive for w in self.workers.values()):
                return self._exit_now(code=self.exit_code, failure=self.failure)
            return self._status()
        log.error(
            "Worker exited unexpectedly code=%d", returncode, extra=fields(slot=slot, pid=pid)
        )
        if returncode == WORKER_BOOT_ERROR:
            return self._fail(f"worker {slot} could not start (exit code {returncode})", now)
        if now - record.started_at < FAST_FAILURE_SECONDS:
            record.fast_failures += 1
        else:
            record.fast_failures = 0
        if record.fast_failures >= MAX_FAST_FAILURES:
            return self._fail(
                f"worker {slot} exited {record.fast_failures} times in a row right after start",
                now,
            )
        delay = restart_delay(record.fast_failures)
        record.restart_at = now + delay
        log.info("Restarting worker in %.1fs", delay, extra=fields(slot=slot))
        return self._status()

    def tick(self, now: float) -> list[Action]:
        """Time passed: respawn due workers, enforce the drain deadline."""
        if self.exited:
            return []
        if self.phase is Phase.DRAINING:
            if self.drain_deadline is not None and now >= self.drain_deadline:
                log.warning("Grace period over; killing workers still draining")
                return self._exit_now(KillWorkers(), code=self.exit_code, failure=self.failure)
            return []
        actions: list[Action] = self._murder_workers(now)
        for record in self.workers.values():
            if not record.alive and record.restart_at is not None and now >= record.restart_at:
                record.restart_at = None
                record.restarts += 1
                actions.append(SpawnWorker(record.slot))
        return actions

    def healthy(self, now: float) -> bool:
        """Every live worker heartbeats (or is still booting) and none is being aborted."""
        for record in self.workers.values():
            if not record.alive or record.pid is None or record.pid < 0:
                continue
            if record.aborted_at is not None:
                return False
            if record.heartbeat_seen:
                assert record.last_heartbeat is not None
                if now - record.last_heartbeat > HEARTBEAT_STALE:
                    return False
            elif now - record.started_at > BOOT_TIMEOUT:
                return False
        return True

    def watchdog(self, now: float) -> list[Action]:
        """A watchdog period passed: ``WATCHDOG=1`` only while :meth:`healthy`."""
        if self.exited or not self.healthy(now):
            return []
        return [Notify("WATCHDOG=1")]

    def request_reload(self, reason: str, now: float) -> list[Action]:
        """SIGHUP or a changed credentials file: load the settings again."""
        if self.phase is Phase.DRAINING:
            log.info("Ignored a reload (%s) while shutting down", reason)
            return []
        if self.loading:
            self.reload_queued = True
            return []
        self.loading = True
        log.info("Reloading configuration", extra=fields(reason=reason))
        actions: list[Action] = []
        if self.phase is Phase.RUNNING and not self.bracketed:
            self.bracketed = True
            usec = int(now * 1_000_000)
            actions.append(Notify(f"RELOADING=1\nMONOTONIC_USEC={usec}"))
        return [*actions, LoadSettings()]

    def request_upgrade(self, now: float) -> list[Action]:
        """SIGUSR2: upgrade in place to the installed code once nothing else is under way (a
        start, a reload, the old workers of the previous upgrade): it waits for them."""
        if self.phase is Phase.DRAINING:
            log.warning("Ignored an upgrade request (SIGUSR2): the connector is shutting down")
            return []
        if self.upgrading:
            log.info("An upgrade is in progress already; ignored another SIGUSR2")
            return []
        wait = None
        if self.phase is Phase.STARTING:
            wait = "the first connection registered"
        elif self.loading or self.bracketed:
            wait = "the reload is over"
        elif self.inheriting:
            wait = "the previous upgrade's old workers exited"
        if wait is not None:
            if not self.upgrade_queued:
                log.info("Upgrade requested (SIGUSR2): it begins once %s", wait)
            self.upgrade_queued = True
            return []
        self.upgrade_queued = False
        self.upgrading = True
        log.info("Upgrading in place (SIGUSR2): checking the installed adit")
        return [PrepareUpgrade()]

    def upgrade_refused(self, error: str, now: float) -> list[Action]:
        """The installed code did not pass the preflight: nothing changes, and say why."""
        self.upgrading = False
        self.upgrade_error = " ".join(error.split())
        self.stats.upgrade_failures += 1
        log.error(
            "Upgrade refused: %s; version %s keeps serving",
            self.upgrade_error,
            self.settings.version,
        )
        self._last_status = ""
        return self._status()

    def adopt_predecessors(self, connections: int) -> list[Action]:
        """This process is an upgrade's new code and its old workers serve ``connections``:
        ready at once (``READY=1`` again: systemd takes it as a no-op), while its own
        workers start and register."""
        self.inherited_connections = connections
        self.inheriting = True
        if self.phase is not Phase.STARTING or not connections:
            return []
        self.phase = Phase.RUNNING
        return [WritePidfile(), Notify("READY=1")]

    def predecessors_changed(self, connections: int, alive: bool, now: float) -> list[Action]:
        """The old workers of an upgrade registered, lost or drained connections, or exited."""
        self.inherited_connections = connections
        self.inheriting = alive
        if not alive and self.deferred_failure is not None:
            return self._fail(self.deferred_failure, now)
        return self._status() + self._queued_upgrade()

    def _queued_upgrade(self) -> list[Action]:
        """The upgrade a SIGUSR2 asked for while busy, if it may begin now."""
        return self.request_upgrade(0.0) if self.upgrade_queued else []

    def settings_rejected(self, error: str, now: float) -> list[Action]:
        """The reloaded settings did not validate: keep the old ones and say why."""
        if self.phase is Phase.DRAINING:
            self.loading = False
            return []
        self.reload_error = " ".join(error.split())
        self.stats.reload_failures += 1
        self.stats.last_reload_success = False
        log.error(
            "Rejected the new configuration; the previous one keeps serving",
            extra=fields(config=self.settings.config_path or "", error=self.reload_error),
        )
        return self._end_reload()

    def settings_loaded(self, new: SupervisorSettings, now: float) -> list[Action]:
        """Apply validated settings: live parts pushed to workers, connection parts rolled."""
        if self.phase is Phase.DRAINING:
            self.loading = False
            return []
        old = self.settings
        new = self._keep_fixed(old, new)
        if old.ingress.remote_version >= 0:
            # The edge manages the ingress now (as cloudflared's orchestrator: a push replaces
            # the local rules): the file's ingress waits for the next start.
            if new.ingress.rules or new.ingress.cli_url or new.ingress.cli_hello_world:
                log.warning(
                    "The edge manages this tunnel's ingress: the configuration file's ingress "
                    "is not used until the connector restarts",
                    extra=fields(remoteVersion=old.ingress.remote_version),
                )
            kept = msgspec.structs.replace(
                new.ingress,
                remote_version=old.ingress.remote_version,
                remote_config=old.ingress.remote_config,
            )
            new = replace(new, ingress=kept)
        ingress_changed = _ingress_key(old.ingress) != _ingress_key(new.ingress)
        version = old.ingress.version + (1 if ingress_changed else 0)
        new = replace(new, ingress=msgspec.structs.replace(new.ingress, version=version))
        level_changed = new.log.level != old.log.level
        connections_changed = (
            old.account_tag != new.account_tag
            or old.tunnel_secret != new.tunnel_secret
            or old.tunnel_id != new.tunnel_id
            or old.edges != new.edges
            or old.edge_ca_pem != new.edge_ca_pem
        )
        resized = new.ha_connections != old.ha_connections or new.workers != old.workers
        if connections_changed:
            self.refused.clear()  # the workers dial those connections again with new settings
        self.settings = new
        self.reload_error = None
        self.stats.last_reload_success = True
        self.stats.config_version = version
        self.stats.remote_config_version = new.ingress.remote_version
        actions: list[Action] = []
        if level_changed:
            actions.append(SetLogLevel(new.log.level))
        live = [w.slot for w in self.workers.values() if w.alive and not w.retiring]
        if ingress_changed or level_changed:
            push = ApplyIngress(new.ingress, loglevel=new.log.level)
            actions += [SendCommand(slot, push) for slot in live]
        moved = self._reshare(old, new) if resized else set()
        if connections_changed or old.grace_period != new.grace_period:
            moved |= set(live)
        actions += [
            SendCommand(slot, Reconfigure(self.worker_settings(slot)))
            for slot in sorted(moved)
            if slot in live
        ]
        if resized:
            actions += self._resize_workers(new)
        log.info(
            "Updated to new configuration",
            extra=fields(
                version=version,
                config=new.config_path or "",
                ingressChanged=ingress_changed,
                reconnect=connections_changed,
            ),
        )
        return actions + self._end_reload()

    def _on_remote_config(self, event: RemoteConfigReceived) -> list[Action]:
        """The edge pushed a configuration to a worker (which checked it): the next ingress
        snapshot of every worker, the path of a reload, if newer than the one in force (with
        local ingress too, as cloudflared's orchestrator)."""
        old = self.settings.ingress
        if self.phase is Phase.DRAINING or event.version <= old.remote_version:
            return []
        snapshot = msgspec.structs.replace(
            old,
            version=old.version + 1,
            remote_version=event.version,
            remote_config=event.config,
        )
        self.settings = replace(self.settings, ingress=snapshot)
        self.stats.config_version = snapshot.version
        self.stats.remote_config_version = event.version
        log.info(
            "Updated to new configuration",
            extra=fields(version=snapshot.version, remoteVersion=event.version),
        )
        push = ApplyIngress(snapshot)
        return [
            SendCommand(w.slot, push) for w in self.workers.values() if w.alive and not w.retiring
        ]

    # -- internals -------------------------------------------------------------------------

    def _keep_fixed(self, old: SupervisorSettings, new: SupervisorSettings) -> SupervisorSettings:
        """What a reload cannot change in this process: say so and keep the old values."""
        # The protocol choice keeps per-connection memory for the life of the process, as
        # cloudflared's does (supervisor/supervisor.go:39): its settings stay with it.
        fixed = {
            "metrics_address": "metrics",
            "pidfile": "pidfile",
            "protocol": "protocol",
            "max_edge_addr_retries": "max-edge-addr-retries",
        }
        for attribute, flag in fixed.items():
            if getattr(old, attribute) != getattr(new, attribute):
                log.warning(
                    "--%s changed; it applies after a restart", flag, extra=fields(flag=flag)
                )
        return replace(
            new,
            connector_id=old.connector_id,
            metrics_address=old.metrics_address,
            pidfile=old.pidfile,
            protocol=old.protocol,
            max_edge_addr_retries=old.max_edge_addr_retries,
            log=replace(old.log, level=new.log.level),  # outputs and files stay; the level follows
        )

    def _reshare(self, old: SupervisorSettings, new: SupervisorSettings) -> set[int]:
        """New connection shares; the slots (of running workers) whose share changed."""
        log.info(
            "Resizing",
            extra=fields(
                haConnections=f"{old.ha_connections}->{new.ha_connections}",
                workers=f"{old.workers}->{new.workers}",
            ),
        )
        changed: set[int] = set()
        pin = new.pin_cpus and 0 < new.workers <= len(self.cpus)
        for slot, share in enumerate(split_conn_indexes(new.ha_connections, new.workers)):
            record = self.workers.get(slot)
            if record is None:
                cpu = self.cpus[slot] if pin else None
                self.workers[slot] = WorkerRecord(slot=slot, conn_indexes=share, cpu=cpu)
            elif record.conn_indexes != share:
                record.conn_indexes = share
                changed.add(slot)
        return changed

    def _resize_workers(self, new: SupervisorSettings) -> list[Action]:
        """Start the added slots; drain the surplus ones (their connections moved already).

        Connections that move to another worker are dropped by their old worker (unregistered,
        streams drained) as the new owner starts; the other connections keep serving meanwhile.
        """
        actions: list[Action] = []
        for slot, record in sorted(self.workers.items()):
            if slot >= new.workers:
                if record.retiring:
                    continue
                record.retiring = True
                record.restart_at = None
                if record.alive:
                    log.info("Retiring worker", extra=fields(slot=slot))
                    actions.append(SendCommand(slot, Drain(new.grace_period)))
                else:
                    del self.workers[slot]
            elif not record.alive and record.restart_at is None:
                record.retiring = False
                actions.append(SpawnWorker(slot))
        return actions

    def _end_reload(self) -> list[Action]:
        self.loading = False
        if self.reload_queued and self.phase is not Phase.DRAINING:
            self.reload_queued = False
            self.loading = True
            return [LoadSettings()]
        self.reload_queued = False
        actions: list[Action] = []
        if self.bracketed:
            self.bracketed = False
            actions.append(Notify("READY=1"))
        self._last_status = ""  # always restate STATUS= after a reload
        return actions + self._status() + self._queued_upgrade()

    def _forget_connection(self, slot: int, conn_index: int) -> None:
        """Drop a registration, unless another worker has taken that index over since."""
        current = self.registered.get(conn_index)
        if current is not None and current.slot == slot:
            del self.registered[conn_index]

    def _forget_connections(self, slot: int) -> None:
        for index in [i for i, r in self.registered.items() if r.slot == slot]:
            del self.registered[index]

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do; ``None`` until an input changes that."""
        if self.exited:
            return None
        if self.phase is Phase.DRAINING:
            return self.drain_deadline
        due = [
            when
            for record in self.workers.values()
            if (when := record.restart_at if not record.alive else self._stuck_at(record))
            is not None
        ]
        return min(due, default=None)

    def _stuck_at(self, record: WorkerRecord) -> float | None:
        """When this worker's process is overdue for SIGABRT (or, once aborted, SIGKILL)."""
        if record.pid is None or record.pid < 0:
            return None
        if record.aborted_at is not None:
            return None if record.killed else record.aborted_at + ABORT_GRACE
        timeout = self.settings.worker_timeout
        if record.heartbeat_seen:
            assert record.last_heartbeat is not None
            return record.last_heartbeat + timeout
        return record.started_at + max(timeout, BOOT_TIMEOUT)

    def _murder_workers(self, now: float) -> list[Action]:
        """SIGABRT a worker whose loop stopped heartbeating; SIGKILL it if that is not enough."""
        actions: list[Action] = []
        for record in self.workers.values():
            due = self._stuck_at(record)
            if due is None or now < due:
                continue
            pid = record.pid
            assert pid is not None
            if record.aborted_at is not None:
                record.killed = True
                log.error("Worker did not exit after SIGABRT; killing it", extra=fields(
                    slot=record.slot, pid=pid))  # fmt: skip
                actions.append(SignalWorker(record.slot, pid, signal.SIGKILL))
                continue
            last = record.last_heartbeat if record.heartbeat_seen else None
            silent = now - (last if last is not None else record.started_at)
            record.aborted_at = now
            log.error(
                "Worker is stuck: no heartbeat for %.1fs; aborting it (SIGABRT)",
                silent,
                extra=fields(slot=record.slot, pid=pid),
            )
            actions.append(SignalWorker(record.slot, pid, signal.SIGABRT))
        if actions:
            actions += self._status()
        return actions

    def _on_heartbeat(self, event: Heartbeat, now: float) -> list[Action]:
        record = self.workers.get(event.slot)
        if record is None or record.pid != event.pid:
            return []
        record.last_heartbeat = now
        record.loop_lag = event.loop_lag
        record.active_streams = event.active_streams
        self.stats.active_streams = sum(w.active_streams for w in self.workers.values() if w.alive)
        if record.heartbeat_seen:
            return []
        record.heartbeat_seen = True
        log.debug(
            "First heartbeat from worker pid=%d",
            event.pid,
            extra=fields(slot=event.slot, loopLag=round(event.loop_lag, 4)),
        )
        return [] if record.cpu is None else [VerifyAffinity(event.slot, event.pid, record.cpu)]

    @property
    def _protocols_shared(self) -> bool:
        """Whether the workers need each other's registrations: only a QUIC setting can
        change protocol or warn about it (static http2 never does)."""
        return self.settings.protocol != "http2"

    def _share_registration(self, event: ConnectionRegistered) -> list[Action]:
        self.protocols[event.conn_index] = event.protocol
        if not self._protocols_shared:
            return []
        record = RecordRegistration(event.conn_index, event.protocol)
        return [
            SendCommand(w.slot, record)
            for w in self.workers.values()
            if w.alive and not w.retiring and w.slot != event.slot
        ]

    def _on_registered(self, event: ConnectionRegistered) -> list[Action]:
        shared = self._share_registration(event)
        self.registered[event.conn_index] = event
        self.refused.pop(event.conn_index, None)
        self.retrying.discard(event.conn_index)
        self.stats.timer_retries = len(self.retrying)
        self.stats.register_success += 1
        self.stats.set_location(event.conn_index, event.location)
        # The worker logged "Registered tunnel connection" already: one line per registration.
        log.debug(
            "Worker reported a registration",
            extra=fields(
                connIndex=event.conn_index, connection=event.connection_id, slot=event.slot
            ),
        )
        actions: list[Action] = shared
        if self.phase is Phase.STARTING:
            self.phase = Phase.RUNNING
            # The pidfile first: whoever reacts to READY=1 may read it at once.
            actions += [WritePidfile(), Notify("READY=1")]
            return actions + self._status() + self._queued_upgrade()
        return actions + self._status()

    def _on_refused(self, event: RegistrationRefused, now: float) -> list[Action]:
        """The worker acted on a refusal already (retry after ``retry_in``, or stop that
        connection); here: the metric, and stopping the connector once nothing can serve."""
        label = event.metric_label
        self.stats.register_fail[label] = self.stats.register_fail.get(label, 0) + 1
        where = fields(connIndex=event.conn_index, error=event.cause)
        if event.should_retry:
            self.refused.pop(event.conn_index, None)
            log.warning("Register tunnel error from server side; retrying", extra=where)
            return self._status()
        self.refused[event.conn_index] = event.cause
        self.retrying.discard(event.conn_index)
        self.stats.timer_retries = len(self.retrying)
        log.error("Register tunnel error from server side", extra=where)
        if self.phase is Phase.STARTING and event.conn_index == 0:
            log.error("Couldn't start tunnel", extra=fields(error=event.cause))
            return self._fail(f"initial tunnel connection failed: {event.cause}", now)
        wanted = set(range(self.settings.ha_connections))
        if not self.registered and wanted <= set(self.refused):
            # Nothing serves and nothing will by retrying: stop, as cloudflared stops when its
            # first connection is refused for good. systemd restarts a failed unit after
            # RestartSec, which reads the credentials again; retrying here would not.
            log.error(
                "The edge refused every connection for good; stopping",
                extra=fields(error=event.cause),
            )
            return self._fail(f"every connection was refused by the edge: {event.cause}", now)
        return self._status()

    def _fail(self, failure: str, now: float) -> list[Action]:
        if self.phase is Phase.DRAINING:
            return []
        if self.inheriting:
            # The old workers of the upgrade still serve: stopping would take them down too.
            # Keep them; fail for real once they are gone (predecessors_changed).
            if self.deferred_failure is None:
                self.deferred_failure = failure
                self.upgrade_error = f"the new workers fail: {failure}"
                log.error(
                    "The upgraded workers fail: %s; the old workers keep serving (restart the "
                    "unit to retry)",
                    failure,
                )
                for record in self.workers.values():
                    record.restart_at = None
            return self._status()
        self.exit_code = 1
        self.failure = failure
        return self._begin_drain(0.0, now)

    def _begin_drain(self, grace: float, now: float) -> list[Action]:
        self.phase = Phase.DRAINING
        self.drain_deadline = now + grace + self.settings.drain_margin
        for record in self.workers.values():
            record.restart_at = None
        actions: list[Action] = [Notify("STOPPING=1")]
        live = [w.slot for w in self.workers.values() if w.alive]
        if not live:
            return actions + self._exit_now(code=self.exit_code, failure=self.failure)
        actions += [SendCommand(slot, Drain(grace)) for slot in live]
        return actions + self._status()

    def _exit_now(self, *first: Action, code: int = 0, failure: str | None = None) -> list[Action]:
        if self.exited:
            return []
        self.exited = True
        self.phase = Phase.DRAINING
        return [*first, Exit(code, failure)]

    def _status(self) -> list[Action]:
        live = sum(1 for w in self.workers.values() if w.alive and not w.retiring)
        wanted = sum(1 for w in self.workers.values() if not w.retiring)
        self.stats.ha_connections = len(self.registered)
        text = (
            f"STATUS={self.phase.value}: {len(self.registered)}/"
            f"{self.settings.ha_connections} connections registered, "
            f"{live}/{wanted} workers running, config version "
            f"{self.settings.ingress.version}, adit {self.settings.version}"
        )
        if self.upgrade_error is not None:
            # The count tells a waiting `adit upgrade-restart` this refusal from an earlier one.
            text += (
                f"; upgrade refused: {self.upgrade_error} (refusal {self.stats.upgrade_failures})"
            )
        if self.reload_error is not None:
            text += f"; reload rejected: {self.reload_error}"
        if self.refused:
            causes = sorted(set(self.refused.values()))
            text += f"; {len(self.refused)} refused by the edge: {causes[0]}"
        if text == self._last_status:
            return []
        self._last_status = text
        return [Notify(text)]


def _ingress_key(snapshot: IngressSnapshot) -> bytes:
    """What decides whether the ingress changed: the rules and origin settings.

    Not the version, nor the copy of the flags sent to the edge (``local_config_json``): a
    new ``workers:`` alone does not make a new ingress version.
    """
    return msgspec.msgpack.encode(
        msgspec.structs.replace(snapshot, version=0, local_config_json=b"")
    )
