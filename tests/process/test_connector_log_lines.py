"""What `adit tunnel run` says on its console: one line per registration and per refusal (the
worker and the supervisor both see each one), and adit, not cloudflared, where adit speaks."""

from __future__ import annotations

import base64
import json
import re
import signal
from pathlib import Path

import pytest

from harness import (
    Account,
    Edge,
    Processes,
    adit_command,
    create_tunnel,
    request,
    start_connector,
    write_config,
)

pytestmark = pytest.mark.process

HOST = "logs.example.test"
REGISTERED = "Registered tunnel connection"


def test_each_registration_is_logged_once_and_the_page_says_adit(
    processes: Processes, edge: Edge, account: Account, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "logs", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": "hello_world"}])
    connector = start_connector(
        processes, tunnel, config, extra=["--ha-connections", "1", "--workers", "2"]
    )
    page = request(edge, HOST, path="/")
    assert page.status == 200
    assert b"<title>adit tunnel connection</title>" in page.body
    assert b"cloudflare tunnel" not in page.body.lower()
    connector.signal(signal.SIGTERM)
    assert connector.wait(timeout=30) == 0
    text = connector.text()
    lines = [line for line in text.splitlines() if REGISTERED in line]
    assert len(lines) == 1, text
    # cloudflared's fields, so that what greps its line keeps working (plus adit's slot).
    assert re.search(
        rf"INF {REGISTERED} connIndex=0 connection=[0-9a-f-]{{36}} event=0 ip=127\.0\.0\.1 "
        r"location=test protocol=quic slot=0$",
        lines[0],
    ), lines[0]
    assert len(re.findall("Unregistered tunnel connection", text)) == 1, text
    assert "cloudflare" not in text.lower(), text


def test_a_refused_registration_is_logged_once(
    processes: Processes, edge: Edge, account: Account, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "refused", HOST)
    creds = json.loads(tunnel.credentials.read_text())
    creds["TunnelSecret"] = base64.b64encode(b"\x01" * 32).decode()
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(creds))
    wrong.chmod(0o600)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": "http_status:204"}])
    connector = processes.start(
        "refused",
        [
            *adit_command(),
            "tunnel",
            "--config",
            str(config),
            "run",
            "--metrics",
            "127.0.0.1:0",
            "--ha-connections",
            "1",
            "--credentials-file",
            str(wrong),
            "refused",
        ],
        env={"HOME": str(account.home)},
    )
    assert connector.wait(timeout=30) != 0
    text = connector.text()
    refusals = [line for line in text.splitlines() if "tunnel credentials rejected" in line]
    # The supervisor's "Register tunnel error from server side" (cloudflared's message), then
    # its decision to stop, and the exit reason: no second line for the refusal itself.
    assert len([x for x in refusals if "Register tunnel error from server side" in x]) == 1
    assert "The edge refused the registration" not in text, text
