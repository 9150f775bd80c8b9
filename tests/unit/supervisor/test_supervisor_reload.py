"""SupervisorState: reloads, stuck workers and the systemd watchdog, with injected time."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Sequence

from adit.ipc.messages import (
    ApplyIngress,
    ConnectionRegistered,
    ConnectionUnregistered,
    Drain,
    EdgeTarget,
    Heartbeat,
    IngressSnapshot,
    Reconfigure,
    RecordRegistration,
    Start,
)
from adit.logs import LogSettings
from adit.supervisor.metrics import TunnelStats, WorkerSample, build_registry, render_metrics
from adit.supervisor.settings import SupervisorSettings
from adit.supervisor.state import (
    ABORT_GRACE,
    BOOT_TIMEOUT,
    Exit,
    LoadSettings,
    Notify,
    SendCommand,
    SetLogLevel,
    SignalWorker,
    SpawnWorker,
    SupervisorState,
)

RULES: list[dict[str, object]] = [{"service": "http_status:404"}]


def _settings(**changes: object) -> SupervisorSettings:
    base = SupervisorSettings(
        tunnel_id="6ff42ae2-765d-4adf-8112-31c55c1551ef",
        account_tag="acct",
        tunnel_secret=b"s" * 32,
        edges=(EdgeTarget("127.0.0.1", 7844), EdgeTarget("127.0.0.1", 7845, 1)),
        ingress=IngressSnapshot(version=1, rules=RULES),
        ha_connections=2,
        workers=2,
        worker_timeout=5.0,
        config_path="/etc/adit/config.yml",
        connector_id="c0ffee00-0000-4000-8000-000000000000",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _running() -> SupervisorState:
    state = SupervisorState(_settings(), cpus=[0, 1])
    state.start(0.0)
    for slot in range(2):
        state.worker_started(slot, 100 + slot, 0.0)
        state.handle_event(Heartbeat(slot, 100 + slot, 0.0, 0), 0.5)
    state.handle_event(ConnectionRegistered(0, 0, "c0", "TST", "127.0.0.1:7844"), 1.0)
    return state


def _notified(actions: Sequence[object]) -> list[str]:
    return [a.state for a in actions if isinstance(a, Notify)]


def test_sighup_is_bracketed_and_a_changed_ingress_gets_the_next_version() -> None:
    state = _running()
    actions = state.handle_signal(signal.SIGHUP, 2.5)
    assert actions == [Notify("RELOADING=1\nMONOTONIC_USEC=2500000"), LoadSettings()]
    rules: list[dict[str, object]] = [
        {"hostname": "new.test", "service": "http_status:201"},
        *RULES,
    ]
    new = _settings(ingress=IngressSnapshot(version=1, rules=rules), connector_id="other")
    actions = state.settings_loaded(new, 3.0)
    pushes = [a for a in actions if isinstance(a, SendCommand)]
    assert [p.slot for p in pushes] == [0, 1]
    assert all(isinstance(p.command, ApplyIngress) for p in pushes)
    assert pushes[0].command.snapshot.version == 2  # type: ignore[union-attr]
    assert _notified(actions)[0] == "READY=1"
    assert state.settings.connector_id == "c0ffee00-0000-4000-8000-000000000000"
    assert state.stats.config_version == 2


def test_unchanged_reload_keeps_the_version_and_pushes_nothing() -> None:
    state = _running()
    state.handle_signal(signal.SIGHUP, 2.0)
    actions = state.settings_loaded(_settings(), 3.0)
    assert not [a for a in actions if isinstance(a, SendCommand)]
    assert state.settings.ingress.version == 1


def test_workers_get_the_protocol_settings() -> None:
    state = SupervisorState(_settings(protocol="auto", max_edge_addr_retries=3), cpus=[0, 1])
    settings = state.worker_settings(1)
    assert (settings.protocol, settings.max_edge_addr_retries) == ("auto", 3)


def test_the_protocol_settings_apply_after_a_restart() -> None:
    # Each connection's protocol choice lives as long as the process, as cloudflared's.
    state = _running()
    state.handle_signal(signal.SIGHUP, 2.0)
    actions = state.settings_loaded(_settings(protocol="auto", max_edge_addr_retries=3), 3.0)
    assert not [a for a in actions if isinstance(a, SendCommand)]
    assert (state.settings.protocol, state.settings.max_edge_addr_retries) == ("http2", 8)


def _two_workers(protocol: str) -> SupervisorState:
    state = SupervisorState(_settings(protocol=protocol), cpus=[0, 1])
    state.start(0.0)
    for slot in range(2):
        state.worker_started(slot, 100 + slot, 0.0)
    return state


def _relayed(actions: Sequence[object]) -> list[tuple[int, RecordRegistration]]:
    return [
        (a.slot, a.command)
        for a in actions
        if isinstance(a, SendCommand) and isinstance(a.command, RecordRegistration)
    ]


def test_a_registration_is_relayed_to_the_other_workers() -> None:
    # cloudflared's fallback looks at every connection's registration, not only its own.
    state = _two_workers("auto")
    actions = state.handle_event(ConnectionRegistered(0, 0, "c0", "TST", "e:1", "quic"), 1.0)
    assert _relayed(actions) == [(1, RecordRegistration(0, "quic"))]


def test_nothing_is_relayed_when_the_protocol_cannot_change() -> None:
    state = _two_workers("http2")
    actions = state.handle_event(ConnectionRegistered(0, 0, "c0", "TST", "e:1"), 1.0)
    assert _relayed(actions) == []


def test_a_new_worker_learns_every_registration_after_its_start() -> None:
    state = _two_workers("quic")
    state.handle_event(ConnectionRegistered(0, 0, "c0", "TST", "e:1", "quic"), 1.0)
    state.handle_event(ConnectionRegistered(1, 1, "c1", "TST", "e:2", "http2"), 1.5)
    state.worker_exited(1, 101, -9, 2.0)
    actions = state.worker_started(1, 102, 3.0)
    commands = [a.command for a in actions if isinstance(a, SendCommand)]
    assert isinstance(commands[0], Start)
    assert commands[1:] == [RecordRegistration(0, "quic"), RecordRegistration(1, "http2")]


def test_rejected_reload_keeps_the_old_settings_and_says_why() -> None:
    state = _running()
    old = state.settings
    state.handle_signal(signal.SIGHUP, 2.0)
    actions = state.settings_rejected("bad ingress\nrule 1", 3.0)
    states = _notified(actions)
    assert states[0] == "READY=1"
    assert "reload rejected: bad ingress rule 1" in states[1]
    assert state.settings is old
    assert state.stats.reload_failures == 1 and not state.stats.last_reload_success
    text = render_metrics(build_registry(state.stats)).decode()
    assert "adit_config_reload_failures_total 1.0" in text
    assert "adit_config_last_reload_success 0.0" in text


def test_new_credentials_and_level_roll_connections_and_change_the_level() -> None:
    state = _running()
    state.request_reload("credentials file changed", 2.0)
    new = _settings(tunnel_secret=b"t" * 32, log=LogSettings(level="debug"))
    actions = state.settings_loaded(new, 3.0)
    assert SetLogLevel("debug") in actions
    rolls = [
        a for a in actions if isinstance(a, SendCommand) and isinstance(a.command, Reconfigure)
    ]
    assert [r.slot for r in rolls] == [0, 1]
    assert rolls[1].command.settings.tunnel_secret == b"t" * 32  # type: ignore[union-attr]
    assert rolls[1].command.settings.conn_indexes == [1]  # type: ignore[union-attr]


def test_second_request_during_a_load_loads_once_more() -> None:
    state = _running()
    assert state.handle_signal(signal.SIGHUP, 2.0)[-1] == LoadSettings()
    assert state.handle_signal(signal.SIGHUP, 2.1) == []
    assert state.settings_loaded(_settings(), 3.0) == [LoadSettings()]
    assert _notified(state.settings_loaded(_settings(), 3.5))[0] == "READY=1"


def test_new_ha_connections_reshare_without_moving_indexes() -> None:
    state = _running()
    state.handle_signal(signal.SIGHUP, 2.0)
    actions = state.settings_loaded(_settings(ha_connections=4), 3.0)
    assert state.settings.ha_connections == 4
    rolls = [
        a for a in actions if isinstance(a, SendCommand) and isinstance(a.command, Reconfigure)
    ]
    shares = [r.command.settings.conn_indexes for r in rolls]  # type: ignore[union-attr]
    assert shares == [[0, 2], [1, 3]]
    assert all(r.command.settings.ha_connections == 4 for r in rolls)  # type: ignore[union-attr]


def test_more_workers_start_new_slots_and_fewer_retire_the_surplus() -> None:
    state = _running()
    state.handle_event(ConnectionRegistered(1, 1, "c1", "TST", "127.0.0.1:7845"), 1.0)
    state.handle_signal(signal.SIGHUP, 2.0)
    actions = state.settings_loaded(_settings(workers=3, ha_connections=3), 3.0)
    assert SpawnWorker(2) in actions
    assert state.workers[2].conn_indexes == [2] and state.workers[2].cpu is None  # 2 CPUs
    state.worker_started(2, 102, 3.1)

    state.handle_signal(signal.SIGHUP, 4.0)
    actions = state.settings_loaded(_settings(workers=1, ha_connections=3), 5.0)
    rolls = [
        a for a in actions if isinstance(a, SendCommand) and isinstance(a.command, Reconfigure)
    ]
    assert [(r.slot, r.command.settings.conn_indexes) for r in rolls] == [(0, [0, 1, 2])]  # type: ignore[union-attr]
    assert SendCommand(1, Drain(30.0)) in actions and SendCommand(2, Drain(30.0)) in actions
    # Worker 0 takes connection 1 over before worker 1 reports it unregistered: keep it.
    state.handle_event(ConnectionRegistered(0, 1, "c1b", "TST", "127.0.0.1:7845"), 5.5)
    state.handle_event(ConnectionUnregistered(1, 1), 5.6)
    assert state.registered[1].slot == 0
    assert not [a for a in state.worker_exited(1, 101, 0, 6.0) if isinstance(a, SpawnWorker)]
    state.worker_exited(2, 102, 0, 6.0)
    assert sorted(state.workers) == [0]
    assert state.ready_connections == 2


def test_stuck_worker_gets_sigabrt_then_sigkill() -> None:
    state = _running()
    state.handle_event(Heartbeat(1, 101, 0.0, 0), 10.0)
    assert not [a for a in state.tick(5.4) if isinstance(a, SignalWorker)]
    actions = state.tick(10.0)
    assert SignalWorker(0, 100, signal.SIGABRT) in actions
    assert SignalWorker(1, 101, signal.SIGABRT) not in actions
    assert not [a for a in state.tick(10.0 + ABORT_GRACE / 2) if isinstance(a, SignalWorker)]
    assert SignalWorker(0, 100, signal.SIGKILL) in state.tick(10.0 + ABORT_GRACE)
    assert not [a for a in state.tick(20.0) if isinstance(a, SignalWorker) and a.slot == 0]


def test_booting_worker_gets_the_boot_allowance() -> None:
    state = SupervisorState(_settings(), cpus=[0, 1])
    state.start(0.0)
    state.worker_started(0, 100, 0.0)
    assert not state.tick(BOOT_TIMEOUT - 0.1)
    assert SignalWorker(0, 100, signal.SIGABRT) in state.tick(BOOT_TIMEOUT + 0.1)


def test_watchdog_only_while_every_worker_heartbeats() -> None:
    state = _running()
    assert state.watchdog(1.0) == [Notify("WATCHDOG=1")]
    state.handle_event(Heartbeat(0, 100, 0.0, 0), 2.0)
    assert state.watchdog(2.5) == []  # worker 1's last heartbeat is 2 s old
    state.handle_event(Heartbeat(1, 101, 0.0, 0), 2.6)
    assert state.watchdog(2.7) == [Notify("WATCHDOG=1")]


def test_worker_metrics_and_locations() -> None:
    stats = TunnelStats("1.0")
    stats.set_location(0, "AMS")
    stats.set_location(0, "FRA")
    samples = [WorkerSample(0, 2, 0.25, 1000, 1.5)]
    text = render_metrics(build_registry(stats, lambda: samples)).decode()
    assert 'cloudflared_tunnel_server_locations{connection_id="0",edge_location="FRA"} 1.0' in text
    assert 'cloudflared_tunnel_server_locations{connection_id="0",edge_location="AMS"} 0.0' in text
    assert 'adit_worker_rss_bytes{slot="0"} 1000.0' in text
    assert 'adit_worker_cpu_seconds_total{slot="0"} 1.5' in text
    assert 'adit_worker_loop_lag_seconds{slot="0"} 0.25' in text
    assert 'adit_worker_restarts_total{slot="0"} 2.0' in text


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process() -> None:
    from adit.supervisor.app import watchdog_interval

    assert watchdog_interval({}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "3000000"}, pid=7) == 1.5
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "7"}, pid=7) == 1.5
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid=7) is None


def _signals(actions: Sequence[object]) -> list[SignalWorker]:
    return [a for a in actions if isinstance(a, SignalWorker)]


def test_the_next_deadline_is_when_a_tick_acts_and_never_before() -> None:
    # The supervisor sleeps until next_deadline(): a tick just before it must do nothing, a
    # tick at it must act (or the dispatcher would wake for nothing, or never).
    state = _running()
    state.handle_event(Heartbeat(1, 101, 0.0, 0), 3.0)
    assert state.next_deadline() == 0.5 + 5.0  # worker 0's heartbeat is the oldest
    assert _signals(state.tick(5.5 - 1e-9)) == []
    assert _signals(state.tick(5.5)) == [SignalWorker(0, 100, signal.SIGABRT)]
    assert state.next_deadline() == 5.5 + ABORT_GRACE
    assert _signals(state.tick(5.5 + ABORT_GRACE)) == [SignalWorker(0, 100, signal.SIGKILL)]
    # Worker 0 is left to die; worker 1's heartbeat is next.
    assert state.next_deadline() == 3.0 + 5.0
    state.handle_event(Heartbeat(1, 101, 0.0, 0), 7.8)
    state.worker_exited(0, 100, -9, 7.8)
    restart = state.workers[0].restart_at
    assert restart is not None and state.next_deadline() == restart
    assert state.tick(restart - 1e-9) == []
    assert state.tick(restart) == [SpawnWorker(0)]


def test_a_booting_worker_and_a_drain_have_deadlines_too() -> None:
    state = SupervisorState(_settings(), cpus=[0, 1])
    state.start(0.0)
    assert state.next_deadline() is None  # nothing started yet: only an input can change that
    state.worker_started(0, 100, 1.0)
    assert state.next_deadline() == 1.0 + BOOT_TIMEOUT
    state.handle_signal(signal.SIGTERM, 2.0)
    deadline = state.next_deadline()
    assert deadline is not None and deadline == state.drain_deadline
    assert state.tick(deadline - 1e-9) == []
    assert isinstance(state.tick(deadline)[-1], Exit)
    assert state.next_deadline() is None
