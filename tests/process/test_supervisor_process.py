"""The real supervisor (``adit tunnel run``) with real worker processes and a stand-in runtime.

The workers' data plane is replaced by ``supervisor_standin.StandInRuntime``, installed by the
test seam ``tests/seams/sitecustomize.py`` (on the connector's PYTHONPATH only); everything else
is real: fork+exec, zmq ipc, signals, sd_notify on a real unix datagram socket, the pidfile and
the HTTP listener.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from adit.credentials import (
    TunnelCredentials,
    encode_tunnel_token,
    load_credentials_file,
    write_credentials_file,
)
from harness import seam_env

pytestmark = [pytest.mark.process, pytest.mark.timeout(30)]

WORKER_STARTED = re.compile(r"Started worker pid=(\d+)")


class Connector:
    """One ``adit tunnel run`` process, its stderr lines and its sd_notify messages."""

    def __init__(
        self,
        tmp: Path,
        mode: str = "register",
        drain: str = "",
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        credentials_file: Path | None = None,
    ) -> None:
        self.tmp = tmp
        self.runtime_base = tmp / "run"
        self.runtime_base.mkdir()
        self.standin_log = tmp / "standin.log"
        self.pidfile = tmp / "adit.pid"
        self.notify_path = tmp / "notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.worker_pids: set[int] = set()
        creds = TunnelCredentials(
            "acct", b"s" * 32, uuid.uuid4(), edge=("127.0.0.1:7844", "127.0.0.1:7845")
        )
        if credentials_file is not None:
            write_credentials_file(credentials_file, creds)
            source = ["--credentials-file", str(credentials_file)]
        else:
            source = ["--token", encode_tunnel_token(creds)]
        env_extra = env
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("TUNNEL_", "NOTIFY_", "ADIT_TEST_"))
        }
        env.update(
            HOME=str(tmp),
            RUNTIME_DIRECTORY=str(self.runtime_base),
            NOTIFY_SOCKET=str(self.notify_path),
            ADIT_TEST_STANDIN_MODE=mode,
            ADIT_TEST_STANDIN_DRAIN=drain,
            ADIT_TEST_STANDIN_LOG=str(self.standin_log),
        )
        env.update(seam_env(ADIT_TEST_STANDIN="1"))
        env.update(env_extra or {})
        args = [
            "tunnel", "run",
            *source,
            "--metrics", "127.0.0.1:0",
            "--grace-period", "2s",
            "--loglevel", "debug",
            "--url", "http://127.0.0.1:9",
            "--pidfile", str(self.pidfile),
            *(extra if extra is not None else ["--workers", "1"]),
            *([str(creds.tunnel_id)] if credentials_file is not None else []),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from adit.cli.main import main; main()", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first stderr line (seen or coming) matching ``pattern``."""
        regex = re.compile(pattern)
        for line in self.seen:
            if match := regex.search(line):
                return match
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if started := WORKER_STARTED.search(line):
                self.worker_pids.add(int(started.group(1)))
            if match := regex.search(line):
                return match
        raise AssertionError(f"no line matching {pattern!r}; got:\n" + "\n".join(self.seen))

    def wait_notify(self, wanted: str, timeout: float = 10.0) -> list[str]:
        """sd_notify datagrams until one equals ``wanted``."""
        received: list[str] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.notify.settimeout(left)
            try:
                message = self.notify.recv(4096).decode()
            except TimeoutError:
                break
            received.append(message)
            if message == wanted:
                return received
        raise AssertionError(f"no {wanted!r} from sd_notify; got {received}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout=timeout)

    def standin_lines(self) -> list[str]:
        if not self.standin_log.exists():
            return []
        return self.standin_log.read_text().splitlines()

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in self.worker_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=5)
        self._reader.join(timeout=5)
        assert self.process.stderr is not None
        self.process.stderr.close()
        self.notify.close()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="adit-t-") as directory:
        yield Path(directory)


@pytest.fixture
def connector(short_tmp: Path) -> Iterator[Connector]:
    running = Connector(short_tmp)
    yield running
    running.close()


def _wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_supervisor_lifecycle(connector: Connector) -> None:
    worker_pid = int(connector.wait_line(r"Started worker pid=(\d+)").group(1))
    assert worker_pid != connector.process.pid
    cmdline = Path(f"/proc/{worker_pid}/cmdline")
    # Right after execve the kernel may not have published the new arguments yet.
    _wait_for(lambda: cmdline.read_bytes() != b"")
    assert b"adit.workers" in cmdline.read_bytes().split(b"\0")  # exec'd, not a bare fork

    (runtime_dir,) = connector.runtime_base.glob("adit-*")
    assert stat.S_IMODE(runtime_dir.stat().st_mode) == 0o700

    connector.wait_notify("READY=1")
    assert connector.pidfile.read_text() == str(connector.process.pid)
    connector.wait_line(r"First heartbeat from worker pid=" + str(worker_pid))
    (start,) = [x for x in connector.standin_lines() if x.startswith(f"start 0 {worker_pid} ")]
    assert start.endswith(" gc=True")

    port = int(connector.wait_line(r"Starting metrics server on 127\.0\.0\.1:(\d+)/metrics")[1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
        ready = json.loads(response.read())
    assert ready["status"] == 200 and ready["readyConnections"] == 2

    connector.process.send_signal(signal.SIGTERM)
    connector.wait_notify("STOPPING=1")
    assert connector.wait_exit() == 0
    assert "drain 0 2.0" in connector.standin_lines()
    assert not runtime_dir.exists()
    assert not Path(f"/proc/{worker_pid}").exists()


def test_second_sigterm_exits_at_once(short_tmp: Path) -> None:
    connector = Connector(short_tmp, drain="ignore")
    try:
        worker_pid = int(connector.wait_line(r"Started worker pid=(\d+)").group(1))
        connector.wait_notify("READY=1")
        connector.process.send_signal(signal.SIGTERM)
        connector.wait_notify("STOPPING=1")
        _wait_for(lambda: "drain 0 2.0" in connector.standin_lines())
        started = time.monotonic()
        connector.process.send_signal(signal.SIGTERM)
        assert connector.wait_exit(timeout=5) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 2.0  # well before the 2 s grace period ends
        _wait_for(lambda: not Path(f"/proc/{worker_pid}").exists())
    finally:
        connector.close()


def test_refused_first_connection_exits_1(short_tmp: Path) -> None:
    connector = Connector(short_tmp, mode="refuse")
    try:
        assert connector.wait_exit() == 1
        connector.wait_line(r"ERR Couldn't start tunnel error=")
        connector.wait_line(r"^initial tunnel connection failed: Unauthorized: bad secret$")
        assert not connector.pidfile.exists()
    finally:
        connector.close()


def test_killed_worker_is_restarted(connector: Connector) -> None:
    first = int(connector.wait_line(r"Started worker pid=(\d+)").group(1))
    connector.wait_notify("READY=1")
    os.kill(first, signal.SIGKILL)
    connector.wait_line(r"Worker exited unexpectedly code=-9")
    second = int(connector.wait_line(rf"Started worker pid=(?!{first}\b)(\d+)").group(1))
    assert second != first
    connector.wait_line(r"First heartbeat from worker pid=" + str(second))
    assert any(line.startswith(f"start 0 {second} ") for line in connector.standin_lines())
    connector.process.send_signal(signal.SIGINT)
    assert connector.wait_exit() == 0


def test_changed_credentials_file_rolls_every_worker(short_tmp: Path) -> None:
    path = short_tmp / "creds.json"
    connector = Connector(short_tmp, extra=["--workers", "2"], credentials_file=path)
    try:
        connector.wait_notify("READY=1")
        old = load_credentials_file(path)
        rotated = TunnelCredentials(old.account_tag, b"r" * 32, old.tunnel_id, edge=old.edge)
        # As a rotation does: a new file, renamed over the old one.
        write_credentials_file(short_tmp / "creds.new", rotated)
        os.replace(short_tmp / "creds.new", path)
        messages = connector.wait_notify("READY=1", timeout=10)
        assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in messages)
        connector.wait_line(r"Reloading configuration reason=\"credentials file changed\"")
        _wait_for(
            lambda: {"reconfigure 0 [0]", "reconfigure 1 [1]"} <= set(connector.standin_lines())
        )
        connector.process.send_signal(signal.SIGTERM)
        assert connector.wait_exit() == 0
    finally:
        connector.close()


def test_sighup_with_unchanged_settings_pushes_nothing(short_tmp: Path) -> None:
    connector = Connector(short_tmp)
    try:
        connector.wait_notify("READY=1")
        connector.process.send_signal(signal.SIGHUP)
        messages = connector.wait_notify("READY=1")
        assert next(m for m in messages if not m.startswith("STATUS=")).startswith(
            "RELOADING=1\nMONOTONIC_USEC="
        )
        connector.wait_line(r"Updated to new configuration .*version=1")
        connector.process.send_signal(signal.SIGTERM)
        assert connector.wait_exit() == 0
        assert not any(line.startswith("ingress ") for line in connector.standin_lines())
    finally:
        connector.close()


def _worker_children(pid: int) -> list[psutil.Process]:
    """The live workers of supervisor ``pid`` (one that ends while being looked at is not)."""
    workers = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if "adit.workers" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                workers.append(child)
    return workers


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


class _HeldSettings:
    """A connector whose config file is a FIFO: loading its settings blocks until released."""

    def __init__(self, short_tmp: Path) -> None:
        self.config = short_tmp / "config.yml"
        os.mkfifo(self.config)
        self.connector = Connector(
            short_tmp, extra=["--workers", "1", "--config", str(self.config)]
        )

    def early_worker(self) -> psutil.Process:
        """Worker 0, started before the settings are read."""
        pid = self.connector.process.pid
        _wait_for(lambda: len(_worker_children(pid)) == 1, timeout=10)
        (early,) = _worker_children(pid)
        return early

    def release(self, text: str) -> None:
        with self.config.open("w") as out:
            out.write(text)


@pytest.fixture
def held(short_tmp: Path) -> Iterator[_HeldSettings]:
    running = _HeldSettings(short_tmp)
    yield running
    running.connector.close()


def test_worker_0_starts_before_the_settings_are_read(held: _HeldSettings) -> None:
    connector = held.connector
    early = held.early_worker()
    assert "--slot" in early.cmdline() and "0" in early.cmdline()
    assert not any("Starting tunnel" in line for line in connector.seen)
    held.release("no-autoupdate: true\n")
    connector.wait_notify("READY=1")
    assert int(connector.wait_line(r"Started worker pid=(\d+)")[1]) == early.pid
    assert any(line.startswith(f"start 0 {early.pid} ") for line in connector.standin_lines())
    connector.process.send_signal(signal.SIGTERM)
    assert connector.wait_exit() == 0


def test_sigterm_while_the_settings_load_drains_once_they_are_read(held: _HeldSettings) -> None:
    # The supervisor's loop (and its signal handlers) starts after the settings are read: a
    # SIGTERM before that is remembered and drains the connector, not killed by the default.
    connector = held.connector
    held.early_worker()
    # Worker 0 is spawned just before the early handlers go in: wait for SIGTERM to be caught.
    _wait_for(lambda: _catches(connector.process.pid, signal.SIGTERM), timeout=10)
    connector.process.send_signal(signal.SIGTERM)
    held.release("no-autoupdate: true\n")
    connector.wait_line(r"Initiating graceful shutdown due to signal terminated")
    assert connector.wait_exit() == 0
    assert not any("Traceback" in line for line in connector.seen)


def test_settings_that_fail_stop_the_early_worker(held: _HeldSettings) -> None:
    connector = held.connector
    early = held.early_worker()
    held.release("ingress: [\n")
    assert connector.wait_exit() == 1
    early.wait(timeout=5)  # raises if it is still running
    assert not early.is_running()
    assert list(connector.runtime_base.iterdir()) == []
    assert not any("Traceback" in line for line in connector.seen)


def test_a_worker_drains_when_its_supervisor_dies(connector: Connector) -> None:
    worker_pid = int(connector.wait_line(r"Started worker pid=(\d+)").group(1))
    connector.wait_notify("READY=1")
    worker = psutil.Process(worker_pid)
    # SIGKILL: no drain command, no SIGTERM; only the worker's stdin reaching end-of-file.
    connector.process.kill()
    connector.wait_line(r"The supervisor exited; draining")
    _wait_for(lambda: "drain 0 2.0" in connector.standin_lines())
    worker.wait(timeout=10)


def test_the_supervisor_runs_without_the_parser_and_leaves_no_settings_file(
    connector: Connector,
) -> None:
    # `adit tunnel run` parses with click, yaml and the config code, then execs the lean
    # supervisor (adit.supervisor.lean): same pid (systemd's main pid, the pidfile's number).
    connector.wait_notify("READY=1")
    pid = connector.process.pid
    assert connector.pidfile.read_text() == str(pid)
    assert b"adit.supervisor.lean" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    # The parser's extension modules are not mapped (pyyaml's C loader; click and the config
    # code are pure Python and leave no trace in the maps).
    assert "/yaml/" not in Path(f"/proc/{pid}/maps").read_text()
    # The handover file held the tunnel secret: read and removed at once.
    (runtime_dir,) = connector.runtime_base.glob("adit-*")
    assert "supervisor-start" not in {p.name for p in runtime_dir.iterdir()}
    # A reload parses in a child: the supervisor still has no parser afterwards.
    connector.process.send_signal(signal.SIGHUP)
    connector.wait_notify("READY=1")
    assert "/yaml/" not in Path(f"/proc/{pid}/maps").read_text()
    connector.process.send_signal(signal.SIGTERM)
    assert connector.wait_exit() == 0
