"""The liveness rule, sans-IO: when to ping, when a peer is unresponsive, when it is gone."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adit.protocol.liveness import Liveness, LivenessSettings, PeerState

SETTINGS = LivenessSettings(interval=1.0, allowance=1.5, timeout=5.0)


def _run(live: Liveness, until: float) -> list[tuple[float, str]]:
    """Follow the deadlines the way the adapter's timer does; what happened when."""
    log: list[tuple[float, str]] = []
    now = 0.0
    state = PeerState.ALIVE
    for _ in range(100):
        now = live.deadline(now)
        if now > until:
            break
        if live.poll(now) is not None:
            log.append((now, "ping"))
        new = live.state(now)
        if new is not state:
            log.append((now, new.value))
            state = new
        if state is PeerState.GONE:
            break
    return log


def test_a_silent_peer_is_pinged_then_unresponsive_then_gone() -> None:
    live = Liveness(SETTINGS, 0.0)
    assert _run(live, 60.0) == [(1.0, "ping"), (2.5, "unresponsive"), (5.0, "gone")]


def test_a_peer_that_answers_is_pinged_once_per_silence() -> None:
    live = Liveness(SETTINGS, 0.0)
    assert live.poll(live.deadline(0.0)) is not None  # at 1.0
    live.heard(1.01)  # the ACK
    assert live.state(1.01) is PeerState.ALIVE
    assert live.deadline(1.01) == pytest.approx(2.01)


def test_a_busy_peer_is_never_pinged() -> None:
    live = Liveness(SETTINGS, 0.0)
    now = 0.0
    for _ in range(1000):
        now += 0.5
        live.heard(now - 0.01)
        assert live.poll(now) is None
        assert live.state(now) is PeerState.ALIVE


def test_hearing_from_an_unresponsive_peer_makes_it_alive_again() -> None:
    live = Liveness(SETTINGS, 0.0)
    assert live.poll(1.0) is not None
    assert live.state(3.0) is PeerState.UNRESPONSIVE
    live.heard(3.1)
    assert live.state(3.1) is PeerState.ALIVE


def test_our_own_stall_is_not_the_peers_silence() -> None:
    """The timer asked for at 1.0 runs at 9.0 (we were stopped): no verdict on the peer."""
    live = Liveness(SETTINGS, 0.0)
    assert live.deadline(0.0) == 1.0
    assert live.poll(9.0) is None
    assert live.state(9.0) is PeerState.ALIVE


def test_pings_carry_distinct_payloads() -> None:
    live = Liveness(SETTINGS, 0.0)
    payloads = []
    now = 0.0
    for _ in range(5):
        now = live.deadline(now)
        payload = live.poll(now)
        assert payload is not None and len(payload) == 8
        payloads.append(payload)
        live.heard(now)
    assert len(set(payloads)) == 5


@pytest.mark.parametrize(
    ("interval", "allowance", "timeout"), [(0, 1, 5), (1, 0, 5), (1, 1, 2), (2, 2, 3)]
)
def test_settings_that_could_never_work_are_refused(
    interval: float, allowance: float, timeout: float
) -> None:
    with pytest.raises(ValueError, match="must be"):
        LivenessSettings(interval=interval, allowance=allowance, timeout=timeout)


@given(st.lists(st.floats(min_value=0.001, max_value=0.9), min_size=1, max_size=300))
def test_a_peer_heard_within_every_interval_is_always_alive(gaps: list[float]) -> None:
    live = Liveness(SETTINGS, 0.0)
    now = 0.0
    for gap in gaps:
        now += gap
        live.heard(now)
        live.poll(now)
        assert live.state(now) is PeerState.ALIVE


@given(st.floats(min_value=0.0, max_value=100.0))
def test_a_frozen_peer_is_unroutable_within_interval_plus_allowance(last: float) -> None:
    live = Liveness(SETTINGS, 0.0)
    live.heard(last)
    log = _run(live, 1000.0)
    unresponsive = next(t for t, what in log if what == "unresponsive")
    gone = next(t for t, what in log if what == "gone")
    assert unresponsive <= last + SETTINGS.interval + SETTINGS.allowance + 1e-9
    assert gone == pytest.approx(last + SETTINGS.timeout)
