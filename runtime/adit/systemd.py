"""sd_notify for adit's main processes: the connector's supervisor and the edge.

Only the main process talks to systemd (``NotifyAccess=main``). Never raises and does nothing
outside systemd. No child sees ``NOTIFY_SOCKET`` or the rest of what systemd hands the main
process: workers and a quick tunnel's embedded edge get ``adit.service_manager.child_environment``.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

__all__ = ["Notifier", "SystemdNotifier"]

log = logging.getLogger("adit.systemd")


class Notifier(Protocol):
    """Where ``READY=1``, ``STOPPING=1`` and ``STATUS=...`` go."""

    def notify(self, state: str) -> None:
        """Send one state string; must never raise."""

    def close(self) -> None:
        """Release the socket."""


class SystemdNotifier:
    """``sdnotify.SystemdNotifier`` when ``$NOTIFY_SOCKET`` is set, else a no-op."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._notifier: object | None = None
        if env.get("NOTIFY_SOCKET"):
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()

    def notify(self, state: str) -> None:
        """Send ``state``; failures are logged at debug level only."""
        if self._notifier is None:
            return
        try:
            self._notifier.notify(state)  # type: ignore[attr-defined]
        except Exception as exc:  # sdnotify swallows errors itself; belt and braces
            log.debug("sd_notify failed state=%r error=%r", state, str(exc))

    def close(self) -> None:
        """Close the datagram socket."""
        sock = getattr(self._notifier, "socket", None)
        if sock is not None:
            sock.close()
        self._notifier = None
