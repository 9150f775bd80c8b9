"""cloudflared's ``cloudflared_tcp_*``, ``cloudflared_proxy_*``, ``cloudflared_config_*``,
``cloudflared_rpc_*`` and ``flow_client_*`` families (and ``user_hostnames_counts``), summed
over the live workers.

Names, types, help texts, labels and histogram buckets are cloudflared's (proxy/metrics.go,
connection/metrics.go, tunnelrpc/metrics/metrics.go, flow/metrics.go). The series of a
labelled family appear once a call or refusal with those labels happened, as Go's vectors
do. A replaced worker's counters start again from zero (query with ``rate``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from adit.ipc.messages import ConnectorCounters, HistogramCounts
from adit.ipc.telemetry import CONNECT_LATENCY_BUCKETS, RPC_LATENCY_BUCKETS
from adit.supervisor.standard_metrics import go_number
from adit.supervisor.stats import TunnelStats

__all__ = ["ConnectorCollector"]

_Key = tuple[str, str]


def _counter(name: str, documentation: str, samples: list[tuple[dict[str, str], float]]) -> Metric:
    """A counter under exactly ``name``, as Go's client writes it (no ``_total``)."""
    metric = Metric(name, documentation, "counter")
    for labels, value in samples:
        metric.add_sample(name, labels, value)
    return metric


def _sum_histograms(histograms: list[HistogramCounts], size: int) -> HistogramCounts:
    buckets = [0] * size
    for each in histograms:
        for position, count in enumerate(each.buckets[:size]):
            buckets[position] += count
    return HistogramCounts(
        buckets, sum(h.total for h in histograms), sum(h.count for h in histograms)
    )


def _cumulative(bounds: tuple[float, ...], counts: HistogramCounts) -> list[tuple[str, float]]:
    """Go's ``le`` buckets (cumulative, +Inf last) from per-bucket counts."""
    running = 0
    out = []
    for bound, count in zip((*bounds, float("inf")), counts.buckets, strict=False):
        running += count
        out.append((go_number(bound), float(running)))
    return out


class ConnectorCollector(Collector):
    """Yields the families of :mod:`adit.ipc.telemetry`'s counters from the workers."""

    def __init__(self, stats: TunnelStats, quick_tunnel_url: str = "") -> None:
        self._stats = stats
        self._quick_tunnel_url = quick_tunnel_url

    def collect(self) -> Iterator[Metric]:
        counters = self._stats.connector_counters()
        if self._quick_tunnel_url:
            # Set once for a quick tunnel (connection/observer.go SendURL), by its URL.
            yield _counter(
                "cloudflared_tunnel_user_hostnames_counts",
                "Which user hostnames cloudflared is serving",
                [({"userHostname": self._quick_tunnel_url}, 1)],
            )
        yield from _collect_proxy(counters)
        yield _counter(
            "cloudflared_config_local_config_pushes",
            "Number of local configuration pushes to the edge",
            [({}, sum(c.local_config_pushes for c in counters))],
        )
        yield _counter(
            "cloudflared_config_local_config_pushes_errors",
            "Number of errors occurred during local configuration pushes",
            [({}, sum(c.local_config_push_errors for c in counters))],
        )
        yield from _collect_rpc(counters, "client")
        yield from _collect_rpc(counters, "server")
        yield from _collect_flow_limits(counters)


def _collect_proxy(counters: list[ConnectorCounters]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "cloudflared_tcp_active_sessions",
        "Concurrent count of TCP sessions that are being proxied to any origin",
        value=sum(c.tcp_active_sessions for c in counters),
    )
    yield _counter(
        "cloudflared_tcp_total_sessions",
        "Total count of TCP sessions that have been proxied to any origin",
        [({}, sum(c.tcp_total_sessions for c in counters))],
    )
    latency = _sum_histograms(
        [c.connect_latency for c in counters if c.connect_latency is not None],
        len(CONNECT_LATENCY_BUCKETS) + 1,
    )
    yield HistogramMetricFamily(
        "cloudflared_proxy_connect_latency",
        "Time it takes to establish and acknowledge connections in milliseconds",
        buckets=_cumulative(CONNECT_LATENCY_BUCKETS, latency),
        sum_value=latency.total,
    )
    yield _counter(
        "cloudflared_proxy_connect_streams_errors",
        "Total count of failure to establish and acknowledge connections",
        [({}, sum(c.connect_stream_errors for c in counters))],
    )


def _collect_rpc(counters: list[ConnectorCounters], side: str) -> Iterator[Metric]:
    """``cloudflared_rpc_{side}_*``: ``client`` for the RPCs issued to the edge, ``server``
    for the ones served for it (help texts differ only in "requested"/"served")."""
    operations: dict[_Key, int] = {}
    failures: dict[_Key, int] = {}
    latencies: dict[_Key, list[HistogramCounts]] = {}
    for each in counters:
        for calls in each.rpc_client if side == "client" else each.rpc_server:
            key = (calls.handler, calls.method)
            operations[key] = operations.get(key, 0) + calls.operations
            if calls.failures:
                failures[key] = failures.get(key, 0) + calls.failures
            if calls.latency is not None:
                latencies.setdefault(key, []).append(calls.latency)
    verb = "requested" if side == "client" else "served"
    latency = HistogramMetricFamily(
        f"cloudflared_rpc_{side}_latency_secs",
        f"Latency of rpc methods by handler {verb}",
        labels=["handler", "method"],
    )
    for key, histograms in sorted(latencies.items()):
        summed = _sum_histograms(histograms, len(RPC_LATENCY_BUCKETS) + 1)
        latency.add_metric(
            list(key), _cumulative(RPC_LATENCY_BUCKETS, summed), sum_value=summed.total
        )
    yield latency
    yield _counter(
        f"cloudflared_rpc_{side}_operations",
        f"Number of rpc methods by handler {verb}",
        [({"handler": h, "method": m}, n) for (h, m), n in sorted(operations.items())],
    )
    failures_help = (
        "Number of rpc method failures by handler requested"
        if side == "client"
        else "Number of rpc methods failures by handler served"
    )
    yield _counter(
        f"cloudflared_rpc_{side}_failures",
        failures_help,
        [({"handler": h, "method": m}, n) for (h, m), n in sorted(failures.items())],
    )


def _collect_flow_limits(counters: list[ConnectorCounters]) -> Iterator[Metric]:
    """flow/metrics.go: flows refused by ``--max-active-flows``, by ``flow_type``."""
    refused: dict[str, int] = {}
    for each in counters:
        for flow_type, n in each.flows_rate_limited.items():
            refused[flow_type] = refused.get(flow_type, 0) + n
    yield _counter(
        "flow_client_registrations_rate_limited_total",
        "Count registrations dropped due to high number of concurrent flows being handled",
        [({"flow_type": t}, n) for t, n in sorted(refused.items())],
    )
