"""The caps and deadlines of private flows: a module of its own so that ``adit edge``'s
flag parsing does not import the flows themselves (and their QUIC stack)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FlowLimits"]


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """Caps and deadlines of private flows (each an ``adit edge`` flag)."""

    #: Flows one account may have open at once (TCP and UDP together).
    max_per_account: int = 1024
    #: A TCP flow with no byte either way for this long is closed: an interactive session
    #: left alone for half an hour, or a connection a client forgot.
    tcp_idle_timeout: float = 1800.0
    #: The same for a UDP flow: cloudflared's idle timeout for UDP sessions.
    udp_idle_timeout: float = 210.0
    #: How long the connector may take to reach the destination.
    connect_timeout: float = 30.0
