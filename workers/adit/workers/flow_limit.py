"""``--max-active-flows``: private-network flows a worker serves at once (cloudflared's
``flow.Limiter``, shared by its UDP sessions and its private TCP flows).

A module of its own so an HTTP/2-only worker, which never imports the UDP session code, can
still limit its private TCP flows.
"""

from __future__ import annotations

__all__ = ["FlowLimiter"]


class FlowLimiter:
    """At most ``limit`` flows at once (0: unlimited), cloudflared's ``flow.Limiter``."""

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.active = 0

    def acquire(self) -> bool:
        """Take a slot; False when all are taken."""
        if self.limit and self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        """Give a slot back."""
        self.active = max(0, self.active - 1)
