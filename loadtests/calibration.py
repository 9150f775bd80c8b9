"""How much slower this machine runs the same Python code after a short idle.

The fixed-rate latency scenario sends each request alone, a few milliseconds after the last:
every process on the path, nginx included, then spends several times the CPU that the same
request costs under load. This measures that effect without adit: one fixed piece of pure
Python timed back to back, then after 1 ms and 5 ms asleep (thread CPU time, median). Its
ratio is the machine's "cold factor", recorded with every run so that a latency figure can be
read against the machine it came from.
"""

from __future__ import annotations

import statistics
import time

__all__ = ["cold_factor"]

#: Samples per gap (the whole measurement takes about 1.5 s).
SAMPLES = 200
#: Idle gaps between samples, seconds: none, then about the fixed-rate scenario's.
GAPS = (0.0, 0.001, 0.005)


def _unit() -> int:
    """Dict and string work of roughly a request's size for the interpreter (~0.1–0.3 ms)."""
    table: dict[int, str] = {}
    for i in range(1500):
        table[i] = str(i)
    return sum(len(v) for v in table.values())


def _median_us(gap: float) -> float:
    times = []
    for _ in range(SAMPLES):
        if gap:
            time.sleep(gap)
        start = time.thread_time_ns()
        _unit()
        times.append(time.thread_time_ns() - start)
    return statistics.median(times) / 1000


def cold_factor() -> dict[str, float]:
    """The unit's median CPU µs at each gap, and the ratio of the 5 ms one to the warm one."""
    _median_us(0.0)  # warm the code up first
    figures = {f"unit_us_gap_{gap * 1000:g}ms": round(_median_us(gap), 1) for gap in GAPS}
    warm = figures["unit_us_gap_0ms"]
    figures["cold_factor_5ms"] = round(figures["unit_us_gap_5ms"] / warm, 2) if warm else 0.0
    return figures
