"""Histograms and RPC call counters a worker keeps for cloudflared's families.

Workers observe; :class:`adit.ipc.messages.HistogramCounts` carries the state to the
supervisor, which adds the workers' buckets together (the bounds are these constants on both
sides, so the buckets line up).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from adit.ipc.messages import HistogramCounts, RpcCalls

__all__ = [
    "CONNECT_LATENCY_BUCKETS",
    "RPC_LATENCY_BUCKETS",
    "Histogram",
    "RpcCallCounters",
]

#: ``cloudflared_proxy_connect_latency`` (proxy/metrics.go), milliseconds.
CONNECT_LATENCY_BUCKETS: tuple[float, ...] = (1, 10, 25, 50, 100, 500, 1000, 5000)


def _exponential(start: float, factor: float, count: int) -> tuple[float, ...]:
    """Go's ``prometheus.ExponentialBuckets``: repeated multiplication, so the bounds are the
    same floats (``0.15000000000000002``) and print the same ``le`` labels."""
    bounds = []
    for _ in range(count):
        bounds.append(start)
        start *= factor
    return tuple(bounds)


#: ``cloudflared_rpc_{client,server}_latency_secs`` (tunnelrpc/metrics/metrics.go), seconds.
RPC_LATENCY_BUCKETS = _exponential(0.05, 3, 5)


@dataclass(slots=True)
class Histogram:
    """Observations per bucket of ``bounds`` (upper bounds, inclusive, plus +Inf)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is >= it."""
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> HistogramCounts:
        counts = self.counts or [0] * (len(self.bounds) + 1)
        return HistogramCounts(list(counts), self.total, sum(counts))


@dataclass(slots=True)
class _Calls:
    operations: int = 0
    failures: int = 0
    latency: Histogram = field(default_factory=lambda: Histogram(RPC_LATENCY_BUCKETS))


@dataclass(slots=True)
class RpcCallCounters:
    """RPCs this worker issued to the edge, or served for it, by cloudflared's ``handler``
    and ``method``."""

    calls: dict[tuple[str, str], _Calls] = field(default_factory=dict)

    def record(self, handler: str, method: str, seconds: float, *, failed: bool) -> None:
        """One call that took ``seconds`` (cloudflared observes the latency of failures too)."""
        calls = self.calls.setdefault((handler, method), _Calls())
        calls.operations += 1
        calls.failures += 1 if failed else 0
        calls.latency.observe(seconds)

    def snapshot(self) -> list[RpcCalls]:
        return [
            RpcCalls(handler, method, c.operations, c.failures, c.latency.snapshot())
            for (handler, method), c in sorted(self.calls.items())
        ]
