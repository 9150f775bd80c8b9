"""Private networks end to end: `adit tunnel route ip add` → `adit access tcp|udp --destination`
→ the edge's API listener → the tunnel → `adit tunnel run` (or the unmodified cloudflared) →
a real OpenSSH server, TCP and UDP servers started by the test. Every address is on
127.0.0.0/8: the routes are loopback networks, so nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import dns.message
import dns.query
import dns.rdatatype
import pytest

import dns_records
from adversary import CLOUDFLARED, INSIDE_NETNS, rerun_in_private_netns, start_cloudflared
from harness import (
    Account,
    Edge,
    Proc,
    Processes,
    Tunnel,
    adit_command,
    create_tunnel,
    login,
    start_connector,
    write_config,
)
from ports import free_port
from sshd import Sshd

pytestmark = pytest.mark.process

HOST = "private.example.test"
FIFTY_MB = 50 * 1024 * 1024


@pytest.fixture
def sshd(tmp_path: Path, processes: Processes) -> Sshd:
    return Sshd(tmp_path, processes)


def _tunnel(account: Account, tmp_path: Path, network: str = "127.0.0.0/8") -> tuple[Tunnel, Path]:
    """A tunnel with the IP route ``network``, and a config with nothing but a catch-all (a
    private flow involves no ingress rule)."""
    tunnel = create_tunnel(account, "private", HOST)
    out = account.cli("tunnel", "route", "ip", "add", network, "private").stdout
    assert f"Successfully added route for {network}" in out
    return tunnel, write_config(tmp_path / "config.yml", HOST, [{"service": "http_status:404"}])


def _access(account: Account, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """`adit access ARGS` as the account's user (cert.pem found under its HOME)."""
    return subprocess.run(
        [*adit_command(), "access", *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, "HOME": str(account.home)},
        timeout=60,
        check=False,
    )


def _fifty_megabytes(path: Path) -> str:
    with path.open("wb") as handle:
        for index in range(50):
            handle.write(hashlib.sha256(index.to_bytes(4, "big")).digest() * 32768)
    assert path.stat().st_size == FIFTY_MB
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ssh_and_scp(account: Account, sshd: Sshd, tmp_path: Path) -> None:
    """ssh runs a command and scp copies 50 MB there and back, through the private route."""
    proxy = shlex.join([*adit_command(), "access", "tcp", "--destination", "127.0.0.1:%p"])
    options = [*sshd.client_options(proxy), "-p", str(sshd.port)]
    user = os.environ.get("USER") or "root"
    env = {**os.environ, "HOME": str(account.home)}  # the ProxyCommand finds cert.pem there

    def run(args: list[str], timeout: float) -> None:
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
        assert result.returncode == 0, result.stderr

    result = subprocess.run(
        ["ssh", *options, f"{user}@127.0.0.1", "echo over-a-private-route; uname -s"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["over-a-private-route", "Linux"]
    source = tmp_path / "fifty.bin"
    digest = _fifty_megabytes(source)
    dest = tmp_path / "copied.bin"
    scp = ["scp", "-q", *sshd.client_options(proxy), "-P", str(sshd.port)]
    run([*scp, str(source), f"{user}@127.0.0.1:{dest}"], timeout=240)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    back = tmp_path / "back.bin"
    run([*scp, f"{user}@127.0.0.1:{dest}", str(back)], timeout=240)
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest


def _flows_logged(edge: Edge, transport: str) -> None:
    text = edge.proc.text()
    opened = [line for line in text.splitlines() if "private flow opened" in line]
    assert opened, text
    assert all(f"transport={transport}" in line for line in opened), opened
    assert "destination=127.0.0.1:" in opened[0]
    assert "private flow closed" in text


@pytest.mark.timeout(600)
@pytest.mark.parametrize("protocol", ["quic", "http2"])
def test_ssh_and_a_fifty_megabyte_scp_to_a_private_address(
    edge: Edge,
    account: Account,
    processes: Processes,
    sshd: Sshd,
    tmp_path: Path,
    protocol: str,
) -> None:
    tunnel, config = _tunnel(account, tmp_path)
    connector = start_connector(processes, tunnel, config, extra=["--protocol", protocol])
    assert f"protocol={protocol}" in connector.text()
    _ssh_and_scp(account, sshd, tmp_path)
    _flows_logged(edge, protocol)
    assert account.token not in edge.proc.text()  # flows are logged without secrets


# -- what a user can get wrong, or the tunnel ------------------------------------------------


@pytest.fixture
def answer_at_eof() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that reads a request up to the client's end, then answers
    (what ``echo PING | nc -N`` expects of a server)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            request = b""
            while chunk := conn.recv(65536):
                request += chunk
            conn.sendall(b"got " + request)

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


def _raw_flow(edge: Edge, path: str, token: str | None) -> tuple[int, str]:
    """A flow's upgrade request made by hand: the status and the envelope's message."""
    context = ssl.create_default_context(cafile=str(edge.ca))
    url = urlsplit(edge.api_url)
    conn = http.client.HTTPSConnection(
        url.hostname or "127.0.0.1", url.port, context=context, timeout=15
    )
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    return response.status, str(body["errors"][0]["message"])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("protocol", ["quic", "http2"])
def test_max_active_flows_limits_private_tcp_flows(
    edge: Edge,
    account: Account,
    processes: Processes,
    answer_at_eof: int,
    tmp_path: Path,
    protocol: str,
) -> None:
    """``--max-active-flows 1``: while one private TCP flow is open a second is refused with
    the reason and counted (``flow_client_registrations_rate_limited_total{flow_type="tcp"}``,
    as cloudflared's ProxyTCP); once the first ends, a flow gets through again."""
    tunnel, config = _tunnel(account, tmp_path, "127.0.0.1/32")
    connector = start_connector(
        processes,
        tunnel,
        config,
        extra=["--protocol", protocol, "--max-active-flows", "1", "--ha-connections", "1"],
    )
    destination = f"127.0.0.1:{answer_at_eof}"
    opened = edge.proc.text().count("private flow opened")
    held = subprocess.Popen(
        [*adit_command(), "access", "tcp", "--destination", destination],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HOME": str(account.home)},
    )
    try:
        assert held.stdin is not None
        held.stdin.write(b"held open")
        held.stdin.flush()
        edge.proc.wait_for_log("private flow opened", count=opened + 1)
        refused = _access(account, "tcp", "--destination", destination, stdin=b"PING\r\n")
        assert refused.returncode == 1
        assert b"too many active flows" in refused.stderr, refused.stderr
        connector.wait_for_log("Too many concurrent flows being handled, rejecting tcp proxy")
        out, _ = held.communicate(timeout=60)  # its end of input: the answer comes back
        assert out == b"got held open"
    finally:
        if held.poll() is None:
            held.kill()
            held.wait(timeout=10)
    # The slot is free again.
    result = _access(account, "tcp", "--destination", destination, stdin=b"PING\r\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"got PING\r\n"
    match = re.search(r"Starting metrics server on (\S+)/metrics", connector.text())
    assert match, connector.text()
    url = f"http://{match.group(1)}/metrics"
    metrics = _metrics_with(url, 'flow_type="tcp"')
    assert 'flow_client_registrations_rate_limited_total{flow_type="tcp"} 1.0' in metrics, metrics
    # The last flow's end reaches the supervisor with the worker's next telemetry.
    metrics = _metrics_with(url, "cloudflared_tcp_active_sessions 0.0")
    assert "cloudflared_tcp_active_sessions 0.0" in metrics, metrics


def _metrics_with(url: str, needle: str) -> str:
    """The connector's /metrics once it shows ``needle`` (workers report every heartbeat), or
    after 15 s whatever it shows; bounded."""
    import time
    import urllib.request

    deadline = time.monotonic() + 15
    while True:
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.3)


def test_the_clients_end_of_input_still_gets_the_answer_and_mistakes_are_told(
    edge: Edge,
    account: Account,
    processes: Processes,
    answer_at_eof: int,
    tmp_path: Path,
) -> None:
    tunnel, config = _tunnel(account, tmp_path, "127.0.0.1/32")
    connector = start_connector(processes, tunnel, config, extra=["--protocol", "quic"])
    destination = f"127.0.0.1:{answer_at_eof}"

    # stdin's end is passed on (a half-close): the server's answer still comes back.
    result = _access(account, "tcp", "--destination", destination, stdin=b"PING\r\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"got PING\r\n"

    # A listener: a flow per local connection, each half-closed the same way.
    local = free_port()
    processes.start(
        "access-listener",
        [
            *adit_command(),
            "access",
            "tcp",
            "--destination",
            destination,
            "--url",
            f"127.0.0.1:{local}",
        ],
        env={"HOME": str(account.home)},
    ).wait_for_log("Start private TCP listener")
    for word in (b"one", b"two"):
        with socket.create_connection(("127.0.0.1", local), timeout=15) as sock:
            sock.sendall(word)
            sock.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
        assert got == b"got " + word

    # Nothing listens there: the connector's reason comes back.
    closed = free_port()
    result = _access(account, "tcp", "--destination", f"127.0.0.1:{closed}", stdin=b"x")
    assert result.returncode == 1
    assert f"cannot reach 127.0.0.1:{closed}".encode() in result.stderr
    assert b"connection refused" in result.stderr and b"(close 1014)" in result.stderr

    # No route for that address (the route is 127.0.0.1/32).
    result = _access(account, "tcp", "--destination", "127.0.0.2:22")
    assert result.returncode == 1
    assert b"no route for 127.0.0.2 in virtual network default (" in result.stderr

    # ...but in a virtual network that routes it, the flow reaches the connector (which
    # finds nothing listening on 127.0.0.2 there).
    account.cli("tunnel", "vnet", "add", "lab")
    account.cli("tunnel", "route", "ip", "add", "--vnet", "lab", "127.0.0.0/8", "private")
    result = _access(account, "tcp", "--vnet", "lab", "--destination", f"127.0.0.2:{closed}")
    assert result.returncode == 1
    assert f"cannot reach 127.0.0.2:{closed}".encode() in result.stderr
    result = _access(account, "tcp", "--vnet", "nope", "--destination", destination)
    assert result.returncode == 1 and b"no virtual network named 'nope'" in result.stderr

    # Not an address and a port: told before anything is dialled.
    result = _access(account, "tcp", "--destination", "db.internal:5432")
    assert result.returncode == 1 and b"names are not resolved" in result.stderr

    # No login.
    result = subprocess.run(
        [*adit_command(), "access", "tcp", "--destination", destination],
        capture_output=True,
        env={**os.environ, "HOME": str(tmp_path / "nobody")},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1 and b"run `adit tunnel login` first" in result.stderr

    # The connector dies in the middle of a flow: the client is told the tunnel failed.
    opened = edge.proc.text().count("private flow opened")
    flow = subprocess.Popen(
        [*adit_command(), "access", "tcp", "--destination", destination],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HOME": str(account.home)},
    )
    assert flow.stdin is not None
    flow.stdin.write(b"held open")
    flow.stdin.flush()
    edge.proc.wait_for_log("private flow opened", count=opened + 1)
    os.killpg(connector.popen.pid, signal.SIGKILL)
    _, err = flow.communicate(timeout=60)
    assert flow.returncode == 1
    assert b"the tunnel stream failed" in err and b"(close 1011)" in err, err

    # The tunnel down: 503 with the reason.
    connector.popen.wait(timeout=10)
    result = _access(account, "tcp", "--destination", destination, stdin=b"x")
    assert result.returncode == 1
    assert f"tunnel {tunnel.id} is down".encode() in result.stderr and b"(503)" in result.stderr


def test_another_accounts_routes_are_out_of_reach(
    edge: Edge,
    account: Account,
    processes: Processes,
    answer_at_eof: int,
    tmp_path: Path,
) -> None:
    tunnel, config = _tunnel(account, tmp_path, "127.0.0.1/32")
    start_connector(processes, tunnel, config)
    destination = f"127.0.0.1:{answer_at_eof}"
    assert _access(account, "tcp", "--destination", destination, stdin=b"ok").stdout == b"got ok"

    other = login(edge, tmp_path / "other-home", name="other")
    result = _access(other, "tcp", "--destination", destination, stdin=b"x")
    assert result.returncode == 1
    assert b"no route for 127.0.0.1: the account has no IP routes (404)" in result.stderr

    query = f"private/tcp?destination={destination}"
    mine = f"/client/v4/accounts/{account.tag}/{query}"
    assert _raw_flow(edge, mine, None) == (401, "Authentication error")
    assert _raw_flow(edge, mine, "adit.forged.token") == (401, "Authentication error")
    # The other account's token naming this account: refused before any lookup.
    assert _raw_flow(edge, mine, other.token) == (403, "Authentication error")
    # Its own account: this account's route does not exist for it.
    status, message = _raw_flow(edge, f"/client/v4/accounts/{other.tag}/{query}", other.token)
    assert (status, message) == (404, "no route for 127.0.0.1: the account has no IP routes")


# -- the unmodified cloudflared ----------------------------------------------------------------

TWINS = [
    "test_ssh_and_scp_through_cloudflared_over_quic",
    "test_datagrams_through_cloudflared",
]


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
@pytest.mark.parametrize("name", TWINS)
def test_cloudflared_in_a_loopback_only_namespace(name: str) -> None:
    rerun_in_private_netns(f"{Path(__file__)}::{name}", timeout=600, resolver=True)


inside = pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace of its twin")


@inside
@pytest.mark.timeout(600)
def test_ssh_and_scp_through_cloudflared_over_quic(
    edge: Edge, account: Account, processes: Processes, sshd: Sshd, tmp_path: Path
) -> None:
    """cloudflared dials the address the edge names in its ConnectRequest (no ingress rule
    is involved), exactly as for Cloudflare's WARP traffic."""
    tunnel, config = _tunnel(account, tmp_path)
    # The namespace's resolver: cloudflared's look-ups are answered at once.
    with dns_records.serving():
        cloudflared: Proc = start_cloudflared(processes, tunnel, config, edge, protocol="quic")
        assert "protocol=quic" in edge.proc.text(), cloudflared.text()
        _ssh_and_scp(account, sshd, tmp_path)
        _flows_logged(edge, "quic")
        # A refused destination: cloudflared's dial error is the reason the client prints.
        closed = free_port()
        result = _access(account, "tcp", "--destination", f"127.0.0.1:{closed}", stdin=b"x")
    assert result.returncode == 1
    assert b"connection refused" in result.stderr and b"(close 1014)" in result.stderr


# -- UDP ---------------------------------------------------------------------------------------

DATAGRAMS = 10_000
#: Datagrams in flight at once: the sender waits for echoes (or a lull) before sending more, so
#: what is lost is what the path drops, not what a burst overflowed in a socket buffer.
WINDOW = 64


@pytest.fixture
def udp_echo() -> Iterator[int]:
    """A UDP echo server on 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65536)
            except TimeoutError:
                continue
            sock.sendto(data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(sock.getsockname()[1])
    stop.set()
    thread.join(5)
    sock.close()


def _udp_access(processes: Processes, account: Account, destination: str, name: str) -> int:
    """`adit access udp` for ``destination``; returns its local port once it listens."""
    local = free_udp_port()
    processes.start(
        name,
        [
            *adit_command(),
            "access",
            "udp",
            "--destination",
            destination,
            "--listen",
            f"127.0.0.1:{local}",
        ],
        env={"HOME": str(account.home)},
    ).wait_for_log("Start private UDP listener")
    return local


def free_udp_port() -> int:
    """A UDP port free on 127.0.0.1 just now."""
    return free_port("udp")


def _echo_many(port: int) -> tuple[int, int]:
    """Send :data:`DATAGRAMS` numbered datagrams to ``port``, :data:`WINDOW` in flight at most;
    returns (sent, echoed back intact). A datagram unanswered in a lull counts as lost."""
    received: set[int] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(2.0)
        sent = 0
        outstanding: set[int] = set()
        while sent < DATAGRAMS or outstanding:
            while sent < DATAGRAMS and len(outstanding) < WINDOW:
                sock.send(sent.to_bytes(4, "big") + hashlib.sha256(str(sent).encode()).digest())
                outstanding.add(sent)
                sent += 1
            try:
                data = sock.recv(65536)
            except TimeoutError:
                outstanding.clear()  # a lull: what is still out is lost
                continue
            number = int.from_bytes(data[:4], "big")
            if data[4:] == hashlib.sha256(str(number).encode()).digest():
                received.add(number)
            outstanding.discard(number)
    return sent, len(received)


def _ten_thousand_echoed(account: Account, processes: Processes, udp_echo: int) -> None:
    local = _udp_access(processes, account, f"127.0.0.1:{udp_echo}", "access-udp")
    sent, echoed = _echo_many(local)
    loss = sent - echoed
    print(f"UDP through the tunnel: {sent} sent, {echoed} echoed, {loss} lost")
    assert sent == DATAGRAMS
    assert echoed >= DATAGRAMS * 95 // 100, f"{loss} of {sent} datagrams lost"


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "features",
    [pytest.param([], id="datagram-v2"), pytest.param(["-F", "support_datagram_v3_2"], id="v3")],
)
def test_ten_thousand_datagrams_and_a_dns_query_to_private_addresses(
    edge: Edge,
    account: Account,
    processes: Processes,
    udp_echo: int,
    tmp_path: Path,
    features: list[str],
) -> None:
    tunnel, config = _tunnel(account, tmp_path, "127.0.0.1/32")
    start_connector(processes, tunnel, config, extra=["--protocol", "quic", *features])
    _ten_thousand_echoed(account, processes, udp_echo)

    # A DNS query to a resolver in the private network, through its own flow.
    dns_port = free_udp_port()
    with dns_records.serving({"db.corp.test.": "10.1.2.3"}, port=dns_port):
        resolver = _udp_access(processes, account, f"127.0.0.1:{dns_port}", "access-dns")
        query = dns.message.make_query("db.corp.test.", dns.rdatatype.TXT)
        answer = dns.query.udp(query, "127.0.0.1", port=resolver, timeout=10)
    assert [r.to_text() for r in answer.answer[0]] == ['"10.1.2.3"']
    text = edge.proc.text()
    assert "proto=udp" in text and f"destination=127.0.0.1:{dns_port}" in text


def test_udp_needs_a_quic_connection(
    edge: Edge,
    account: Account,
    processes: Processes,
    udp_echo: int,
    tmp_path: Path,
) -> None:
    tunnel, config = _tunnel(account, tmp_path, "127.0.0.1/32")
    start_connector(processes, tunnel, config, extra=["--protocol", "http2"])
    local = free_udp_port()
    access = processes.start(
        "access-udp",
        [
            *adit_command(),
            "access",
            "udp",
            "--destination",
            f"127.0.0.1:{udp_echo}",
            "--listen",
            f"127.0.0.1:{local}",
        ],
        env={"HOME": str(account.home)},
    )
    access.wait_for_log("Start private UDP listener")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"hello?", ("127.0.0.1", local))  # the first datagram opens a flow
    access.wait_for_log("no QUIC connection to this edge")
    assert "--protocol quic" in access.text() and "(503)" in access.text()


@inside
@pytest.mark.timeout(300)
def test_datagrams_through_cloudflared(
    edge: Edge, account: Account, processes: Processes, udp_echo: int, tmp_path: Path
) -> None:
    """cloudflared opens the UDP session the edge registers (datagram v2, its default) to the
    address the edge names, and carries the datagrams both ways."""
    tunnel, config = _tunnel(account, tmp_path, "127.0.0.1/32")
    with dns_records.serving():
        start_cloudflared(processes, tunnel, config, edge, protocol="quic")
        _ten_thousand_echoed(account, processes, udp_echo)
    assert "proto=udp" in edge.proc.text()


def test_each_client_address_gets_a_flow_and_idle_ones_close(
    edge: Edge,
    account: Account,
    processes: Processes,
    udp_echo: int,
    tmp_path: Path,
) -> None:
    tunnel, config = _tunnel(account, tmp_path, "127.0.0.1/32")
    start_connector(processes, tunnel, config, extra=["--protocol", "quic"])

    def relay(name: str, *options: str) -> tuple[Proc, int]:
        local = free_udp_port()
        access = processes.start(
            name,
            [
                *adit_command(),
                "access",
                "udp",
                "--destination",
                f"127.0.0.1:{udp_echo}",
                "--listen",
                f"127.0.0.1:{local}",
                *options,
            ],
            env={"HOME": str(account.home)},
        )
        access.wait_for_log("Start private UDP listener")
        return access, local

    def client(local: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", local))
        sock.settimeout(15)
        return sock

    def echo(sock: socket.socket, payload: bytes) -> None:
        sock.send(payload)
        assert sock.recv(65536) == payload

    # Three client addresses, room for two flows: the flow idle longest makes room.
    crowded, local = relay("access-crowded", "--max-flows", "2")
    clients = [client(local) for _ in range(3)]
    try:
        for index, sock in enumerate(clients):
            echo(sock, f"client {index}".encode())
        crowded.wait_for_log("UDP flow for .* opened", count=3)
        crowded.wait_for_log("closed: evicted for another client")
    finally:
        for sock in clients:
            sock.close()

    # An idle flow closes; the address's next datagram opens another.
    quiet, local = relay("access-quiet", "--idle-timeout", "0.5")
    with client(local) as sock:
        echo(sock, b"before")
        quiet.wait_for_log("closed: idle")
        echo(sock, b"after")
    quiet.wait_for_log("UDP flow for .* opened", count=2)
    opened = [line for line in edge.proc.text().splitlines() if "private flow opened" in line]
    assert len(opened) == 5 and all("proto=udp" in line for line in opened)
