"""What Go's default registry adds to cloudflared's ``/metrics`` besides ``go_*``, for adit.

``promhttp.Handler`` counts its own scrapes (``promhttp_metric_handler_*``) and Go's process
collector has three ``process_*`` families that Python's lacks: the network bytes of the
process's network namespace (``/proc/self/net/netstat`` ``IpExt``, as procfs reads them) and
the address-space limit. Both are rendered as text, like the rest of the supervisor's
families (:func:`adit.supervisor.metrics.render_metrics`), for the supervisor process.
"""

from __future__ import annotations

import resource
from pathlib import Path

from adit.metrics_listener import ScrapeCounter

__all__ = ["ScrapeCounter", "go_number", "process_extras"]

#: Go reports an unlimited RLIMIT_AS as the largest uint64, printed as a float.
_UNLIMITED = float(2**64 - 1)


def go_number(value: float) -> str:
    """A number as Go's text format writes it (``1``, ``0.15000000000000002``, ``+Inf``,
    ``1.8446744073709552e+19``), e.g. a histogram's ``le``."""
    if value == float("inf"):
        return "+Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _netstat_octets(text: str) -> tuple[int, int] | None:
    rows = [line.split() for line in text.splitlines() if line.startswith("IpExt:")]
    if len(rows) < 2:
        return None
    values = dict(zip(rows[0][1:], rows[1][1:], strict=False))
    try:
        return int(values["InOctets"]), int(values["OutOctets"])
    except (KeyError, ValueError):
        return None


def process_extras(netstat: Path = Path("/proc/self/net/netstat")) -> bytes:
    """The network and address-space families of Go's process collector (omitted where the
    kernel does not tell, as Go's collector omits them)."""
    lines: list[str] = []
    try:
        octets = _netstat_octets(netstat.read_text())
    except OSError:
        octets = None
    if octets is not None:
        received, sent = octets
        lines += [
            "# HELP process_network_receive_bytes_total Number of bytes received by the process"
            " over the network.",
            "# TYPE process_network_receive_bytes_total counter",
            f"process_network_receive_bytes_total {received}",
            "# HELP process_network_transmit_bytes_total Number of bytes sent by the process"
            " over the network.",
            "# TYPE process_network_transmit_bytes_total counter",
            f"process_network_transmit_bytes_total {sent}",
        ]
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _UNLIMITED if soft == resource.RLIM_INFINITY else float(soft)
    lines += [
        "# HELP process_virtual_memory_max_bytes Maximum amount of virtual memory available in"
        " bytes.",
        "# TYPE process_virtual_memory_max_bytes gauge",
        f"process_virtual_memory_max_bytes {go_number(limit)}",
    ]
    return ("\n".join(lines) + "\n").encode()
