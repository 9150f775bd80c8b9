"""cloudflared's metric families that have no meaning in adit, each with the reason.

The connector's ``/metrics`` carries every other family cloudflared exposes, under its name,
type, help text and labels (README "Metrics"). Keys are regular expressions over family names;
``tests/process/test_metrics_parity.py`` compares adit's scrape with a recorded cloudflared
scrape minus these, and fails on an entry that no longer matches anything cloudflared shows.
"""

from __future__ import annotations

__all__ = ["NO_MEANING"]

NO_MEANING: dict[str, str] = {
    r"go_.*": "Go runtime statistics (goroutines, GC, memstats): adit is Python",
    r"cloudflared_icmp_total_(requests|replies)": (
        "adit does not proxy ICMP (private-network ping); there is nothing to count"
    ),
}
