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

from adit.credentials.tunnel_credentials import TunnelCredentials, load_credentials_file
from adit.protocol.errors import ProtocolError
from adit.protocol.http2 import (
    ConnectionTerminated,
    ConnectorTunnelConnection,
    DataReceived,
    RequestReceived,
)
from adit.protocol.registration import ClientInfo, ConnectionDetails, ConnectionOptions, TunnelAuth
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


class SequentialLoad:
    """``clients`` threads, each sending one request after another (a new connection each).

    Unlike :class:`SteadyLoad`, a client whose request hangs sends nothing more until it is
    answered or times out: the way browsers and API clients with a small pool behave, and the
    load under which one stuck connection can stall a whole tunnel.
    """

    def __init__(
        self, edge: Edge, host: str, clients: int = 4, path: str = "/", timeout: float = 20.0
    ) -> None:
        self.edge = edge
        self.host = host
        self.path = path
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> SequentialLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def _run(self) -> None:
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n"
        ).encode()
        while not self._stop.is_set():
            started = time.monotonic()
            status, error = 0, ""
            try:
                status = status_of(exchange(self.edge.http, request, self.timeout))
            except OSError as exc:
                error = repr(exc)
            outcome = Outcome(started, time.monotonic() - started, status, error)
            with self._lock:
                self.outcomes.append(outcome)

    def answered_between(self, start: float, end: float) -> list[Outcome]:
        """Requests answered 200 within ``[start, end)`` (by the time they ended)."""
        with self._lock:
            return [
                o for o in self.outcomes if o.status == 200 and start <= o.started + o.seconds < end
            ]


def tmp_file(tmp: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``tmp/name`` and return the path."""
    path = tmp / name
    path.write_text(text)
    return path


# --- a hostile connector ---------------------------------------------------------------------

#: The SNI connectors send to the tunnel listener (PROTOCOL.md §1.4).
TUNNEL_SNI = "h2.cftunnel.com"


@dataclass
class FloodResult:
    """What a :meth:`HostileConnector.flood` saw."""

    #: Frames written before the edge closed the connection or the time ran out.
    frames: int
    #: Seconds from the first frame until the edge closed the connection (or the flood ended).
    seconds: float
    #: The edge closed the connection (EOF, reset, or a write refused).
    closed: bool
    #: The error code of the GOAWAY the edge sent, when it was read.
    goaway_code: int | None


class HostileConnector:
    """A tenant's connector that registers as adit's does, then writes HTTP/2 frames by hand.

    The handshake and the registration use adit's own sans-IO connector side (the part that is
    not under attack); after that the test decides every byte that goes to the edge. Reading
    can be stopped (a peer that never reads what the edge owes it), and everything the edge
    sends while reading is fed to the sans-IO connector, so a GOAWAY and its code are seen.
    """

    def __init__(
        self, address: str, ca_pem: str, credentials: TunnelCredentials, conn_index: int = 0
    ) -> None:
        self.address = address
        self.ca_pem = ca_pem
        self.credentials = credentials
        self.conn_index = conn_index
        self.conn = ConnectorTunnelConnection()
        self.rpc = RegistrationClientSession()
        self.control_stream = 0
        self.registered: ConnectionDetails | None = None
        self.goaway_code: int | None = None
        self.closed = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._registration: asyncio.Future[object] | None = None

    @classmethod
    def for_tunnel(cls, edge: Edge, tunnel: Tunnel, conn_index: int = 0) -> HostileConnector:
        """A hostile connector holding ``tunnel``'s credentials, dialling ``edge``."""
        return cls(
            edge.tunnel[0],
            edge.ca.read_text(),
            load_credentials_file(tunnel.credentials),
            conn_index,
        )

    async def open(self, *, register: bool = True, timeout: float = 15.0) -> None:
        """TLS to the tunnel listener, the HTTP/2 handshake and (by default) registration."""
        context = ssl.create_default_context(cadata=self.ca_pem)
        host, port = split_hostport(self.address)
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=TUNNEL_SNI),
            timeout,
        )
        self._registration = asyncio.get_running_loop().create_future()
        self.conn.initiate()
        self._task = asyncio.ensure_future(self._read())
        await self.pump()
        if register:
            result = await asyncio.wait_for(self._registration, timeout)
            if not isinstance(result, ConnectionDetails):
                raise AssertionError(f"registration refused: {result!r}")
            self.registered = result

    async def pump(self) -> None:
        """Send what adit's connector side would send now (SETTINGS ACKs, RPC, PING ACKs)."""
        out = self.conn.data_to_send()
        if out and self._writer is not None:
            self._writer.write(out)
            await self._writer.drain()

    def stop_reading(self) -> None:
        """From now on read nothing: whatever the edge writes stays in the socket buffers."""
        self._reading.clear()

    async def send(self, data: bytes) -> None:
        """Write raw bytes (frames built with ``adit.protocol.http2_frames``)."""
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def flood(
        self, frames: Callable[[int], bytes], *, seconds: float, batch: int = 200
    ) -> FloodResult:
        """Write ``frames(n)`` for n = 0, 1, ... as fast as the edge takes them.

        Ends when the edge closes the connection or after ``seconds``; a write the edge does
        not take (it stopped reading) waits, bounded by the same deadline.
        """
        assert self._writer is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + seconds
        sent = 0
        closed = False
        while loop.time() < deadline and not self.closed.is_set():
            chunk = b"".join(frames(sent + i) for i in range(batch))
            try:
                self._writer.write(chunk)
                await asyncio.wait_for(self._writer.drain(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                break
            except (ConnectionError, ssl.SSLError, OSError):
                closed = True
                break
            sent += batch
        if not closed and not self.closed.is_set():
            # What the edge did during the last batch: give a close a moment to arrive.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), 0.5)
        closed = closed or self.closed.is_set() or self._writer.is_closing()
        return FloodResult(sent, loop.time() - start, closed, self.goaway_code)

    async def wait_closed(self, timeout: float) -> bool:
        """Whether the edge closed the connection within ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), timeout)
        return self.closed.is_set()

    async def close(self) -> None:
        """Close our side and stop the reader."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            while True:
                await self._reading.wait()
                data = await self._reader.read(65536)
                if not data:
                    break
                self._receive(data)
                if self.registered is None:
                    await self.pump()
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self.closed.set()

    def _receive(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            return
        for event in events:
            if isinstance(event, ConnectionTerminated):
                self.goaway_code = event.error_code
            elif isinstance(event, RequestReceived) and not self.control_stream:
                self._open_control(event.stream_id)
            elif isinstance(event, DataReceived) and event.stream_id == self.control_stream:
                self.conn.acknowledge(event.stream_id, event.flow_controlled_length)
                for answer in self.rpc.receive_data(event.data):
                    self._answered(answer)
                self._send_rpc()

    def _answered(self, answer: object) -> None:
        waiting = self._registration
        if waiting is None or waiting.done():
            return
        if isinstance(answer, RegistrationReturned):
            waiting.set_result(answer.result)
        elif isinstance(answer, RegistrationFailed):
            waiting.set_result(answer)

    def _open_control(self, stream_id: int) -> None:
        self.control_stream = stream_id
        self.conn.send_response(stream_id, 200, [("Content-Type", "application/octet-stream")])
        creds = self.credentials
        client = ClientInfo(
            client_id=uuid.uuid4(), features=(), version="hostile", arch="linux_amd64"
        )
        self.rpc.register(
            TunnelAuth(creds.account_tag, creds.tunnel_secret),
            creds.tunnel_id,
            self.conn_index,
            ConnectionOptions(client=client),
        )
        self._send_rpc()

    def _send_rpc(self) -> None:
        out = self.rpc.data_to_send()
        if out:
            self.conn.send_data(self.control_stream, out)
