"""cloudflared's metric families that adit does not expose, each with the reason.

The connector's ``/metrics`` carries every other family cloudflared defines, under its name,
type, help text and labels (README "Metrics"). Keys are regular expressions over family
names. ``tests/process/test_metrics_parity.py`` compares adit's scrape with one recorded from
cloudflared minus :data:`NO_MEANING`, and checks that adit exposes none of these.
"""

from __future__ import annotations

__all__ = ["NEVER_SET", "NO_MEANING"]

#: Families with no meaning in adit.
NO_MEANING: dict[str, str] = {
    r"go_.*": "Go runtime statistics (goroutines, GC, memstats): adit is Python",
    r"cloudflared_icmp_(total_requests|total_replies|dropped_packets)": (
        "adit does not proxy ICMP (private-network ping): there is nothing to count"
    ),
    r"cloudflared_udp_migrated_flows": (
        "a UDP flow stays on the connection that registered it (no migration across local "
        "connections): there is never one to count"
    ),
    r"cloudflared_virtual_origins_dns_requests_total": (
        "adit has no virtual DNS origin (cloudflared's resolver behind the private "
        "network's reserved address)"
    ),
}

#: Families cloudflared defines but never sets, so it never exposes them either: adit
#: follows (nothing to expose).
NEVER_SET: dict[str, str] = {
    r"cloudflared_tunnel_tunnel_rpc_fail": "registered, never incremented",
    r"cloudflared_tunnel_max_concurrent_requests_per_tunnel": "registered, never set",
    r"tunnel_ids": "registered, never set",
}
