"""The garbage collector around start-up: off while ``tunnel run`` loads, then on and frozen."""

from __future__ import annotations

import gc

from adit.supervisor.launch import collect_again


def test_collect_again_turns_the_collector_on_with_the_survivors_frozen() -> None:
    gc.disable()
    try:
        kept: list[list[int]] = [
            [] for _ in range(10)
        ]  # tracked objects alive when the collector comes back
        collect_again()
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()
        gc.enable()


def test_collect_again_leaves_an_enabled_collector_alone() -> None:
    assert gc.isenabled()
    before = gc.get_freeze_count()
    collect_again()
    assert gc.isenabled()
    assert gc.get_freeze_count() == before
