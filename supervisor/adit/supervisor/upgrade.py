"""Upgrade in place (SIGUSR2): check the installed code, ``exec`` it, keep pid and workers.

A package upgrade replaces the files under a running connector. On SIGUSR2 the supervisor
(:class:`adit.supervisor.app.Supervisor`):

1. runs the *installed* code in children before anything changes (:func:`preflight`): the
   parser child a reload uses (``adit.supervisor.lean.parse_in_child``), then
   ``adit.supervisor.upgrade_check`` with the hand-over it would write. A tree that does not
   start, a config it refuses, a hand-over it cannot read (a downgrade to a version that
   writes or reads another format) refuse the upgrade with one line; the running version keeps
   serving.
2. ``exec``\\ s ``python -m adit.supervisor.lean --upgrade FILE`` (:func:`exec_upgrade`): the
   same pid (systemd's MAINPID, ``NOTIFY_SOCKET``, the pidfile stay valid), ``STATUS=``
   before (no ``RELOADING=1``: the unit stays "active" throughout) and, from the new code,
   ``READY=1`` and the new ``STATUS=``. The live workers
   (:class:`~adit.supervisor.upgrade_handover.InheritedWorker`) and the metrics listener go
   along.
3. The new code (:func:`resume_upgrade`) starts its own workers in a fresh runtime directory
   and drains each old one only once the new workers registered its connections
   (``adit.supervisor.predecessors``): make before break.

Every module this one needs is imported when it is: a package upgrade may already have
replaced the files a late import would read.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import msgspec

from adit.supervisor.lean import SettingsRefused, child_refusal, parse_in_child
from adit.supervisor.signals import hold_for_exec, release_hold, resume_after_exec
from adit.supervisor.upgrade_handover import (
    UPGRADE_FORMAT,
    InheritedWorker,
    UpgradeHandover,
    decode_handover,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "PREFLIGHT_TIMEOUT",
    "UPGRADE_FILE",
    "UPGRADE_FORMAT",
    "InheritedWorker",
    "UpgradeHandover",
    "UpgradeRefused",
    "exec_upgrade",
    "installed_version",
    "preflight",
    "resume_upgrade",
]

#: The hand-over's file name in the runtime directory (read and removed by the new code).
UPGRADE_FILE = "supervisor-upgrade"
#: Seconds the check child may take (it imports every supervisor and worker module).
PREFLIGHT_TIMEOUT = 60.0
_VERSION = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)
#: What the check child runs: the version first, so even a tree whose check module does not
#: import is named in the refusal.
_CHECK = (
    "import sys; from adit.version import __version__; "
    "sys.stdout.write(__version__ + '\\n'); sys.stdout.flush(); "
    "from adit.supervisor.upgrade_check import main; main()"
)


class UpgradeRefused(Exception):
    """The installed code would not start; the message is the one for the log."""


def installed_version() -> str:
    """The version the files on disk now say (not the one this process imported)."""
    import adit.version

    try:
        text = Path(adit.version.__file__).read_text(encoding="utf-8")
    except OSError:
        return "?"
    match = _VERSION.search(text)
    return match.group(1) if match else "?"


def preflight(
    args: list[str], config_path: str | None, build: Callable[[bytes], UpgradeHandover]
) -> tuple[bytes, str]:
    """Run the installed code's parser and check children; its settings and version.

    ``build`` makes the hand-over the ``exec`` would carry from the parsed settings: the check
    child reads exactly that. Raises :class:`UpgradeRefused` with the line for the log.
    """
    try:
        settings = parse_in_child(args, config_path)
    except SettingsRefused as exc:
        raise UpgradeRefused(
            f"the installed adit {installed_version()} does not start: {exc}"
        ) from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise UpgradeRefused(
            f"the installed adit {installed_version()} does not start: {exc}"
        ) from None
    data = msgspec.msgpack.encode(build(settings))
    try:
        done = subprocess.run(
            [sys.executable, "-P", "-c", _CHECK],
            input=data,
            capture_output=True,
            timeout=PREFLIGHT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise UpgradeRefused(
            f"the installed adit {installed_version()} does not start: {exc}"
        ) from None
    lines = done.stdout.decode(errors="replace").split()
    version = lines[0] if lines else installed_version()
    if done.returncode != 0 or lines[-1:] != ["ok"]:
        reason = child_refusal(done.stderr, done.returncode)
        raise UpgradeRefused(f"the installed adit {version} does not start: {reason}")
    return settings, version


def exec_upgrade(handover: UpgradeHandover, runtime_dir: Path) -> NoReturn:
    """Write ``handover`` (0600) and ``exec`` the installed supervisor; raises ``OSError``
    (with everything as before) only if the ``exec`` fails."""
    keep = [w.stdin for w in handover.workers if w.stdin is not None]
    if handover.metrics_fd is not None:
        keep.append(handover.metrics_fd)
    early = hold_for_exec()
    data = msgspec.msgpack.encode(msgspec.structs.replace(handover, early_signals=early))
    path = runtime_dir / UPGRADE_FILE
    # The settings hold the tunnel secret: 0600 in a 0700 directory, removed on reading.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    for kept in keep:
        os.set_inheritable(kept, True)
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-P", "-m", "adit.supervisor.lean", "--upgrade", os.fspath(path)]
    try:
        os.execv(sys.executable, argv)  # noqa: S606 - the same interpreter, fixed arguments
    except OSError:
        for kept in keep:
            os.set_inheritable(kept, False)
        path.unlink(missing_ok=True)
        release_hold()
        raise


def resume_upgrade(path: Path) -> NoReturn:
    """The new code's side: adopt the hand-over at ``path`` and run the supervisor."""
    data = path.read_bytes()
    path.unlink(missing_ok=True)
    handover = decode_handover(data)
    resume_after_exec(handover.early_signals)
    for worker in handover.workers:
        if worker.stdin is not None:
            os.set_inheritable(worker.stdin, False)

    from adit.logs import configure_logging
    from adit.supervisor.launch import Supervisor
    from adit.supervisor.lean import load_in_child
    from adit.supervisor.predecessors import Inherited
    from adit.supervisor.settings import SupervisorSettings

    settings = msgspec.msgpack.decode(handover.settings, type=SupervisorSettings)
    configure_logging(settings.log)
    metrics: socket.socket | None = None
    if handover.metrics_fd is not None:
        os.set_inheritable(handover.metrics_fd, False)
        metrics = socket.socket(fileno=handover.metrics_fd)
    inherited = Inherited(
        Path(handover.inherited_dir), handover.workers, handover.from_version, metrics
    )
    supervisor = Supervisor(
        settings,
        reload=load_in_child(handover.args, settings.config_path),
        upgrade_args=handover.args,
        inherited=inherited,
    )
    code = supervisor.run()
    if code == 1:
        print(supervisor.failure or "tunnel stopped with an error", file=sys.stderr, flush=True)
    sys.exit(code)
