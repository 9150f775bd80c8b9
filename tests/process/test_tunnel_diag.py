"""`adit tunnel ready` and `adit tunnel diag` against real connectors on a real edge.

The diag bundle is unzipped and every file parsed, then grepped for every secret the
connectors were given: the tunnel secret (base64, raw, hex), the token, the credentials file
and the origin certificate. The connector side (`/diag/*`) is adit.supervisor.diag_endpoints.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from adversary import CLOUDFLARED, cloudflared_metrics, start_cloudflared
from harness import (
    Account,
    Edge,
    Origin,
    Proc,
    Processes,
    adit_command,
    create_tunnel,
    edge_args,
    request,
    seam_env,
    start_connector,
    write_config,
)
from ports import free_port

pytestmark = pytest.mark.process

HOST = "diag.example.test"


def _metrics_address(proc: Proc) -> str:
    text = proc.wait_for_log(r"Starting metrics server on \S+/metrics")
    match = re.search(r"Starting metrics server on (\S+)/metrics", text)
    assert match, text
    return match.group(1)


def _wait_connected(address: str, timeout: float = 15.0) -> None:
    """Until the supervisor's /diag/tunnel lists a connected connection (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://{address}/diag/tunnel", timeout=5) as response:
            state = json.loads(response.read())
        if any(c.get("isConnected") for c in state.get("connections", [])):
            return
        time.sleep(0.2)
    raise AssertionError(f"/diag/tunnel lists no connected connection: {state}")


def _adit(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*adit_command(), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def _closed_port() -> int:
    return free_port()


def _unzip(directory: Path) -> dict[str, bytes]:
    bundles = sorted(directory.glob("adit-diag-*.zip"))
    assert len(bundles) == 1, bundles
    assert re.fullmatch(r"adit-diag-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d(Z|[+-]\d\d-\d\d)\.zip",
                        bundles[0].name), bundles[0].name  # fmt: skip
    assert oct(bundles[0].stat().st_mode & 0o777) == "0o600"
    with zipfile.ZipFile(bundles[0]) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist()}


def _secrets(credentials: Path, token: str, origin_cert: Path) -> dict[str, bytes]:
    creds = json.loads(credentials.read_text())
    secret = base64.b64decode(creds["TunnelSecret"])
    found = {
        "secret (base64)": creds["TunnelSecret"].encode(),
        "secret (urlsafe base64)": base64.urlsafe_b64encode(secret).rstrip(b"="),
        "secret (raw)": secret,
        "secret (hex)": secret.hex().encode(),
        **({"token": token.encode()} if token else {}),
        "credentials file": credentials.read_bytes().strip(),
        "origin cert": origin_cert.read_bytes().strip(),
    }
    # Each line of the origin cert's PEM blocks too (a partial copy is still a leak).
    for number, line in enumerate(origin_cert.read_bytes().splitlines()):
        if len(line) >= 40 and not line.startswith(b"-----"):
            found[f"origin cert line {number}"] = line
    return found


def _check_bundle(files: dict[str, bytes], secrets: dict[str, bytes]) -> dict[str, object]:
    for name, body in files.items():
        for what, secret in secrets.items():
            assert secret not in body, f"{what} found in {name}"
    parsed: dict[str, object] = {}
    for name, body in files.items():
        if name.endswith(".json"):
            parsed[name] = json.loads(body)
    return parsed


def test_diag_bundle_has_every_part_and_no_secret(
    processes: Processes, edge: Edge, account: Account, origin: Origin, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "diag", HOST)
    token = account.cli("tunnel", "token", "diag").stdout.strip()
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    logfile = tmp_path / "connector.log"
    logdir = tmp_path / "logs"
    by_file = start_connector(
        processes, tunnel, config, extra=["--logfile", str(logfile), "--protocol", "http2"]
    )
    by_token = processes.start(
        "by-token",
        [*adit_command(), "tunnel", "--config", str(config), "run", "--token", token,
         "--log-directory", str(logdir), "--metrics", "127.0.0.1:0", "--loglevel", "debug",
         *edge_args(edge)],
        env={"HOME": str(tmp_path / "elsewhere")},
    )  # fmt: skip
    # Inline credentials, by environment, logging at debug level: the most there is to leak.
    contents_log = tmp_path / "contents.log"
    by_contents = processes.start(
        "by-contents",
        [*adit_command(), "tunnel", "--config", str(config), "run", "--logfile",
         str(contents_log), "--metrics", "127.0.0.1:0", "--loglevel", "debug", tunnel.id],
        env={"HOME": str(tmp_path / "elsewhere"),
             "TUNNEL_CRED_CONTENTS": tunnel.credentials.read_text()},
    )  # fmt: skip
    by_token.wait_for_log("Registered tunnel connection")
    by_contents.wait_for_log("Registered tunnel connection")
    assert request(edge, HOST, path="/x").body == b"hello /x"
    secrets = _secrets(tunnel.credentials, token, account.home / ".adit" / "cert.pem")

    connectors = (
        ("file", by_file, logfile),
        ("token", by_token, logdir),
        ("contents", by_contents, contents_log),
    )
    for name, proc, logs_marker in connectors:
        address = _metrics_address(proc)
        workdir = tmp_path / f"diag-{name}"
        workdir.mkdir()
        result = _adit(["tunnel", "diag", "--metrics", address], workdir)
        assert result.returncode == 0, result.stderr
        assert f"Selected server http://{address} starting diagnostic..." in result.stderr
        assert "Diagnostic file written: adit-diag-" in result.stderr
        files = _unzip(workdir)
        parsed = _check_bundle(files, secrets)
        assert logs_marker.exists()

        expected = {
            "tunnelstate.json", "systeminformation.json", "runtime.json", "metrics.txt",
            "adit_logs.txt", "network.json", "cli-configuration.json", "task-result.json",
        }  # fmt: skip
        assert expected <= set(files), sorted(files)
        tasks = parsed["task-result.json"]
        assert isinstance(tasks, dict)
        # The connector's /config, in cloudflared's shape, is the bundle's configuration.json.
        assert {k: v["result"] for k, v in tasks.items() if v["result"] != "success"} == {}
        assert "Diagnostic completed\n" in result.stderr + "\n"
        configuration = parsed["configuration.json"]
        assert isinstance(configuration, dict)
        assert set(configuration["config"]) == {"ingress", "warp-routing", "originRequest"}

        state = parsed["tunnelstate.json"]
        assert isinstance(state, dict)
        assert state["tunnelID"] == tunnel.id
        connections = state["connections"]
        assert connections, state
        for connection in connections:
            assert connection["isConnected"] is True
            assert (connection["protocol"], connection["protocolName"]) in (
                (0, "http2"),
                (1, "quic"),
            )
            assert connection["edge"] in edge.tunnel
            assert connection["edgeAddress"] == "127.0.0.1"
            worker = connection["workerPid"]
            assert isinstance(worker, int)
            parent = Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1]
            assert int(parent) == proc.popen.pid  # a worker of this connector
        assert by_file is not proc or {c["protocolName"] for c in connections} == {"http2"}

        system = parsed["systeminformation.json"]
        assert isinstance(system, dict)
        assert system["info"]["osSystem"] == "linux"
        assert system["info"]["memoryMaximum"] > 0

        runtime = parsed["runtime.json"]
        assert isinstance(runtime, dict)
        assert runtime["supervisor"]["pid"] == proc.popen.pid
        assert {w["pid"] for w in runtime["workers"]} >= {c["workerPid"] for c in connections}

        assert b"# TYPE cloudflared_tunnel_ha_connections gauge" in files["metrics.txt"]
        assert b"Registered tunnel connection" in files["adit_logs.txt"]

        flags = parsed["cli-configuration.json"]
        assert isinstance(flags, dict)
        assert flags["uid"] == str(os.getuid())
        assert flags["metrics"] == "127.0.0.1:0"
        if proc is by_token:
            assert flags["token"] == "*****"
            assert flags["log-directory"] == str(logdir)
        elif proc is by_contents:
            assert flags["credentials-contents"] == "*****"
        else:
            assert flags["logfile"] == str(logfile)

        network = parsed["network.json"]
        assert isinstance(network, dict)
        for address_checked in edge.tunnel:
            entry = network[address_checked]
            assert entry["tcp"]["ok"] is True, entry
            assert entry["tls"]["ok"] is True, entry
            assert entry["tls"]["version"] == "TLSv1.3", entry
            assert "notAfter" in entry["tls"], entry
            assert "quic" in entry

    # Every flag off but the ones cloudflared cannot turn off either.
    workdir = tmp_path / "diag-none"
    workdir.mkdir()
    off = ["--no-diag-logs", "--no-diag-metrics", "--no-diag-system", "--no-diag-runtime",
           "--no-diag-network"]  # fmt: skip
    result = _adit(["tunnel", "--metrics", _metrics_address(by_file), "diag", *off], workdir)
    assert result.returncode == 0, result.stderr
    files = _unzip(workdir)
    assert set(files) - {"configuration.json"} == {
        "tunnelstate.json",
        "cli-configuration.json",
        "task-result.json",
    }
    _check_bundle(files, secrets)


def test_diag_finds_one_instance_none_or_several(
    processes: Processes, edge: Edge, account: Account, origin: Origin, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "found", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    first = start_connector(processes, tunnel, config, name="first")
    second = start_connector(processes, tunnel, config, name="second")
    one, two = _metrics_address(first), _metrics_address(second)
    nobody = f"127.0.0.1:{_closed_port()}"

    def diag(known: list[str], workdir: Path) -> str:
        workdir.mkdir()
        env = seam_env(ADIT_TEST_METRICS_ADDRESSES=",".join(known))
        result = _adit(["tunnel", "diag", "--no-diag-network", "--no-diag-logs"], workdir, env)
        assert result.returncode == 0, result.stderr
        return result.stderr

    none = diag([nobody], tmp_path / "none")
    assert "No instances found" in none
    assert not list((tmp_path / "none").iterdir())

    several = diag([one, nobody, two], tmp_path / "several")
    assert "Found multiple instances running:" in several
    for address in (one, two):
        assert f"tunnel-id={tunnel.id} connector-id=" in several
        assert f"metrics-address=http://{address}" in several
    assert "To select one instance use the option --metrics" in several
    assert not list((tmp_path / "several").iterdir())

    single = diag([nobody, two], tmp_path / "single")
    assert f"Selected server http://{two} starting diagnostic..." in single
    assert len(list((tmp_path / "single").glob("adit-diag-*.zip"))) == 1

    # A connector logging only to the console: diag says where logs would come from.
    (tmp_path / "no-logs").mkdir()
    no_logs = _adit(["tunnel", "diag", "--metrics", one, "--no-diag-network"], tmp_path / "no-logs")
    assert no_logs.returncode == 0
    assert "Couldn't extract logs from the instance." in no_logs.stderr
    assert "Diagnostic completed with one or more errors" in no_logs.stderr
    tasks = json.loads(_unzip(tmp_path / "no-logs")["task-result.json"])
    assert tasks["log information"] == {
        "result": "failure",
        "error": "provided log configuration is invalid",
    }

    containers = _adit(
        ["tunnel", "diag", "--metrics", nobody, "--diag-container-id", "abc", "--no-diag-network"],
        tmp_path,
    )
    assert containers.returncode == 0
    assert "adit does not collect from containers or pods" in containers.stderr
    assert "Diagnostic completed with one or more errors" in containers.stderr


def test_ready_exit_status(
    processes: Processes, edge: Edge, account: Account, origin: Origin, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "ready", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    connected = start_connector(processes, tunnel, config)
    address = _metrics_address(connected)
    ok = _adit(["tunnel", "ready", "--metrics", address], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == ""
    group_flag = _adit(["tunnel", "--metrics", address, "ready"], tmp_path)
    assert group_flag.returncode == 0, group_flag.stderr
    found = _adit(["tunnel", "ready"], tmp_path, seam_env(ADIT_TEST_METRICS_ADDRESSES=address))
    assert found.returncode == 0, found.stderr

    # A connector whose edge never answers: its metrics listener is up, /ready says 503.
    dead_edge = f"127.0.0.1:{_closed_port()}"
    unready = start_connector(
        processes, tunnel, config, name="unready", extra=["--edge", dead_edge], wait=0
    )
    unready_address = _metrics_address(unready)
    refused = _adit(["tunnel", "ready", "--metrics", unready_address], tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        f"http://{unready_address}/ready endpoint returned status code 503\n"
    ), refused.stderr
    assert '"readyConnections":0' in refused.stderr

    nobody = f"127.0.0.1:{_closed_port()}"
    silent = _adit(["tunnel", "ready", "--metrics", nobody], tmp_path)
    assert silent.returncode == 1
    assert silent.stderr.strip() == (
        f'Get "http://{nobody}/ready": dial tcp {nobody}: connect: connection refused'
    )
    none = _adit(["tunnel", "ready"], tmp_path, seam_env(ADIT_TEST_METRICS_ADDRESSES=nobody))
    assert none.returncode == 1
    assert none.stderr.startswith("--metrics has to be provided"), none.stderr


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
def test_cloudflared_diag_reads_an_adit_connector(
    processes: Processes, edge: Edge, account: Account, origin: Origin, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "cfd-diag", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    connector = start_connector(processes, tunnel, config, extra=["--protocol", "http2"])
    address = _metrics_address(connector)
    # The worker logs its registration before the supervisor has taken in the event that
    # /diag/tunnel reports (under load, a moment later): wait for it, bounded.
    _wait_connected(address)
    workdir = tmp_path / "cloudflared-diag"
    workdir.mkdir()
    result = subprocess.run(
        [CLOUDFLARED, "tunnel", "diag", "--metrics", address, "--no-diag-network",
         "--no-diag-logs"],
        capture_output=True, text=True, check=False, timeout=120, cwd=workdir,
        env={**os.environ, "HOME": str(tmp_path)}, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    bundles = list(workdir.glob("cloudflared-diag-*.zip"))
    assert len(bundles) == 1, result.stderr
    with zipfile.ZipFile(bundles[0]) as bundle:
        files = {name: bundle.read(name) for name in bundle.namelist()}
    tasks = json.loads(files["task-result.json"])
    # cloudflared decodes adit's /diag/tunnel into its own TunnelState (a string protocol
    # would fail there) and copies the rest.
    for job in ("tunnel state", "system information", "metrics", "cli configuration"):
        assert tasks[job]["result"] == "success", tasks
    state = json.loads(files["tunnelstate.json"])
    assert state["tunnelID"] == tunnel.id
    assert state["connections"][0]["edgeAddress"] == "127.0.0.1"
    assert json.loads(files["systeminformation.json"])["info"]["osSystem"] == "linux"


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
def test_adit_diag_reads_a_cloudflared_connector(
    processes: Processes, edge: Edge, account: Account, origin: Origin, tmp_path: Path
) -> None:
    tunnel = create_tunnel(account, "cfd-conn", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    logfile = tmp_path / "cloudflared.log"
    connector = start_cloudflared(
        processes, tunnel, config, edge, extra=["--logfile", str(logfile)]
    )
    address = cloudflared_metrics(connector)
    workdir = tmp_path / "adit-diag"
    workdir.mkdir()
    result = _adit(["tunnel", "diag", "--metrics", address], workdir)
    assert result.returncode == 0, result.stderr
    files = _unzip(workdir)
    parsed = _check_bundle(
        files, _secrets(tunnel.credentials, "", account.home / ".adit" / "cert.pem")
    )
    tasks = parsed["task-result.json"]
    assert isinstance(tasks, dict)
    failed = {k: v for k, v in tasks.items() if v["result"] != "success"}
    # cloudflared has no /diag/runtime; its /config is there.
    assert set(failed) == {"runtime information"}, failed
    assert "configuration.json" in files
    assert b"Registered tunnel connection" in files["adit_logs.txt"]
    network = parsed["network.json"]
    assert isinstance(network, dict)
    assert network[edge.tunnel[0]]["tcp"]["ok"] is True, network
