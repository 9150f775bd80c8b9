"""What a connector costs in memory: RSS and PSS of each process, idle and with idle WebSockets.

RSS counts every resident page a process maps, including the pages of shared libraries and of
the interpreter's executable that other processes map too: adit's supervisor and workers run
the same ``python3`` and the same extension modules, so summing their RSS counts those pages
once per process. PSS (``/proc/PID/smaps_rollup``) divides each shared page among the
processes that map it, so the PSS of the supervisor plus the workers is what the connector
adds to the machine. Both are reported; cloudflared is one process, where they nearly agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Figures = dict[str, float | int | str | None]

#: Seconds the processes are left alone before the idle reading (start-up garbage settles).
SETTLE_S = 2.0


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) of ``pid`` in KiB from ``smaps_rollup``; ``None`` if it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as file:
            text = file.read().decode()
    except OSError:
        return None
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            found[key] = int(rest.split()[0])
    if "Rss" not in found or "Pss" not in found:
        return None
    return found["Rss"], found["Pss"]


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def readings(roles: dict[str, int], prefix: str) -> Figures:
    """``{prefix}_rss_<role>_mib`` and ``{prefix}_pss_<role>_mib`` for each connector process
    (the edge is measured too but kept out of the connector's total), and the connector's
    totals ``{prefix}_rss_connector_mib`` / ``{prefix}_pss_connector_mib``."""
    figures: Figures = {}
    rss_total = pss_total = 0
    for role, pid in roles.items():
        found = memory_kib(pid)
        if found is None:
            figures[f"{prefix}_rss_{role}_mib"] = None
            continue
        rss, pss = found
        figures[f"{prefix}_rss_{role}_mib"] = _mib(rss)
        figures[f"{prefix}_pss_{role}_mib"] = _mib(pss)
        if role != "edge":
            rss_total += rss
            pss_total += pss
    figures[f"{prefix}_rss_connector_mib"] = _mib(rss_total)
    figures[f"{prefix}_pss_connector_mib"] = _mib(pss_total)
    return figures


def footprint(
    roles: dict[str, int],
    open_websockets: Callable[[Callable[[], Figures]], Figures],
) -> Figures:
    """Idle readings after :data:`SETTLE_S`, then the readings with the WebSockets open."""
    time.sleep(SETTLE_S)
    figures = readings(roles, "idle")
    opened = open_websockets(lambda: readings(roles, "ws"))
    figures.update(opened)
    return figures
