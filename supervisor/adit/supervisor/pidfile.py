"""``--pidfile``: the PID without a newline, written after the first registration, never removed."""

from __future__ import annotations

import logging
import os

__all__ = ["write_pidfile"]

log = logging.getLogger("adit.supervisor")


def write_pidfile(path: str, pid: int) -> None:
    """Write ``pid`` to ``path`` (``~`` expanded, mode 0666 & ~umask); errors are logged."""
    expanded = os.path.expanduser(path)
    try:
        with open(expanded, "w", encoding="ascii") as out:
            out.write(str(pid))
    except OSError as exc:
        log.error("Unable to write pid to %s error=%r", expanded, str(exc))
