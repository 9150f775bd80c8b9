"""Why a supervisor stops with a failure (all *permanent*: restarting would fail the same way)."""

from __future__ import annotations

__all__ = ["MetricsListenerError", "SupervisorError"]


class SupervisorError(Exception):
    """Base of the supervisor's failures; ``str()`` is what the user sees on stderr."""


class MetricsListenerError(SupervisorError):
    """The metrics/readiness address cannot be bound (cloudflared: fatal at start)."""
