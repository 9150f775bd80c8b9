"""Issue 18: Access applies to TCP streams too: ``adit access tcp`` with a service token passes
an application's Service Auth policy; without one (or with a wrong secret) the WebSocket is
refused at the edge and the origin sees no connection."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from adversary import api_call
from harness import (
    Account,
    Edge,
    Processes,
    adit_command,
    create_tunnel,
    start_connector,
    write_config,
)
from ports import free_port

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

HOST = "tcp.example.test"


class EchoOrigin:
    """Sends back what it reads; counts connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(20)
                while chunk := conn.recv(65536):
                    conn.sendall(chunk)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoOrigin]:
    origin = EchoOrigin()
    yield origin
    origin.close()


def _api(account: Account, method: str, path: str, body: object = None) -> dict[str, str]:
    status, raw = api_call(
        account,
        method,
        f"/client/v4/accounts/{account.tag}/access/{path}",
        None if body is None else json.dumps(body).encode(),
    )
    assert status == 200, raw
    result: dict[str, str] = json.loads(raw)["result"]
    return result


def _tcp(edge: Edge, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            *adit_command(),
            "access",
            "tcp",
            "--hostname",
            HOST,
            "--edge-url",
            f"http://{edge.http}",
            *extra,
        ],
        input=b"through access\n",
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_tcp_streams_need_the_service_token(
    edge: Edge, account: Account, processes: Processes, echo: EchoOrigin, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "tcp", HOST)
    config = write_config(
        tmp_path / "config.yml", HOST, [{"service": f"tcp://127.0.0.1:{echo.port}"}]
    )
    start_connector(processes, tunnel, config)
    app = _api(account, "POST", "apps", {"name": "Database", "domain": HOST})
    token = _api(account, "POST", "service_tokens", {"name": "backup"})
    _api(
        account,
        "POST",
        f"apps/{app['id']}/policies",
        {
            "name": "backup",
            "decision": "non_identity",
            "include": [{"service_token": {"token_id": token["id"]}}],
        },
    )
    refused = _tcp(edge)
    assert refused.returncode != 0
    assert b"401" in refused.stderr, refused.stderr
    wrong = _tcp(edge, "--service-token-id", token["client_id"], "--service-token-secret", "f" * 64)
    assert wrong.returncode != 0
    assert echo.connections == 0
    local = free_port()
    listener = processes.start(
        "access",
        [
            *adit_command(),
            "access",
            "tcp",
            "--hostname",
            HOST,
            "--edge-url",
            f"http://{edge.http}",
            "--url",
            f"127.0.0.1:{local}",
            "--service-token-id",
            token["client_id"],
            "--service-token-secret",
            token["client_secret"],
        ],
    )
    listener.wait_for_log("Start Websocket listener")
    with socket.create_connection(("127.0.0.1", local), timeout=30) as conn:
        conn.sendall(b"through access\n")
        received = b""
        while len(received) < len(b"through access\n"):
            chunk = conn.recv(1024)
            if not chunk:
                break
            received += chunk
    assert received == b"through access\n"
    assert echo.connections == 1
