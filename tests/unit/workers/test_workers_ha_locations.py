"""HA address choice: spread over locations, one connection per address, moves on dial errors."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from adit.ipc.messages import EdgeTarget
from adit.workers.locations import fallback, home_address, spread


def _edges(locations: list[int]) -> list[EdgeTarget]:
    return [EdgeTarget("127.0.0.1", 7000 + i, location=loc) for i, loc in enumerate(locations)]


def test_four_connections_over_two_locations_are_two_and_two() -> None:
    edges = _edges([0, 0, 1, 1])  # a1 a2 b1 b2, as two edge processes would give them
    homes = [home_address(edges, i) for i in range(4)]
    assert sorted(homes) == [0, 1, 2, 3]  # one connection per address
    assert Counter(edges[h].location for h in homes) == {0: 2, 1: 2}
    assert [edges[h].location for h in homes[:2]] == [0, 1]  # conn 0 and 1 in different places


def test_two_connections_over_four_addresses_use_both_locations() -> None:
    edges = _edges([0, 0, 1, 1])
    assert {edges[home_address(edges, i)].location for i in range(2)} == {0, 1}


def test_alternating_pseudo_locations_keep_the_list_order() -> None:
    edges = _edges([0, 1, 0, 1])  # a plain --edge list, split alternately like cloudflared
    assert spread(edges) == [0, 1, 2, 3]


@given(
    st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=12),
    st.integers(min_value=1, max_value=12),
)
def test_losing_any_location_keeps_at_least_half(locations: list[int], wanted: int) -> None:
    edges = _edges(locations)
    connections = min(wanted, len(edges))
    per_location = Counter(edges[home_address(edges, i)].location for i in range(connections))
    assert len({home_address(edges, i) for i in range(connections)}) == connections
    # Balanced: a location holds at most one more than another, unless that one is full.
    sizes = Counter(locations)
    for busy in sizes:
        for other in sizes:
            assert per_location[busy] <= per_location[other] + 1 or (
                per_location[other] == sizes[other]
            )
    if len(sizes) >= 2 and all(size >= connections for size in sizes.values()):
        assert max(per_location.values()) * 2 <= connections + 1


def test_a_dial_error_moves_to_a_free_address_in_the_emptier_location() -> None:
    # Six addresses, four connections: 4 and 5 are spare, one in each location.
    edges = _edges([0, 1, 0, 1, 0, 1])
    in_use = {0: 0, 1: 1, 2: 2}  # conn 3 (home: address 3, location 1) just failed
    # Location 0 holds two of our connections, location 1 one: the spare in 1 wins.
    assert fallback(edges, 3, 3, 4, in_use) == 5
    # Location 0 holds one of ours, location 1 one: a tie goes to another location than the
    # failing one's, so the spare in location 0.
    assert fallback(edges, 3, 3, 4, {0: 0, 1: 1}) == 4


def test_no_free_address_keeps_the_current_one() -> None:
    edges = _edges([0, 0, 1, 1])
    in_use = {0: 0, 1: 2}
    # Addresses 1 and 3 are the homes of connections 2 and 3 (maybe in another worker).
    assert fallback(edges, 3, 3, 4, in_use) == 3


def test_learned_location_names_override_pseudo_locations() -> None:
    edges = _edges([0, 1, 0, 1, 0, 1])
    # The edges said 0, 1, 2 are "a" and 3 is "b": spare 4 is learned "b" by then, 5 unknown.
    learned = {0: "a", 1: "a", 2: "a", 3: "b", 4: "b"}
    in_use = {0: 0, 1: 1, 2: 2}
    # Location "a" holds three of ours; "b" none (conn 3 failed there) and #1 none.
    choice = fallback(edges, 3, 3, 4, in_use, learned)
    assert choice in (4, 5)
    assert learned.get(choice, "#1") != "a"


def test_a_failed_connection_can_return_home() -> None:
    edges = _edges([0, 1, 0, 1])
    # conn 1 had moved to address 3 (spare: only 2 connections); its home 1 is free again.
    assert fallback(edges, 1, 3, 2, {0: 0}) == 1
