"""`adit tail`: a connector's live log through the edge's management hostname.

The edge issues management tokens (``POST .../cfd_tunnel/ID/management/logs``), checks them on
its public HTTPS listener for the management hostname and relays ``/logs`` to a connector of the
token's tunnel; the unmodified cloudflared (ADIT_CLOUDFLARED) and adit's connector both answer.
Refusals (no token, a forged, expired or other tunnel's token, the wrong resource) never reach
a connector.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import dns_records
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
    login,
    request,
    start_connector,
    start_edge,
    write_config,
)
from ports import free_port

pytestmark = pytest.mark.process

HOST = "tail.example.test"
DOWN = "down.tail.example.test"
MANAGEMENT = "management.argotunnel.com"
#: One printed log entry: ``<time> <level> <event> <message> <fields>``.
ENTRY = re.compile(r"^\S+ (debug|info|warn|error) (cloudflared|http|tcp|udp) (.*)$", re.M)


@pytest.fixture
def tls_edge(processes: Processes) -> Edge:
    return start_edge(processes, https=True)


@pytest.fixture
def tls_account(tls_edge: Edge, tmp_path: Path) -> Account:
    return login(tls_edge, tmp_path / "home")


def start_tail(
    processes: Processes,
    account: Account,
    name: str,
    *args: str,
    tunnel: str = "tail",
    cacert: bool = True,
) -> Proc:
    """`adit tail` against the edge's HTTPS listener, as the account's user (trusting the
    edge CA pinned in cert.pem without ``cacert``)."""
    edge = account.edge
    return processes.start(
        name,
        [
            *adit_command(),
            "tail",
            "--edge",
            edge.https,
            *(["--cacert", str(edge.ca)] if cacert else []),
            "--loglevel",
            "debug",
            *args,
            tunnel,
        ],
        env={"HOME": str(account.home)},
    )


def run_tail(account: Account, *args: str) -> subprocess.CompletedProcess[str]:
    """`adit tail` expected to end by itself (a refusal)."""
    edge = account.edge
    return subprocess.run(
        [*adit_command(), "tail", "--edge", edge.https, "--cacert", str(edge.ca), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"HOME": str(account.home), "PATH": "/usr/bin:/bin"},
    )


def entries(proc: Proc) -> list[tuple[str, str, str]]:
    """The log entries ``tail`` printed so far: (level, event, rest)."""
    return [(m[0], m[1], m[2]) for m in ENTRY.findall(proc.text())]


def wait_entries(
    proc: Proc, want: re.Pattern[str], poke: object = None, count: int = 1, tries: int = 100
) -> list[tuple[str, str, str]]:
    """Until ``count`` printed entries match ``want``, calling ``poke()`` between looks (a
    request that makes the connector log); bounded."""
    for _ in range(tries):
        found = [e for e in entries(proc) if want.search(" ".join(e))]
        if len(found) >= count:
            return found
        if proc.popen.poll() is not None:
            break
        if callable(poke):
            poke()
        time.sleep(0.2)
    raise AssertionError(f"{want.pattern!r} not printed by tail; its output:\n{proc.text()}")


def api_post(account: Account, path: str, token: str | None = None) -> tuple[int, object]:
    """A raw management API POST with the account's bearer token (or ``token``)."""
    url = account.edge.api_url.removeprefix("https://")
    host, port = url.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(account.edge.ca))
    context.check_hostname = False
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=15)
    try:
        conn.request("POST", path, headers={"Authorization": f"Bearer {token or account.token}"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def management_token(account: Account, tunnel_id: str, resource: str = "logs") -> str:
    status, body = api_post(
        account, f"/client/v4/accounts/{account.tag}/cfd_tunnel/{tunnel_id}/management/{resource}"
    )
    assert status == 200, body
    assert isinstance(body, dict) and isinstance(body["result"], str)
    return body["result"]


def signed_by_edge(edge: Edge, claims: dict[str, object]) -> str:
    """A token signed with the edge's own management key (what only the edge can make)."""
    key = serialization.load_pem_private_key(
        (edge.state_dir / "management-key.pem").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return jwt.encode(claims, key, algorithm="ES256")


# -- tokens and refusals (no connector needed: nothing is forwarded) ----------------------------


def test_tokens_are_issued_per_tunnel_and_bad_ones_are_refused(
    tls_edge: Edge, tls_account: Account, tmp_path: Path
) -> None:
    tunnel = create_tunnel(tls_account, "tail", HOST)
    token = management_token(tls_account, tunnel.id)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    # What cloudflared's connector needs (management/token.go): ES256, tun and actor.
    assert header["alg"] == "ES256"
    assert claims["tun"] == {"id": tunnel.id, "account_tag": tls_account.tag}
    assert claims["actor"]["id"] and claims["res"] == ["logs"]
    assert 0 < claims["exp"] - claims["iat"] <= 3600
    assert (tls_edge.state_dir / "management-key.pem").stat().st_mode & 0o777 == 0o600

    # Another account cannot get a token for this tunnel, nor any without credentials.
    other = login(tls_edge, tmp_path / "other", name="other")
    status, _ = api_post(
        other, f"/client/v4/accounts/{tls_account.tag}/cfd_tunnel/{tunnel.id}/management/logs"
    )
    assert status == 403
    status, _ = api_post(
        other, f"/client/v4/accounts/{other.tag}/cfd_tunnel/{tunnel.id}/management/logs"
    )
    assert status == 404
    status, _ = api_post(
        tls_account,
        f"/client/v4/accounts/{tls_account.tag}/cfd_tunnel/{tunnel.id}/management/logs",
        token="adit.nope.nope",
    )
    assert status == 401

    # The tunnel has no connector: a good token gets the 530 cloudflared's tail explains.
    refused = run_tail(tls_account, "--token", token)
    assert refused.returncode == 1
    assert "no connector available" in refused.stderr, refused.stderr
    assert "(1006)" in refused.stderr

    now = int(time.time())
    good_claims = {
        "tun": {"id": tunnel.id, "account_tag": tls_account.tag},
        "actor": {"id": "someone", "support": False},
        "res": ["logs"],
        "iss": "adit-edge",
        "iat": now,
        "exp": now + 60,
    }
    forged = jwt.encode(good_claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    expired = signed_by_edge(tls_edge, {**good_claims, "iat": now - 700, "exp": now - 100})
    for bad in (forged, expired, token[:-4] + "AAAA", "not-a-jwt"):
        refused = run_tail(tls_account, "--token", bad)
        assert refused.returncode == 1, refused
        assert "management request failed validation: (1002)" in refused.stderr, refused.stderr
    wrong = management_token(tls_account, tunnel.id, "host_details")
    refused = run_tail(tls_account, "--token", wrong)
    assert "(1003) the access_token does not grant this resource" in refused.stderr
    refused = run_tail(tls_account, "--token", token, "--connector-id", "nope")
    assert "connector-id" in refused.stderr and refused.returncode == 1
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    refused = run_tail(tls_account, "--token", token, "--cacert", str(junk))
    assert f"--cacert {junk} holds no PEM CA certificate" in refused.stderr, refused.stderr
    refused = run_tail(tls_account, "--token", token, "--level", "loud")
    assert "invalid --level filter provided" in refused.stderr and refused.returncode == 1

    # Without a token at all (the raw request cloudflared's tail would make).
    address, port = tls_edge.https.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(tls_edge.ca))
    conn = http.client.HTTPSConnection(address, int(port), context=context, timeout=15)
    conn.request("GET", "/logs", headers={"Host": MANAGEMENT})
    response = conn.getresponse()
    assert response.status == 401
    assert json.loads(response.read())["errors"][0]["code"] == 1001
    conn.close()

    # The management hostname is no route: an unknown path is refused, not forwarded.
    reply_status = _raw_status(tls_edge, f"/nothing?access_token={token}")
    assert reply_status == 404


def _raw_status(edge: Edge, target: str) -> int:
    address, port = edge.https.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(edge.ca))
    conn = http.client.HTTPSConnection(address, int(port), context=context, timeout=15)
    try:
        conn.request("GET", target, headers={"Host": MANAGEMENT})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


# -- the unmodified cloudflared as the connector ------------------------------------------------

TWINS = [
    "test_tail_of_cloudflared_with_filters",
    "test_cloudflareds_own_tail_reads_an_adit_connector",
]


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
@pytest.mark.parametrize("name", TWINS)
def test_cloudflared_in_a_loopback_only_namespace(name: str) -> None:
    rerun_in_private_netns(f"{Path(__file__)}::{name}", timeout=300, resolver=True)


inside = pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace of its twin")


def _private_flow(account: Account, port: int) -> None:
    """A private TCP flow to a closed port: cloudflared logs it as ``tcp`` events."""
    subprocess.run(
        [*adit_command(), "access", "tcp", "--destination", f"127.0.0.1:{port}"],
        input=b"x",
        capture_output=True,
        timeout=60,
        check=False,
        env={"HOME": str(account.home), "PATH": "/usr/bin:/bin"},
    )


@inside
@pytest.mark.timeout(300)
def test_tail_of_cloudflared_with_filters(
    processes: Processes, tls_edge: Edge, tls_account: Account, origin: Origin, tmp_path: Path
) -> None:
    tunnel: Tunnel = create_tunnel(tls_account, "tail", HOST)
    tls_account.cli("tunnel", "route", "dns", "tail", DOWN)
    tls_account.cli("tunnel", "route", "ip", "add", "127.0.0.0/8", "tail")
    config = write_config(
        tmp_path / "config.yml",
        HOST,
        [{"service": origin.url}],
    )
    config.write_text(
        config.read_text().replace(
            "ingress:\n", f"ingress:\n- hostname: {DOWN}\n  service: http://127.0.0.1:1\n", 1
        )
    )
    closed = free_port()
    with dns_records.serving():
        start_cloudflared(processes, tunnel, config, tls_edge, protocol="quic")

        # Every level and event: an HTTP request through the tunnel is an http debug entry.
        everything = start_tail(processes, tls_account, "tail-all")
        found = wait_entries(
            everything,
            re.compile(r"^debug http GET \S+/headers"),
            poke=lambda: request(tls_edge, HOST, path="/headers"),
        )
        # cloudflared's line: "<method> <url> <proto>" and its fields as sorted JSON.
        message, _, fields = found[0][2].partition(" {")
        assert message == f"GET https://{HOST}/headers HTTP/1.1"
        assert json.loads("{" + fields)["host"] == HOST
        everything.signal(2)
        assert everything.wait(15) == 0

        # --level error: a request to a dead origin shows its error, not its debug line.
        errors = start_tail(processes, tls_account, "tail-errors", "--level", "error")
        wait_entries(
            errors, re.compile(r"^error http "), poke=lambda: request(tls_edge, DOWN, path="/x")
        )
        assert all(level == "error" for level, _, _ in entries(errors)), errors.text()
        errors.signal(15)
        assert errors.wait(15) == 0

        # --event tcp: once private flows show, an HTTP request in between shows nothing.
        tcp = start_tail(processes, tls_account, "tail-tcp", "--event", "tcp", "--output", "json")
        tcp_entry = re.compile(r'"event":"tcp"')

        def json_entries() -> list[str]:
            return [line for line in tcp.text().splitlines() if line.startswith("{")]

        for _ in range(100):
            if any(tcp_entry.search(line) for line in json_entries()):
                break
            _private_flow(tls_account, closed)
            time.sleep(0.2)
        seen = len(json_entries())
        assert seen, tcp.text()
        assert request(tls_edge, HOST, path="/headers").status == 200
        _private_flow(tls_account, closed)
        for _ in range(100):
            if len(json_entries()) > seen:
                break
            time.sleep(0.1)
        lines = json_entries()
        assert len(lines) > seen, tcp.text()
        assert all(json.loads(line).get("event") == "tcp" for line in lines), lines
        tcp.signal(2)
        assert tcp.wait(15) == 0


# -- adit's connector ---------------------------------------------------------------------------


def _fields(rest: str) -> dict[str, object]:
    """The fields JSON at the end of a printed entry."""
    _, brace, tail = rest.partition(" {")
    return json.loads("{" + tail) if brace else {}


@pytest.mark.parametrize("protocol", ["http2", "quic"])
def test_tail_of_an_adit_connector_streams_every_process(
    processes: Processes,
    tls_edge: Edge,
    tls_account: Account,
    origin: Origin,
    tmp_path: Path,
    protocol: str,
) -> None:
    tunnel = create_tunnel(tls_account, "tail", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    connector = start_connector(
        processes, tunnel, config, extra=["--protocol", protocol, "--label", "edge-box"]
    )
    assert f"protocol={protocol}" in connector.text()

    def poke() -> None:
        assert request(tls_edge, HOST, path="/headers").status == 200

    # A worker's request line: an http debug entry (the connector logs at info: the stream
    # gets debug anyway while someone listens, and its console does not).
    everything = start_tail(processes, tls_account, "tail-all")
    found = wait_entries(everything, re.compile(r"^debug http GET \S+/headers"), poke=poke)
    message, _, _ = found[0][2].partition(" {")
    assert message == f"GET https://{HOST}/headers HTTP/1.1"
    line = _fields(found[0][2])
    assert line["host"] == HOST and "slot" in line and line["ingressRule"] == 0
    assert "GET https://" not in connector.text()  # the console stays at info

    # A second tail at the same time, narrowed to http events at info and above: the
    # request lines (debug) do not reach it, a supervisor line (info, cloudflared) neither.
    second = start_tail(processes, tls_account, "tail-second", "--event", "http", cacert=False)
    wait_entries(second, re.compile(r"^debug http GET \S+/headers"), poke=poke)
    before = len(entries(everything))
    # The supervisor's own line, on a reload (SIGHUP).
    connector.signal(1)
    reloaded = wait_entries(everything, re.compile(r"^info cloudflared Reloading configuration"))
    assert "slot" not in _fields(reloaded[0][2])  # the supervisor, not a worker
    wait_entries(everything, re.compile(r"^info cloudflared Updated to new configuration"))
    poke()
    wait_entries(second, re.compile(r"^debug http GET \S+/headers"), count=2, poke=poke)
    assert len(entries(everything)) > before
    assert all(event == "http" for _, event, _ in entries(second)), second.text()
    for tail in (everything, second):
        tail.signal(2)
        assert tail.wait(15) == 0

    # A token for another tunnel, or another connector of this one, reaches no connector.
    other = create_tunnel(tls_account, "other", "other.tail.example.test")
    refused = run_tail(tls_account, "--token", management_token(tls_account, other.id))
    assert "no connector available" in refused.stderr, refused.stderr
    token = management_token(tls_account, tunnel.id)
    refused = run_tail(tls_account, "--token", token, "--connector-id", str(uuid.uuid4()))
    assert "no connector available" in refused.stderr, refused.stderr

    # /ping and /host_details through the edge with the right tokens.
    assert _raw_status(tls_edge, f"/ping?access_token={token}") == 200
    details_token = management_token(tls_account, tunnel.id, "host_details")
    details = _raw_json(tls_edge, f"/host_details?access_token={details_token}")
    assert uuid.UUID(str(details["connector_id"]))
    assert details["ip"] == "127.0.0.1" and details["hostname"] == "custom:edge-box"

    # Diagnostics: the supervisor's metrics, for an admin token only.
    assert _raw_status(tls_edge, f"/metrics?access_token={token}") == 403
    admin = management_token(tls_account, tunnel.id, "admin")
    metrics = _raw_text(tls_edge, f"/metrics?access_token={admin}")
    assert "cloudflared_tunnel_total_requests" in metrics, metrics[:2000]

    # The connector stopping ends the streams at once (they would hold its drain open).
    connector_id = re.search(r"Generated Connector ID: ([0-9a-f-]{36})", connector.text())
    assert connector_id, connector.text()
    assert details["connector_id"] == connector_id.group(1)
    last = start_tail(processes, tls_account, "tail-last", "--connector-id", connector_id.group(1))
    wait_entries(last, re.compile(r"^debug http GET \S+/headers"), poke=poke)
    connector.signal(15)
    assert connector.wait(30) == 0
    assert last.wait(15) == 0
    assert "received remote closure: (1001) the connector is stopping" in last.text()


def _raw_text(edge: Edge, target: str) -> str:
    address, port = edge.https.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(edge.ca))
    conn = http.client.HTTPSConnection(address, int(port), context=context, timeout=15)
    try:
        conn.request("GET", target, headers={"Host": MANAGEMENT})
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, body
        return body
    finally:
        conn.close()


def _raw_json(edge: Edge, target: str) -> dict[str, object]:
    address, port = edge.https.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(edge.ca))
    conn = http.client.HTTPSConnection(address, int(port), context=context, timeout=15)
    try:
        conn.request("GET", target, headers={"Host": MANAGEMENT})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        result = json.loads(body)
        assert isinstance(result, dict)
        return result
    finally:
        conn.close()


def test_a_slow_tail_client_loses_counted_entries_and_never_slows_the_connector(
    processes: Processes, tls_edge: Edge, tls_account: Account, origin: Origin, tmp_path: Path
) -> None:
    """A client that stops reading: the tunnel's flow control holds its stream, its session's
    queue fills, and what does not fit is counted and told once it reads again; meanwhile
    every request is served."""
    import asyncio
    import socket

    import websockets.asyncio.client

    tunnel = create_tunnel(tls_account, "tail", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    start_connector(processes, tunnel, config)
    token = management_token(tls_account, tunnel.id)
    address, port = tls_edge.https.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(tls_edge.ca))
    # Long paths make long entries: the buffers on the way fill after a few hundred requests.
    pad = "/pad/" + "p" * 24_000

    async def main() -> tuple[list[int], str]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((address, int(port)))
        async with websockets.asyncio.client.connect(
            f"wss://{MANAGEMENT}/logs?access_token={token}",
            sock=sock,
            ssl=context,
            server_hostname=MANAGEMENT,
            max_queue=1,
            max_size=None,
            compression=None,
            ping_interval=None,
        ) as ws:
            await ws.send(json.dumps({"type": "start_streaming", "filters": {"events": ["http"]}}))
            statuses = await asyncio.to_thread(_flood, tls_edge, pad, 400)
            for _ in range(5000):  # bounded: every message of the backlog, then the count
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                for entry in message["logs"]:
                    if "entries dropped" in entry.get("message", ""):
                        return statuses, json.dumps(entry)
            return statuses, ""

    statuses, dropped = asyncio.run(main())
    assert set(statuses) == {200}, statuses  # every request answered (by the origin)
    assert dropped, "no drop count reached the client"
    entry = json.loads(dropped)
    assert entry["level"] == "warn" and entry["fields"]["dropped"] > 0, entry


def _flood(edge: Edge, path: str, count: int) -> list[int]:
    """``count`` requests over one keep-alive connection; their statuses."""
    address, port = edge.http.rsplit(":", 1)
    conn = http.client.HTTPConnection(address, int(port), timeout=30)
    statuses = []
    try:
        for _ in range(count):
            conn.request("GET", path, headers={"Host": HOST})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        conn.close()
    return statuses


def _edge_on_443(processes: Processes) -> Edge:
    """An edge whose public HTTPS listener is 127.0.0.1:443, where cloudflared's tail dials
    ``management.argotunnel.com`` (the namespace's /etc/hosts says so)."""
    state = processes.tmp / "edge-state"
    ready = processes.tmp / "edge-ready.json"
    proc = processes.start(
        "edge",
        [
            *adit_command(),
            "edge",
            "--state-dir",
            str(state),
            "--tunnel-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:443",
            "--api-listen",
            "127.0.0.1:0",
            "--location",
            "test",
            "--ready-file",
            str(ready),
        ],
    )
    for _ in range(400):
        if ready.exists() or proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    assert ready.exists(), proc.text()
    info = json.loads(ready.read_text())
    return Edge(
        proc=proc,
        state_dir=state,
        http=info["http"][0],
        api_url=info["api"][0],
        tunnel=info["advertise"],
        ca=Path(info["ca"]),
        https=info["https"][0],
    )


@inside
@pytest.mark.timeout(300)
def test_cloudflareds_own_tail_reads_an_adit_connector(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    """The unmodified ``cloudflared tail --token`` against adit's edge and connector: it dials
    wss://management.argotunnel.com (here 127.0.0.1:443, trusting the edge CA through Go's
    SSL_CERT_FILE) and prints the adit connector's request lines."""
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost {MANAGEMENT}\n")
    # The twin runs this in a mount namespace of its own: the bind mount ends with it.
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)
    edge = _edge_on_443(processes)
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "tail", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    start_connector(processes, tunnel, config)
    token = management_token(account, tunnel.id)
    tail = processes.start(
        "cloudflared-tail",
        [CLOUDFLARED, "tail", "--token", token, "--loglevel", "debug", "--event", "http"],
        env={"SSL_CERT_FILE": str(edge.ca), "HOME": str(account.home)},
    )
    found = wait_entries(
        tail,
        re.compile(r"^debug http GET \S+/headers"),
        poke=lambda: request(edge, HOST, path="/headers"),
    )
    assert _fields(found[0][2])["host"] == HOST
    assert all(event == "http" for _, event, _ in entries(tail)), tail.text()
    tail.signal(2)
    assert tail.wait(15) == 0


def test_a_management_hostname_of_the_operators_choice(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    """``adit edge --management-hostname``: tail asks for that name; connectors still get the
    one they serve (management.argotunnel.com), and that name is no longer special."""
    name = "mgmt.example.test"
    edge = start_edge(processes, https=True, env={"ADIT_EDGE_MANAGEMENT_HOSTNAME": name})
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "tail", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    start_connector(processes, tunnel, config)
    tail = start_tail(processes, account, "tail", "--management-hostname", name)
    wait_entries(
        tail,
        re.compile(r"^debug http GET \S+/headers"),
        poke=lambda: request(edge, HOST, path="/headers"),
    )
    tail.signal(2)
    assert tail.wait(15) == 0
    token = management_token(account, tunnel.id)
    assert _raw_status(edge, f"/ping?access_token={token}") == 404  # no such route now


def test_the_connectors_management_flags(
    processes: Processes, tls_edge: Edge, tls_account: Account, origin: Origin, tmp_path: Path
) -> None:
    """``--management-diagnostics=false`` takes ``/metrics`` off the management service (404,
    as cloudflared's service never registers the route) while ``/ping`` still answers; a
    connector with another ``--management-hostname`` no longer answers the edge's name, which
    then reaches the connector's own ingress like any host (its catch-all: the origin)."""
    tunnel = create_tunnel(tls_account, "flags", HOST)
    config = write_config(tmp_path / "config.yml", HOST, [{"service": origin.url}])
    connector = start_connector(processes, tunnel, config, extra=["--management-diagnostics=false"])
    token = management_token(tls_account, tunnel.id)
    admin = management_token(tls_account, tunnel.id, "admin")
    assert _raw_status(tls_edge, f"/ping?access_token={token}") == 200
    assert _raw_status(tls_edge, f"/metrics?access_token={admin}") == 404
    connector.signal(15)
    assert connector.wait(30) == 0

    # The origin as the catch-all: what the edge's management name reaches when the connector
    # no longer claims it.
    catch_all = tmp_path / "catch-all.yml"
    catch_all.write_text(f"ingress:\n  - service: {origin.url}\n")
    connector = start_connector(
        processes, tunnel, catch_all, extra=["--management-hostname", "mgmt.elsewhere.test"]
    )
    ping = _raw_text(tls_edge, f"/ping?access_token={token}")
    assert ping == f"hello /ping?access_token={token}"  # the origin's answer, not /ping's
