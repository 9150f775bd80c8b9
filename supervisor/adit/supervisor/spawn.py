"""Worker processes: started with ``posix_spawn``, worker 0 before anything else is imported.

``adit tunnel run`` calls :func:`prestart` first thing, before click, the config modules or
even ``subprocess`` are imported, so worker 0's interpreter start and imports overlap all of
them. This module therefore imports nothing but ``os``, ``sys`` and ``time`` (built in) and three
of ours that import nothing, and :class:`WorkerChild` is the small part of
``subprocess.Popen`` the supervisor uses.

A worker reads its settings from its stdin (``adit.workers.process``), so it can be started
before they are known; the write end of that pipe is :attr:`WorkerChild.stdin`, kept open
while the worker lives (its end-of-file tells the worker the supervisor died).
"""

from __future__ import annotations

import os
import sys
import time

from adit.allocator import ENVIRONMENT as ALLOCATOR_ENVIRONMENT
from adit.ipc.directory import make_runtime_directory
from adit.service_manager import child_environment

__all__ = [
    "WorkerChild",
    "command_line",
    "discard_prestarted",
    "give_back_prestarted",
    "prestart",
    "spawn_worker",
    "take_prestarted",
    "wants_prestart",
    "worker_argv",
    "worker_environment",
]

#: ``adit tunnel ... run`` arguments after which no tunnel runs (help and version).
_NO_RUN = frozenset({"-h", "--help", "-v", "-V", "--version"})
#: Longest sleep between two looks at a child that is waited for with a timeout.
_WAIT_STEP = 0.05


class WorkerChild:
    """A worker process started by this process (``pid``, exit status, signals, stdin)."""

    def __init__(self, pid: int, stdin: int | None) -> None:
        self.pid = pid
        #: The write end of the worker's stdin, open for the worker's life: the boot message
        #: goes there, and its end-of-file tells the worker this process died.
        self.stdin = stdin
        #: Whether the boot message was sent (it is sent once).
        self.booted = False
        #: The exit code once known (``-N``: killed by signal ``N``), as ``Popen.returncode``.
        self.returncode: int | None = None

    def close_stdin(self) -> None:
        """Close the worker's stdin: one still waiting for its settings exits quietly."""
        fd, self.stdin = self.stdin, None
        if fd is not None:
            os.close(fd)

    def poll(self) -> int | None:
        """The exit code if the process ended (and reap it), else ``None``."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                # Reaped elsewhere: the status is lost (what Popen reports then too).
                self.returncode = 0
            else:
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit code, waiting up to ``timeout`` seconds; raises :class:`TimeoutError`."""
        if timeout is None:
            while self.returncode is None:
                try:
                    _, status = os.waitpid(self.pid, 0)
                except ChildProcessError:
                    self.returncode = 0
                else:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while (code := self.poll()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"worker pid={self.pid} still running after {timeout}s")
            delay = min(delay * 2, left, _WAIT_STEP)
            time.sleep(delay)
        return code

    def send_signal(self, signum: int) -> None:
        """Signal the process unless it was reaped (its pid may belong to another by now)."""
        if self.poll() is None:
            os.kill(self.pid, signum)


def worker_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The supervisor's environment without what only the supervisor may use, with the
    allocator settings of :mod:`adit.allocator`."""
    env = child_environment(environ)
    # Read by glibc as the worker starts: its TLS read buffers come from the heap
    # (adit.allocator). An operator's own MALLOC_* settings win.
    for key, value in ALLOCATOR_ENVIRONMENT.items():
        env.setdefault(key, value)
    return env


def worker_argv(slot: int, runtime_dir: str | os.PathLike[str]) -> list[str]:
    """``python -m adit.workers ...`` for the worker of ``slot`` (the rest comes on stdin)."""
    return [
        sys.executable, "-m", "adit.workers",
        "--slot", str(slot),
        "--runtime-dir", os.fspath(runtime_dir),
        "--parent-pid", str(os.getpid()),
    ]  # fmt: skip


def _inherited_fds() -> list[int]:
    """Descriptors above 2 a child would inherit (systemd's sockets, say): to close in it."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    found = []
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    found.append(fd)
            except OSError:
                continue  # the listing's own descriptor, closed by now
    return found


def spawn_worker(slot: int, runtime_dir: str | os.PathLike[str]) -> WorkerChild:
    """Start the worker process of ``slot`` (fork+exec); it waits for its boot message."""
    read_end, write_end = os.pipe()  # both close-on-exec; dup2 makes the child's 0 inheritable
    actions: list[tuple[int, ...]] = [(os.POSIX_SPAWN_DUP2, read_end, 0)]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds()]
    argv = worker_argv(slot, runtime_dir)
    try:
        pid = os.posix_spawn(argv[0], argv, worker_environment(), file_actions=actions)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return WorkerChild(pid, write_end)


class _Prestarted:
    """Worker 0 started by :func:`prestart`, until a supervisor takes it."""

    def __init__(self) -> None:
        self.worker: tuple[str, WorkerChild] | None = None
        #: ``adit``'s arguments when :func:`prestart` saw the real command line: the process
        #: may then become the lean supervisor (``adit.supervisor.lean``).
        self.args: list[str] | None = None


_pending = _Prestarted()


def wants_prestart(args: list[str]) -> bool:
    """Whether ``adit`` ``args`` look like ``[...] tunnel [...] run [...]`` that will run a
    tunnel (the tunnel flags may come before ``tunnel``: ``--no-autoupdate tunnel run``).

    A cheap guess made before click parses anything: a wrong "yes" costs one worker process
    that exits when its stdin closes, a wrong "no" only the head start.
    """
    if "tunnel" not in args or _NO_RUN.intersection(args):
        return False
    return "run" in args[args.index("tunnel") + 1 :]


def prestart(args: list[str]) -> None:
    """Start worker 0 now if ``args`` (``adit``'s arguments) will run a tunnel.

    It imports while the settings are loaded; ``adit.supervisor.launch.start_workers`` takes
    it and sends its boot message. Never raises: without it the start is only slower.
    """
    _pending.args = list(args)
    if _pending.worker is not None or not wants_prestart(args):
        return
    try:
        _start_first_worker()
    finally:
        from adit.supervisor.signals import capture_early

        # From here on this process is a supervisor: a signal before its loop runs must
        # drain. Only now: the signal module's imports (enum, typing: ~10 ms) would delay
        # worker 0, which ignores SIGINT and turns SIGTERM into a drain from its first lines.
        capture_early()


def _start_first_worker() -> None:
    import atexit

    try:
        runtime_dir = make_runtime_directory()
    except OSError:
        return
    try:
        child = spawn_worker(0, runtime_dir)
    except OSError:
        os.rmdir(runtime_dir)
        return
    _pending.worker = (runtime_dir, child)
    # The command may still end before a supervisor takes it (bad flags, no settings).
    atexit.register(discard_prestarted)


def take_prestarted() -> tuple[str, WorkerChild] | None:
    """The prestarted worker 0 and its socket directory, once."""
    found, _pending.worker = _pending.worker, None
    return found


def give_back_prestarted(runtime_dir: str, child: WorkerChild) -> None:
    """Make ``child`` the prestarted worker 0 again (for :func:`take_prestarted`)."""
    _pending.worker = (runtime_dir, child)


def command_line() -> list[str] | None:
    """``adit``'s arguments if this process runs the real command line (:func:`prestart` was
    called), else ``None`` (a caller in the same interpreter: tests)."""
    return _pending.args


def discard_prestarted() -> None:
    """Stop the prestarted worker (the settings could not be loaded) and remove its directory."""
    found = take_prestarted()
    if found is None:
        return
    import signal
    from pathlib import Path

    from adit.ipc.rendezvous import remove_runtime_directory

    runtime_dir, child = found
    child.close_stdin()  # a worker still importing exits quietly when it finds no settings
    child.send_signal(signal.SIGKILL)
    child.wait()
    remove_runtime_directory(Path(runtime_dir))
