"""The workers' UDP counters on /metrics under cloudflared's ``cloudflared_udp_*`` names."""

from __future__ import annotations

from adit.ipc.messages import StatsSnapshot, UdpStats, decode_event, encode
from adit.supervisor.metrics import TunnelStats, build_registry, render_metrics


def _lines(stats: TunnelStats) -> list[str]:
    return render_metrics(build_registry(stats)).decode().splitlines()


def test_udp_counters_of_every_worker_are_summed_under_cloudflareds_names() -> None:
    stats = TunnelStats("test")
    stats.update(
        StatsSnapshot(
            0,
            0,
            0,
            0,
            {},
            UdpStats(
                active_sessions=2,
                total_sessions=5,
                active_flows={0: 1},
                total_flows={0: 3},
                failed_flows={0: 1},
                dropped_datagrams={0: {"write_flow_unknown": 4, "write_full": 1}},
            ),
        )
    )
    stats.update(
        StatsSnapshot(
            1,
            0,
            0,
            0,
            {},
            UdpStats(active_sessions=1, total_sessions=1, total_flows={1: 2}),
        )
    )
    stats.update(StatsSnapshot(2, 0, 0, 0, {}))  # a worker that never dialled QUIC
    lines = _lines(stats)
    assert "# TYPE cloudflared_udp_active_sessions gauge" in lines
    assert "cloudflared_udp_active_sessions 3.0" in lines
    assert "# TYPE cloudflared_udp_total_sessions counter" in lines
    assert "cloudflared_udp_total_sessions 6.0" in lines
    assert 'cloudflared_udp_active_flows{conn_index="0"} 1.0' in lines
    assert 'cloudflared_udp_total_flows{conn_index="0"} 3.0' in lines
    assert 'cloudflared_udp_total_flows{conn_index="1"} 2.0' in lines
    assert 'cloudflared_udp_failed_flows{conn_index="0"} 1.0' in lines
    assert (
        'cloudflared_udp_dropped_datagrams{conn_index="0",reason="write_flow_unknown"} 4.0' in lines
    )
    assert 'cloudflared_udp_dropped_datagrams{conn_index="0",reason="write_full"} 1.0' in lines
    stats.drop_slot(0)
    assert "cloudflared_udp_active_sessions 1.0" in _lines(stats)


def test_no_udp_counters_yet_show_zero_sessions_and_no_flow_series() -> None:
    lines = _lines(TunnelStats("test"))
    assert "cloudflared_udp_active_sessions 0.0" in lines
    assert "cloudflared_udp_total_sessions 0.0" in lines
    assert not any(line.startswith("cloudflared_udp_total_flows{") for line in lines)


def test_udp_counters_cross_the_workers_channel() -> None:
    udp = UdpStats(1, 2, {0: 1}, {0: 2}, {}, {3: {"read_too_large": 7}})
    snapshot = StatsSnapshot(0, 1, 0, 0, {"200": 1}, udp)
    assert decode_event(encode(snapshot)) == snapshot
    # A snapshot without them (an older worker) still decodes.
    assert decode_event(encode(StatsSnapshot(0, 1, 0, 0, {}))).udp is None  # type: ignore[union-attr]
