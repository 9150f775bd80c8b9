"""Tools for tests that attack adit the way a hostile visitor, tenant or careless client would.

Everything here is real: a raw-socket origin that records exactly the bytes that reach it, raw
sockets to the edge's listeners, and probes that read a process's file descriptors, sockets
and memory from /proc (psutil). Shared by ``tests/adversarial/`` and other process tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from adit.credentials import load_credentials_file
from adit.protocol.http2 import ConnectorTunnelConnection, Event, RequestReceived
from adit.protocol.registration import ClientInfo, ConnectionOptions, TunnelAuth
from adit.protocol.rpc_client import RegistrationClientSession
from adit.protocol.rpc_events import RegistrationFailed, RegistrationReturned
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

#: Decides the answer from the bytes received so far on one connection: the bytes to send
#: (``b""`` to wait for more input), or ``None`` to keep the connection open and silent.
Responder = Callable[[bytes], bytes | None]


def head_complete(received: bytes) -> bool:
    """Whether ``received`` holds a whole request head (the body is not waited for)."""
    return b"\r\n\r\n" in received


def canned(response: bytes = OK_RESPONSE) -> Responder:
    """Answer ``response`` once a request head arrived (once per connection)."""

    def respond(received: bytes) -> bytes | None:
        return response if head_complete(received) else b""

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


# --- a connector scripted by the test ----------------------------------------------------------

#: Answers one eyeball request on a :class:`ScriptedConnector`: queue the answer on the sans-IO
#: connection (``send_response``...) and/or return raw bytes to write after what it queued.
Answer = Callable[[ConnectorTunnelConnection, RequestReceived], bytes]


def answer_ok(conn: ConnectorTunnelConnection, request: RequestReceived) -> bytes:
    """An honest connector's answer: 200 with a two-byte body."""
    conn.send_response(
        request.stream_id, 200, [("Content-Length", "2")], end_stream=True, body=b"ok"
    )
    return b""


class ScriptedConnector:
    """A tunnel connection to the edge made of adit's own sans-IO objects, run by a test.

    It registers honestly with a tunnel's credentials (the edge routes to it like to any
    connector), then answers every eyeball request with ``answer``: a hostile connector is a
    connector whose ``answer`` writes what no real one would. Its event loop runs in a thread;
    :attr:`closed` says whether the edge dropped the connection.
    """

    def __init__(self, edge: Edge, credentials: Path, answer: Answer = answer_ok) -> None:
        self.answer = answer
        self.requests: list[RequestReceived] = []
        self._creds = load_credentials_file(credentials)
        self._edge = edge
        self._conn = ConnectorTunnelConnection()
        self._rpc = RegistrationClientSession()
        self._control = 0
        self._registered = threading.Event()
        self._registration_ok = False
        self._closed = threading.Event()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ScriptedConnector:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._dial(), self._loop).result(10)
        if not self._registered.wait(10) or not self._registration_ok:
            raise AssertionError("the scripted connector could not register")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(TimeoutError):
                asyncio.run_coroutine_threadsafe(self._shut(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    async def _shut(self) -> None:
        if self._transport is not None and not self._closed.is_set():
            self._transport.abort()
            for _ in range(100):  # connection_lost comes a few loop turns later
                if self._closed.is_set():
                    break
                await asyncio.sleep(0.01)

    @property
    def closed(self) -> bool:
        """Whether the edge closed the connection."""
        return self._closed.is_set()

    async def _dial(self) -> None:
        context = ssl.create_default_context(cafile=str(self._edge.ca))
        host, port = split_hostport(self._edge.tunnel[0])
        transport, _ = await self._loop.create_connection(
            lambda: _ScriptedProtocol(self),
            host,
            port,
            ssl=context,
            server_hostname="h2.cftunnel.com",
        )
        self._transport = transport

    def _made(self, transport: asyncio.Transport) -> None:
        self._conn.initiate()
        transport.write(self._conn.data_to_send())

    def _received(self, data: bytes, transport: asyncio.Transport) -> None:
        raw = b""
        for event in self._conn.receive_data(data):
            raw += self._on_event(event)
        transport.write(self._conn.data_to_send() + raw)

    def _on_event(self, event: Event) -> bytes:
        if isinstance(event, RequestReceived) and not self._control:
            self._control = event.stream_id
            self._conn.send_response(event.stream_id, 200, [])
            client = ClientInfo(uuid.uuid4(), ("serialized_headers",), "scripted", "linux")
            auth = TunnelAuth(self._creds.account_tag, self._creds.tunnel_secret)
            self._rpc.register(auth, self._creds.tunnel_id, 0, ConnectionOptions(client=client))
            self._conn.send_data(self._control, self._rpc.data_to_send())
            return b""
        if isinstance(event, RequestReceived):
            self.requests.append(event)
            return self.answer(self._conn, event)
        if getattr(event, "stream_id", None) == self._control and self._control:
            data = getattr(event, "data", b"")
            if data:
                self._conn.acknowledge(self._control, len(data))
            for rpc_event in self._rpc.receive_data(data):
                if isinstance(rpc_event, RegistrationReturned | RegistrationFailed):
                    self._registration_ok = isinstance(rpc_event, RegistrationReturned)
                    self._registered.set()
            self._conn.send_data(self._control, self._rpc.data_to_send())
        return b""


class _ScriptedProtocol(asyncio.Protocol):
    def __init__(self, owner: ScriptedConnector) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.owner._made(transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.owner._received(data, self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._closed.set()
        self.owner._registered.set()


def tmp_file(tmp: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``tmp/name`` and return the path."""
    path = tmp / name
    path.write_text(text)
    return path
