"""SupervisorState: the supervisor's decisions, driven by hand with injected time."""

from __future__ import annotations

import signal
from dataclasses import replace

import pytest

from adit.ipc.channels import WORKER_BOOT_ERROR
from adit.ipc.messages import (
    ConnectionLost,
    ConnectionRegistered,
    Drain,
    EdgeTarget,
    Heartbeat,
    RegistrationRefused,
    Start,
    StatsSnapshot,
)
from adit.supervisor.settings import SupervisorSettings
from adit.supervisor.state import (
    MAX_FAST_FAILURES,
    Exit,
    KillWorkers,
    LoadSettings,
    Notify,
    Phase,
    SendCommand,
    SpawnWorker,
    SupervisorState,
    VerifyAffinity,
    WritePidfile,
    restart_delay,
    split_conn_indexes,
)


def _settings(workers: int = 2, ha: int = 4, grace: float = 30.0) -> SupervisorSettings:
    return SupervisorSettings(
        tunnel_id="6ff42ae2-765d-4adf-8112-31c55c1551ef",
        account_tag="acct",
        tunnel_secret=b"s" * 32,
        edges=(EdgeTarget("127.0.0.1", 7844),),
        ha_connections=ha,
        workers=workers,
        grace_period=grace,
        connector_id="c0ffee00-0000-4000-8000-000000000000",
    )


def _started(workers: int = 2, ha: int = 4, grace: float = 30.0) -> SupervisorState:
    state = SupervisorState(_settings(workers, ha, grace), cpus=[0, 1])
    assert state.start(0.0) == [SpawnWorker(s) for s in range(workers)]
    for slot in range(workers):
        state.worker_started(slot, 100 + slot, 0.0)
    return state


def _registered(slot: int, index: int) -> ConnectionRegistered:
    return ConnectionRegistered(slot, index, f"conn-{index}", "TST1", "127.0.0.1:7844")


def test_split_conn_indexes_round_robin() -> None:
    assert split_conn_indexes(4, 2) == [[0, 2], [1, 3]]
    assert split_conn_indexes(4, 1) == [[0, 1, 2, 3]]
    assert split_conn_indexes(2, 3) == [[0], [1], []]


def test_restart_delay_doubles_and_caps() -> None:
    assert [restart_delay(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_worker_started_sends_its_share_and_pins_cpus() -> None:
    state = SupervisorState(_settings(), cpus=[3, 5])
    actions = state.worker_started(1, 4242, 0.0)
    start = actions[0]
    assert isinstance(start, SendCommand) and isinstance(start.command, Start)
    assert start.command.settings.slot == 1
    assert start.command.settings.conn_indexes == [1, 3]
    assert start.command.settings.connector_id == state.settings.connector_id
    assert state.workers[1].cpu == 5
    assert any(isinstance(a, Notify) and a.state.startswith("STATUS=") for a in actions)


def test_no_pinning_when_more_workers_than_cpus() -> None:
    state = SupervisorState(_settings(workers=2), cpus=[0])
    assert [w.cpu for w in state.workers.values()] == [None, None]


def test_first_registration_is_ready_once() -> None:
    state = _started()
    assert state.ready_body() == (
        503,
        {"status": 503, "readyConnections": 0, "connectorId": state.settings.connector_id},
    )
    first = state.handle_event(_registered(0, 0), 1.0)
    assert Notify("READY=1") in first and WritePidfile() in first
    second = state.handle_event(_registered(1, 1), 1.0)
    assert Notify("READY=1") not in second and WritePidfile() not in second
    assert state.phase is Phase.RUNNING
    assert state.ready_body()[1]["readyConnections"] == 2
    assert state.stats.register_success == 2
    assert state.stats.ha_connections == 2


def test_connection_lost_lowers_ready_count() -> None:
    state = _started()
    state.handle_event(_registered(0, 0), 1.0)
    state.handle_event(ConnectionLost(0, 0, "eof", 1.0), 2.0)
    assert state.ready_body()[0] == 503
    assert state.stats.ha_connections == 0


def test_sigterm_drains_then_exits_zero_when_workers_gone() -> None:
    state = _started(grace=7.0)
    state.handle_event(_registered(0, 0), 1.0)
    actions = state.handle_signal(signal.SIGTERM, 2.0)
    assert actions[0] == Notify("STOPPING=1")
    assert SendCommand(0, Drain(7.0)) in actions and SendCommand(1, Drain(7.0)) in actions
    assert state.phase is Phase.DRAINING
    assert state.ready_body()[0] == 503
    assert Exit(0) not in state.worker_exited(0, 100, 0, 3.0)
    assert state.worker_exited(1, 101, 0, 3.0)[-1] == Exit(0)


def test_second_signal_kills_at_once() -> None:
    state = _started()
    state.handle_signal(signal.SIGINT, 1.0)
    assert state.handle_signal(signal.SIGTERM, 1.5) == [KillWorkers(), Exit(128 + signal.SIGTERM)]
    assert state.handle_signal(signal.SIGTERM, 1.6) == []


def test_drain_deadline_kills_stragglers() -> None:
    state = _started(grace=1.0)
    state.handle_signal(signal.SIGTERM, 10.0)
    assert state.tick(10.0 + 1.0 + state.settings.drain_margin - 0.01) == []
    assert state.tick(10.0 + 1.0 + state.settings.drain_margin) == [KillWorkers(), Exit(0)]


def test_sighup_before_ready_reloads_without_bracket() -> None:
    state = _started()
    assert state.handle_signal(signal.SIGHUP, 1.0) == [LoadSettings()]
    assert state.phase is Phase.STARTING


def test_refusal_of_first_connection_fails_with_message() -> None:
    state = _started()
    actions = state.handle_event(RegistrationRefused(0, 0, "Unauthorized: bad secret", False), 1.0)
    assert SendCommand(0, Drain(0.0)) in actions
    state.worker_exited(0, 100, 0, 2.0)
    final = state.worker_exited(1, 101, 0, 2.0)
    assert final[-1] == Exit(1, "initial tunnel connection failed: Unauthorized: bad secret")


def test_refusal_after_success_is_only_logged() -> None:
    state = _started()
    state.handle_event(_registered(1, 1), 1.0)
    assert state.handle_event(RegistrationRefused(0, 0, "nope", True), 1.0) == []
    assert state.phase is Phase.RUNNING


def test_crashed_worker_restarts_after_backoff() -> None:
    state = _started()
    state.handle_event(_registered(0, 0), 1.0)
    state.handle_event(Heartbeat(1, 101, 0.0, 0), 19.0)  # worker 1 is not stuck
    state.worker_exited(0, 100, -9, 20.0)
    assert not state.workers[0].alive
    assert state.ready_body()[1]["readyConnections"] == 0
    assert state.tick(20.1) == []
    assert state.tick(20.5) == [SpawnWorker(0)]
    assert state.tick(20.6) == []
    assert state.workers[0].restarts == 1


def test_stale_exit_of_replaced_worker_is_ignored() -> None:
    state = _started()
    state.worker_exited(0, 100, -9, 20.0)
    state.worker_started(0, 200, 21.0)
    assert state.worker_exited(0, 100, -9, 22.0) == []
    assert state.workers[0].pid == 200


def test_boot_error_stops_instead_of_flapping() -> None:
    state = _started()
    actions = state.worker_exited(0, 100, WORKER_BOOT_ERROR, 1.0)
    assert SendCommand(1, Drain(0.0)) in actions
    assert state.worker_exited(1, 101, 0, 1.0)[-1].code == 1  # type: ignore[union-attr]


def test_fast_failures_give_up() -> None:
    state = _started(workers=1, ha=1)
    now = 0.0
    for attempt in range(MAX_FAST_FAILURES):
        actions = state.worker_exited(0, 100 + attempt, 1, now + 1.0)
        if attempt < MAX_FAST_FAILURES - 1:
            now = state.workers[0].restart_at or 0.0
            assert state.tick(now) == [SpawnWorker(0)]
            state.worker_started(0, 101 + attempt, now)
    assert state.phase is Phase.DRAINING
    assert actions[-1] == Exit(1, actions[-1].failure)  # type: ignore[union-attr]


def test_first_heartbeat_asks_for_affinity_check() -> None:
    state = _started()
    assert state.handle_event(Heartbeat(0, 100, 0.001, 0), 1.0) == [VerifyAffinity(0, 100, 0)]
    assert state.handle_event(Heartbeat(0, 100, 0.001, 0), 1.5) == []
    assert state.workers[0].last_heartbeat == 1.5
    assert state.handle_event(Heartbeat(0, 999, 0.0, 0), 2.0) == []  # not this slot's process


def test_stats_are_summed_and_dropped_with_the_worker() -> None:
    state = _started()
    state.handle_event(StatsSnapshot(0, 10, 1, 2, {"200": 9}), 1.0)
    state.handle_event(StatsSnapshot(1, 5, 0, 1, {"200": 4, "502": 1}), 1.0)
    assert state.stats.total_requests == 15
    assert state.stats.responses_by_code() == {"200": 13, "502": 1}
    state.worker_exited(1, 101, -9, 30.0)
    assert state.stats.total_requests == 10


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_before_any_worker_exits_immediately(signum: int) -> None:
    state = SupervisorState(_settings(), cpus=[])
    assert state.handle_signal(signum, 0.0) == [Notify("STOPPING=1"), Exit(0)]


def test_a_retryable_refusal_of_the_first_connection_is_retried_not_fatal() -> None:
    state = _started()
    actions = state.handle_event(RegistrationRefused(0, 0, "busy", True, 5.0), 1.0)
    assert not any(isinstance(a, (Exit, SendCommand)) for a in actions)
    assert state.phase is Phase.STARTING
    assert state.stats.register_fail == {"server_error": 1}


def test_every_connection_refused_for_good_stops_with_the_cause() -> None:
    state = _started()
    for index in range(4):
        state.handle_event(_registered(index % 2, index), 1.0)
    for index in range(4):
        state.handle_event(ConnectionLost(index % 2, index, "lost", 0.1), 2.0)
    for index in range(3):
        actions = state.handle_event(
            RegistrationRefused(index % 2, index, "bad secret", False), 3.0
        )
        assert not any(isinstance(a, SendCommand) for a in actions)
    actions = state.handle_event(RegistrationRefused(1, 3, "bad secret", False), 3.0)
    assert SendCommand(0, Drain(0.0)) in actions and Notify("STOPPING=1") in actions
    state.worker_exited(0, 100, 0, 4.0)
    final = state.worker_exited(1, 101, 0, 4.0)
    assert final[-1] == Exit(1, "every connection was refused by the edge: bad secret")


def test_a_registered_connection_keeps_the_connector_up_despite_refusals() -> None:
    state = _started(ha=2)
    state.handle_event(_registered(0, 0), 1.0)
    actions = state.handle_event(RegistrationRefused(1, 1, "bad secret", False), 2.0)
    assert not any(isinstance(a, SendCommand) for a in actions)
    assert any(
        isinstance(a, Notify) and "1 refused by the edge: bad secret" in a.state for a in actions
    )
    # The refused index registering later (new settings) clears it.
    state.handle_event(_registered(1, 1), 3.0)
    assert state.refused == {}


def test_new_credentials_clear_the_refusals() -> None:
    state = _started(ha=2)
    state.handle_event(_registered(0, 0), 1.0)
    state.handle_event(RegistrationRefused(1, 1, "bad secret", False), 2.0)
    rotated = replace(state.settings, tunnel_secret=b"r" * 32)
    state.request_reload("SIGHUP", 3.0)
    state.settings_loaded(rotated, 3.0)
    assert state.refused == {}


def test_the_refusal_metric_uses_the_refusals_label() -> None:
    state = _started()
    state.handle_event(_registered(0, 0), 1.0)
    state.handle_event(RegistrationRefused(1, 1, "EDUPCONN", True, 0.5, "dup_edge_conn"), 2.0)
    assert state.stats.register_fail == {"dup_edge_conn": 1}
