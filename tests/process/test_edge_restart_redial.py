"""An edge restarting under a healthy connection: quick redials while it refuses, then back.

The restarted edge listens on the same tunnel address (and shares the first one's state: store
and CA). The connector logs at debug level, where the quick redials show.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from adit.workers.backoff import HEALTHY_AFTER, QUICK_RETRIES
from harness import (
    Origin,
    Processes,
    create_tunnel,
    login,
    request,
    start_connector,
    start_edge,
    write_config,
)

pytestmark = pytest.mark.process

HOST = "redial.example.test"
REFUSED = r"Connection to the edge ended; retrying in (\d+\.\d)s .*Connection refused"


def test_a_restarting_edge_gets_quick_redials_then_the_usual_backoff(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    edge = start_edge(processes, "edge-1")
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "redial", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    connector = start_connector(
        processes,
        tunnel,
        config,
        # TCP's reset says at once that nothing listens (QUIC: test_quic_operations.py).
        extra=["--protocol", "http2", "--ha-connections", "1", "--loglevel", "debug"],
    )
    assert request(edge, HOST, path="/echo-headers").status == 200
    # Only a connection that served for a while earns quick redials.
    time.sleep(HEALTHY_AFTER + 0.5)

    edge.proc.popen.kill()
    edge.proc.popen.wait(timeout=10)
    connector.wait_for_log(r"Connection to the edge ended; retrying in 0\.1s", timeout=20)
    # The edge stays down until the quick redials are spent and the usual backoff shows.
    text = connector.wait_for_log(REFUSED.replace(r"(\d+\.\d)", r"(?:0\.[5-9]|1\.0)"))
    delays = re.findall(REFUSED, text)
    assert delays[:QUICK_RETRIES] == ["0.1"] * QUICK_RETRIES, delays
    assert float(delays[QUICK_RETRIES]) >= 0.5, delays
    # Quick redials are debug lines; the loss and the slow ones stay warnings.
    quick_lines = [line for line in text.splitlines() if re.search(REFUSED, line)]
    assert all(" DBG " in line for line in quick_lines[:QUICK_RETRIES]), quick_lines
    assert " WRN " in quick_lines[QUICK_RETRIES], quick_lines

    (processes.tmp / "edge-2-state").symlink_to(edge.state_dir)
    again = start_edge(processes, "edge-2", tunnel_listen=edge.tunnel)
    assert again.tunnel == edge.tunnel
    # The edge's own log: it routes the hostname once it has logged the registration.
    again.proc.wait_for_log(r"Registered tunnel connection", timeout=30)
    assert request(again, HOST, path="/echo-headers").status == 200
    assert connector.popen.poll() is None
