"""Tunnel flags before ``run`` act on a real connector (they were once accepted and dropped).

``adit tunnel --metrics 127.0.0.1:PORT --loglevel debug run NAME`` must serve /metrics on
that port and log at debug level, as ``cloudflared tunnel --metrics ... run NAME`` does; and
the systemd unit's form ``adit --no-autoupdate tunnel run`` must run and say once what adit
does instead of updating itself.
"""

from __future__ import annotations

import urllib.error
import urllib.request
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
    run_cli,
    write_config,
)
from ports import free_port

pytestmark = pytest.mark.process

HOST = "flags.example.test"


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_and_loglevel_before_run_act(
    processes: Processes, edge: Edge, account: Account, origin: Origin, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "flags", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    port = free_port()
    proc = processes.start(
        "connector",
        [
            *adit_command(),
            "--no-autoupdate",
            "tunnel",
            "--config",
            str(config),
            "--metrics",
            f"127.0.0.1:{port}",
            "--loglevel",
            "debug",
            "run",
            "--grace-period",
            "5s",
            tunnel.name,
        ],
        env={"HOME": str(account.home)},
    )
    proc.wait_for_log(r"Registered tunnel connection")
    proc.wait_for_log(rf"Starting metrics server on 127\.0\.0\.1:{port}/metrics")
    status, body = _get(port, "/metrics")
    assert status == 200, body
    assert "cloudflared_tunnel_ha_connections" in body
    # A debug line every start logs (the supervisor's, once per worker): --loglevel acted.
    proc.wait_for_log(r" DBG First heartbeat from worker")
    assert proc.text().count("--no-autoupdate: adit never updates itself") == 1
    assert request(edge, HOST).status == 200


def test_management_commands_see_the_global_and_tunnel_flags(
    account: Account, tmp_path: Path
) -> None:
    """``--origincert`` before ``tunnel`` (or before ``list``) finds the account, as
    cloudflared's subcommands read their parents' flags; an update flag gets its line."""
    create_tunnel(account, "listed", "listed.example.test")
    cert = account.home / ".adit" / "cert.pem"
    empty_home = tmp_path / "empty-home"
    empty_home.mkdir()
    for args in (
        ["--origincert", str(cert), "tunnel", "list"],
        ["tunnel", "--origincert", str(cert), "--no-autoupdate", "list"],
        ["--no-autoupdate", "tunnel", "--origincert", str(cert), "list", "--output", "json"],
    ):
        result = run_cli(args, home=empty_home)
        assert "listed" in result.stdout, (args, result.stderr)
        expected = 1 if "--no-autoupdate" in args else 0
        assert result.stderr.count("--no-autoupdate: adit never updates itself") == expected
    refused = run_cli(["tunnel", "list"], home=empty_home, check=False)
    assert refused.returncode == 1, refused.stderr
    # --cred-file before the subcommand: token writes the credentials there.
    written = tmp_path / "written.json"
    run_cli(
        ["--origincert", str(cert), "tunnel", "--cred-file", str(written), "token", "listed"],
        home=empty_home,
    )
    assert written.is_file()


@pytest.mark.parametrize("command", [["tunnel"], []], ids=["tunnel", "root"])
def test_a_quick_tunnel_runs_with_the_flags_of_every_level(
    processes: Processes, origin: Origin, tmp_path: Path, command: list[str]
) -> None:
    """``adit --loglevel debug --no-autoupdate tunnel --metrics ... --url ...``: the quick
    tunnel's connector gets both levels' flags; ``adit --url ...`` is the same command, as
    cloudflared's root action is the tunnel command's."""
    port = free_port()
    proc = processes.start(
        "quick",
        [*adit_command(), "--loglevel", "debug", "--no-autoupdate", *command, "--metrics",
         f"127.0.0.1:{port}", "--url", origin.url],
        env={"HOME": str(tmp_path)},
    )  # fmt: skip
    proc.wait_for_log(r"Registered tunnel connection")
    proc.wait_for_log(rf"Starting metrics server on 127\.0\.0\.1:{port}/metrics")
    assert _get(port, "/metrics")[0] == 200
    proc.wait_for_log(r" DBG First heartbeat from worker")
    assert proc.text().count("--no-autoupdate: adit never updates itself") == 1
