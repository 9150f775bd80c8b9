"""`adit edge` under systemd's eyes: READY, RELOADING/READY on SIGHUP, STOPPING on SIGTERM."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from harness import Processes, adit_command

pytestmark = pytest.mark.process


def _receive(sock: socket.socket, count: int, timeout: float = 20.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return got


def test_edge_notifies_ready_reload_and_stopping(processes: Processes, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        edge = processes.start(
            "edge",
            [
                *adit_command(),
                "edge",
                "--state-dir",
                str(tmp_path / "state"),
                "--tunnel-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ],
            env={"NOTIFY_SOCKET": str(path)},
        )
        assert _receive(sock, 1) == ["READY=1"]
        edge.signal(signal.SIGHUP)
        reload = _receive(sock, 2)
        assert reload[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert reload[1] == "READY=1"
        edge.signal(signal.SIGTERM)
        assert _receive(sock, 1) == ["STOPPING=1"]
        assert edge.wait(timeout=20) == 0
    finally:
        sock.close()
