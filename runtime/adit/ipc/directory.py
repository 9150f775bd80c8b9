"""The supervisor's private socket directory, made with nothing but ``os``.

``adit tunnel run`` makes it before it has imported anything else (worker 0 is started at
once, ``adit.supervisor.spawn``), so this module imports no more than ``os``: ``tempfile``,
``shutil`` or even ``pathlib`` would cost more than the code they save.
"""

from __future__ import annotations

import os

__all__ = ["make_runtime_directory"]

#: Random names tried before giving up (48 random bits each: a clash is already unlikely).
_NAME_ATTEMPTS = 100


def make_runtime_directory(environ: dict[str, str] | None = None) -> str:
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
        path = os.path.join(base, f"adit-{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        # mkdir's mode is filtered by the umask; the directory must be exactly 0700.
        os.chmod(path, 0o700)
        return path
    raise FileExistsError(f"no free directory name under {base}")
