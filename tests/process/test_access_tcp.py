"""TCP over WebSocket end to end: `adit access` → `adit edge` → tunnel → `adit tunnel run` → a
real OpenSSH server or redis-server started by the test on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest

from harness import (
    Account,
    Edge,
    Processes,
    adit_command,
    create_tunnel,
    login,
    start_connector,
    start_edge,
    write_config,
)
from ports import free_port
from sshd import Sshd, need, wait_port

pytestmark = pytest.mark.process

SSH_HOST = "ssh.example.test"
REDIS_HOST = "redis.example.test"
FIFTY_MB = 50 * 1024 * 1024


def _access(edge: Edge, hostname: str, *extra: str) -> list[str]:
    return [
        *adit_command(),
        "access",
        "tcp",
        "--hostname",
        hostname,
        "--edge-url",
        f"http://{edge.http}",
        *extra,
    ]


@pytest.fixture
def sshd(tmp_path: Path, processes: Processes) -> Sshd:
    return Sshd(tmp_path, processes)


@pytest.mark.parametrize("protocol", ["http2", "quic"])
def test_ssh_command_and_fifty_megabyte_scp_through_the_tunnel(
    edge: Edge, account: Account, processes: Processes, sshd: Sshd, tmp_path: Path, protocol: str
) -> None:
    tunnel = create_tunnel(account, "ssh", SSH_HOST)
    config = write_config(
        tmp_path / "config.yml", SSH_HOST, [{"service": f"ssh://127.0.0.1:{sshd.port}"}]
    )
    connector = start_connector(processes, tunnel, config, extra=["--protocol", protocol])
    assert f"protocol={protocol}" in connector.wait_for_log("Registered tunnel connection")
    proxy = shlex.join(
        [*adit_command(), "access", "ssh", "--hostname", "%h", "--edge-url", f"http://{edge.http}"]
    )
    user = os.environ.get("USER") or "root"
    options = sshd.client_options(proxy)

    result = subprocess.run(
        ["ssh", *options, f"{user}@{SSH_HOST}", "echo through-the-tunnel; uname -s"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["through-the-tunnel", "Linux"]

    source = tmp_path / "fifty.bin"
    with source.open("wb") as handle:
        for index in range(50):
            handle.write(hashlib.sha256(index.to_bytes(4, "big")).digest() * 32768)
    assert source.stat().st_size == FIFTY_MB
    dest = tmp_path / "copied.bin"
    result = subprocess.run(
        ["scp", "-q", *options, str(source), f"{user}@{SSH_HOST}:{dest}"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest

    back = tmp_path / "back.bin"
    result = subprocess.run(
        ["scp", "-q", *options, f"{user}@{SSH_HOST}:{dest}", str(back)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest


@pytest.fixture
def redis_port(processes: Processes) -> int:
    need("redis-server", "redis-cli")
    port = free_port()
    processes.start(
        "redis",
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    )
    wait_port(port)
    return port


def _redis_cli(port: int, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_redis_cli_through_access_tcp_listener(
    edge: Edge, account: Account, processes: Processes, redis_port: int, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "redis", REDIS_HOST)
    config = write_config(
        tmp_path / "config.yml", REDIS_HOST, [{"service": f"tcp://127.0.0.1:{redis_port}"}]
    )
    start_connector(processes, tunnel, config)
    local = free_port()
    access = processes.start("access", _access(edge, REDIS_HOST, "--url", f"127.0.0.1:{local}"))
    access.wait_for_log("Start Websocket listener")
    assert _redis_cli(local, "PING") == "PONG"
    assert _redis_cli(local, "SET", "greeting", "hello over the tunnel") == "OK"
    assert _redis_cli(local, "GET", "greeting") == "hello over the tunnel"
    big = "x" * 300_000
    # -x: the value (larger than one argv string may be) comes from stdin.
    assert _redis_cli(local, "-x", "SET", "big", stdin=big) == "OK"
    assert _redis_cli(local, "STRLEN", "big") == "300000"
    # Several connections at once, each with its own WebSocket.
    clients = [
        subprocess.Popen(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(local), "INCR", "counter"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    for client in clients:
        out, _ = client.communicate(timeout=30)
        assert out.strip().isdigit()
    assert _redis_cli(local, "GET", "counter") == "5"


def test_bastion_takes_the_destination_from_the_client(
    edge: Edge, account: Account, processes: Processes, redis_port: int, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "jump", REDIS_HOST)
    config = write_config(tmp_path / "config.yml", REDIS_HOST, [{"service": "bastion"}])
    start_connector(processes, tunnel, config)
    local = free_port()
    access = processes.start(
        "access",
        _access(
            edge,
            REDIS_HOST,
            "--url",
            f"127.0.0.1:{local}",
            "--destination",
            f"tcp://127.0.0.1:{redis_port}/ignored",
        ),
    )
    access.wait_for_log("Start Websocket listener")
    assert _redis_cli(local, "PING") == "PONG"

    missing = free_port()
    access = processes.start(
        "access-nodest", _access(edge, REDIS_HOST, "--url", f"127.0.0.1:{missing}")
    )
    access.wait_for_log("Start Websocket listener")
    with socket.create_connection(("127.0.0.1", missing), timeout=10) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(100) == b""
    access.wait_for_log(r"the tunnel for redis\.example\.test could not reach its origin \(502")


def test_access_over_the_edge_https_listener(
    processes: Processes, redis_port: int, tmp_path: Path
) -> None:
    """wss:// as cloudflared dials it: the edge's --https-listen, verified against its CA."""
    ready = tmp_path / "tls-edge-ready.json"
    edge_proc = processes.start(
        "tls-edge",
        [
            *adit_command(),
            "edge",
            "--state-dir",
            str(tmp_path / "tls-edge-state"),
            "--tunnel-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--location",
            "tls",
            "--ready-file",
            str(ready),
            "--acme-directory",
            "off",  # no CA on the internet asked from a test
        ],
    )
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert edge_proc.popen.poll() is None and time.monotonic() < deadline, edge_proc.text()
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    edge = Edge(
        edge_proc,
        tmp_path / "tls-edge-state",
        info["http"][0],
        info["api"][0],
        info["advertise"],
        Path(info["ca"]),
    )
    tunnel = create_tunnel(login(edge, tmp_path / "home"), "redis-tls", REDIS_HOST)
    config = write_config(
        tmp_path / "config.yml", REDIS_HOST, [{"service": f"tcp://127.0.0.1:{redis_port}"}]
    )
    start_connector(processes, tunnel, config)
    local = free_port()
    access = processes.start(
        "access",
        [
            *adit_command(),
            "access",
            "rdp",
            "-T",
            REDIS_HOST,
            "-L",
            f"127.0.0.1:{local}",
            "--connect-to",
            info["https"][0],
        ],
        env={"SSL_CERT_FILE": info["ca"]},
    )
    access.wait_for_log("Start Websocket listener")
    assert _redis_cli(local, "PING") == "PONG"


def test_edge_and_cacert_reach_a_self_hosted_edge(
    processes: Processes, redis_port: int, tmp_path: Path
) -> None:
    """The documented options: --edge (the HTTPS listener; SNI and Host stay the hostname)
    and --cacert (the edge's CA instead of the system's)."""
    edge = start_edge(processes, "tls-edge", https=True)
    tunnel = create_tunnel(login(edge, tmp_path / "home"), "redis-tls", REDIS_HOST)
    config = write_config(
        tmp_path / "config.yml", REDIS_HOST, [{"service": f"tcp://127.0.0.1:{redis_port}"}]
    )
    start_connector(processes, tunnel, config)
    local = free_port()
    access = processes.start(
        "access",
        [
            *adit_command(),
            "access",
            "tcp",
            "--hostname",
            REDIS_HOST,
            "--url",
            f"127.0.0.1:{local}",
            "--edge",
            edge.https,
            "--cacert",
            str(edge.ca),
        ],
    )
    access.wait_for_log("Start Websocket listener")
    assert _redis_cli(local, "PING") == "PONG"
    big = "y" * 300_000
    assert _redis_cli(local, "-x", "SET", "big", stdin=big) == "OK"
    assert _redis_cli(local, "STRLEN", "big") == "300000"
