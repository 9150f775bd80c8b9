"""Remotely managed tunnels: the edge stores a configuration (``PUT …/configurations``, here
through ``adit tunnel config push``) and pushes it to the connectors that run with only their
token, over HTTP/2 and QUIC, adit's connector and the unmodified cloudflared.

Each test serves real requests through the edge's public listener: a config that routes the
hostname to the origin with one ``httpHostHeader``, then a newer one with another, pushed while
a bounded client loop runs; every request must succeed, and the ones after the push's answer
must show the new header. cloudflared's tests re-run themselves in a network namespace holding
only loopback, as the other cloudflared tests do.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

import dns_records
from adversary import CLOUDFLARED, INSIDE_NETNS, api_call, rerun_in_private_netns
from harness import (
    Account,
    Edge,
    Origin,
    Proc,
    Processes,
    Tunnel,
    adit_command,
    create_tunnel,
    request,
    start_edge,
    start_location,
)

pytestmark = pytest.mark.process

HOST = "remote.example.test"
#: Requests of the load loop: 4 clients of 75, while the second push lands.
CLIENTS = 4
PER_CLIENT = 75


@pytest.fixture
def edge(processes: Processes) -> Edge:
    """An edge with two tunnel listeners: adit's connector holds a connection at each, one
    per worker, so a push reaching one worker must reach the other through the supervisor."""
    return start_edge(processes, tunnel_listen=["127.0.0.1:0", "127.0.0.1:0"])


def _write(path: Path, origin: Origin, host_header: str) -> Path:
    """A config.yml routing HOST to the origin with ``host_header`` as its Host."""
    rule: dict[str, Any] = {"hostname": HOST, "service": origin.url}
    rule["originRequest"] = {"httpHostHeader": host_header}
    path.write_text(
        yaml.safe_dump(
            {
                "originRequest": {"connectTimeout": "5s"},
                "ingress": [rule, {"service": "http_status:404"}],
            }
        )
    )
    return path


def _push(account: Account, tunnel: Tunnel, path: Path, *, check: bool = True) -> str:
    result = account.cli("tunnel", "config", "push", tunnel.name, "--file", str(path), check=check)
    return result.stdout + result.stderr


def _configuration(account: Account, tunnel: Tunnel) -> dict[str, Any]:
    status, body = api_call(
        account, "GET", f"/accounts/{account.tag}/cfd_tunnel/{tunnel.id}/configurations"
    )
    assert status == 200, body
    envelope: dict[str, Any] = json.loads(body)
    return envelope


def _host_seen(edge: Edge) -> str:
    """The Host header the origin saw for one request (its /headers echo)."""
    reply = request(edge, HOST, path="/headers", timeout=15)
    assert reply.status == 200, (reply.status, reply.body[:300])
    return str(dict(json.loads(reply.body)).get("Host", ""))


def _wait_for_host(edge: Edge, expected: str, proc: Proc) -> None:
    for _ in range(100):  # bounded: ~20 s
        try:
            if _host_seen(edge) == expected:
                return
        except AssertionError:
            pass
        threading.Event().wait(0.2)
    raise AssertionError(f"the tunnel never served {expected!r}:\n{proc.text()[-3000:]}")


def _push_under_load(
    edge: Edge, account: Account, tunnel: Tunnel, newer: Path
) -> tuple[list[int], list[str], str]:
    """Run the client loop, push ``newer`` in its middle; every status, the Host headers
    seen by the requests sent after the push answered, and the push's output."""
    statuses: list[int] = []
    after: list[str] = []
    pushed = threading.Event()
    started = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        for i in range(PER_CLIENT):
            if i == PER_CLIENT // 4:
                started.set()
            # Sent after the push answered: every connection of every worker runs it.
            late = pushed.is_set()
            try:
                reply = request(edge, HOST, path="/headers", timeout=15)
                status = reply.status
                host = dict(json.loads(reply.body)).get("Host", "") if status == 200 else ""
            except (OSError, ValueError):
                status, host = 0, ""
            with lock:
                statuses.append(status)
                if late:
                    after.append(host)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    started.wait(30)
    output = _push(account, tunnel, newer)
    pushed.set()
    for thread in threads:
        thread.join(120)
    return statuses, after, output


def _adit_connector(
    processes: Processes,
    account: Account,
    tunnel: Tunnel,
    protocol: str,
    edge: Edge | None = None,
) -> Proc:
    """A token-only ``adit tunnel run`` (at ``edge``'s tunnel listener when given)."""
    token = account.cli("tunnel", "token", tunnel.name).stdout.strip()
    return processes.start(
        f"connector-{protocol}",
        [
            *adit_command(),
            "tunnel",
            "run",
            "--protocol",
            protocol,
            "--metrics",
            "127.0.0.1:0",
            "--grace-period",
            "5s",
            "--ha-connections",
            "2",
            "--workers",
            "2",
            *(["--edge", edge.tunnel[0]] if edge is not None else []),
            "--token",
            token,
        ],
        env={"HOME": str(account.home / "connector-home")},
    )


def _serves_pushes(
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    tmp_path: Path,
    start: Any,
    connections: int = 1,
) -> Proc:
    """(a)/(b) and (e): a connector started after the first PUT serves it, then a newer one
    pushed under load with zero failed requests."""
    tunnel = create_tunnel(account, "remote", HOST)
    first = _write(tmp_path / "v1.yml", origin, "v1.internal")
    out = _push(account, tunnel, first)
    assert "Stored configuration version 1" in out, out
    proc: Proc = start(tunnel)
    proc.wait_for_log("Registered tunnel connection", timeout=30, count=connections)
    # Connected after the PUT: it got version 1 with its registration.
    _wait_for_host(edge, "v1.internal", proc)
    statuses, after, output = _push_under_load(
        edge, account, tunnel, _write(tmp_path / "v2.yml", origin, "v2.internal")
    )
    assert "Stored configuration version 2" in output, output
    assert "did not apply" not in output, output
    assert len(statuses) == CLIENTS * PER_CLIENT
    assert statuses == [200] * len(statuses), [s for s in statuses if s != 200]
    assert after, "the push answered after the last request"
    assert set(after) == {"v2.internal"}, after
    shown = _configuration(account, tunnel)["result"]
    assert shown["version"] == 2
    assert {p["status"] for p in shown["pushes"]} == {"applied"}, shown["pushes"]
    # `config show`: the version, then config.yml YAML (durations as Go strings) that can be
    # pushed back as it is.
    text = account.cli("tunnel", "config", "show", tunnel.name).stdout
    assert text.startswith("# version 2, stored "), text
    assert "applied" in text, text
    assert yaml.safe_load(text) == yaml.safe_load((tmp_path / "v2.yml").read_text()), text
    return proc


@pytest.mark.parametrize("protocol", ["http2", "quic"])
def test_adits_token_only_connector_serves_pushed_configurations(
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    tmp_path: Path,
    protocol: str,
) -> None:
    proc = _serves_pushes(
        processes,
        edge,
        account,
        origin,
        tmp_path,
        lambda tunnel: _adit_connector(processes, account, tunnel, protocol),
        connections=2,
    )
    # Two workers, a connection each: both applied every version, through the supervisor.
    for version in (2, 3):
        assert proc.text().count(f"Applied ingress version {version}") == 2, proc.text()
    # Applied on every worker through the supervisor, once per version.
    assert "remoteVersion=2" in proc.text() or '"remoteVersion": 2' in proc.text(), proc.text()
    # cloudflared's gauge shows the edge's version, as cloudflared's does.
    match = re.search(r"Starting metrics server on (\S+)/metrics", proc.text())
    assert match, proc.text()
    with urllib.request.urlopen(f"http://{match.group(1)}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    assert "cloudflared_orchestration_config_version 2.0" in metrics, metrics
    # So does /config, with the pushed rules.
    with urllib.request.urlopen(f"http://{match.group(1)}/config", timeout=10) as reply:
        config = json.loads(reply.read())
    assert config["version"] == 2
    rule = config["config"]["ingress"][0]
    assert (rule["hostname"], rule["originRequest"]["httpHostHeader"]) == (HOST, "v2.internal")
    assert config["config"]["originRequest"]["connectTimeout"] == 5
    # A reload (no local ingress still) keeps what the edge pushed.
    reloads = proc.text().count("Updated to new configuration")
    proc.signal(signal.SIGHUP)
    proc.wait_for_log("Updated to new configuration", count=reloads + 1, timeout=30)
    assert _host_seen(edge) == "v2.internal"


def test_a_put_on_one_edge_process_reaches_the_connectors_of_another(
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    tmp_path: Path,
) -> None:
    """Two edge processes on one store (two locations): the connector is on the second, the
    PUT goes to the first's API; the second pushes what the store holds."""
    second = start_location(processes, "edge-b", "second", ["127.0.0.1:0"], shared=edge)
    tunnel = create_tunnel(account, "remote", HOST)
    _push(account, tunnel, _write(tmp_path / "v1.yml", origin, "v1.internal"))
    proc = _adit_connector(processes, account, tunnel, "http2", edge=second)
    proc.wait_for_log("Registered tunnel connection", timeout=30)
    _wait_for_host(second, "v1.internal", proc)
    out = _push(account, tunnel, _write(tmp_path / "v2.yml", origin, "v2.internal"))
    assert "applied by 0 of 0 connections" in out, out
    _wait_for_host(second, "v2.internal", proc)
    second.proc.wait_for_log("another edge process stored", timeout=10)


def test_a_bad_configuration_is_refused_and_the_running_one_stays(
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    tmp_path: Path,
) -> None:
    """A bad service or a missing catch-all is refused by the API (Cloudflare's error shape)
    and the stored version keeps serving; a connector with local ingress that joins takes the
    edge's version, as cloudflared does. (A connector's own refusal reaching the API caller is
    test_edge_api_configs's; that an older version never replaces a newer one is
    test_quic_configuration's, on the connector itself.)"""
    tunnel = create_tunnel(account, "remote", HOST)
    _push(account, tunnel, _write(tmp_path / "v1.yml", origin, "v1.internal"))
    proc = _adit_connector(processes, account, tunnel, "http2")
    proc.wait_for_log("Registered tunnel connection", timeout=30)
    _wait_for_host(edge, "v1.internal", proc)

    # A service that does not parse: 400 with Cloudflare's error shape, nothing stored.
    bad = {
        "config": {
            "ingress": [
                {"hostname": HOST, "service": "bogus"},
                {"service": "http_status:404"},
            ]
        }
    }
    status, body = api_call(
        account,
        "PUT",
        f"/accounts/{account.tag}/cfd_tunnel/{tunnel.id}/configurations",
        json.dumps(bad).encode(),
    )
    envelope = json.loads(body)
    assert status == 400, body
    assert envelope["success"] is False, envelope
    assert "bogus is an invalid address" in envelope["errors"][0]["message"], envelope
    # No catch-all: refused too.
    no_catch_all = {"config": {"ingress": [{"hostname": HOST, "service": origin.url}]}}
    status, body = api_call(
        account,
        "PUT",
        f"/accounts/{account.tag}/cfd_tunnel/{tunnel.id}/configurations",
        json.dumps(no_catch_all).encode(),
    )
    assert status == 400, body
    # The CLI checks the file first and names it (and its line) in a one-line error.
    bad_file = tmp_path / "bad.yml"
    bad_file.write_text("ingress:\n  - hostname: a.example.test\n    service: bogus\n")
    push = ("tunnel", "config", "push", tunnel.name, "--file")
    result = account.cli(*push, str(bad_file), check=False)
    assert result.returncode == 1
    assert f"{bad_file}:3" in result.stderr and "bogus is an invalid address" in result.stderr
    missing = account.cli(*push, str(tmp_path / "nope.yml"), check=False)
    assert missing.returncode == 1 and "nope.yml" in missing.stderr, missing.stderr
    assert _configuration(account, tunnel)["result"]["version"] == 1
    assert _host_seen(edge) == "v1.internal"

    _push(account, tunnel, _write(tmp_path / "v2.yml", origin, "v2.internal"))
    _wait_for_host(edge, "v2.internal", proc)
    # A connector with ingress of its own joins: as cloudflared's orchestrator, it takes the
    # edge's version at registration (before it takes requests) and every later push.
    local = tmp_path / "local.yml"
    local.write_text(
        yaml.safe_dump(
            {
                "ingress": [
                    {"hostname": HOST, "service": origin.url},
                    {"service": "http_status:404"},
                ]
            }
        )
    )
    token = account.cli("tunnel", "token", tunnel.name).stdout.strip()
    local_proc = processes.start(
        "local-connector",
        [
            *adit_command(),
            "tunnel",
            "--config",
            str(local),
            "run",
            "--metrics",
            "127.0.0.1:0",
            "--token",
            token,
        ],
        env={"HOME": str(account.home / "local-home")},
    )
    local_proc.wait_for_log("Registered tunnel connection", timeout=30)
    assert {_host_seen(edge) for _ in range(12)} == {"v2.internal"}
    out = _push(account, tunnel, _write(tmp_path / "v3.yml", origin, "v3.internal"))
    assert "Stored configuration version 3" in out, out
    shown = _configuration(account, tunnel)
    assert [p["status"] for p in shown["result"]["pushes"]].count("applied") >= 2, shown
    assert {_host_seen(edge) for _ in range(12)} == {"v3.internal"}
    local_proc.wait_for_log("The edge manages|remoteVersion", timeout=10)


@pytest.fixture
def resolver() -> Any:
    with dns_records.serving():
        yield


def _cloudflared(processes: Processes, edge: Edge, account: Account, protocol: str) -> Any:
    def start(tunnel: Tunnel) -> Proc:
        assert CLOUDFLARED is not None
        token = account.cli("tunnel", "token", tunnel.name).stdout.strip()
        empty = account.home / "cloudflared-config.yml"
        empty.write_text("loglevel: info\n")  # no ingress: everything comes from the edge
        return processes.start(
            f"cloudflared-{protocol}",
            [
                CLOUDFLARED,
                "tunnel",
                "--no-autoupdate",
                "--config",
                str(empty),
                "--edge",
                edge.tunnel[0],
                "--cacert",
                str(edge.ca),
                "--protocol",
                protocol,
                "--no-prechecks",
                "--metrics",
                "127.0.0.1:0",
                "--grace-period",
                "3s",
                "run",
                "--token",
                token,
            ],
        )

    return start


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
@pytest.mark.parametrize("protocol", ["http2", "quic"])
def test_cloudflared_in_a_loopback_only_namespace(protocol: str) -> None:
    rerun_in_private_netns(
        f"{Path(__file__)}::test_cloudflared_token_only_serves_pushed_configurations[{protocol}]",
        resolver=True,
    )


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace of its twin")
@pytest.mark.parametrize("protocol", ["http2", "quic"])
def test_cloudflared_token_only_serves_pushed_configurations(
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    tmp_path: Path,
    resolver: None,
    protocol: str,
) -> None:
    proc = _serves_pushes(
        processes, edge, account, origin, tmp_path, _cloudflared(processes, edge, account, protocol)
    )
    assert "Updated to new configuration" in proc.text(), proc.text()[-3000:]
