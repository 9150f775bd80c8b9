"""The worker's quic_client_* telemetry: per index, ended and open connections added up."""

from __future__ import annotations

from adit.protocol.quic_counters import LOSS_TIME
from adit.protocol.quic_engine import PostQuantum, TunnelQuicConnection, quic_configuration
from adit.workers.quic_telemetry import QuicTelemetry


def _connection(stream_frames: int, sent: int, lost: int = 0) -> TunnelQuicConnection:
    quic = TunnelQuicConnection(
        configuration=quic_configuration(is_client=True, post_quantum=PostQuantum.PREFER)
    )
    quic.counters.frames_sent[0x0A] = stream_frames
    quic.counters.frames_received[0x02] = stream_frames
    quic.counters.bytes_sent = sent
    quic.counters.lost[LOSS_TIME] = lost
    return quic


def test_an_index_adds_up_its_ended_and_open_connections() -> None:
    telemetry = QuicTelemetry()
    first, second, other = _connection(3, 100, lost=1), _connection(2, 50), _connection(7, 700)
    telemetry.opened(0, first)
    telemetry.opened(1, other)
    telemetry.closed(first)
    telemetry.opened(0, second)
    second.counters.drop("1RTT", "duplicate", 40)
    snapshot = telemetry.snapshot()
    assert (snapshot.total_connections, snapshot.closed_connections) == (3, 1)
    by_index = {c.conn_index: c for c in snapshot.connections}
    assert by_index[0].sent_frames == {"Stream": 5}
    assert by_index[0].received_frames == {"Ack": 5}
    assert by_index[0].sent_bytes == 150
    assert by_index[0].lost_packets == {"time_threshold": 1}
    assert by_index[0].dropped_packets == [("1RTT", "duplicate", 40)]
    assert by_index[1].sent_bytes == 700
    # A snapshot does not move the totals: taking another gives the same.
    assert telemetry.snapshot() == snapshot


def test_gauges_wait_for_a_completed_handshake_and_closing_twice_counts_once() -> None:
    telemetry = QuicTelemetry()
    quic = _connection(0, 0)
    telemetry.opened(4, quic)
    (stats,) = telemetry.snapshot().connections
    assert stats.min_rtt_ms is None and stats.mtu is None  # nothing measured yet
    telemetry.closed(quic)
    telemetry.closed(quic)
    assert telemetry.snapshot().closed_connections == 1
