"""The cooldown of tunnels that flooded the edge (sans-IO: time passed in)."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from adit.edge.cooldown import Cooldowns


def test_each_flood_doubles_the_wait_up_to_the_longest() -> None:
    cooldowns = Cooldowns(first=1.0, longest=8.0, forget_after=600.0)
    tunnel = uuid.uuid4()
    waits = [cooldowns.punish(tunnel, now) for now in (0.0, 2.0, 5.0, 10.0, 20.0, 30.0)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert cooldowns.remaining(tunnel, 30.0) == 8.0
    assert cooldowns.remaining(tunnel, 38.0) == 0.0


def test_quiet_long_enough_and_it_is_forgotten() -> None:
    cooldowns = Cooldowns(first=1.0, longest=60.0, forget_after=100.0)
    tunnel = uuid.uuid4()
    cooldowns.punish(tunnel, 0.0)
    cooldowns.punish(tunnel, 1.0)
    assert cooldowns.punish(tunnel, 200.0) == 1.0  # a first offence again


def test_other_tunnels_never_wait() -> None:
    cooldowns = Cooldowns()
    cooldowns.punish(uuid.uuid4(), 0.0)
    assert cooldowns.remaining(uuid.uuid4(), 0.0) == 0.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=10_000), min_size=1, max_size=300))
def test_memory_is_bounded(times: list[float]) -> None:
    cooldowns = Cooldowns(max_tunnels=16)
    for now in sorted(times):
        cooldowns.punish(uuid.uuid4(), now)
        assert len(cooldowns._records) <= 16
