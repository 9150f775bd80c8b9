"""How hard the fuzz tests try, and the guards every fuzzed decoder runs under.

The suite runs a bounded budget (the whole of ``tests/fuzz`` well under a minute on two busy
cores). ``ADIT_FUZZ_SCALE=N`` multiplies every test's examples by N; ``./run fuzz`` is the long
run (N = 100 unless given). Hypothesis keeps what it finds in ``.hypothesis/``, so a failure
of a long run is replayed first by the next run; a failure that was a bug becomes an explicit
``@example`` next to its test, so it stays tested whatever the database holds.

Two guards turn what Hypothesis cannot see into failures it can shrink:

* :func:`cpu_bounded`: an example that spins (a decoder looping on a few bytes) raises
  :class:`Hang` after seconds of *CPU* time, not wall time, so a busy machine cannot trip it;
* :func:`allocation_bounded`: an example whose Python allocations peak far beyond its input
  (a declared length allocated before the bytes arrive) raises :class:`Amplified`.
"""

from __future__ import annotations

import os
import signal
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from hypothesis import HealthCheck, settings

__all__ = ["SCALE", "Amplified", "Hang", "allocation_bounded", "budget", "cpu_bounded"]

SCALE = max(1, int(os.environ.get("ADIT_FUZZ_SCALE", "1")))

settings.register_profile(
    "adit-fuzz",
    # Timing on a shared two-core machine is noise: no deadline; cpu_bounded catches spinning.
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


def budget(examples: int) -> settings:
    """Hypothesis settings for one fuzz test: ``examples`` per run, times :data:`SCALE`."""
    return settings(settings.get_profile("adit-fuzz"), max_examples=examples * SCALE)


class Hang(Exception):
    """An example used more CPU time than any input of its size can need."""


class Amplified(Exception):
    """An example made the decoder allocate far more than its input."""


def _on_cpu_alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang("the decoder spun on this input")


@contextmanager
def cpu_bounded(seconds: float = 5.0) -> Iterator[None]:
    """Raise :class:`Hang` in the block once this process spent ``seconds`` of CPU in it."""
    previous = signal.signal(signal.SIGVTALRM, _on_cpu_alarm)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


@contextmanager
def allocation_bounded(
    input_size: int, *, factor: int = 64, floor: int = 1 << 20
) -> Iterator[None]:
    """Raise :class:`Amplified` if the block's Python allocations peaked above
    ``floor + factor * input_size`` bytes."""
    limit = floor + factor * input_size
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()
    if peak > limit:
        raise Amplified(f"{peak} bytes allocated for {input_size} bytes of input (limit {limit})")
