"""SupervisorState and the edge's configuration pushes: a push a worker received becomes the
next ingress snapshot of every worker (the reload path), only if newer, with or without local
ingress (as cloudflared's orchestrator); a reload keeps it."""

from __future__ import annotations

import signal
from collections.abc import Sequence

from adit.ipc.messages import (
    ApplyIngress,
    ConnectionRegistered,
    EdgeTarget,
    Heartbeat,
    IngressSnapshot,
    RemoteConfigReceived,
    Start,
)
from adit.supervisor.settings import SupervisorSettings
from adit.supervisor.state import SendCommand, SupervisorState

PUSHED = b'{"ingress":[{"service":"http_status:418"}]}'
NEWER = b'{"ingress":[{"service":"http_status:202"}]}'


def _settings(ingress: IngressSnapshot) -> SupervisorSettings:
    return SupervisorSettings(
        tunnel_id="6ff42ae2-765d-4adf-8112-31c55c1551ef",
        account_tag="acct",
        tunnel_secret=b"s" * 32,
        edges=(EdgeTarget("127.0.0.1", 7844),),
        ingress=ingress,
        ha_connections=2,
        workers=2,
        worker_timeout=5.0,
        connector_id="c0ffee00-0000-4000-8000-000000000000",
    )


def _running(ingress: IngressSnapshot) -> SupervisorState:
    state = SupervisorState(_settings(ingress), cpus=[0, 1])
    state.start(0.0)
    for slot in range(2):
        state.worker_started(slot, 100 + slot, 0.0)
        state.handle_event(Heartbeat(slot, 100 + slot, 0.0, 0), 0.5)
    state.handle_event(ConnectionRegistered(0, 0, "c0", "TST", "127.0.0.1:7844"), 1.0)
    return state


def _applied(actions: Sequence[object]) -> dict[int, IngressSnapshot]:
    return {
        a.slot: a.command.snapshot
        for a in actions
        if isinstance(a, SendCommand) and isinstance(a.command, ApplyIngress)
    }


def test_a_newer_push_goes_to_every_worker_once() -> None:
    state = _running(IngressSnapshot(version=1))
    applied = _applied(state.handle_event(RemoteConfigReceived(1, 5, PUSHED), 2.0))
    assert sorted(applied) == [0, 1]
    snapshot = applied[0]
    assert (snapshot.version, snapshot.remote_version, snapshot.remote_config) == (2, 5, PUSHED)
    # The same version from the other worker's connection, or an older one: nothing.
    assert state.handle_event(RemoteConfigReceived(0, 5, PUSHED), 2.1) == []
    assert state.handle_event(RemoteConfigReceived(0, 4, NEWER), 2.2) == []
    assert state.stats.remote_config_version == 5  # cloudflared_orchestration_config_version
    # A worker started now gets it with its settings.
    start = state.worker_settings(1)
    assert Start(start).settings.ingress.remote_config == PUSHED


def test_a_push_replaces_local_ingress_as_cloudflareds_orchestrator_does() -> None:
    local = IngressSnapshot(version=1, rules=[{"service": "http_status:404"}])
    state = _running(local)
    snapshot = _applied(state.handle_event(RemoteConfigReceived(0, 5, PUSHED), 2.0))[0]
    assert (snapshot.remote_config, snapshot.version) == (PUSHED, 2)
    hello = _running(IngressSnapshot(version=1, cli_hello_world=True))
    assert _applied(hello.handle_event(RemoteConfigReceived(0, 5, PUSHED), 2.0))


def test_a_reload_keeps_the_pushed_configuration() -> None:
    state = _running(IngressSnapshot(version=1))
    state.handle_event(RemoteConfigReceived(0, 5, PUSHED), 2.0)
    state.handle_signal(signal.SIGHUP, 3.0)
    actions = state.settings_loaded(_settings(IngressSnapshot(version=1)), 3.5)
    assert _applied(actions) == {}  # nothing changed for the workers
    assert state.settings.ingress.remote_config == PUSHED
    assert state.settings.ingress.remote_version == 5
    # A reload that brings local ingress: the edge still decides until the process ends.
    state.handle_signal(signal.SIGHUP, 4.0)
    rules: list[dict[str, object]] = [{"service": "http_status:404"}]
    actions = state.settings_loaded(_settings(IngressSnapshot(version=1, rules=rules)), 4.5)
    snapshot = _applied(actions)[0]  # the local part changed: a new snapshot, the push kept
    assert (snapshot.rules, snapshot.remote_config, snapshot.remote_version) == (rules, PUSHED, 5)
    assert _applied(state.handle_event(RemoteConfigReceived(0, 6, NEWER), 5.0))
    assert state.stats.remote_config_version == 6
