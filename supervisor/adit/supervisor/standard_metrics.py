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


class ScrapeCounter:
    """``promhttp_metric_handler_requests_{in_flight,total}`` of the metrics server.

    Scrapes are answered one at a time on the event loop, so the one in flight is the one
    being rendered; a scrape counts under its status once it was answered.
    """

    def __init__(self) -> None:
        self.by_code: dict[str, int] = {"200": 0, "500": 0, "503": 0}

    def answered(self, code: int) -> None:
        key = str(code)
        self.by_code[key] = self.by_code.get(key, 0) + 1

    def render(self) -> bytes:
        lines = [
            "# HELP promhttp_metric_handler_requests_in_flight Current number of scrapes being"
            " served.",
            "# TYPE promhttp_metric_handler_requests_in_flight gauge",
            "promhttp_metric_handler_requests_in_flight 1",
            "# HELP promhttp_metric_handler_requests_total Total number of scrapes by HTTP"
            " status code.",
            "# TYPE promhttp_metric_handler_requests_total counter",
        ]
        lines += [
            f'promhttp_metric_handler_requests_total{{code="{code}"}} {count}'
            for code, count in sorted(self.by_code.items())
        ]
        return ("\n".join(lines) + "\n").encode()


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
