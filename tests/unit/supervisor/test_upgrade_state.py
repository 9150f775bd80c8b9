"""The in-place upgrade's decisions (SIGUSR2) and its hand-over format, without processes."""

from __future__ import annotations

import signal

import msgspec
import pytest

from adit.ipc.messages import ConnectionRegistered, EdgeTarget
from adit.ipc.rendezvous import WORKER_BOOT_ERROR
from adit.supervisor.predecessors import due_for_drain
from adit.supervisor.settings import SupervisorSettings
from adit.supervisor.state import (
    Exit,
    LoadSettings,
    Notify,
    Phase,
    PrepareUpgrade,
    SendCommand,
    SupervisorState,
    WritePidfile,
)
from adit.supervisor.upgrade_handover import (
    UPGRADE_FORMAT,
    HandoverUnreadable,
    InheritedWorker,
    UpgradeHandover,
    decode_handover,
)


def _state() -> SupervisorState:
    settings = SupervisorSettings(
        tunnel_id="6ff42ae2-765d-4adf-8112-31c55c1551ef",
        account_tag="acct",
        tunnel_secret=b"s" * 32,
        edges=(EdgeTarget("127.0.0.1", 7844),),
        ha_connections=2,
        workers=1,
        connector_id="c0ffee00-0000-4000-8000-000000000000",
        version="2026.11.0",
    )
    state = SupervisorState(settings, cpus=[0])
    state.start(0.0)
    state.worker_started(0, 100, 0.0)
    return state


def _register(state: SupervisorState, index: int) -> list[object]:
    event = ConnectionRegistered(0, index, f"conn-{index}", "TST1", "127.0.0.1:7844")
    return list(state.handle_event(event, 1.0))


def test_sigusr2_while_starting_waits_for_the_first_registration() -> None:
    state = _state()
    assert state.handle_signal(signal.SIGUSR2, 0.5) == []
    assert state.upgrade_queued
    actions = _register(state, 0)
    assert Notify("READY=1") in actions and actions[-1] == PrepareUpgrade()
    assert (state.upgrading, state.upgrade_queued) == (True, False)
    # A second SIGUSR2 during the preflight does not start another.
    assert state.handle_signal(signal.SIGUSR2, 2.0) == []


def test_sigusr2_during_a_reload_begins_when_it_ends() -> None:
    state = _state()
    _register(state, 0)
    assert LoadSettings() in state.handle_signal(signal.SIGHUP, 1.0)
    assert state.handle_signal(signal.SIGUSR2, 1.1) == []
    actions = state.settings_rejected("bad", 1.2)
    assert Notify("READY=1") in actions and actions[-1] == PrepareUpgrade()


def test_a_refused_upgrade_changes_nothing_but_the_metric_and_status() -> None:
    state = _state()
    _register(state, 0)
    assert state.handle_signal(signal.SIGUSR2, 1.0) == [PrepareUpgrade()]
    actions = state.upgrade_refused("the installed adit 9 does not start:\n  ImportError", 2.0)
    (status,) = (a for a in actions if isinstance(a, Notify))
    assert status.state.startswith("STATUS=running: 1/2 connections registered")
    assert (
        ", adit 2026.11.0; upgrade refused: the installed adit 9 does not start: ImportError"
        in (status.state)
    )
    assert "(refusal 1)" in status.state
    assert state.stats.upgrade_failures == 1 and not state.upgrading
    assert state.phase is Phase.RUNNING and state.ready
    assert state.handle_signal(signal.SIGUSR2, 3.0) == [PrepareUpgrade()]


def test_sigusr2_while_draining_is_ignored() -> None:
    state = _state()
    _register(state, 0)
    state.handle_signal(signal.SIGTERM, 1.0)
    assert state.handle_signal(signal.SIGUSR2, 1.1) == []
    assert not state.upgrade_queued


def test_inherited_connections_keep_ready_and_a_second_upgrade_waits_for_them() -> None:
    state = _state()
    assert state.adopt_predecessors(2) == [WritePidfile(), Notify("READY=1")]
    assert state.ready and state.ready_connections == 2 and state.phase is Phase.RUNNING
    assert Notify("READY=1") not in _register(state, 0)  # said once, at the adoption
    assert state.handle_signal(signal.SIGUSR2, 2.0) == []
    assert state.predecessors_changed(0, alive=False, now=3.0)[-1] == PrepareUpgrade()


def test_new_workers_that_fail_do_not_stop_the_old_ones_until_they_are_gone() -> None:
    state = _state()
    state.adopt_predecessors(2)
    actions = state.worker_exited(0, 100, WORKER_BOOT_ERROR, 1.0)
    assert not any(isinstance(a, Exit | SendCommand) for a in actions)
    assert state.phase is Phase.RUNNING and state.ready and state.next_deadline() is None
    assert "the new workers fail: worker 0 could not start" in (state.upgrade_error or "")
    actions = state.predecessors_changed(0, alive=False, now=2.0)
    assert actions[-1] == Exit(1, "worker 0 could not start (exit code 3)")


def test_an_old_worker_drains_once_its_connections_are_registered_again() -> None:
    assert not due_for_drain([0, 2], registered=[0], wanted=range(4))
    assert due_for_drain([0, 2], registered=[0, 2], wanted=range(4))
    # Fewer connections now: the ones still wanted count; none wanted: all the new ones.
    assert due_for_drain([1, 3], registered=[1], wanted=range(2))
    assert not due_for_drain([2, 3], registered=[0], wanted=range(2))
    assert due_for_drain([2, 3], registered=[0, 1], wanted=range(2))


def _handover(**changes: object) -> dict[str, object]:
    handover = UpgradeHandover(
        format=UPGRADE_FORMAT,
        from_version="2026.11.0",
        settings=b"\x80",
        args=["tunnel", "run"],
        inherited_dir="/run/adit/adit-0",
        workers=[InheritedWorker(slot=0, pid=10, stdin=5, conn_indexes=[0], registered=[0])],
    )
    data: dict[str, object] = msgspec.to_builtins(handover, builtin_types=(bytes,))
    data.update(changes)
    return data


def test_the_handover_round_trips() -> None:
    data = msgspec.msgpack.encode(_handover())
    assert decode_handover(data).workers[0].stdin == 5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": UPGRADE_FORMAT + 1}, f"format {UPGRADE_FORMAT + 1}; this adit reads format"),
        ({"later_field": 1}, "is not readable by this adit: Object contains unknown field"),
        ({"workers": "x"}, "is not readable by this adit"),
    ],
)
def test_a_handover_this_code_cannot_read_is_refused(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(HandoverUnreadable, match=message.replace("(", r"\(")):
        decode_handover(msgspec.msgpack.encode(_handover(**changes)))
    with pytest.raises(HandoverUnreadable, match="not readable"):
        decode_handover(b"\xc1")
