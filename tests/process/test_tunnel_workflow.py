"""The seed's tunnel workflow against a real `adit edge`, and bad input on the way in."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from harness import (
    Account,
    Edge,
    Origin,
    Processes,
    adit_command,
    create_tunnel,
    request,
    start_connector,
    write_config,
)

pytestmark = pytest.mark.process

HOST = "flow.example.test"


def test_create_route_run_list_info_token_cleanup_delete(
    processes: Processes, edge: Edge, account: Account, origin: Origin, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "flow", HOST)
    assert oct(tunnel.credentials.stat().st_mode & 0o777) == "0o400"
    creds = json.loads(tunnel.credentials.read_text())
    assert creds["TunnelID"] == tunnel.id
    assert len(base64.b64decode(creds["TunnelSecret"])) == 32

    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    connector = start_connector(processes, tunnel, config)
    assert request(edge, HOST, path="/x").body == b"hello /x"

    listed = account.cli("tunnel", "list").stdout
    assert re.search(rf"{tunnel.id}\s+flow\s+\S+\s+1xtest", listed), listed
    info = account.cli("tunnel", "info", "flow").stdout
    assert "NAME:     flow" in info
    assert "1xtest" in info
    # An edge without an HTTPS listener: cloudflared's output only, no certificate section.
    assert "PUBLIC CERTIFICATES" not in info

    refused = account.cli("tunnel", "delete", "flow", check=False)
    assert refused.returncode == 1
    assert "active connections" in refused.stderr.lower() or "connect" in refused.stderr.lower()

    token = account.cli("tunnel", "token", "flow").stdout.strip()
    decoded = json.loads(base64.b64decode(token))
    assert decoded["t"] == tunnel.id
    assert decoded["a"] == account.tag

    # A second connector by token only: the edge balances over both.
    second = processes.start(
        "second",
        [
            *adit_command(),
            "tunnel",
            "--config",
            str(config),
            "run",
            "--token",
            token,
            "--metrics",
            "127.0.0.1:0",
        ],
        env={"HOME": str(tmp_path / "elsewhere")},
    )
    second.wait_for_log("Registered tunnel connection")
    assert re.search(r"2xtest", account.cli("tunnel", "list").stdout)

    account.cli("tunnel", "cleanup", "flow")
    assert request(edge, HOST).status in (200, 530)  # connectors reconnect by themselves

    account.cli("tunnel", "delete", "-f", "flow")
    assert not tunnel.credentials.exists()
    assert request(edge, HOST).status == 404
    assert "flow" not in account.cli("tunnel", "list").stdout
    for proc in (connector, second):
        proc.stop()


def _run(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*adit_command(), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "HOME": str(home)},
    )


def test_missing_and_malformed_credentials_are_clear_errors(tmp_path: Path) -> None:
    tunnel_id = "cce48637-f5a9-4699-b732-a486cd66b001"
    missing = _run(
        ["tunnel", "run", "--credentials-file", str(tmp_path / "nope.json"), tunnel_id], tmp_path
    )
    assert missing.returncode == 1
    assert "doesn't exist or is not a file" in missing.stderr

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    malformed = _run(["tunnel", "run", "--credentials-file", str(broken), tunnel_id], tmp_path)
    assert malformed.returncode == 1
    assert "Invalid JSON when parsing tunnel credentials file" in malformed.stderr


def test_wrong_secret_is_refused_and_the_connector_exits_1(
    processes: Processes, edge: Edge, account: Account, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "secretive", "secret.example.test")
    creds = json.loads(tunnel.credentials.read_text())
    creds["TunnelSecret"] = base64.b64encode(b"\x00" * 32).decode()
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(creds))
    proc = processes.start(
        "wrong",
        [
            *adit_command(),
            "tunnel",
            "run",
            "--credentials-file",
            str(wrong),
            "--metrics",
            "127.0.0.1:0",
            tunnel.id,
        ],
        env={"HOME": str(account.home)},
    )
    assert proc.wait(timeout=60) == 1
    text = proc.text()
    assert "tunnel credentials rejected" in text
    assert "refused" in edge.proc.text() or "bad credentials" in edge.proc.text()


def test_delete_refusal_gives_advice_that_works(
    processes: Processes, edge: Edge, account: Account, tmp_path: Path
) -> None:
    """Every command the refusal suggests, run as written, lets the tunnel be deleted while its
    connector keeps running (a suggestion a running connector undoes is no advice)."""
    tunnel = create_tunnel(account, "busy", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": "http_status:204"}])
    connector = start_connector(processes, tunnel, config)
    refused = account.cli("tunnel", "delete", "busy", check=False)
    assert refused.returncode == 1
    assert "active connections" in refused.stderr
    suggested = re.findall(r"`adit ([^`]+)`", refused.stderr)
    assert suggested, refused.stderr
    for command in suggested:
        result = account.cli(*shlex.split(command), check=False)
        assert result.returncode == 0, (command, result.stderr)
    assert account.cli("tunnel", "list").stdout.count("busy") == 0
    assert not tunnel.credentials.exists()
    connector.wait_for_log("tunnel credentials rejected")
