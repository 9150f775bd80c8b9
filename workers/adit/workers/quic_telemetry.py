"""A worker's ``quic_client_*`` telemetry: what its QUIC connections counted, by index.

cloudflared's QUIC counters are labelled by connection index and live as long as the
process: a reconnecting index goes on adding to the same series, and its gauges keep the
latest connection's values (quic/metrics.go). Here each connection counts for itself
(:class:`~adit.protocol.quic_counters.QuicCounters`); this class adds up, per index, those
that ended and those still open, and the worker publishes the result with its other
counters once a second (``StatsSnapshot.quic``), for the supervisor to sum over workers.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from adit.ipc.messages import QuicClientStats, QuicConnectionStats
from adit.protocol.quic_counters import PathStats, QuicCounters, frames_by_label
from adit.protocol.quic_engine import TunnelQuicConnection

__all__ = ["QuicTelemetry"]

K = TypeVar("K", bound=Hashable)


@dataclass
class _Totals:
    """What the ended connections of one index counted."""

    sent_frames: dict[str, int] = field(default_factory=dict)
    received_frames: dict[str, int] = field(default_factory=dict)
    sent_bytes: int = 0
    receive_bytes: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    dropped: dict[tuple[str, str], int] = field(default_factory=dict)
    #: The gauges of the index's latest connection, as it ended.
    path: PathStats | None = None

    def add(self, counters: QuicCounters) -> None:
        _merge(self.sent_frames, frames_by_label(counters.frames_sent))
        _merge(self.received_frames, frames_by_label(counters.frames_received))
        self.sent_bytes += counters.bytes_sent
        self.receive_bytes += counters.bytes_received
        _merge(self.lost, counters.lost)
        _merge(self.dropped, counters.dropped)

    def copy(self) -> _Totals:
        return replace(
            self,
            sent_frames=dict(self.sent_frames),
            received_frames=dict(self.received_frames),
            lost=dict(self.lost),
            dropped=dict(self.dropped),
        )


def _merge(into: dict[K, int], more: Mapping[K, int]) -> None:
    for key, count in more.items():
        into[key] = into.get(key, 0) + count


class QuicTelemetry:
    """Counts QUIC dials and closes, and sums the connections' counters per index."""

    def __init__(self) -> None:
        self.total_connections = 0
        self.closed_connections = 0
        #: Open connections, in the order they were dialled, with their index.
        self._open: dict[TunnelQuicConnection, int] = {}
        self._ended: dict[int, _Totals] = {}

    def opened(self, conn_index: int, quic: TunnelQuicConnection) -> None:
        """A QUIC dial of ``conn_index`` began (its handshake may still fail)."""
        self.total_connections += 1
        self._open[quic] = conn_index

    def closed(self, quic: TunnelQuicConnection) -> None:
        """That connection ended: its counts join its index's totals."""
        conn_index = self._open.pop(quic, None)
        if conn_index is None:
            return
        self.closed_connections += 1
        totals = self._ended.setdefault(conn_index, _Totals())
        totals.add(quic.counters)
        totals.path = _latest_path(quic, totals.path)

    def snapshot(self) -> QuicClientStats:
        """The counts so far, ended and open connections together."""
        totals = {index: ended.copy() for index, ended in self._ended.items()}
        for quic, index in self._open.items():
            each = totals.setdefault(index, _Totals())
            each.add(quic.counters)
            # The latest dial of the index wins (a roll has two open for a while).
            each.path = _latest_path(quic, each.path)
        return QuicClientStats(
            total_connections=self.total_connections,
            closed_connections=self.closed_connections,
            connections=[_stats(index, totals[index]) for index in sorted(totals)],
        )


def _latest_path(quic: TunnelQuicConnection, before: PathStats | None) -> PathStats | None:
    """``quic``'s gauges, unless it never completed its handshake (nothing measured)."""
    path = quic.path_stats()
    return path if path.max_udp_payload is not None else before


def _stats(conn_index: int, totals: _Totals) -> QuicConnectionStats:
    path = totals.path
    return QuicConnectionStats(
        conn_index=conn_index,
        sent_frames=totals.sent_frames,
        received_frames=totals.received_frames,
        sent_bytes=totals.sent_bytes,
        receive_bytes=totals.receive_bytes,
        lost_packets={reason: n for reason, n in totals.lost.items() if n},
        dropped_packets=[(kind, reason, n) for (kind, reason), n in sorted(totals.dropped.items())],
        max_udp_payload=path.max_udp_payload if path else None,
        min_rtt_ms=path.min_rtt_ms if path else None,
        latest_rtt_ms=path.latest_rtt_ms if path else None,
        smoothed_rtt_ms=path.smoothed_rtt_ms if path else None,
        mtu=path.mtu if path else None,
        congestion_window=path.congestion_window if path else None,
        congestion_state=path.congestion_state if path else None,
    )
