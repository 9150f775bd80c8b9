"""`adit access tcp` says in one line why the WebSocket to the edge did not open, each cause
with its own message and exit 1: real `adit edge` (HTTP and HTTPS listeners, its own CA),
real `adit tunnel run`, the client in stdio mode (ssh's ProxyCommand)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import (
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

pytestmark = pytest.mark.process

UP_HOST = "up.errors.example.test"  # a live tunnel whose origin refuses
DOWN_HOST = "down.errors.example.test"  # routed, no connector
UNKNOWN_HOST = "nowhere.errors.example.test"  # not routed
SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass
class World:
    edge: Edge
    #: HOME of the account's login (~/.adit/cert.pem: the private flows' API and CA).
    home: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("access-errors")
    processes = Processes(tmp)
    try:
        edge = start_edge(processes, https=True)
        account = login(edge, tmp / "home")
        closed = free_port()  # nothing listens there: the connector's dial is refused
        tunnel = create_tunnel(account, "up", UP_HOST)
        config = write_config(
            tmp / "config.yml", UP_HOST, [{"service": f"tcp://127.0.0.1:{closed}"}]
        )
        start_connector(processes, tunnel, config)
        create_tunnel(account, "down", DOWN_HOST)
        yield World(edge, account.home)
    finally:
        processes.cleanup()


def _access(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSL_CERT", "TUNNEL_"))}
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run(
        [*adit_command(), "access", "tcp", *args],
        input="",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_untrusted_ca_says_so_and_suggests_cacert(world: World) -> None:
    line = _one_line_error(_access("--hostname", UP_HOST, "--edge", world.edge.https))
    assert line.startswith(f"Error: TLS: the edge at {world.edge.https} presented a certificate")
    assert f"for {UP_HOST} that is not signed by a CA the system trusts (untrusted CA" in line
    assert "give the edge's CA with --cacert CA.pem" in line


@pytest.mark.skipif(not SYSTEM_CAS.exists(), reason="no system CA bundle")
def test_another_ca_given_with_cacert_is_named(world: World) -> None:
    line = _one_line_error(
        _access("--hostname", UP_HOST, "--edge", world.edge.https, "--cacert", str(SYSTEM_CAS))
    )
    assert f"that is not signed by the CA in --cacert {SYSTEM_CAS} (untrusted CA" in line
    assert "give the edge's CA with --cacert CA.pem" in line


def test_name_mismatch_says_so(world: World) -> None:
    # The edge has no certificate for a name it does not route: it shows its API names'.
    line = _one_line_error(
        _access(
            "--hostname",
            UNKNOWN_HOST,
            "--edge",
            f"https://{world.edge.https}",
            "--cacert",
            str(world.edge.ca),
        )
    )
    assert line == (
        f"Error: TLS: the edge at {world.edge.https} presented a certificate that is not valid "
        f"for {UNKNOWN_HOST} (name mismatch): the edge may have no route for {UNKNOWN_HOST}, or "
        "--edge names another server; check --hostname and --edge"
    )


def test_unknown_hostname_is_a_404(world: World) -> None:
    line = _one_line_error(
        _access("--hostname", UNKNOWN_HOST, "--edge", f"http://{world.edge.http}")
    )
    assert line == (
        f"Error: the edge has no route for {UNKNOWN_HOST} (404: No tunnel serves this "
        "hostname): check --hostname, or route it to a tunnel with "
        f"`adit tunnel route dns TUNNEL {UNKNOWN_HOST}`"
    )


def test_origin_failure_is_a_502(world: World) -> None:
    line = _one_line_error(
        _access("--hostname", UP_HOST, "--edge", world.edge.https, "--cacert", str(world.edge.ca))
    )
    assert line == (
        f"Error: the tunnel for {UP_HOST} could not reach its origin (502: Bad gateway: the "
        "origin could not be reached: it refused the connection): check the connector's "
        "ingress rule for it and that the origin service runs"
    )


def test_another_status_is_said(world: World) -> None:
    line = _one_line_error(
        _access("--hostname", DOWN_HOST, "--edge", world.edge.https, "--cacert", str(world.edge.ca))
    )
    assert line == (
        f"Error: the edge refused the WebSocket upgrade for {DOWN_HOST} with status 530: "
        "Error 1033: Tunnel error: the tunnel has no live connection"
    )


def test_connection_refused(world: World) -> None:
    where = f"127.0.0.1:{free_port()}"
    line = _one_line_error(_access("--hostname", UP_HOST, "--edge", where))
    assert line == (
        f"Error: cannot connect to the edge at {where}: connection refused (nothing listens "
        "there; give the edge's public listener with --edge HOST:PORT)"
    )


def test_a_private_flows_refused_connection_names_the_api_listener(world: World) -> None:
    where = f"127.0.0.1:{free_port()}"
    line = _one_line_error(
        _access("--destination", "10.1.2.3:22", "--api-url", f"https://{where}", home=world.home)
    )
    assert line == (
        f"Error: cannot connect to the edge at {where}: connection refused (nothing listens "
        "there; is the edge's API listener, named in cert.pem (or --api-url), up?)"
    )


def test_tls_to_a_plain_http_listener(world: World) -> None:
    line = _one_line_error(_access("--hostname", UP_HOST, "--edge", world.edge.http))
    assert line.startswith(f"Error: TLS handshake with the edge at {world.edge.http} failed")
    assert "give --edge http://HOST:PORT" in line


def test_bad_edge_and_cacert_values_name_the_flag(world: World, tmp_path: Path) -> None:
    # Usage errors: cloudflared's exit code 255.
    result = _access("--hostname", UP_HOST, "--edge", "ftp://x:1")
    assert result.returncode == 255
    assert result.stderr.splitlines()[0] == (
        "Invalid value for --edge: 'ftp://x:1': the scheme must be https or http"
    )
    missing = tmp_path / "missing.pem"
    result = _access("--hostname", UP_HOST, "--cacert", str(missing))
    assert result.returncode == 255
    assert result.stderr.splitlines()[0] == (
        f"Invalid value for --cacert: cannot read {missing}: No such file or directory"
    )
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    result = _access("--hostname", UP_HOST, "--cacert", str(junk))
    assert result.returncode == 255
    assert result.stderr.startswith(f"Invalid value for --cacert: {junk} holds no PEM CA")


def test_env_variables_stand_for_the_flags(world: World) -> None:
    env = {
        **os.environ,
        "TUNNEL_SERVICE_HOSTNAME": UP_HOST,
        "TUNNEL_SERVICE_EDGE": world.edge.https,
        "TUNNEL_SERVICE_CACERT": str(world.edge.ca),
    }
    result = subprocess.run(
        [*adit_command(), "access", "tcp"],
        input="",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    # Through TLS, verified against the edge's CA, to the tunnel: its origin refuses.
    assert "could not reach its origin (502" in result.stderr
