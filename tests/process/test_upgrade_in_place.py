"""In-place upgrade of the connector (SIGUSR2): the installed tree changes under a running
``adit tunnel run``, which execs it keeping its pid and replaces its workers make-before-break.

No package is installed: the connector runs from a copy of the source tree (``PYTHONPATH``
names the copy's five roots, ahead of the editable install), and the test edits the copy
between the start and SIGUSR2, as a package upgrade replaces the files. Requests run through
the edge all along (a bounded loop in a thread); none may fail.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from adversary import NotifySocket
from harness import (
    BIN,
    Account,
    Edge,
    Origin,
    Proc,
    Processes,
    create_tunnel,
    login,
    request,
    start_connector,
    start_edge,
    write_config,
)

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]

HOST = "upgrade.example.test"
REPO = Path(__file__).resolve().parents[2]
ROOTS = ("runtime", "supervisor", "workers", "edge", "protocol")
NEW_VERSION = "2099.1.0"


@dataclass
class RequestLoop:
    """Requests from ``threads`` threads until stopped (each bounded by ``limit``)."""

    edge: Edge
    host: str
    threads: int = 3
    limit: int = 2000
    statuses: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)
        ]

    def _run(self) -> None:
        for _ in range(self.limit):
            if self._stop.is_set():
                return
            try:
                reply = request(self.edge, self.host, path="/", timeout=10)
            except OSError as exc:
                with self._lock:
                    self.failures.append(repr(exc))
            else:
                with self._lock:
                    self.statuses.append(reply.status)
                    if reply.status != 200:
                        self.failures.append(f"{reply.status} {reply.body[:200]!r}")
            time.sleep(0.01)

    def __enter__(self) -> RequestLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def wait_more(self, count: int, timeout: float = 20.0) -> None:
        """Wait until ``count`` more requests were answered (or failed)."""
        target = len(self.statuses) + len(self.failures) + count
        deadline = time.monotonic() + timeout
        while len(self.statuses) + len(self.failures) < target:
            assert time.monotonic() < deadline, "request loop too slow"
            time.sleep(0.02)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the source tree the connector runs from (the 'installed' code)."""
    copy = tmp_path / "installed"
    for root in ROOTS:
        shutil.copytree(
            REPO / root / "adit",
            copy / root / "adit",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    return copy


def tree_env(tree: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(str(tree / root) for root in ROOTS)}


def set_version(tree: Path, version: str) -> None:
    path = tree / "runtime" / "adit" / "version.py"
    text = re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', path.read_text())
    path.write_text(text)


def break_module(tree: Path, relative: str) -> None:
    """Make a module of the copy raise on import."""
    path = tree / relative
    path.write_text(path.read_text() + '\nraise RuntimeError("broken build for the test")\n')


@pytest.fixture
def edge2(processes: Processes) -> Edge:
    return start_edge(processes, tunnel_listen=["127.0.0.1:0", "127.0.0.1:0"])


@pytest.fixture
def account2(edge2: Edge, tmp_path: Path) -> Account:
    return login(edge2, tmp_path / "home")


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def metrics_port(proc: Proc) -> int:
    text = proc.wait_for_log(r"Starting metrics server on 127\.0\.0\.1:\d+/metrics")
    match = re.search(r"Starting metrics server on 127\.0\.0\.1:(\d+)/metrics", text)
    assert match
    return int(match.group(1))


def build_version(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r'^build_info\{[^}]*version="([^"]+)"', text, re.MULTILINE)
    assert match, text[:500]
    return match.group(1)


def workers_of(pid: int) -> set[int]:
    """The worker processes (children running adit.workers) of the supervisor."""
    found = set()
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):
            if "adit.workers" in child.cmdline():
                found.add(child.pid)
    return found


def wait_until(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            if predicate():  # type: ignore[operator]
                return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def start(
    processes: Processes,
    account: Account,
    tree: Path,
    origin: Origin,
    tmp_path: Path,
    *,
    workers: int,
    notify: NotifySocket | None = None,
    protocol: str = "http2",
) -> Proc:
    tunnel = create_tunnel(account, "upgrade", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    env = tree_env(tree)
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify.path
    extra = ["--protocol", protocol, "--workers", str(workers)]
    return start_connector(processes, tunnel, config, extra=extra, env=env, wait=2)


@pytest.mark.parametrize(("workers", "protocol"), [(1, "http2"), (2, "http2"), (2, "quic")])
def test_upgrade_in_place_keeps_the_pid_replaces_every_worker_and_drops_nothing(
    processes: Processes,
    edge2: Edge,
    account2: Account,
    origin: Origin,
    notify: NotifySocket,
    tree: Path,
    tmp_path: Path,
    workers: int,
    protocol: str,
) -> None:
    proc = start(
        processes,
        account2,
        tree,
        origin,
        tmp_path,
        workers=workers,
        notify=notify,
        protocol=protocol,
    )
    pid = proc.popen.pid
    port = metrics_port(proc)
    ready_at = notify.wait_for("READY=1")
    old_version = build_version(port)
    wait_until(lambda: len(workers_of(pid)) == workers)
    old_workers = workers_of(pid)

    set_version(tree, NEW_VERSION)
    with RequestLoop(edge2, HOST) as loop:
        loop.wait_more(30)
        proc.signal(signal.SIGUSR2)
        proc.wait_for_log(r"Upgrade finished: every old worker drained", timeout=60)
        loop.wait_more(30)
    assert loop.failures == [], loop.failures[:5]
    assert len(loop.statuses) > 60

    assert proc.popen.poll() is None and proc.popen.pid == pid
    # Not a reload: systemd must keep the unit "active", so no RELOADING=1 is sent.
    reloading = notify.wait_for("STATUS=upgrading", start=ready_at + 1)
    notify.wait_for("READY=1", start=reloading + 1)
    assert not any("RELOADING=1" in state for state in notify.states()[ready_at:])
    assert all(n.pid == pid for n in notify.received[reloading:] if n.pid)
    assert old_version != NEW_VERSION
    assert build_version(port) == NEW_VERSION  # the same listener: the port did not change
    status = notify.wait_for("STATUS=running", start=reloading + 1)
    assert f"adit {NEW_VERSION}" in notify.states()[status]
    new_workers = workers_of(pid)
    assert len(new_workers) == workers and not new_workers & old_workers
    assert request(edge2, HOST).status == 200

    # The upgraded supervisor upgrades again (what it hands over is written by the new code).
    set_version(tree, "2099.2.0")
    with RequestLoop(edge2, HOST) as loop:
        loop.wait_more(20)
        proc.signal(signal.SIGUSR2)
        proc.wait_for_log(r"Upgrade finished: every old worker drained", timeout=60, count=2)
        loop.wait_more(20)
    assert loop.failures == [], loop.failures[:5]
    assert proc.popen.poll() is None and build_version(port) == "2099.2.0"
    assert not workers_of(pid) & (old_workers | new_workers)


def test_a_broken_installed_tree_is_refused_and_the_old_version_keeps_serving(
    processes: Processes,
    edge2: Edge,
    account2: Account,
    origin: Origin,
    notify: NotifySocket,
    tree: Path,
    tmp_path: Path,
) -> None:
    proc = start(processes, account2, tree, origin, tmp_path, workers=2, notify=notify)
    pid = proc.popen.pid
    port = metrics_port(proc)
    notify.wait_for("READY=1")
    wait_until(lambda: len(workers_of(pid)) == 2)
    old_workers = workers_of(pid)
    old_version = build_version(port)

    set_version(tree, NEW_VERSION)
    with RequestLoop(edge2, HOST) as loop:
        # A worker module that raises on import.
        loop.wait_more(20)
        break_module(tree, "workers/adit/workers/proxy.py")
        proc.signal(signal.SIGUSR2)
        text = proc.wait_for_log(r"Upgrade refused:", timeout=60)
        line = next(x for x in text.splitlines() if "Upgrade refused:" in x)
        assert f"the installed adit {NEW_VERSION} does not start" in line
        assert "broken build for the test" in line
        assert f"version {old_version} keeps serving" in line
        loop.wait_more(20)

        # The worker's entry point raises (importing its package does not run it).
        shutil.copy(REPO / "workers/adit/workers/proxy.py", tree / "workers/adit/workers/proxy.py")
        main_py = tree / "workers/adit/workers/__main__.py"
        main_py.write_text(
            main_py.read_text().replace(
                "import gc\n", 'import gc\n\nraise RuntimeError("broken build for the test")\n', 1
            )
        )
        proc.signal(signal.SIGUSR2)
        text = proc.wait_for_log(r"Upgrade refused:", timeout=60, count=2)
        line = [x for x in text.splitlines() if "Upgrade refused:" in x][1]
        assert "broken build for the test" in line
        loop.wait_more(20)

        # A supervisor module that raises (the one the new supervisor would run).
        shutil.copy(REPO / "workers/adit/workers/__main__.py", main_py)
        break_module(tree, "supervisor/adit/supervisor/app.py")
        proc.signal(signal.SIGUSR2)
        proc.wait_for_log(r"Upgrade refused:", timeout=60, count=3)
        loop.wait_more(20)
    assert loop.failures == [], loop.failures[:5]
    assert proc.popen.poll() is None
    assert workers_of(pid) == old_workers
    assert build_version(port) == old_version
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert "adit_upgrade_failures_total 3.0" in response.read().decode()
    assert "upgrade refused:" in notify.states()[notify.wait_for("STATUS=")] or any(
        "upgrade refused:" in s for s in notify.states()
    )


def test_a_handover_the_installed_version_cannot_read_is_refused(
    processes: Processes,
    edge2: Edge,
    account2: Account,
    origin: Origin,
    tree: Path,
    tmp_path: Path,
) -> None:
    """A downgrade to a version that reads another hand-over format, or that refuses the
    config: refused with the reason, not a crash; the running version keeps serving."""
    proc = start(processes, account2, tree, origin, tmp_path, workers=1)
    pid = proc.popen.pid
    wait_until(lambda: len(workers_of(pid)) == 1)
    old_workers = workers_of(pid)
    handover = tree / "supervisor" / "adit" / "supervisor" / "upgrade_handover.py"
    handover.write_text(handover.read_text().replace("UPGRADE_FORMAT = 1", "UPGRADE_FORMAT = 0"))
    set_version(tree, "2020.1.0")
    with RequestLoop(edge2, HOST) as loop:
        loop.wait_more(20)
        proc.signal(signal.SIGUSR2)
        text = proc.wait_for_log(r"Upgrade refused:", timeout=60)
        loop.wait_more(20)
        line = next(x for x in text.splitlines() if "Upgrade refused:" in x)
        assert "the installed adit 2020.1.0 does not start" in line
        assert "hand-over has format 1; this adit reads format 0" in line

        # A config the installed version refuses (here: the last rule is not a catch-all).
        handover.write_text(
            handover.read_text().replace("UPGRADE_FORMAT = 0", "UPGRADE_FORMAT = 1")
        )
        config = tmp_path / "config.yml"
        good = config.read_text()
        config.write_text(f"ingress:\n- hostname: {HOST}\n  service: {origin.url}\n")
        proc.signal(signal.SIGUSR2)
        text = proc.wait_for_log(r"Upgrade refused:", timeout=60, count=2)
        config.write_text(good)
        loop.wait_more(20)
    line = [x for x in text.splitlines() if "Upgrade refused:" in x][1]
    assert "the installed adit 2020.1.0 does not start" in line and "must match all URLs" in line, (
        line
    )
    assert loop.failures == []
    assert proc.popen.poll() is None and workers_of(pid) == old_workers


def test_upgrade_restart_with_pid(
    processes: Processes,
    edge2: Edge,
    account2: Account,
    origin: Origin,
    tree: Path,
    tmp_path: Path,
) -> None:
    """``adit upgrade-restart --pid``: 0 once the connector runs the installed version, 1 with
    the reason when it refuses."""
    proc = start(processes, account2, tree, origin, tmp_path, workers=1)
    pid = proc.popen.pid
    port = metrics_port(proc)
    env = {**os.environ, **tree_env(tree)}
    command = [str(BIN / "adit"), "upgrade-restart", "--pid", str(pid)]
    command += ["--metrics", f"127.0.0.1:{port}", "--timeout", "60"]

    set_version(tree, NEW_VERSION)
    break_module(tree, "workers/adit/workers/proxy.py")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 1, done
    assert "broken build for the test" in done.stderr, done
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr

    shutil.copy(REPO / "workers/adit/workers/proxy.py", tree / "workers/adit/workers/proxy.py")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done
    assert NEW_VERSION in done.stdout, done
    assert build_version(port) == NEW_VERSION
    assert proc.popen.poll() is None and proc.popen.pid == pid

    # Once it runs the installed version there is nothing to do; a gone pid is an error.
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0 and "already runs" in done.stdout, done
    proc.stop()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 1 and f"no process {pid}" in done.stderr, done

    # A process that does not handle SIGUSR2 (a connector older than in-place upgrades)
    # would die of it: it is not sent.
    sleeper = processes.start("sleeper", ["sleep", "60"])
    wait_until(lambda: psutil.Process(sleeper.popen.pid).name() == "sleep")
    done = subprocess.run(
        [str(BIN / "adit"), "upgrade-restart", "--pid", str(sleeper.popen.pid)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 1 and "predates in-place upgrades" in done.stderr, done
    assert sleeper.popen.poll() is None


def test_new_workers_that_do_not_register_leave_the_old_ones_serving(
    processes: Processes,
    edge2: Edge,
    account2: Account,
    origin: Origin,
    tree: Path,
    tmp_path: Path,
) -> None:
    """The installed code starts but its workers cannot register (here: its config names an
    edge that does not answer): the old workers keep serving, never drained."""
    proc = start(processes, account2, tree, origin, tmp_path, workers=1)
    pid = proc.popen.pid
    port = metrics_port(proc)
    wait_until(lambda: len(workers_of(pid)) == 1)
    (old_worker,) = workers_of(pid)
    predecessors = tree / "supervisor" / "adit" / "supervisor" / "predecessors.py"
    predecessors.write_text(
        predecessors.read_text().replace("REGISTER_TIMEOUT = 60.0", "REGISTER_TIMEOUT = 5.0")
    )
    set_version(tree, NEW_VERSION)
    config = tmp_path / "config.yml"
    config.write_text(config.read_text() + "edge:\n- 127.0.0.1:9\n")
    with RequestLoop(edge2, HOST) as loop:
        loop.wait_more(20)
        proc.signal(signal.SIGUSR2)
        text = proc.wait_for_log(r"did not register this slot's connections", timeout=60)
        loop.wait_more(30)
    assert loop.failures == [], loop.failures[:5]
    assert "Draining the old worker" not in text
    assert proc.popen.poll() is None and old_worker in workers_of(pid)
    assert build_version(port) == NEW_VERSION
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
        assert b'"readyConnections":2' in response.read().replace(b" ", b"")
