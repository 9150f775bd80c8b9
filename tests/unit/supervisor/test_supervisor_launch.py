"""Workers started before the supervisor's loop: argv, adoption by slot and CPU, clean-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from adit.ipc.messages import EdgeTarget, IngressSnapshot
from adit.logs import LogSettings
from adit.supervisor.launch import EarlyWorkers, worker_argv
from adit.supervisor.settings import SupervisorSettings


def _settings(log: LogSettings) -> SupervisorSettings:
    return SupervisorSettings(
        tunnel_id="00000000-0000-0000-0000-000000000001",
        account_tag="acct",
        tunnel_secret=b"s" * 32,
        edges=(EdgeTarget("127.0.0.1", 1),),
        edge_ca_pem="",
        ingress=IngressSnapshot(version=1),
        log=log,
    )


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_worker_argv_carries_slot_cpu_and_log_settings(tmp_path: Path) -> None:
    log = LogSettings("debug", "json", None, "/var/log/adit")
    argv = worker_argv(_settings(log), 2, 1, tmp_path)
    assert argv[:3] == [sys.executable, "-m", "adit.workers"]
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert options["--slot"] == "2"
    assert options["--runtime-dir"] == str(tmp_path)
    assert options["--cpu"] == "1"
    assert options["--loglevel"] == "debug"
    assert options["--output"] == "json"
    assert options["--log-directory"] == "/var/log/adit"
    unpinned = worker_argv(_settings(LogSettings()), 0, None, tmp_path)
    assert "--cpu" not in unpinned and "--logfile" not in unpinned


def test_early_workers_are_adopted_once_and_only_as_started(tmp_path: Path) -> None:
    first, second = _sleeper(), _sleeper()
    early = EarlyWorkers(tmp_path, {0: (first, 0), 1: (second, 1)})
    try:
        assert early.take(0, 0) is first
        assert early.take(0, 0) is None  # a respawn starts a new process
        # Started for another CPU than the supervisor now wants: killed, not adopted.
        assert early.take(1, None) is None
        assert second.wait(timeout=10) != 0
        assert first.poll() is None
    finally:
        first.kill()
        first.wait(timeout=10)


def test_discard_kills_what_was_not_adopted(tmp_path: Path) -> None:
    left = _sleeper()
    early = EarlyWorkers(tmp_path, {0: (left, None)})
    early.discard()
    assert left.poll() is not None
    assert early.processes == {}
