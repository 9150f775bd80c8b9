"""The supervisor's Prometheus registry: worker telemetry summed under cloudflared's names.

Workers push cumulative :class:`StatsSnapshot` counters; the supervisor keeps the latest per
slot and sums them at scrape time. When a worker is replaced its slot's counters start again
from zero, so the sums can step down once: query them with ``sum(rate(...))``, which handles
counter resets. Gauges of a dead worker are dropped with it.

Per-worker families (``adit_worker_*{slot}``) come from :class:`WorkerSample` values the
supervisor measures at scrape time (RSS and CPU with psutil, loop lag from the heartbeat).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_float_to_go_string

from adit.supervisor.connector_metrics import ConnectorCollector
from adit.supervisor.quic_metrics import QuicClientCollector
from adit.supervisor.standard_metrics import process_extras
from adit.supervisor.stats import TunnelStats, WorkerSample, WorkerSampler

__all__ = ["TunnelCollector", "TunnelStats", "WorkerSample", "build_registry", "render_metrics"]


def _counter(name: str, documentation: str, samples: list[tuple[dict[str, str], float]]) -> Metric:
    """A counter exposed under exactly ``name``, as Go's client does (:func:`render_metrics`)."""
    metric = Metric(name, documentation, "counter")
    for labels, value in samples:
        metric.add_sample(name, labels, value)
    return metric


class TunnelCollector(Collector):
    """Yields the ``cloudflared_tunnel_*`` families and ``build_info`` from :class:`TunnelStats`."""

    def __init__(self, stats: TunnelStats, workers: WorkerSampler | None = None) -> None:
        self._stats = stats
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        """One family per metric, computed at scrape time."""
        stats = self._stats
        build = GaugeMetricFamily(
            "build_info",
            "Build and version information",
            labels=["goversion", "type", "revision", "version"],
        )
        build.add_metric([f"python{platform.python_version()}", "", "", stats.version], 1)
        yield build
        yield _counter(
            "cloudflared_tunnel_total_requests",
            "Amount of requests proxied through all the tunnels",
            [({}, stats.total_requests)],
        )
        yield _counter(
            "cloudflared_tunnel_request_errors",
            "Amount of errors due to proxying",
            [({}, stats.request_errors)],
        )
        yield GaugeMetricFamily(
            "cloudflared_tunnel_concurrent_requests_per_tunnel",
            "Concurrent requests proxied through each tunnel",
            value=stats.concurrent_requests,
        )
        yield _counter(
            "cloudflared_tunnel_response_by_code",
            "Count of responses by HTTP status code",
            [({"status_code": code}, n) for code, n in sorted(stats.responses_by_code().items())],
        )
        yield GaugeMetricFamily(
            "cloudflared_tunnel_ha_connections",
            "Number of active ha connections",
            value=stats.ha_connections,
        )
        yield _counter(
            "cloudflared_tunnel_tunnel_register_success",
            "Count of successful tunnel registrations",
            [({"rpcName": "registerConnection"}, stats.register_success)],
        )
        yield _counter(
            "cloudflared_tunnel_tunnel_register_fail",
            "Count of tunnel registration errors by type",
            [
                ({"error": error, "rpcName": "registerConnection"}, n)
                for error, n in sorted(stats.register_fail.items())
            ],
        )
        yield GaugeMetricFamily(
            "cloudflared_tunnel_active_streams",
            "Number of active streams",
            value=stats.active_streams,
        )
        yield GaugeMetricFamily(
            "cloudflared_tunnel_timer_retries",
            "Connections waiting to retry after losing the edge",
            value=stats.timer_retries,
        )
        locations = GaugeMetricFamily(
            "cloudflared_tunnel_server_locations",
            "Where each tunnel is connected to. 1 means current location, 0 means previous "
            "locations.",
            labels=["connection_id", "edge_location"],
        )
        for conn_id, location, current in stats.locations():
            locations.add_metric([conn_id, location], current)
        yield locations
        yield GaugeMetricFamily(
            "cloudflared_orchestration_config_version",
            "Configuration Version",
            # cloudflared's is the remote version; a locally managed adit's, its own.
            value=stats.remote_config_version
            if stats.remote_config_version >= 0
            else stats.config_version,
        )
        yield GaugeMetricFamily(
            "adit_config_version",
            "Version of the configuration in force (1 at start, +1 per accepted change)",
            value=stats.config_version,
        )
        yield _counter(
            "adit_config_reload_failures_total",
            "Reloads whose configuration was rejected",
            [({}, stats.reload_failures)],
        )
        yield GaugeMetricFamily(
            "adit_config_last_reload_success",
            "1 if the last reload was accepted (or none happened), else 0",
            value=1 if stats.last_reload_success else 0,
        )
        yield _counter(
            "adit_upgrade_failures_total",
            "In-place upgrades (SIGUSR2) refused because the installed adit did not start",
            [({}, stats.upgrade_failures)],
        )
        yield from _collect_udp(stats)
        yield from self._collect_workers()

    def _collect_workers(self) -> Iterator[Metric]:
        samples = list(self._workers()) if self._workers is not None else []
        rss = GaugeMetricFamily(
            "adit_worker_rss_bytes", "Resident memory of each worker", labels=["slot"]
        )
        lag = GaugeMetricFamily(
            "adit_worker_loop_lag_seconds",
            "Event loop lag measured by each worker's heartbeat",
            labels=["slot"],
        )
        cpu: list[tuple[dict[str, str], float]] = []
        restarts: list[tuple[dict[str, str], float]] = []
        for sample in sorted(samples, key=lambda s: s.slot):
            slot = str(sample.slot)
            if sample.rss_bytes is not None:
                rss.add_metric([slot], sample.rss_bytes)
            if sample.cpu_seconds is not None:
                cpu.append(({"slot": slot}, sample.cpu_seconds))
            lag.add_metric([slot], sample.loop_lag)
            restarts.append(({"slot": slot}, sample.restarts))
        yield rss
        yield _counter(
            "adit_worker_cpu_seconds_total", "CPU time (user+system) of each worker", cpu
        )
        yield lag
        yield _counter(
            "adit_worker_restarts_total", "Times each worker slot was restarted", restarts
        )


def _collect_udp(stats: TunnelStats) -> Iterator[Metric]:
    """cloudflared's ``cloudflared_udp_*`` families (datagramsession/metrics.go for v2
    sessions, quic/v3/metrics.go for v3 flows and dropped datagrams), from the workers'
    counters; v3's appear per ``conn_index`` once a flow used one, as Go's vectors do."""
    udp = stats.udp()
    yield GaugeMetricFamily(
        "cloudflared_udp_active_sessions",
        "Concurrent count of UDP sessions that are being proxied to any origin",
        value=udp.active_sessions,
    )
    yield _counter(
        "cloudflared_udp_total_sessions",
        "Total count of UDP sessions that have been proxied to any origin",
        [({}, udp.total_sessions)],
    )
    active = GaugeMetricFamily(
        "cloudflared_udp_active_flows",
        "Concurrent count of UDP flows that are being proxied to any origin",
        labels=["conn_index"],
    )
    for conn_index, count in sorted(udp.active_flows.items()):
        active.add_metric([str(conn_index)], count)
    yield active
    yield _counter(
        "cloudflared_udp_total_flows",
        "Total count of UDP flows that have been proxied to any origin",
        [({"conn_index": str(i)}, n) for i, n in sorted(udp.total_flows.items())],
    )
    yield _counter(
        "cloudflared_udp_failed_flows",
        "Total count of flows that errored and closed",
        [({"conn_index": str(i)}, n) for i, n in sorted(udp.failed_flows.items())],
    )
    yield _counter(
        "cloudflared_udp_retry_flow_responses",
        "Total count of UDP flows that have had to send their registration response more than once",
        [({"conn_index": str(i)}, n) for i, n in sorted(udp.retry_flow_responses.items())],
    )
    yield _counter(
        "cloudflared_udp_unsupported_remote_command_total",
        "Total count of unsupported remote RPC commands called",
        [
            ({"command": command, "conn_index": str(i)}, n)
            for i, commands in sorted(udp.unsupported_remote_commands.items())
            for command, n in sorted(commands.items())
        ],
    )
    yield _counter(
        "cloudflared_udp_dropped_datagrams",
        "Total count of UDP dropped datagrams",
        [
            ({"conn_index": str(i), "reason": reason}, n)
            for i, reasons in sorted(udp.dropped_datagrams.items())
            for reason, n in sorted(reasons.items())
        ],
    )


def build_registry(
    stats: TunnelStats, workers: WorkerSampler | None = None, *, quick_tunnel_url: str = ""
) -> CollectorRegistry:
    """A private registry (not the global default) with the tunnel and process collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TunnelCollector(stats, workers))
    registry.register(QuicClientCollector(stats))
    registry.register(ConnectorCollector(stats, quick_tunnel_url))
    return registry


def _go_float(value: float) -> str:
    """Go's float formatting (``1.0``, ``+Inf``), as the text exposition writes values."""
    text: str = _untyped_float_to_go_string(value)  # type: ignore[no-untyped-call]
    return text


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_order(item: tuple[str, str]) -> tuple[bool, str]:
    """Labels by name, a histogram's ``le`` last (as Go writes them)."""
    return item[0] == "le", item[0]


def _render_family(metric: Metric) -> str:
    doc = metric.documentation.replace("\\", "\\\\").replace("\n", "\\n")
    lines = [f"# HELP {metric.name} {doc}", f"# TYPE {metric.name} {metric.type}"]
    for sample in metric.samples:
        pairs = sorted(sample.labels.items(), key=_label_order)
        labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs)
        name = f"{sample.name}{{{labels}}}" if labels else sample.name
        lines.append(f"{name} {_go_float(sample.value)}")
    return "\n".join(lines) + "\n"


def render_metrics(registry: CollectorRegistry) -> bytes:
    """Prometheus text format 0.0.4 of ``registry`` plus this process's ``process_*`` metrics.

    The tunnel families are rendered here rather than by ``generate_latest``, which appends
    ``_total`` to every counter's name (``cloudflared_tunnel_total_requests_total``) and would
    break dashboards written for cloudflared's Go client.
    """
    text = "".join(_render_family(metric) for metric in registry.collect())
    return text.encode("utf-8") + _process_metrics() + process_extras()


_PROCESS_REGISTRY = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=_PROCESS_REGISTRY)


def _process_metrics() -> bytes:
    data: bytes = generate_latest(_PROCESS_REGISTRY)
    return data
