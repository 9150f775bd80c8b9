"""The edge's Prometheus metrics of its public certificates (``adit edge --metrics``).

* ``adit_edge_certificate_expiry_timestamp_seconds{hostname,source}``: when the certificate
  served for a routed hostname expires (``source`` ``acme`` or ``file``); alert on
  ``… - time() < 7*86400``.
* ``adit_edge_acme_failures_total{kind}``: failed ACME orders by kind (``connection``,
  ``validation``, ``bad-response``, ``acme:rateLimited``…).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from adit.edge.certificates import CertificateManager

__all__ = ["CertificateCollector", "render_metrics"]


class CertificateCollector(Collector):
    """Reads the manager at scrape time."""

    def __init__(self, manager: CertificateManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "adit_edge_certificate_expiry_timestamp_seconds",
            "When the certificate served for a hostname expires (Unix time)",
            labels=["hostname", "source"],
        )
        for hostname, source, not_after in self._manager.expiries():
            expiry.add_metric([hostname, source], not_after)
        yield expiry
        failures = CounterMetricFamily(
            "adit_edge_acme_failures",
            "Failed ACME certificate orders, by kind of failure",
            labels=["kind"],
        )
        for kind, count in sorted(self._manager.failures.items()):
            failures.add_metric([kind], count)
        yield failures


def render_metrics(manager: CertificateManager | None) -> bytes:
    """The exposition text of the edge's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    if manager is not None:
        registry.register(CertificateCollector(manager))
    return generate_latest(registry)
