"""cloudflared's ``quic_client_*`` families (quic/metrics.go), summed over the workers.

Names, types, labels and help texts are cloudflared's. As there, the families exist only
once a QUIC dial happened (``registerClient.Do`` at the first connection's tracer): until a
worker reports QUIC telemetry, none is exposed. Counters are summed per ``conn_index`` over
the live workers (an index served by two workers while a reload moves it counts in both);
gauges show the latest connection of each index. A replaced worker's counters start again
from zero, like the tunnel counters (query with ``rate``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from adit.ipc.messages import QuicConnectionStats
from adit.supervisor.stats import TunnelStats

__all__ = ["QuicClientCollector"]

_Samples = dict[tuple[str, ...], float]

#: (name, help, field of QuicConnectionStats) of the per-index gauges.
_GAUGES = (
    (
        "quic_client_max_udp_payload",
        "Maximum UDP payload size in bytes for a QUIC packet",
        "max_udp_payload",
    ),
    ("quic_client_min_rtt", "Lowest RTT measured on a connection in millisec", "min_rtt_ms"),
    ("quic_client_latest_rtt", "Latest RTT measured on a connection", "latest_rtt_ms"),
    (
        "quic_client_smoothed_rtt",
        "Calculated smoothed RTT measured on a connection in millisec",
        "smoothed_rtt_ms",
    ),
    ("quic_client_mtu", "Current maximum transmission unit (MTU) of a connection", "mtu"),
    ("quic_client_congestion_window", "Current congestion window size", "congestion_window"),
    (
        "quic_client_congestion_state",
        "Current congestion control state (0=slow_start, 1=congestion_avoidance, "
        "2=application_limited, 3=recovery, -1=unknown)",
        "congestion_state",
    ),
)


def _counter(name: str, documentation: str, labels: tuple[str, ...], samples: _Samples) -> Metric:
    """A counter under exactly ``name``, as Go's client writes it (no ``_total``)."""
    metric = Metric(name, documentation, "counter")
    for values, value in sorted(samples.items()):
        metric.add_sample(name, dict(zip(labels, values, strict=True)), value)
    return metric


def _add(samples: _Samples, key: tuple[str, ...], value: float) -> None:
    samples[key] = samples.get(key, 0) + value


class QuicClientCollector(Collector):
    """Yields the ``quic_client_*`` families from the workers' QUIC telemetry."""

    def __init__(self, stats: TunnelStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        clients = self._stats.quic_clients()
        if not clients:
            return
        connections: list[QuicConnectionStats] = [c for q in clients for c in q.connections]
        sent_frames: _Samples = {}
        received_frames: _Samples = {}
        sent_bytes: _Samples = {}
        receive_bytes: _Samples = {}
        dropped: _Samples = {}
        lost: _Samples = {}
        for each in connections:
            index = str(each.conn_index)
            for frame, n in each.sent_frames.items():
                _add(sent_frames, (index, frame), n)
            for frame, n in each.received_frames.items():
                _add(received_frames, (index, frame), n)
            _add(sent_bytes, (index,), each.sent_bytes)
            _add(receive_bytes, (index,), each.receive_bytes)
            for packet_type, reason, n in each.dropped_packets:
                _add(dropped, (index, packet_type, reason), n)
            for reason, n in each.lost_packets.items():
                _add(lost, (index, reason), n)
        yield _counter(
            "quic_client_total_connections",
            "Number of connections initiated",
            (),
            {(): sum(q.total_connections for q in clients)},
        )
        yield _counter(
            "quic_client_closed_connections",
            "Number of connections that has been closed",
            (),
            {(): sum(q.closed_connections for q in clients)},
        )
        yield _counter(
            "quic_client_sent_frames",
            "Number of frames that have been sent through a connection",
            ("conn_index", "frame_type"),
            sent_frames,
        )
        yield _counter(
            "quic_client_sent_bytes",
            "Number of bytes that have been sent through a connection",
            ("conn_index",),
            sent_bytes,
        )
        yield _counter(
            "quic_client_received_frames",
            "Number of frames that have been received through a connection",
            ("conn_index", "frame_type"),
            received_frames,
        )
        yield _counter(
            "quic_client_receive_bytes",
            "Number of bytes that have been received through a connection",
            ("conn_index",),
            receive_bytes,
        )
        # aioquic never buffers a packet it cannot decrypt yet (quic-go does): it drops it,
        # counted below as key_unavailable. The family is cloudflared's, with no series.
        yield _counter(
            "quic_client_buffered_packets",
            "Number of bytes that have been buffered on a connection",
            ("conn_index", "packet_type"),
            {},
        )
        yield _counter(
            "quic_client_dropped_packets",
            "Number of bytes that have been dropped on a connection",
            ("conn_index", "packet_type", "reason"),
            dropped,
        )
        yield _counter(
            "quic_client_lost_packets",
            "Number of packets that have been lost from a connection",
            ("conn_index", "reason"),
            lost,
        )
        for gauge in _GAUGES:
            yield self._gauge(gauge, connections)
        # Origin datagrams too large for the edge: adit does not proxy UDP sessions yet.
        yield _counter(
            "quic_client_packet_too_big_dropped",
            "Count of packets received from origin that are too big to send to the edge and "
            "are dropped as a result",
            (),
            {(): 0},
        )

    @staticmethod
    def _gauge(spec: tuple[str, str, str], connections: list[QuicConnectionStats]) -> Metric:
        name, documentation, attribute = spec
        family = GaugeMetricFamily(name, documentation, labels=["conn_index"])
        latest: dict[int, float] = {}
        for each in connections:
            value = getattr(each, attribute)
            if value is not None:
                latest[each.conn_index] = value
        for index, value in sorted(latest.items()):
            family.add_metric([str(index)], value)
        return family
