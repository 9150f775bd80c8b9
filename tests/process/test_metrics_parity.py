"""The connector's metrics server against cloudflared's: ``/metrics`` families, ``/config`` and
``/quicktunnel`` (README "Metrics").

The reference is ``tests/corpus/cloudflared_metrics/`` (how it was recorded: its README), a
scrape of the real cloudflared after the same traffic :func:`_traffic` sends here: HTTP
requests, a WebSocket, a TCP stream through a ``tcp://`` rule and a private-network TCP flow,
all through ``adit edge``. adit's connector serves the same traffic and must expose every
family of that scrape with its type and label names, except the ones listed in
:data:`adit.supervisor.metric_parity.NO_MEANING` (each with its reason). With
``ADIT_CLOUDFLARED`` the cloudflared binary is scraped live as well; with
``ADIT_RECORD_METRICS_FIXTURE=DIR`` that live run writes its scrape to ``DIR`` (how the
corpus files were made).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import websockets.asyncio.client
import yaml

from adversary import CLOUDFLARED, INSIDE_NETNS, rerun_in_private_netns, start_cloudflared
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
    start_connector,
    start_edge,
    write_config,
)
from ports import free_port

pytestmark = pytest.mark.process

CORPUS = Path(__file__).parent.parent / "corpus" / "cloudflared_metrics"
HOST = "metrics.example.test"
TCP_HOST = "tcp.metrics.example.test"
DOWN_HOST = "down.metrics.example.test"
OTHER_HOST = "other.metrics.example.test"
REGISTER_OPERATIONS = (
    'cloudflared_rpc_client_operations{handler="registration",method="register_connection"}'
)

#: ``name -> (type, label names)`` of a Prometheus text scrape (None: the family has no
#: sample, as cloudflared's ``quic_client_*`` vectors once their connections closed).
Families = dict[str, tuple[str, frozenset[str] | None]]


def families(text: str) -> Families:
    """Each family of a text-format scrape with its type and the label names of its samples
    (a histogram's ``le`` and the ``_bucket``/``_sum``/``_count`` samples folded in)."""
    types: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    sampled: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            labels.setdefault(name, set())
            continue
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ", line)
        assert match, line
        name = match.group(1)
        if name not in types:
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[: -len(suffix)] in types:
                    name = name[: -len(suffix)]
                    break
        sampled.add(name)
        names = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(3) or ""))
        names.discard("le")
        labels.setdefault(name, set()).update(names)
    return {
        name: (kind, frozenset(labels[name]) if name in sampled else None)
        for name, kind in types.items()
    }


def samples(text: str) -> dict[str, float]:
    """``name{labels} -> value`` of a scrape."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def shape(value: object) -> object:
    """A JSON value's structure: object keys kept, leaves replaced by their type name, lists
    by the shapes of their distinct items."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        seen: list[object] = []
        for item in value:
            if shape(item) not in seen:
                seen.append(shape(item))
        return seen
    return type(value).__name__


def http_get(address: str, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metrics_address(proc: Proc) -> str:
    text = proc.wait_for_log(r"Starting metrics server on \S+/metrics")
    match = re.search(r"Starting metrics server on (\S+)/metrics", text)
    assert match, text
    return match.group(1)


@pytest.fixture
def tcp_echo() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1 (a thread per connection)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    server.close()


@pytest.fixture
def edge(processes: Processes) -> Edge:
    """An edge with four tunnel listeners: cloudflared gives one HA connection per address."""
    return start_edge(processes, tunnel_listen=["127.0.0.1:0"] * 4)


@dataclass
class Setup:
    tunnel: Tunnel
    config: Path


def _setup(account: Account, tmp_path: Path, origin: Origin, ws_origin: int, echo: int) -> Setup:
    tunnel = create_tunnel(account, "parity", HOST)
    account.cli("tunnel", "route", "dns", "parity", TCP_HOST)
    account.cli("tunnel", "route", "dns", "parity", DOWN_HOST)
    account.cli("tunnel", "route", "dns", "parity", OTHER_HOST)
    account.cli("tunnel", "route", "ip", "add", "127.0.0.1/32", "parity")
    config = write_config(
        tmp_path / "config.yml",
        HOST,
        [
            {"path": "^/ws", "service": f"http://127.0.0.1:{ws_origin}"},
            {"service": origin.url},
        ],
    )
    data = yaml.safe_load(config.read_text())
    data["ingress"][0:0] = [
        {"hostname": TCP_HOST, "service": f"tcp://127.0.0.1:{echo}"},
        {"hostname": DOWN_HOST, "service": "http://127.0.0.1:1"},
    ]
    data["originRequest"] = {"connectTimeout": "7s"}
    data["warp-routing"] = {"enabled": True}
    config.write_text(yaml.safe_dump(data))
    return Setup(tunnel, config)


def _free_port() -> int:
    return free_port()


def _tcp_through_rule(processes: Processes, edge: Edge) -> None:
    """One TCP connection through the ``tcp://`` rule (`adit access tcp --hostname`)."""
    port = _free_port()
    access = processes.start(
        f"access-{port}",
        [
            *adit_command(),
            "access",
            "tcp",
            "--hostname",
            TCP_HOST,
            "--url",
            f"127.0.0.1:{port}",
            "--edge-url",
            f"http://{edge.http}",
        ],
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with client:
        payload = os.urandom(4096)
        client.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = client.recv(65536)
            assert chunk, "the TCP stream ended early"
            got += chunk
        assert got == payload
    access.stop()


def _private_flow(account: Account, echo: int) -> None:
    """One private-network TCP flow to the echo server (`adit access tcp --destination`),
    its input held open until the echo is back (cloudflared ends a flow whose client side
    ended first, before the origin's answer)."""
    with subprocess.Popen(
        [*adit_command(), "access", "tcp", "--destination", f"127.0.0.1:{echo}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HOME": str(account.home)},
    ) as flow:
        assert flow.stdin is not None and flow.stdout is not None and flow.stderr is not None
        timer = threading.Timer(60, flow.kill)
        timer.start()
        try:
            flow.stdin.write(b"private\n")
            flow.stdin.flush()
            got = flow.stdout.readline()
            flow.stdin.close()
            err = flow.stderr.read()
            flow.wait()
        finally:
            timer.cancel()
    assert got == b"private\n", err
    assert flow.returncode == 0, err


@dataclass
class Scrapes:
    """What the metrics server said, at the points of :func:`_traffic` that matter."""

    during_websocket: str
    final: str


def _one_in_flight(values: dict[str, float]) -> bool:
    return values.get("cloudflared_tunnel_concurrent_requests_per_tunnel") == 1


def _scrape_when(metrics: str, predicate: Callable[[dict[str, float]], bool]) -> str:
    """The first scrape (within 20 s) whose samples satisfy ``predicate``, else the last."""
    deadline = time.monotonic() + 20
    while True:
        text = http_get(metrics, "/metrics")[1].decode()
        if predicate(samples(text)) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def _traffic(
    processes: Processes,
    edge: Edge,
    account: Account,
    echo: int,
    metrics: str,
) -> Scrapes:
    """The traffic both connectors serve: 3 HTTP requests (200, 404 from the catch-all, 502
    from an origin that is down), a WebSocket (scraped while open), a TCP stream through a
    rule and a private-network flow. 6 requests as cloudflared counts them."""

    def ready(_: dict[str, float]) -> bool:
        status, body = http_get(metrics, "/ready")
        return status == 200 and json.loads(body)["readyConnections"] == 4

    _scrape_when(metrics, ready)
    assert request(edge, HOST, path="/headers").status == 200
    assert request(edge, OTHER_HOST, path="/").status == 404
    assert request(edge, DOWN_HOST, path="/").status == 502
    address, port = edge.http.rsplit(":", 1)

    async def talk() -> str:
        async with websockets.asyncio.client.connect(
            f"ws://{HOST}/ws", host=address, port=int(port), open_timeout=10
        ) as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 10) == "hello"
            # Workers report their counters every second: wait (bounded) for the open
            # WebSocket to show, then keep that scrape.
            return await asyncio.to_thread(_scrape_when, metrics, _one_in_flight)

    during = asyncio.run(talk())
    _tcp_through_rule(processes, edge)
    _private_flow(account, echo)

    def settled(values: dict[str, float]) -> bool:
        return (
            values.get("cloudflared_tunnel_concurrent_requests_per_tunnel") == 0
            and values.get("cloudflared_tunnel_total_requests", 0) >= 6
            and values.get(REGISTER_OPERATIONS) == 4
        )

    return Scrapes(during, _scrape_when(metrics, settled))


def _no_meaning() -> dict[str, str]:
    from adit.supervisor.metric_parity import NO_MEANING

    return NO_MEANING


def _matches(name: str, patterns: dict[str, str]) -> bool:
    return any(re.fullmatch(pattern, name) for pattern in patterns)


def _reference(protocol: str) -> Families:
    """The recorded families (over QUIC); over HTTP/2 without quic_client_*, which
    cloudflared registers at its first QUIC dial (and adit too)."""
    reference = families((CORPUS / "metrics.txt").read_text())
    if protocol == "http2":
        reference = {n: f for n, f in reference.items() if not n.startswith("quic_client_")}
    return reference


def _same(
    theirs: tuple[str, frozenset[str] | None], ours: tuple[str, frozenset[str] | None]
) -> bool:
    """Same type, and the same label names unless a side has no samples to show them (adit's
    quic_client_lost_packets on a loopback that loses nothing, say)."""
    (kind, labels), (our_kind, our_labels) = theirs, ours
    return kind == our_kind and (labels is None or our_labels is None or labels == our_labels)


def _compare(reference: Families, ours: Families) -> list[str]:
    """What differs between cloudflared's families (minus the no-meaning list) and adit's."""
    no_meaning = _no_meaning()
    problems = [f"adit exposes {n}, listed as meaningless" for n in ours if _matches(n, no_meaning)]
    for name, family in sorted(reference.items()):
        if _matches(name, no_meaning):
            continue
        if name not in ours:
            problems.append(f"adit lacks {name} ({family[0]} {sorted(family[1] or ())})")
        elif not _same(family, ours[name]):
            problems.append(f"{name}: cloudflared {family}, adit {ours[name]}")
    return problems


# --- adit against the recorded fixture -------------------------------------------------------


@pytest.mark.parametrize("protocol", ["quic", "http2"])
def test_adit_exposes_cloudflareds_families_config_and_quicktunnel(
    protocol: str,
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    ws_origin: int,
    tcp_echo: int,
    tmp_path: Path,
) -> None:
    setup = _setup(account, tmp_path, origin, ws_origin, tcp_echo)
    connector = start_connector(
        processes,
        setup.tunnel,
        setup.config,
        extra=["--protocol", protocol],
        wait=4,
    )
    metrics = metrics_address(connector)
    scrapes = _traffic(processes, edge, account, tcp_echo, metrics)

    reference = _reference(protocol)
    ours = families(scrapes.final)
    assert protocol == "quic" or not any(n.startswith("quic_client_") for n in ours)
    problems = _compare(reference, ours)
    assert not problems, "\n".join(problems)

    values = samples(scrapes.final)
    during = samples(scrapes.during_websocket)
    # As cloudflared: every proxied stream is a request (HTTP, WebSocket, TCP via a rule and a
    # private flow)...
    assert values["cloudflared_tunnel_total_requests"] == 6
    # ...an upgraded WebSocket stays a concurrent request while it is open, and its 101 is no
    # origin response by code; the private flow is the one TCP session.
    assert during["cloudflared_tunnel_concurrent_requests_per_tunnel"] == 1
    assert values["cloudflared_tunnel_concurrent_requests_per_tunnel"] == 0
    assert 'cloudflared_tunnel_response_by_code{status_code="101"}' not in values
    assert values['cloudflared_tunnel_response_by_code{status_code="200"}'] == 1
    assert values["cloudflared_tunnel_request_errors"] == 1
    assert values["cloudflared_tcp_total_sessions"] == 1
    assert values["cloudflared_tcp_active_sessions"] == 0
    # Two stream origins connected (the rule's TCP and the private flow).
    assert values["cloudflared_proxy_connect_latency_count"] == 2
    assert values["cloudflared_tunnel_ha_connections"] == 4
    assert values[REGISTER_OPERATIONS] == 4
    assert values["cloudflared_config_local_config_pushes"] == 1

    _check_config_and_quicktunnel(metrics)

    # A SIGHUP reload that changes the ingress: /config shows the new rules and version.
    before = json.loads(http_get(metrics, "/config")[1])
    config = yaml.safe_load(setup.config.read_text())
    config["ingress"].insert(0, {"hostname": "new.metrics.example.test", "service": origin.url})
    setup.config.write_text(yaml.safe_dump(config))
    connector.signal(signal.SIGHUP)
    connector.wait_for_log(rf"Applied ingress version {before['version'] + 1}")
    after = json.loads(http_get(metrics, "/config")[1])
    assert after["version"] == before["version"] + 1
    assert after["config"]["ingress"][0]["hostname"] == "new.metrics.example.test"
    assert after["config"]["ingress"][1:] == before["config"]["ingress"]
    assert (
        samples(http_get(metrics, "/metrics")[1].decode())[
            "cloudflared_orchestration_config_version"
        ]
        == after["version"]
    )


def _check_config_and_quicktunnel(metrics: str) -> None:
    reference = json.loads((CORPUS / "config.json").read_text())
    status, body = http_get(metrics, "/config")
    assert status == 200
    ours = json.loads(body)
    assert shape(ours) == shape(reference)
    assert [rule["hostname"] for rule in ours["config"]["ingress"]] == [
        rule["hostname"] for rule in reference["config"]["ingress"]
    ]
    assert ours["config"]["originRequest"]["connectTimeout"] == 7
    status, body = http_get(metrics, "/quicktunnel")
    assert (status, json.loads(body)) == (
        200,
        json.loads((CORPUS / "quicktunnel.json").read_text()),
    )


# --- cloudflared live ------------------------------------------------------------------------


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
@pytest.mark.parametrize("protocol", ["quic", "http2"])
def test_cloudflared_live_in_a_loopback_only_namespace(protocol: str) -> None:
    rerun_in_private_netns(
        f"{Path(__file__)}::test_cloudflared_live_matches_the_fixture_and_adit[{protocol}]"
    )


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace made by its twin")
@pytest.mark.parametrize("protocol", ["quic", "http2"])
def test_cloudflared_live_matches_the_fixture_and_adit(
    protocol: str,
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    ws_origin: int,
    tcp_echo: int,
    tmp_path: Path,
) -> None:
    setup = _setup(account, tmp_path, origin, ws_origin, tcp_echo)
    cloudflared = start_cloudflared(
        processes, setup.tunnel, setup.config, edge, protocol=protocol, edges=edge.tunnel
    )
    cloudflared.wait_for_log("Registered tunnel connection", count=4, timeout=30)
    metrics = metrics_address(cloudflared)
    scrapes = _traffic(processes, edge, account, tcp_echo, metrics)
    config = http_get(metrics, "/config")[1]
    quicktunnel = http_get(metrics, "/quicktunnel")[1]
    record = os.environ.get("ADIT_RECORD_METRICS_FIXTURE")
    if record and protocol == "quic":
        out = Path(record)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.txt").write_text(scrapes.final)
        (out / "metrics-during-websocket.txt").write_text(scrapes.during_websocket)
        (out / "config.json").write_bytes(config)
        (out / "quicktunnel.json").write_bytes(quicktunnel)
    # cloudflared today exposes what the fixture holds (both ways: a family it gained is one
    # for adit to map or list).
    live = families(scrapes.final)
    reference = _reference(protocol)
    # (A labelled family shows only once it has a series: the fixture's lost packets, say.)
    assert [n for n in live if n not in reference] == []
    assert [n for n, f in live.items() if not _same(f, reference[n])] == []
    assert [n for n, (_, labels) in reference.items() if n not in live and not labels] == []
    values = samples(scrapes.final)
    assert values["cloudflared_tunnel_total_requests"] == 6
    assert (
        samples(scrapes.during_websocket)["cloudflared_tunnel_concurrent_requests_per_tunnel"] == 1
    )
    assert shape(json.loads(config)) == shape(json.loads((CORPUS / "config.json").read_text()))

    # adit's connector in cloudflared's place, the same traffic: the same families and the
    # same counts where they are deterministic.
    cloudflared.signal(signal.SIGTERM)
    assert cloudflared.wait(timeout=30) == 0
    connector = start_connector(
        processes, setup.tunnel, setup.config, extra=["--protocol", protocol], wait=4
    )
    ours = _traffic(processes, edge, account, tcp_echo, metrics_address(connector))
    problems = _compare(live, families(ours.final))
    assert not problems, "\n".join(problems)
    adit_values = samples(ours.final)
    for name in (
        "cloudflared_tunnel_total_requests",
        "cloudflared_tunnel_request_errors",
        'cloudflared_tunnel_response_by_code{status_code="200"}',
        'cloudflared_tunnel_response_by_code{status_code="404"}',
        "cloudflared_tcp_total_sessions",
        "cloudflared_proxy_connect_latency_count",
        "cloudflared_config_local_config_pushes",
        REGISTER_OPERATIONS,
        "cloudflared_tunnel_ha_connections",
    ):
        assert adit_values[name] == values[name], name
    during = samples(ours.during_websocket)
    assert during["cloudflared_tunnel_concurrent_requests_per_tunnel"] == 1
