"""Why a supervisor stops with a failure (all *permanent*: restarting would fail the same way)."""

from __future__ import annotations

from adit.metrics_listener import MetricsListenerError as _MetricsListenerError

__all__ = ["MetricsListenerError", "SupervisorError"]


class SupervisorError(Exception):
    """Base of the supervisor's failures; ``str()`` is what the user sees on stderr."""


# The metrics listener is shared with the edge (adit.metrics_listener); its failure is one of
# the supervisor's.
MetricsListenerError = _MetricsListenerError
