"""Issue 13 item 24: the environment cannot make a connector load code or freeze itself.

A real edge, a real connector and a raw-socket origin. The connector's environment names a
Python file as its worker runtime and asks for the "stuck on SIGUSR2" behaviour, the two test
hooks production start-up used to honour. Neither may have any effect: the file is never
executed, the real data plane serves, and SIGUSR2 does to a worker what it does to any
process (it ends it; the supervisor starts another).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from adversary import RawOrigin, exchange, start_tenant, status_of, worker_pids
from harness import Edge, Processes

pytestmark = pytest.mark.process

HOST = "app.example.test"


def _get(edge: Edge) -> int:
    request = f"GET /ping HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    return status_of(exchange(edge.http, request))


def test_environment_names_no_code_and_no_stuck_hook(
    processes: Processes, edge: Edge, recorder: RawOrigin, tmp_path: Path
) -> None:
    marker = tmp_path / "loaded"
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('executed')\n"
        "from adit.workers.runtime import WorkerRuntime as Planted\n"
    )
    tenant = start_tenant(
        processes,
        edge,
        "acme",
        HOST,
        recorder.url,
        extra=["--workers", "1"],
        env={
            "ADIT_TEST_WORKER_RUNTIME": f"{planted}:Planted",
            "ADIT_TEST_STUCK_ON_SIGUSR2": "1",
        },
    )
    assert _get(edge) == 200
    assert not marker.exists(), "the worker executed a file named by its environment"

    (worker,) = worker_pids(tenant.connector)
    signalled = time.monotonic()
    psutil.Process(worker).send_signal(signal.SIGUSR2)
    # SIGUSR2's default action ends the process; with the hook its event loop blocks instead
    # and the process lives on until the supervisor's stuck-worker timeout.
    deadline = signalled + 5.0
    while _running(worker):
        assert time.monotonic() < deadline, "SIGUSR2 froze the worker instead of ending it"
        time.sleep(0.05)
    text = tenant.connector.wait_for_log(rf"Started worker pid=(?!{worker}\b)\d+", timeout=20)
    assert "test hook" not in text
    deadline = time.monotonic() + 20
    while _get(edge) != 200:
        assert time.monotonic() < deadline, "the restarted worker never served"
        time.sleep(0.1)
    assert not marker.exists()


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, or a process gone between two looks, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
