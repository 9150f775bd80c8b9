"""The long-lived supervisor in a fresh interpreter: without click, yaml or the config code.

``adit tunnel run`` parses its flags and config file with click, yaml and the config and
credentials modules: some 9 MiB of a 34 MiB supervisor that the supervisor never uses again
(``loadtests/results/OPTIMISATION.md``, "Footprint"). A module cannot be unloaded, so once the
settings are known the command :func:`handover`\\ s: it writes them (msgpack, 0600, in the
0700 runtime directory it made for the workers' sockets) and ``exec``\\ s
``python -m adit.supervisor.lean``, which reads them back and runs the supervisor's loop. The
process keeps its pid (systemd's main pid, ``NOTIFY_SOCKET``, the pidfile's number), its
environment, its standard streams, and worker 0, started before the settings were known, is
still its child: its pid and the write end of its stdin go along.

A reload (SIGHUP, the credentials file changing) runs the parser in a short-lived child,
``adit ... tunnel run`` with the same arguments in the same environment and directory, which
prints the new settings instead of running (:func:`load_in_child`): the parser's imports come
and go with it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from adit.supervisor.settings import SupervisorSettings

if TYPE_CHECKING:
    from collections.abc import Callable

    from adit.supervisor.spawn import WorkerChild

__all__ = [
    "HANDOVER_FILE",
    "Handover",
    "SettingsRefused",
    "child_refusal",
    "handover",
    "load_in_child",
    "main",
    "parse_in_child",
    "write_settings",
]

#: The handover's file name in the runtime directory (read and removed at once).
HANDOVER_FILE = "supervisor-start"
#: Bytes a pipe takes without a reader (Linux: 16 pages; less than the default 64 KiB so
#: that a lowered pipe size never blocks).
_PIPE_ROOM = 16 << 10
#: Seconds a reload's parser child may take before it is killed and the reload refused.
RELOAD_TIMEOUT = 60.0


class Handover(msgspec.Struct, frozen=True):
    """What the parsing process passes to the lean supervisor it becomes."""

    settings: SupervisorSettings
    #: ``adit``'s arguments, for a reload's parser child.
    args: list[str]
    runtime_dir: str
    #: Worker 0 started before the settings were known: its pid and its stdin's write end.
    worker_pid: int | None = None
    worker_stdin: int | None = None
    #: Whether worker 0 was sent its boot message before the exec.
    worker_booted: bool = False
    #: Signals that arrived before the exec (SIGTERM while the settings loaded): they drain.
    early_signals: list[int] = []


class SettingsRefused(Exception):
    """A reload's parser refused the new settings; the message is the one for the user."""


def write_settings(settings: SupervisorSettings) -> None:
    """Write ``settings`` to stdout (a reload's parser child, see :func:`load_in_child`)."""
    sys.stdout.buffer.write(msgspec.msgpack.encode(settings))
    sys.stdout.buffer.flush()


#: The line a reload's parser child writes its refusal on (one line whatever the message's:
#: a config error has a "fix:" line after its reason, and warnings come before it).
REFUSAL_PREFIX = "adit-reload-refused: "


def write_refusal(message: str) -> None:
    """Write why the settings were refused, as :func:`load_in_child` reads it."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    sys.stderr.write(f"{REFUSAL_PREFIX}{text}\n")
    sys.stderr.flush()


def handover(settings: SupervisorSettings, args: list[str]) -> None:
    """Become the lean supervisor (``exec``): never returns unless ``exec`` fails (OSError).

    Takes the prestarted worker 0 along, or starts it now: it imports during the exec.
    """
    from adit.ipc.rendezvous import create_runtime_directory
    from adit.supervisor.spawn import spawn_worker, take_prestarted

    found = take_prestarted()
    if found is None:
        runtime_dir = create_runtime_directory()
        found = (str(runtime_dir), spawn_worker(0, runtime_dir))
    runtime_dir, child = Path(found[0]), found[1]
    _boot_now(settings, child)
    if child.stdin is not None:
        os.set_inheritable(child.stdin, True)
    from adit.supervisor.signals import hold_for_exec, release_hold

    start = Handover(
        early_signals=hold_for_exec(),
        settings=settings,
        args=args,
        runtime_dir=str(runtime_dir),
        worker_pid=child.pid,
        worker_stdin=child.stdin,
        worker_booted=child.booted,
    )
    path = runtime_dir / HANDOVER_FILE
    # The settings hold the tunnel secret: 0600 in a 0700 directory, removed on reading.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(msgspec.msgpack.encode(start))
    sys.stdout.flush()
    sys.stderr.flush()
    # -P: the working directory stays off sys.path (an ./adit there must not shadow adit).
    argv = [sys.executable, "-P", "-m", "adit.supervisor.lean", os.fspath(path)]
    try:
        os.execv(sys.executable, argv)  # noqa: S606 - the same interpreter, fixed arguments
    except OSError:
        release_hold()
        path.unlink(missing_ok=True)
        # Give worker 0 back: the caller runs the supervisor in this process.
        from adit.supervisor.spawn import give_back_prestarted

        give_back_prestarted(str(runtime_dir), child)
        raise


def _boot_now(settings: SupervisorSettings, child: WorkerChild) -> None:
    """Send worker 0 its boot message before the ``exec`` when it fits in the pipe.

    Worker 0 dials as soon as it has it; the lean supervisor's own start (an interpreter and
    its imports) then overlaps the dial rather than delaying it. A larger message (a CA
    bundle, thousands of ingress rules) would block until the worker reads it: the lean
    supervisor sends that one (from a thread, as ever).
    """
    from adit.ipc.messages import Start, encode, frame
    from adit.supervisor.launch import worker_boot
    from adit.supervisor.state import SupervisorState

    if child.stdin is None or child.booted:
        return
    # The layout launch.start_workers computes after the exec: same settings, same affinity.
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    layout = SupervisorState(settings, cpus=cpus)
    record = layout.workers[0]
    boot = worker_boot(settings, Start(layout.worker_settings(0)), record.cpu)
    data = frame(encode(boot))
    if len(data) > _PIPE_ROOM:
        return
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(child.stdin, view) :]
    except OSError:
        return  # a worker that died is noticed by the supervisor's loop
    child.booted = True


def load_in_child(args: list[str], config_path: str | None) -> Callable[[], SupervisorSettings]:
    """A settings loader that runs ``adit`` ``args`` in a child that prints the settings.

    The child is this interpreter running ``adit.cli.main`` with ``ADIT_SETTINGS_ONLY`` set to
    the config file the start read (a reload reads that file or fails, as in-process). A
    refusal (the child's exit code not 0) raises :class:`SettingsRefused` with the child's
    message.
    """

    def load() -> SupervisorSettings:
        data = parse_in_child(args, config_path)
        return msgspec.msgpack.decode(data, type=SupervisorSettings)

    return load


def parse_in_child(args: list[str], config_path: str | None) -> bytes:
    """The settings (msgpack) as the installed code's parser prints them for ``args``;
    :class:`SettingsRefused` with the child's message when it refuses (see
    :func:`load_in_child`)."""
    import subprocess

    env = dict(os.environ)
    env["ADIT_SETTINGS_ONLY"] = config_path or ""
    done = subprocess.run(
        [sys.executable, "-P", "-c", "from adit.cli.main import run_cli; import sys; "
         "run_cli(sys.argv[1:])", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=RELOAD_TIMEOUT,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SettingsRefused(child_refusal(done.stderr, done.returncode))
    return done.stdout


def child_refusal(stderr: bytes, returncode: int) -> str:
    """Why a child refused: its refusal line, else its last line of stderr."""
    lines = [
        line
        for line in stderr.decode(errors="replace").splitlines()
        if line.strip() and not line.startswith("See '")
    ]
    refusals = [line for line in lines if line.startswith(REFUSAL_PREFIX)]
    if refusals:
        return refusals[-1][len(REFUSAL_PREFIX) :]
    return lines[-1] if lines else f"exit code {returncode}"


def main(argv: list[str] | None = None) -> None:
    """Run the supervisor from a handover file; exits with the supervisor's exit code."""
    from adit.supervisor.signals import resume_after_exec

    # The handled signals are blocked since before the exec (hold_for_exec): none is lost.
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--upgrade"]:
        from adit.supervisor.upgrade import resume_upgrade

        resume_upgrade(Path(args[1]))  # never returns
    path = Path(args[0])
    start = msgspec.msgpack.decode(path.read_bytes(), type=Handover)
    path.unlink(missing_ok=True)
    resume_after_exec(start.early_signals)

    from adit.logs import configure_logging
    from adit.supervisor.launch import Supervisor
    from adit.supervisor.spawn import WorkerChild, give_back_prestarted

    configure_logging(start.settings.log)
    if start.worker_pid is not None:
        if start.worker_stdin is not None:
            os.set_inheritable(start.worker_stdin, False)
        child = WorkerChild(start.worker_pid, start.worker_stdin)
        child.booted = start.worker_booted
        give_back_prestarted(start.runtime_dir, child)
    settings = start.settings
    supervisor = Supervisor(
        settings,
        reload=load_in_child(start.args, settings.config_path),
        upgrade_args=start.args,
    )
    code = supervisor.run()
    if code == 1:
        print(supervisor.failure or "tunnel stopped with an error", file=sys.stderr, flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
