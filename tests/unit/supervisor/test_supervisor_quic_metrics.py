"""cloudflared's quic_client_* families in /metrics: registered once a worker dialled QUIC."""

from __future__ import annotations

from adit.ipc.messages import QuicClientStats, QuicConnectionStats, StatsSnapshot
from adit.supervisor.metrics import TunnelStats, build_registry, render_metrics


def _lines(stats: TunnelStats) -> list[str]:
    return render_metrics(build_registry(stats)).decode().splitlines()


def test_no_quic_family_before_a_quic_dial() -> None:
    stats = TunnelStats("2026.11.0")
    stats.update(StatsSnapshot(0, 1, 0, 0, {}))
    assert not any("quic_client_" in line for line in _lines(stats))


def test_quic_families_sum_the_workers_by_connection_index() -> None:
    stats = TunnelStats("2026.11.0")
    zero = QuicConnectionStats(
        conn_index=0,
        sent_frames={"Stream": 4, "Ack": 2},
        received_frames={"Stream": 3},
        sent_bytes=1000,
        receive_bytes=900,
        lost_packets={"reordering_threshold": 2},
        dropped_packets=[("1RTT", "duplicate", 1200)],
        max_udp_payload=1452,
        min_rtt_ms=1,
        latest_rtt_ms=2,
        smoothed_rtt_ms=3,
        mtu=1232,
        congestion_window=12320,
        congestion_state=2,
    )
    one = QuicConnectionStats(conn_index=1, sent_frames={"Stream": 1}, sent_bytes=10)
    stats.update(StatsSnapshot(0, 0, 0, 0, {}, quic=QuicClientStats(2, 1, [zero])))
    stats.update(StatsSnapshot(1, 0, 0, 0, {}, quic=QuicClientStats(1, 0, [one])))
    stats.update(StatsSnapshot(2, 0, 0, 0, {}))  # an HTTP/2-only worker
    lines = _lines(stats)
    for name, kind in (
        ("quic_client_total_connections", "counter"),
        ("quic_client_closed_connections", "counter"),
        ("quic_client_sent_frames", "counter"),
        ("quic_client_buffered_packets", "counter"),
        ("quic_client_packet_too_big_dropped", "counter"),
        ("quic_client_smoothed_rtt", "gauge"),
        ("quic_client_congestion_state", "gauge"),
    ):
        assert f"# TYPE {name} {kind}" in lines
    assert "quic_client_total_connections 3.0" in lines
    assert "quic_client_closed_connections 1.0" in lines
    assert 'quic_client_sent_frames{conn_index="0",frame_type="Stream"} 4.0' in lines
    assert 'quic_client_sent_frames{conn_index="1",frame_type="Stream"} 1.0' in lines
    assert 'quic_client_received_frames{conn_index="0",frame_type="Stream"} 3.0' in lines
    assert 'quic_client_sent_bytes{conn_index="0"} 1000.0' in lines
    assert 'quic_client_receive_bytes{conn_index="0"} 900.0' in lines
    assert 'quic_client_lost_packets{conn_index="0",reason="reordering_threshold"} 2.0' in lines
    assert (
        'quic_client_dropped_packets{conn_index="0",packet_type="1RTT",reason="duplicate"} 1200.0'
        in lines
    )
    assert 'quic_client_max_udp_payload{conn_index="0"} 1452.0' in lines
    assert 'quic_client_min_rtt{conn_index="0"} 1.0' in lines
    assert 'quic_client_latest_rtt{conn_index="0"} 2.0' in lines
    assert 'quic_client_smoothed_rtt{conn_index="0"} 3.0' in lines
    assert 'quic_client_mtu{conn_index="0"} 1232.0' in lines
    assert 'quic_client_congestion_window{conn_index="0"} 12320.0' in lines
    assert 'quic_client_congestion_state{conn_index="0"} 2.0' in lines
    # Index 1 has measured nothing yet: no gauge for it.
    assert not any(line.startswith('quic_client_mtu{conn_index="1"}') for line in lines)
    assert "quic_client_packet_too_big_dropped 0.0" in lines
    # A worker that exits takes its series with it.
    stats.drop_slot(0)
    assert "quic_client_total_connections 1.0" in _lines(stats)
