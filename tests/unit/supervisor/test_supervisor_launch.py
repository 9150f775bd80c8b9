"""Workers started before the supervisor's loop: argv, boot message, adoption, clean-up."""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

import pytest

from adit.ipc.messages import (
    EdgeTarget,
    IngressSnapshot,
    Start,
    decode_boot,
    encode,
    frame,
    read_frame,
)
from adit.logs import LogSettings
from adit.supervisor.launch import EarlyWorkers, worker_boot
from adit.supervisor.settings import SupervisorSettings
from adit.supervisor.spawn import WorkerChild, wants_prestart, worker_argv
from adit.supervisor.state import SupervisorState


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


def _child(code: str) -> WorkerChild:
    argv = [sys.executable, "-c", code]
    return WorkerChild(os.posix_spawn(argv[0], argv, dict(os.environ)), None)


def _sleeper() -> WorkerChild:
    return _child("import time; time.sleep(60)")


def test_worker_argv_carries_only_what_is_known_before_the_settings(tmp_path: Path) -> None:
    argv = worker_argv(2, tmp_path)
    assert argv[:3] == [sys.executable, "-m", "adit.workers"]
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert options == {
        "--slot": "2",
        "--runtime-dir": str(tmp_path),
        "--parent-pid": str(os.getpid()),
    }


def test_boot_message_carries_cpu_log_settings_and_start(tmp_path: Path) -> None:
    settings = _settings(LogSettings("debug", "json", None, "/var/log/adit"))
    start = Start(SupervisorState(settings, cpus=[0]).worker_settings(0))
    framed = frame(encode(worker_boot(settings, start, 1)))
    assert read_frame(io.BytesIO(framed + b"more")) == framed[4:]
    boot = decode_boot(framed[4:])
    assert boot.cpu == 1
    assert (boot.loglevel, boot.output, boot.logfile, boot.log_directory) == (
        "debug",
        "json",
        None,
        "/var/log/adit",
    )
    assert boot.start == start


def test_early_workers_are_adopted_once(tmp_path: Path) -> None:
    first = _sleeper()
    early = EarlyWorkers(tmp_path, {0: first})
    try:
        assert early.take(0) is first
        assert early.take(0) is None  # a respawn starts a new process
        assert early.take(1) is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)


def test_discard_kills_what_was_not_adopted(tmp_path: Path) -> None:
    left = _sleeper()
    early = EarlyWorkers(tmp_path, {0: left})
    early.discard()
    assert left.poll() is not None
    assert early.processes == {}


def test_only_tunnel_run_prestarts_a_worker() -> None:
    assert wants_prestart(["tunnel", "run", "--token", "t"])
    assert wants_prestart(["tunnel", "--config", "c.yml", "run", "my-tunnel"])
    assert wants_prestart(["--no-autoupdate", "tunnel", "run", "--token", "t"])
    assert wants_prestart(["--config", "c.yml", "--no-autoupdate", "tunnel", "run"])
    assert not wants_prestart(["tunnel", "run", "--help"])
    assert not wants_prestart(["tunnel", "list"])
    assert not wants_prestart(["tunnel", "--url", "http://127.0.0.1:8080"])
    assert not wants_prestart(["edge", "run"])
    assert not wants_prestart(["run"])


def test_worker_child_reports_exits_like_popen() -> None:
    done = _child("raise SystemExit(7)")
    assert done.wait(timeout=10) == 7
    assert done.poll() == 7
    done.send_signal(signal.SIGTERM)  # reaped: never signals a pid that may be reused
    sleeper = _sleeper()
    with pytest.raises(TimeoutError):
        sleeper.wait(timeout=0.05)
    assert sleeper.poll() is None
    sleeper.send_signal(signal.SIGKILL)
    assert sleeper.wait() == -signal.SIGKILL
