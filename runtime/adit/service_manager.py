"""What systemd hands the main process of a unit, and a child's environment without it.

Imports nothing but ``os``: the supervisor starts worker 0 before anything heavier is loaded
(``adit.supervisor.spawn``).
"""

from __future__ import annotations

import os

__all__ = ["SERVICE_MANAGER_ENV", "child_environment"]

#: Meant for the main process alone: the notify socket (``READY=1`` from a child would claim a
#: readiness only the main process knows), the watchdog's period and owner, and socket
#: activation's descriptors (numbered for the main process).
SERVICE_MANAGER_ENV = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)


def child_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) without :data:`SERVICE_MANAGER_ENV`.

    Every child adit starts gets this: the supervisor's workers and a quick tunnel's embedded
    edge.
    """
    env = dict(os.environ if environ is None else environ)
    for key in SERVICE_MANAGER_ENV:
        env.pop(key, None)
    return env
