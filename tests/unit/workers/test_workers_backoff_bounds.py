"""The per-connection backoff: 1 s base doubling to a 32 s cap, jittered, never zero."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adit.workers.backoff import Backoff


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


def test_reset_after_success_starts_again_from_the_base() -> None:
    backoff = Backoff(rand=lambda: 0.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay() == 0.5
