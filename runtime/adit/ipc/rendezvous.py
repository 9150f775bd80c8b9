"""Where a supervisor and its workers meet, without ZeroMQ: the socket directory and exit codes.

The supervisor starts its workers before it imports ZeroMQ (they boot meanwhile), so what it
needs for that lives here; :mod:`adit.ipc.channels` re-exports it. ``adit tunnel run`` creates
the directory before it has even imported click, so this module imports nothing but ``os``
and ``pathlib`` (``tempfile`` and ``shutil`` would cost more than the code they save).
"""

from __future__ import annotations

import os
from pathlib import Path

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
#: Random names tried before giving up (48 random bits each: a clash is already unlikely).
_NAME_ATTEMPTS = 100


def create_runtime_directory(environ: dict[str, str] | None = None) -> Path:
    """A fresh mode-0700 directory for this supervisor's sockets.

    Created under ``$RUNTIME_DIRECTORY`` (systemd's ``RuntimeDirectory=``), else under
    ``$XDG_RUNTIME_DIR``, else in ``$TMPDIR`` (or ``/tmp``). A random name made with ``O_EXCL``
    semantics (``mkdir`` fails if it exists) and mode 0700, as ``tempfile.mkdtemp`` does, so two
    connectors on one host never share sockets.
    """
    env = os.environ if environ is None else environ
    base: str | None = None
    for key in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        value = env.get(key, "")
        # RUNTIME_DIRECTORY may list several directories separated by colons; use the first.
        first = value.split(":")[0]
        if first and os.path.isdir(first):
            base = first
            break
    if base is None:
        # Safe in a shared /tmp: a random name that mkdir refuses to reuse, and mode 0700.
        base = env.get("TMPDIR", "") or "/tmp"  # noqa: S108
    for _ in range(_NAME_ATTEMPTS):
        path = Path(base) / f"adit-{os.urandom(6).hex()}"
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        # mkdir's mode is filtered by the umask; the directory must be exactly 0700.
        os.chmod(path, 0o700)
        return path
    raise FileExistsError(f"no free directory name under {base}")


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
