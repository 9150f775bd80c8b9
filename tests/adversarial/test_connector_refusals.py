"""Issue 13 item 21: a refusal's retry policy is honoured on every connection, not just the first.

A real edge, a real connector with two connections, systemd's notify socket. The connector
holds a copy of its credentials that a finished rotation made stale; the edge restarts, so
both connections dial again and are refused for good ("tunnel credentials rejected",
``should_retry=false``). Each connection must stop at its refusal (no retry storm), and with
every connection refused the connector must stop: exit code 1, a clear message, STOPPING=1.

Second test: an edge (adit's own tunnel code, in the test) answers the first registration
"retry in 3 s"; the connector must wait that long, not give up, then register.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from adit.protocol.registration import RegistrationError
from adversary import InProcessEdge, notify_socket, start_tenant
from harness import Processes, adit_command, start_edge

pytestmark = [pytest.mark.process, pytest.mark.timeout(240)]

HOST = "app.example.test"


def test_every_connection_refused_for_good_stops_the_connector(processes: Processes) -> None:
    two = start_edge(processes, "edge-two", tunnel_listen=["127.0.0.1:0", "127.0.0.1:0"])
    with notify_socket() as notify:
        tenant = start_tenant(processes, two, "acme", HOST, "http_status:204", wait=0)
        tenant.connector.stop()
        # The connector runs from a copy of its credentials: the rotation below rewrites the
        # original, which a running connector would pick up and roll to.
        stale = processes.tmp / "stale-credentials.json"
        shutil.copy(tenant.tunnel.credentials, stale)
        connector = processes.start(
            "connector-stale",
            [
                *adit_command(),
                "tunnel",
                "--config",
                str(processes.tmp / "config-acme.yml"),
                "run",
                "--protocol",
                "http2",
                "--metrics",
                "127.0.0.1:0",
                "--ha-connections",
                "2",
                "--credentials-file",
                str(stale),
                tenant.tunnel.name,
            ],
            env={"HOME": str(tenant.account.home), "NOTIFY_SOCKET": notify.path},
        )
        # This connector's registration of its second connection.
        connector.wait_for_log(r"Registered tunnel connection connIndex=1 .*event=0", timeout=30)
        ready = notify.wait_for("READY=1")
        tenant.account.cli("tunnel", "rotate", "--deadline", "10m", tenant.tunnel.name)
        tenant.account.cli("tunnel", "rotate", "--finish", tenant.tunnel.name)

        # The edge restarts on the same addresses and state: both connections dial again.
        two.proc.popen.kill()
        two.proc.popen.wait(timeout=10)
        (processes.tmp / "edge-again-state").symlink_to(two.state_dir)
        again = start_edge(processes, "edge-again", tunnel_listen=two.tunnel)

        # Bounded by the backoff the connector reached while the edge was down (up to ~30 s
        # on a busy machine), then one refusal per connection.
        assert connector.wait(timeout=150) == 1, connector.text()
        text = connector.text()
        assert "every connection" in text and "tunnel credentials rejected" in text, text
        notify.wait_for("STOPPING=1", start=ready + 1)
        # One refusal per connection: a permanent refusal is not retried.
        refusals = re.findall(r"refused registration for tunnel", again.proc.text())
        assert len(refusals) == 2, again.proc.text()


def test_a_retryable_refusal_waits_its_retry_after_and_is_not_fatal(
    processes: Processes, tmp_path: Path
) -> None:
    edge = InProcessEdge(tmp_path / "edge")
    try:
        credentials = edge.credentials(tmp_path / "credentials.json")
        config = tmp_path / "config.yml"
        config.write_text("ingress:\n  - service: http_status:204\n")
        # The first connection's first registration: "not now, in 3 s".
        edge.refusals.append(RegistrationError("edge busy", 3_000_000_000, True))
        connector = processes.start(
            "connector",
            [
                *adit_command(),
                "tunnel",
                "--config",
                str(config),
                "run",
                "--protocol",
                "http2",
                "--metrics",
                "127.0.0.1:0",
                "--credentials-file",
                str(credentials),
                str(edge.tunnel_id),
            ],
            env={"HOME": str(tmp_path)},
        )
        edge.wait_registered(timeout=30)
        assert connector.popen.poll() is None
        first, second = edge.attempts[:2]
        assert second - first >= 3.0, edge.attempts
        assert edge.request("any.example.test").status == 204
    finally:
        edge.close()
