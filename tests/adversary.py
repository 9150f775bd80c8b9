"""Tools for tests that attack adit the way a hostile visitor, tenant or careless client would.

Everything here is real: a raw-socket origin that records exactly the bytes that reach it, raw
sockets to the edge's listeners, and probes that read a process's file descriptors, sockets
and memory from /proc (psutil). Shared by ``tests/adversarial/`` and other process tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from harness import (
    Account,
    Edge,
    Proc,
    Processes,
    Tunnel,
    create_tunnel,
    login,
    start_connector,
    write_config,
)

# --- a raw-socket origin --------------------------------------------------------------------

#: What a :class:`RawOrigin` answers by default: a small, complete, keep-alive response.
OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
#: The same, closing the connection: the connector opens a new one for each request, so a
#: :func:`canned` origin answers every request (it answers once per connection).
OK_CLOSE_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\nok"
)

#: Decides the answer from the bytes received so far on one connection: the bytes to send
#: (``b""`` to wait for more input), or ``None`` to keep the connection open and silent.
Responder = Callable[[bytes], bytes | None]


def head_complete(received: bytes) -> bool:
    """Whether ``received`` holds a whole request head (the body is not waited for)."""
    return b"\r\n\r\n" in received


def request_complete(received: bytes) -> bool:
    """Whether ``received`` holds a whole first request (its body framed by Content-Length or
    chunked; a head without either has no body)."""
    requests = parse_requests(received)
    return bool(requests) and requests[0].complete


def canned(
    response: bytes = OK_RESPONSE, when: Callable[[bytes], bool] = head_complete
) -> Responder:
    """Answer ``response`` once ``when`` says enough arrived (once per connection): by
    default the request head; :func:`request_complete` waits for the body as well."""

    def respond(received: bytes) -> bytes | None:
        return response if when(received) else b""

    return respond


def hang(received: bytes) -> bytes | None:
    """Never answer (an origin that hangs)."""
    return None


@dataclass
class OriginConnection:
    """One connection an origin accepted: every byte it received, and whether it is open."""

    received: bytearray = field(default_factory=bytearray)
    open: bool = True
    sent: int = 0


class RawOrigin:
    """A TCP origin on 127.0.0.1 that records exactly what reaches it.

    Each connection is served by a thread: bytes are appended to its record, and the
    ``responder`` decides what to send back. Nothing interprets HTTP here beyond what the
    responder does, so a test sees the request bytes the connector wrote, unchanged.
    """

    def __init__(self, responder: Responder | None = None) -> None:
        self.responder = responder or canned()
        self.connections: list[OriginConnection] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` for an ingress rule."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[bytes]:
        """What each connection received so far, in accept order."""
        with self._lock:
            return [bytes(c.received) for c in self.connections]

    @property
    def parsed(self) -> list[RecordedRequest]:
        """Every request received so far, parsed, connection by connection."""
        return [request for data in self.requests for request in parse_requests(data)]

    @property
    def open_connections(self) -> int:
        """Connections the origin still has open (the peer has not closed them)."""
        with self._lock:
            return sum(1 for c in self.connections if c.open)

    def wait_for(
        self, predicate: Callable[[RawOrigin], bool], timeout: float = 10.0, what: str = ""
    ) -> None:
        """Poll ``predicate(self)`` until true (bounded); fail with what was received."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            time.sleep(0.02)
        raise AssertionError(f"origin: {what or predicate} not reached; got {self.requests!r}")

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._stop.set()
        self._accepting.join(5)
        self._server.close()
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            record = OriginConnection()
            with self._lock:
                self.connections.append(record)
            thread = threading.Thread(target=self._serve, args=(sock, record), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, record: OriginConnection) -> None:
        sock.settimeout(0.2)
        answered = False
        try:
            while not self._stop.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                with self._lock:
                    record.received += data
                    received = bytes(record.received)
                if answered:
                    continue
                answer = self.responder(received)
                if answer:
                    sock.sendall(answer)
                    record.sent += len(answer)
                    answered = True
        except OSError:
            return
        finally:
            with self._lock:
                record.open = False
            sock.close()


@dataclass(frozen=True)
class RecordedRequest:
    """One request as an origin received it: the request line and headers byte for byte."""

    line: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    #: The whole body arrived (else ``body`` is what did).
    complete: bool = True

    @property
    def target(self) -> bytes:
        """The request target of the request line."""
        parts = self.line.split(b" ")
        return parts[1] if len(parts) == 3 else b""

    def values(self, name: str) -> list[bytes]:
        """Every value of header ``name`` (case-insensitive), in the order received."""
        wanted = name.lower().encode("latin-1")
        return [v for n, v in self.headers if n.lower() == wanted]


def parse_requests(data: bytes) -> list[RecordedRequest]:
    """The requests in one connection's bytes (bodies framed by Content-Length or chunked).

    Deliberately simple: it reads what a connector writes, not what an attacker writes. The
    last request may be incomplete (``complete`` is False); nothing after it is parsed.
    """
    out: list[RecordedRequest] = []
    rest = data
    while b"\r\n\r\n" in rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        line, *fields = head.split(b"\r\n")
        headers = tuple(
            (name, value.strip(b" \t"))
            for name, _, value in (field.partition(b":") for field in fields)
        )
        lengths = [v for n, v in headers if n.lower() == b"content-length"]
        if any(n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in headers):
            body, rest, whole = _dechunk(rest)
        else:
            size = int(lengths[0]) if lengths else 0
            body, rest = rest[:size], rest[size:]
            whole = len(body) == size
        out.append(RecordedRequest(line, headers, body, whole))
        if not whole:
            break
    return out


def _dechunk(data: bytes) -> tuple[bytes, bytes, bool]:
    body = bytearray()
    while b"\r\n" in data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            if not rest.startswith(b"\r\n"):  # no trailers from a connector
                break
            return bytes(body), rest[2:], True
        if len(rest) < size + 2:
            break
        body += rest[:size]
        data = rest[size + 2 :]
    return bytes(body), b"", False


@contextlib.contextmanager
def raw_origin(responder: Responder | None = None) -> Iterator[RawOrigin]:
    """A :class:`RawOrigin` closed at the end of the block."""
    origin = RawOrigin(responder)
    try:
        yield origin
    finally:
        origin.close()


# --- raw clients ----------------------------------------------------------------------------


def split_hostport(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) → (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def connect(address: str, timeout: float = 10.0) -> socket.socket:
    """A plain TCP connection to ``host:port``."""
    return socket.create_connection(split_hostport(address), timeout=timeout)


def read_until_closed(sock: socket.socket, timeout: float = 10.0, limit: int = 1 << 24) -> bytes:
    """Everything the peer sends until it closes (or ``timeout`` passes, or ``limit`` bytes)."""
    deadline = time.monotonic() + timeout
    out = bytearray()
    while len(out) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not data:
            break
        out += data
    return bytes(out)


def exchange(
    address: str, data: bytes, timeout: float = 10.0, *, half_close: bool = False
) -> bytes:
    """Send raw ``data`` to ``address`` and return all that comes back until the peer closes."""
    with connect(address, timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock, timeout)


def status_of(response: bytes) -> int:
    """The status code of the first response in raw bytes (0 when there is none)."""
    line = response.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[0].startswith(b"HTTP/") else 0


# --- process probes --------------------------------------------------------------------------


@dataclass
class ProcessProbe:
    """What a process holds, read from /proc: descriptors, sockets by state, memory."""

    pid: int

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def fds(self) -> int:
        """Open file descriptors."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss(self) -> int:
        """Resident memory in bytes."""
        return int(self.process.memory_info().rss)

    def tcp_states(self) -> dict[str, int]:
        """The process's TCP sockets counted by state (``CLOSE_WAIT``, ``ESTABLISHED``...)."""
        counts: dict[str, int] = {}
        for conn in self.process.net_connections(kind="tcp"):
            counts[conn.status] = counts.get(conn.status, 0) + 1
        return counts

    def close_wait(self) -> int:
        """Sockets whose peer closed and that this process never closed: leaks."""
        return self.tcp_states().get(psutil.CONN_CLOSE_WAIT, 0)

    def established_from(self, port: int) -> int:
        """Established sockets whose local port is ``port`` (connections to a listener)."""
        return sum(
            1
            for c in self.process.net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        )

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far."""
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def wait_until(
        self, predicate: Callable[[ProcessProbe], bool], timeout: float = 10.0, what: str = ""
    ) -> None:
        """Poll ``predicate(self)`` until true (bounded); fail with the socket states."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            time.sleep(0.05)
        raise AssertionError(
            f"pid {self.pid}: {what or predicate} not reached within {timeout}s: "
            f"fds={self.fds()} tcp={self.tcp_states()}"
        )


def probe(proc: Proc) -> ProcessProbe:
    """A probe of a harness process (the edge runs in the process the harness started)."""
    return ProcessProbe(proc.popen.pid)


def worker_pids(connector: Proc) -> list[int]:
    """The connector's worker processes (children of its supervisor)."""
    return [child.pid for child in psutil.Process(connector.popen.pid).children()]


# --- tenants and a steady load ---------------------------------------------------------------


@dataclass
class Tenant:
    """An account with one tunnel routed at ``hostname`` and a running connector."""

    account: Account
    tunnel: Tunnel
    connector: Proc
    hostname: str


def start_tenant(
    processes: Processes,
    edge: Edge,
    name: str,
    hostname: str,
    origin_url: str,
    *,
    extra: list[str] | None = None,
    rules: list[dict[str, object]] | None = None,
    wait: int = 1,
) -> Tenant:
    """Log a new account in, create and route a tunnel, run its connector."""
    home = processes.tmp / f"home-{name}"
    account = login(edge, home, name)
    tunnel = create_tunnel(account, name, hostname)
    config = write_config(
        processes.tmp / f"config-{name}.yml", hostname, rules or [{"service": origin_url}]
    )
    connector = start_connector(
        processes, tunnel, config, name=f"connector-{name}", extra=extra, wait=wait
    )
    return Tenant(account, tunnel, connector, hostname)


@dataclass
class Outcome:
    """One request of a :class:`SteadyLoad`: when it started, how long it took, its status."""

    started: float
    seconds: float
    status: int
    error: str = ""


class SteadyLoad:
    """Requests to one hostname at a fixed rate from a thread, each on a new connection.

    Used to show that another tenant's requests are answered throughout an attack: every
    outcome is kept, with its start time, so a test can look at any window.
    """

    def __init__(
        self, edge: Edge, host: str, rate: float = 20.0, path: str = "/", timeout: float = 10.0
    ) -> None:
        self.edge = edge
        self.host = host
        self.interval = 1.0 / rate
        self.path = path
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __enter__(self) -> SteadyLoad:
        self._threads.append(threading.Thread(target=self._run, daemon=True))
        self._threads[0].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def _run(self) -> None:
        # A request that takes longer than the interval must not hold the next one back: each
        # runs in its own thread, started on schedule (bounded by the load's duration).
        next_at = time.monotonic()
        while not self._stop.is_set():
            thread = threading.Thread(target=self._one, daemon=True)
            thread.start()
            self._threads.append(thread)
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _one(self) -> None:
        started = time.monotonic()
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n"
        ).encode()
        status, error = 0, ""
        try:
            status = status_of(exchange(self.edge.http, request, self.timeout))
        except OSError as exc:
            error = repr(exc)
        outcome = Outcome(started, time.monotonic() - started, status, error)
        with self._lock:
            self.outcomes.append(outcome)

    def between(self, start: float, end: float) -> list[Outcome]:
        """Outcomes of the requests started in ``[start, end)`` (monotonic seconds)."""
        with self._lock:
            return [o for o in self.outcomes if start <= o.started < end]

    def failures(self) -> list[Outcome]:
        """Every request that did not get a 200."""
        with self._lock:
            return [o for o in self.outcomes if o.status != 200]


def tmp_file(tmp: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``tmp/name`` and return the path."""
    path = tmp / name
    path.write_text(text)
    return path


# --- the unmodified cloudflared ----------------------------------------------------------------

#: A cloudflared binary built from its source (never committed); tests using it skip without.
CLOUDFLARED = os.environ.get("ADIT_CLOUDFLARED", "")
#: Set in the private network namespace that :func:`rerun_in_private_netns` makes.
INSIDE_NETNS = os.environ.get("ADIT_INTEROP_NAMESPACE") == "1"


def rerun_in_private_netns(nodeid: str, timeout: float = 300) -> None:
    """Run the test ``nodeid`` (``path::name``) again in a fresh network namespace.

    cloudflared looks up DNS records on the machine's resolver at start: in a namespace that
    holds only a loopback interface, edge, origins, cloudflared and client all live on
    127.0.0.1 and nothing leaves the machine. The inner run sees :data:`INSIDE_NETNS`.
    """
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a private network namespace")
    inner = f'ip link set lo up && exec "{sys.executable}" -m pytest -q -p no:cacheprovider'
    result = subprocess.run(
        ["unshare", "-n", "sh", "-c", f'{inner} "{nodeid}"'],
        env={**os.environ, "ADIT_INTEROP_NAMESPACE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout


def start_cloudflared(processes: Processes, tunnel: Tunnel, config: Path, edge: Edge) -> Proc:
    """The unmodified cloudflared serving ``tunnel`` through ``edge`` (HTTP/2 transport), with
    its metrics server (``/config``, ``/ready``) on an ephemeral port; waits for a
    registration."""
    proc = processes.start(
        "cloudflared",
        [
            CLOUDFLARED,
            "tunnel",
            "--no-autoupdate",
            "--config",
            str(config),
            "--edge",
            edge.tunnel[0],
            "--cacert",
            str(edge.ca),
            "--protocol",
            "http2",
            "--no-prechecks",
            "--metrics",
            "127.0.0.1:0",
            "--grace-period",
            "3s",
            "run",
            "--credentials-file",
            str(tunnel.credentials),
            tunnel.id,
        ],
    )
    proc.wait_for_log("Registered tunnel connection", timeout=30)
    return proc


def cloudflared_metrics(proc: Proc) -> str:
    """``host:port`` of a cloudflared's metrics server, from its log."""
    match = re.search(r"Starting metrics server on (\S+)/metrics", proc.text())
    assert match, proc.text()
    return match.group(1)
