"""The per-connection backoff: 1 s base doubling to a 32 s cap, jittered, never zero; quick
redials only while an edge that had served a healthy connection refuses."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adit.workers.backoff import HEALTHY_AFTER, QUICK_RETRIES, Backoff


def test_bounds_double_from_one_second_to_the_cap() -> None:
    low = Backoff(rand=lambda: 0.0)
    high = Backoff(rand=lambda: 0.999999)
    lows = [low.next_delay() for _ in range(8)]
    highs = [high.next_delay() for _ in range(8)]
    assert lows == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 16.0, 16.0]
    assert [round(h) for h in highs] == [1, 2, 4, 8, 16, 32, 32, 32]


@given(st.lists(st.floats(min_value=0.0, max_value=0.999999), min_size=1, max_size=40))
def test_never_zero_never_above_the_cap(draws: list[float]) -> None:
    values = iter(draws)
    backoff = Backoff(rand=lambda: next(values))
    for _ in draws:
        delay = backoff.next_delay()
        assert 0.5 <= delay < 32.0


def test_a_refusing_address_gets_at_most_six_attempts_in_thirty_seconds() -> None:
    # Even with the shortest jitter every time, the waits before attempts 2..7 add up to
    # 0.5 + 1 + 2 + 4 + 8 + 16 = 31.5 s: a seventh attempt cannot happen within 30 s.
    backoff = Backoff(rand=lambda: 0.0)
    elapsed, attempts = 0.0, 1
    while True:
        elapsed += backoff.next_delay()
        if elapsed > 30.0:
            break
        attempts += 1
    assert attempts == 6


def test_success_starts_again_from_the_base() -> None:
    backoff = Backoff(rand=lambda: 0.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.connected(now=100.0)
    assert backoff.attempts == 0
    assert backoff.next_delay() == 0.5


def test_a_healthy_connection_lost_redials_quickly_while_refused_then_backs_off() -> None:
    backoff = Backoff(rand=lambda: 0.0)
    backoff.connected(now=100.0)
    assert backoff.lost(now=100.0 + HEALTHY_AFTER) == 0.05
    quick = [(backoff.next_delay(refused=True), backoff.quick) for _ in range(QUICK_RETRIES)]
    assert quick == [(0.05, True)] * QUICK_RETRIES
    # The quick redials are spent: the usual schedule, from its base.
    after = [(backoff.next_delay(refused=True), backoff.quick) for _ in range(3)]
    assert after == [(0.5, False), (1.0, False), (2.0, False)]
    assert backoff.attempts == 1 + QUICK_RETRIES + 3


def test_a_failure_other_than_refused_ends_the_quick_redials() -> None:
    backoff = Backoff(rand=lambda: 0.0)
    backoff.connected(now=0.0)
    backoff.lost(now=60.0)
    assert backoff.next_delay(refused=True) == 0.05
    # A timeout, a TLS error or a refused registration: the edge is up, not restarting.
    assert backoff.next_delay(refused=False) == 0.5
    assert backoff.next_delay(refused=True) == 1.0


def test_a_connection_dropped_soon_after_registering_gets_no_quick_redials() -> None:
    backoff = Backoff(rand=lambda: 0.0)
    backoff.connected(now=10.0)
    assert backoff.lost(now=10.0 + HEALTHY_AFTER / 2) == 0.5
    assert backoff.next_delay(refused=True) == 1.0


@given(st.lists(st.floats(min_value=0.0, max_value=0.999999), min_size=1, max_size=40))
def test_a_flapping_edge_never_makes_a_connection_spin(draws: list[float]) -> None:
    # Each connection registers and is dropped 0.1 s later, refused dials in between: every
    # wait is the usual backoff's, never a quick one, never below 0.5 s.
    values = iter(draws)
    backoff = Backoff(rand=lambda: next(values))
    now = 0.0
    for index, _ in enumerate(draws):
        if index % 2 == 0:
            backoff.connected(now)
            now += 0.1
            delay = backoff.lost(now)
        else:
            delay = backoff.next_delay(refused=True)
        assert delay >= 0.5
        now += delay


def test_quick_redials_are_bounded_per_loss() -> None:
    # A healthy connection lost, then an edge that refuses for ever. With the shortest jitter
    # every time: the loss's redial and the quick ones within ~1 s, then 0.5 s, 1 s, 2 s...
    backoff = Backoff(rand=lambda: 0.0)
    backoff.connected(now=0.0)
    dials = [backoff.lost(now=HEALTHY_AFTER)]
    while dials[-1] < 10.0:
        dials.append(dials[-1] + backoff.next_delay(refused=True))
    assert sum(1 for t in dials if t <= 2.0) == 1 + QUICK_RETRIES + 1
    assert sum(1 for t in dials if t <= 10.0) == 1 + QUICK_RETRIES + 4
