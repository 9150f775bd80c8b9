"""Issue 13 item 23: a quick tunnel's embedded edge never speaks to systemd.

``adit tunnel --url`` starts an edge of its own, then becomes the connector. Only the
connector may tell systemd anything: ``READY=1`` means "a connection is registered", which the
edge cannot know. A real unix datagram socket stands in for systemd and, like systemd, reads
each sender's pid from the kernel.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from adversary import RawOrigin, notify_socket
from harness import Processes, adit_command

pytestmark = pytest.mark.process


def test_only_the_connector_notifies_and_ready_follows_registration(
    processes: Processes, recorder: RawOrigin, tmp_path: Path
) -> None:
    with notify_socket() as notify:
        quick = processes.start(
            "quick",
            [*adit_command(), "tunnel", "--url", recorder.url, "--metrics", "127.0.0.1:0"],
            env={"HOME": str(tmp_path), "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"},
        )
        quick.wait_for_log(r"Registered tunnel connection")
        ready = notify.wait_for("READY=1")
        assert notify.received[ready].pid == quick.popen.pid
        quick.signal(signal.SIGTERM)
        assert quick.wait(timeout=30) == 0
        stopping = notify.wait_for("STOPPING=1", start=ready + 1)
        # The quick CLI exec()s into the connector: one pid from start to exit, and no other.
        senders = {n.pid for n in notify.received}
        assert senders == {quick.popen.pid}, notify.received
        assert notify.states()[: stopping + 1].count("READY=1") == 1
