"""Where a supervisor and its workers meet, without ZeroMQ: the socket directory and exit codes.

The supervisor starts its workers before it imports ZeroMQ (they boot meanwhile), so what it
needs for that lives here; :mod:`adit.ipc.channels` re-exports it.
"""

from __future__ import annotations

from pathlib import Path

from adit.ipc.directory import make_runtime_directory

__all__ = [
    "WORKER_BOOT_ERROR",
    "create_runtime_directory",
    "events_endpoint",
    "remove_runtime_directory",
    "worker_endpoint",
]

#: Worker exit code for "cannot boot" (bad arguments, no Start, unusable settings): the
#: supervisor stops instead of respawning in a loop (gunicorn's ``WORKER_BOOT_ERROR``).
WORKER_BOOT_ERROR = 3


def create_runtime_directory(environ: dict[str, str] | None = None) -> Path:
    """A fresh mode-0700 directory for this supervisor's sockets (see
    :func:`adit.ipc.directory.make_runtime_directory`)."""
    return Path(make_runtime_directory(environ))


def remove_runtime_directory(path: Path) -> None:
    """Remove the directory and its socket files; never raises."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def events_endpoint(directory: Path) -> str:
    """Where the supervisor collects every worker's events."""
    return f"ipc://{directory}/events"


def worker_endpoint(directory: Path, slot: int) -> str:
    """Where the worker of ``slot`` receives its commands."""
    return f"ipc://{directory}/worker-{slot}"
