"""Credential rotation under load: `adit tunnel rotate`, SIGHUP, rolling re-registration.

A request loop (two eyeballs) and a long streaming request run through the edge while the
secret rotates and the connector re-registers both connections; none may fail. Afterwards the
edge refuses the old secret.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from harness import (
    Edge,
    Origin,
    Processes,
    Reply,
    create_tunnel,
    login,
    request,
    start_connector,
    start_edge,
    write_config,
)

pytestmark = pytest.mark.process

HOST = "rotate.example.test"
REGISTERED = r"Registered tunnel connection tunnelID="


class RequestLoop:
    """Sequential requests from a few threads until stopped (bounded by ``limit`` each)."""

    def __init__(self, edge: Edge, threads: int = 2, limit: int = 5000) -> None:
        self.edge = edge
        self.limit = limit
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(t,)) for t in range(threads)]

    def _run(self, number: int) -> None:
        for n in range(self.limit):
            if self.stop.is_set():
                return
            try:
                reply = request(self.edge, HOST, path=f"/loop/{number}/{n}", timeout=15)
            except OSError as exc:
                outcome = f"{number}/{n}: {exc!r}"
            else:
                expected = f"hello /loop/{number}/{n}".encode()
                outcome = (
                    ""
                    if reply.status == 200 and reply.body == expected
                    else (f"{number}/{n}: {reply.status} {reply.body[:200]!r}")
                )
            with self._lock:
                if outcome:
                    self.failures.append(outcome)
                else:
                    self.ok += 1

    def __enter__(self) -> RequestLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def _secret(path: Path) -> bytes:
    return base64.b64decode(json.loads(path.read_text())["TunnelSecret"])


def _token_secret(token: str) -> bytes:
    return base64.b64decode(json.loads(base64.b64decode(token))["s"])


def test_rotation_under_load_then_the_old_secret_is_refused(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    edge = start_edge(processes, tunnel_listen=["127.0.0.1:0", "127.0.0.1:0"])
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "rot", HOST)
    old_copy = tmp_path / "old-credentials.json"
    old_copy.write_text(tunnel.credentials.read_text())
    old_secret = _secret(tunnel.credentials)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    connector = start_connector(
        processes, tunnel, config, extra=["--protocol", "http2", "--ha-connections", "2"], wait=0
    )
    edge.proc.wait_for_log(REGISTERED, count=2)

    slow: list[Reply] = []
    slow_thread = threading.Thread(
        target=lambda: slow.append(request(edge, HOST, path="/slow", timeout=30))
    )
    with RequestLoop(edge) as loop:
        slow_thread.start()
        deadline = time.monotonic() + 10
        while len(origin.accepted) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the slow request and the loop reached the origin
        out = account.cli("tunnel", "rotate", "rot").stdout
        assert "Rotated the secret of tunnel rot" in out, out
        assert f"Tunnel credentials written to {tunnel.credentials}" in out, out
        new_secret = _secret(tunnel.credentials)
        assert new_secret != old_secret and len(new_secret) == 32
        assert stat.S_IMODE(os.stat(tunnel.credentials).st_mode) == 0o400
        connector.signal(signal.SIGHUP)
        # Both connections rolled: each replacement registered before the old one left.
        edge.proc.wait_for_log(r"connection replaced tunnelID=", count=2, timeout=30)
        edge.proc.wait_for_log(r"secret rotation finished", timeout=10)
        origin.release_slow.set()
        slow_thread.join(timeout=30)
        time.sleep(0.5)  # a little more traffic on the new connections
    assert loop.failures == []
    assert loop.ok > 20
    assert slow and slow[0].status == 200
    assert slow[0].body == b"first piece\nsecond piece\n"
    assert connector.popen.poll() is None
    assert request(edge, HOST, path="/after").status == 200

    # `tunnel token` shows the new secret too.
    token = account.cli("tunnel", "token", "rot").stdout.strip()
    assert _token_secret(token) == new_secret

    # A connector still holding the old secret is refused now.
    stale = processes.start(
        "stale-connector",
        [
            *_adit(),
            "tunnel",
            "--config",
            str(config),
            "run",
            "--metrics",
            "127.0.0.1:0",
            "--credentials-file",
            str(old_copy),
            "rot",
        ],
        env={"HOME": str(account.home)},
    )
    stale.wait_for_log(r"tunnel credentials rejected", timeout=20)
    assert stale.wait(timeout=20) != 0


def test_rotation_without_a_credentials_file_prints_the_new_token(
    processes: Processes, tmp_path: Path
) -> None:
    edge = start_edge(processes)
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "tok", "tok.example.test")
    before = account.cli("tunnel", "token", "tok").stdout.strip()
    tunnel.credentials.chmod(0o600)
    tunnel.credentials.unlink()  # run with --token elsewhere: no file here
    result = account.cli("tunnel", "rotate", "--deadline", "10m", "tok")
    token = result.stdout.strip().splitlines()[-1]
    assert _token_secret(token) != _token_secret(before)
    assert account.cli("tunnel", "token", "tok").stdout.strip() == token
    assert "--token" in result.stderr
    finished = account.cli("tunnel", "rotate", "--finish", "tok").stdout
    assert "Finished the secret rotation" in finished
    again = account.cli("tunnel", "rotate", "--finish", "tok").stdout
    assert "no secret rotation in progress" in again


def test_rotation_with_a_credentials_file_prints_the_new_token_too(
    processes: Processes, tmp_path: Path
) -> None:
    """The help promises the new token on stdout: a tunnel created here may run elsewhere with
    --token even though its credentials file is here."""
    edge = start_edge(processes)
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "both", "both.example.test")
    old_secret = _secret(tunnel.credentials)
    result = account.cli("tunnel", "rotate", "--deadline", "10m", "both")
    assert f"Tunnel credentials written to {tunnel.credentials}" in result.stdout
    new_secret = _secret(tunnel.credentials)
    assert new_secret != old_secret
    token = result.stdout.strip().splitlines()[-1]
    assert _token_secret(token) == new_secret
    assert account.cli("tunnel", "token", "both").stdout.strip() == token
    assert "--token" in result.stderr


def _adit() -> list[str]:
    from harness import adit_command

    return adit_command()


def test_token_file_connector_rolls_to_the_rotated_token(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    """A remotely-managed style connector (`--token-file`) rotates the same way."""
    edge = start_edge(processes)
    account = login(edge, tmp_path / "home")
    create_tunnel(account, "tokrun", HOST)
    token_file = tmp_path / "token"
    token_file.write_text(account.cli("tunnel", "token", "tokrun").stdout.strip())
    token_file.chmod(0o600)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    connector = processes.start(
        "tokrun",
        [
            *_adit(),
            "tunnel",
            "--config",
            str(config),
            "run",
            "--token-file",
            str(token_file),
            "--metrics",
            "127.0.0.1:0",
        ],
        env={"HOME": str(tmp_path / "elsewhere")},
    )
    connector.wait_for_log("Registered tunnel connection")
    with RequestLoop(edge) as loop:
        time.sleep(0.5)
        account.cli("tunnel", "rotate", "--deadline", "10m", "tokrun")
        new_token = account.cli("tunnel", "token", "tokrun").stdout.strip()
        tmp = token_file.with_suffix(".new")
        tmp.write_text(new_token)
        tmp.replace(token_file)  # the connector watches the file it read its token from
        edge.proc.wait_for_log(r"secret rotation finished", timeout=30)
        time.sleep(0.5)
    assert loop.failures == []
    assert loop.ok > 0
    assert "connection replaced" in edge.proc.text()
    assert "tunnel credentials rejected" not in connector.text()
