"""What the supervisor counts for ``/metrics``, without the Prometheus client.

The state machine updates these on every event; ``prometheus_client`` (imported by
:mod:`adit.supervisor.metrics`) is only needed once ``/metrics`` is scraped, so keeping the
counters here lets the supervisor start its workers without importing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from adit.ipc.messages import ConnectorCounters, QuicClientStats, StatsSnapshot, UdpStats

__all__ = ["TunnelStats", "WorkerSample", "WorkerSampler", "sum_udp"]


class TunnelStats:
    """Latest worker snapshots plus the supervisor's own connection counts."""

    def __init__(self, version: str) -> None:
        self.version = version
        self._snapshots: dict[int, StatsSnapshot] = {}
        #: Connections currently registered across all workers.
        self.ha_connections = 0
        #: Successful ``registerConnection`` calls since start.
        self.register_success = 0
        #: Refused registrations by cloudflared's ``error`` label.
        self.register_fail: dict[str, int] = {}
        #: Connections waiting to dial again after losing their edge connection.
        self.timer_retries = 0
        #: Version of the ingress snapshot in force (1 at start, +1 per changed reload).
        self.config_version = 0
        #: The edge's version of a pushed configuration in force (-1: none, locally managed).
        self.remote_config_version = -1
        self.reload_failures = 0
        #: In-place upgrades (SIGUSR2) refused because the installed code did not start.
        self.upgrade_failures = 0
        self.last_reload_success = True
        #: Streams in flight by live worker, from their heartbeats.
        self.active_streams = 0
        #: Edge location per connection index: the current one, then the earlier ones.
        self._locations: dict[int, list[str]] = {}

    def set_location(self, conn_index: int, location: str) -> None:
        """Connection ``conn_index`` now serves from ``location``."""
        seen = self._locations.setdefault(conn_index, [])
        if location in seen:
            seen.remove(location)
        seen.insert(0, location)

    def locations(self) -> list[tuple[str, str, int]]:
        """``(connection_id, edge_location, 1 current / 0 previous)`` rows."""
        return [
            (str(index), location, 1 if position == 0 else 0)
            for index, seen in sorted(self._locations.items())
            for position, location in enumerate(seen)
        ]

    def update(self, snapshot: StatsSnapshot) -> None:
        """Keep ``snapshot`` as the slot's latest counters."""
        self._snapshots[snapshot.slot] = snapshot

    def drop_slot(self, slot: int) -> None:
        """Forget a worker that exited (its replacement starts from zero)."""
        self._snapshots.pop(slot, None)

    @property
    def total_requests(self) -> int:
        """Proxied requests over all workers."""
        return sum(s.total_requests for s in self._snapshots.values())

    @property
    def request_errors(self) -> int:
        """Proxy errors over all workers."""
        return sum(s.request_errors for s in self._snapshots.values())

    @property
    def concurrent_requests(self) -> int:
        """Requests in flight over all live workers."""
        return sum(s.concurrent_requests for s in self._snapshots.values())

    def quic_clients(self) -> list[QuicClientStats]:
        """The QUIC telemetry of the live workers that dialled QUIC, by slot."""
        return [
            snapshot.quic
            for _, snapshot in sorted(self._snapshots.items())
            if snapshot.quic is not None
        ]

    def connector_counters(self) -> list[ConnectorCounters]:
        """The live workers' TCP, stream-connect, config-push and RPC counters."""
        return [s.connector for s in self._snapshots.values() if s.connector is not None]

    def udp(self) -> UdpStats:
        """Private-network UDP counters over all workers."""
        return sum_udp(self._snapshots.values())

    def responses_by_code(self) -> dict[str, int]:
        """Origin responses per status code, summed."""
        totals: dict[str, int] = {}
        for snapshot in self._snapshots.values():
            for code, count in snapshot.responses_by_code.items():
                totals[code] = totals.get(code, 0) + count
        return totals


def sum_udp(snapshots: Iterable[StatsSnapshot]) -> UdpStats:
    """The UDP counters of every worker, summed (connection indexes belong to one worker each,
    so the per-index families are merged, not added)."""
    active = total = 0
    flows: list[dict[int, int]] = [{}, {}, {}, {}]
    by_label: list[dict[int, dict[str, int]]] = [{}, {}]
    for snapshot in snapshots:
        udp = snapshot.udp
        if udp is None:
            continue
        active += udp.active_sessions
        total += udp.total_sessions
        per_index = (udp.active_flows, udp.total_flows, udp.failed_flows, udp.retry_flow_responses)
        for merged, own in zip(flows, per_index, strict=True):
            for conn_index, count in own.items():
                merged[conn_index] = merged.get(conn_index, 0) + count
        labelled = (udp.dropped_datagrams, udp.unsupported_remote_commands)
        for merged_labels, own_labels in zip(by_label, labelled, strict=True):
            for conn_index, labels in own_labels.items():
                into = merged_labels.setdefault(conn_index, {})
                for label, count in labels.items():
                    into[label] = into.get(label, 0) + count
    return UdpStats(
        active_sessions=active,
        total_sessions=total,
        active_flows=flows[0],
        total_flows=flows[1],
        failed_flows=flows[2],
        dropped_datagrams=by_label[0],
        retry_flow_responses=flows[3],
        unsupported_remote_commands=by_label[1],
    )


@dataclass(frozen=True)
class WorkerSample:
    """One live worker as measured at scrape time."""

    slot: int
    restarts: int
    loop_lag: float = 0.0
    rss_bytes: int | None = None
    cpu_seconds: float | None = None


WorkerSampler = Callable[[], Iterable[WorkerSample]]
