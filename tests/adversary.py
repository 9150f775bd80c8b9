"""Tools for tests that attack adit the way a hostile visitor, tenant or careless client would.

Everything here is real: a raw-socket origin that records exactly the bytes that reach it, raw
sockets to the edge's listeners, and probes that read a process's file descriptors, sockets
and memory from /proc (psutil). Shared by ``tests/adversarial/`` and other process tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import psutil
import pytest

from adit.credentials.tunnel_credentials import TunnelCredentials, load_credentials_file
from adit.edge.tunnel_session import EdgeIdentity, TunnelSession
from adit.protocol.errors import ProtocolError
from adit.protocol.http2 import (
    ConnectionTerminated,
    ConnectorTunnelConnection,
    DataReceived,
    RequestReceived,
)
from adit.protocol.registration import (
    ClientInfo,
    ConnectionDetails,
    ConnectionOptions,
    RegistrationError,
    TunnelAuth,
)
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
#: The same response, asking the client not to reuse the connection (each request of a
#: connector then reaches the origin on a connection of its own).
CLOSE_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close"
    b"\r\n\r\nok"
)

#: Decides the answer from the bytes a connection received since its last answer (so a
#: keep-alive connection gets one answer per request): the bytes to send (``b""`` to wait for
#: more input), pieces to send one after the other (an iterable, taken lazily: a streamed
#: body, or a delay before the answer), or ``None`` to stay silent.
Responder = Callable[[bytes], bytes | Iterable[bytes] | None]


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
    """Answer ``response`` once ``when`` says enough of a request arrived (once per request):
    by default its head; :func:`request_complete` waits for the body as well."""

    def respond(received: bytes) -> bytes | None:
        return response if when(received) else b""

    return respond


def hang(received: bytes) -> bytes | Iterable[bytes] | None:
    """Never answer (an origin that hangs)."""
    return None


def streaming(total: int, piece: int = 64 * 1024) -> Responder:
    """Answer a body of ``total`` bytes under its Content-Length, sent piece by piece as the
    peer takes it (a large download: :attr:`OriginConnection.sent` shows how far it got)."""

    def pieces() -> Iterator[bytes]:
        yield b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        yield b"Content-Length: %d\r\n\r\n" % total
        block = b"x" * piece
        left = total
        while left > 0:
            yield block[: min(piece, left)]
            left -= piece

    def respond(received: bytes) -> bytes | Iterable[bytes]:
        return pieces() if head_complete(received) else b""

    return respond


def delayed(seconds: float, response: bytes = OK_RESPONSE) -> Responder:
    """Answer ``response`` ``seconds`` after the request head arrived (a slow origin)."""

    def later() -> Iterator[bytes]:
        time.sleep(seconds)
        yield response

    def respond(received: bytes) -> bytes | Iterable[bytes]:
        return later() if head_complete(received) else b""

    return respond


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
    def sent(self) -> int:
        """Bytes sent on every connection so far."""
        with self._lock:
            return sum(c.sent for c in self.connections)

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

    def _send(self, sock: socket.socket, record: OriginConnection, data: bytes) -> bool:
        """Send ``data`` as the peer takes it, counting what went; False once it is gone."""
        view = memoryview(data)
        while view:
            if self._stop.is_set():
                return False
            try:
                sent = sock.send(view)
            except TimeoutError:
                continue
            except OSError:
                return False
            view = view[sent:]
            with self._lock:
                record.sent += sent
        return True

    def _serve(self, sock: socket.socket, record: OriginConnection) -> None:
        sock.settimeout(0.2)
        answered = 0  # where the bytes after the last answer begin
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
                    received = bytes(record.received[answered:])
                answer = self.responder(received)
                if answer is None or answer == b"":
                    continue
                answered += len(received)
                for piece in [answer] if isinstance(answer, bytes) else answer:
                    if not self._send(sock, record, piece):
                        return
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


def connect(address: str, timeout: float = 10.0, *, source: str = "") -> socket.socket:
    """A plain TCP connection to ``host:port`` (from the local address ``source`` if given:
    any 127.x.y.z is a separate client address on loopback)."""
    return socket.create_connection(
        split_hostport(address), timeout=timeout, source_address=(source, 0) if source else None
    )


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes ``sock`` within ``timeout`` (whatever it sends first)."""
    read_until_closed(sock, timeout)
    return _at_end(sock)


def closing_times(
    socks: list[socket.socket], timeout: float, *, trickle: bytes = b"", every: float = 0.25
) -> list[float | None]:
    """Seconds until the peer closed each socket (``None``: still open after ``timeout``).

    With ``trickle``, each open socket sends those bytes every ``every`` seconds meanwhile
    (a slowloris client). What the peer sends before closing is read and dropped.
    """
    import select

    started = time.monotonic()
    closed: list[float | None] = [None] * len(socks)
    next_trickle = started
    while time.monotonic() - started < timeout:
        open_ones = [s for i, s in enumerate(socks) if closed[i] is None]
        if not open_ones:
            break
        now = time.monotonic()
        if trickle and now >= next_trickle:
            next_trickle = now + every
            for sock in open_ones:
                with contextlib.suppress(OSError):
                    sock.send(trickle)
        readable, _, _ = select.select(open_ones, [], [], 0.05)
        for sock in readable:
            try:
                sock.setblocking(False)
                data = sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                continue
            except OSError:
                data = b""
            if not data:
                closed[socks.index(sock)] = time.monotonic() - started
    return closed


def _at_end(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


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


def access_api(account: Account, method: str, path: str, body: object = None) -> Any:
    """An Access API call of the account (``/accounts/{tag}/access/PATH``); its result, or a
    failed assertion with the answer."""
    status, raw = api_call(
        account,
        method,
        f"/client/v4/accounts/{account.tag}/access/{path}",
        None if body is None else json.dumps(body).encode(),
    )
    answer = json.loads(raw)
    assert status == 200, (status, answer)
    return answer["result"]


def api_call(
    account: Account,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    timeout: float = 15.0,
) -> tuple[int, bytes]:
    """One raw HTTPS request to the edge's management API with ``account``'s bearer token:
    ``(status, body)``. The edge's CA is trusted; its name is not checked (the API certificate
    names ``localhost`` and the test dials 127.0.0.1)."""
    context = ssl.create_default_context(cafile=str(account.edge.ca))
    context.check_hostname = False
    url = urlsplit(account.edge.api_url)
    conn = http.client.HTTPSConnection(
        url.hostname or "127.0.0.1", url.port, context=context, timeout=timeout
    )
    headers = {"Authorization": f"Bearer {account.token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def status_of(response: bytes) -> int:
    """The status code of the first response in raw bytes (0 when there is none)."""
    line = response.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[0].startswith(b"HTTP/") else 0


# --- a scripted connector ------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What a :class:`ScriptedConnector` answers one stream with, sent as given: header names
    and values are not checked (a hostile or broken connector is the point)."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: End the stream after the body (else it stays open until the edge resets it).
    end: bool = True


#: The answer for a request, from its path.
Script = Callable[[str], Answer]


class _Ingress:
    """Stands in for the ingress rules: every stream goes to the script."""

    def find_matching_rule(self, host: str, path: str) -> None:
        return None


class _ScriptedServer:
    """The connector's stream server: answers each stream from the script."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.resets = 0

    async def serve_private(self, stream: Any, options: object) -> None:
        await self.serve(stream, options)

    async def serve(self, stream: Any, rule: object) -> None:
        from adit.tunnelio import StreamClosedError

        answer = self.script(stream.request.path)
        try:
            await stream.send_response(
                answer.status, answer.headers, end_stream=answer.end, body=answer.body
            )
            if not answer.end:
                while await stream.read():
                    pass
        except StreamClosedError:
            self.resets += 1


class ScriptedConnector:
    """A connector that registers with a tunnel's real credentials (adit's own connection
    code) and answers every stream exactly as its script says, on an event loop in a thread:
    a tenant whose connector is broken or hostile."""

    def __init__(self, edge: Edge, tunnel: Tunnel, script: Script) -> None:
        self.server = _ScriptedServer(script)
        self._edge = edge
        self._credentials = json.loads(tunnel.credentials.read_text())
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._connection: Any = None

    def __enter__(self) -> ScriptedConnector:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._connect(), self._loop).result(20)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _close(self) -> None:
        connection = self._connection
        if connection is not None:
            connection.close("test over")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(connection.lost), 5)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _connect(self) -> None:
        import base64

        from adit.protocol.registration import ClientInfo, ConnectionOptions, TunnelAuth
        from adit.workers.edge_connection import EdgeConnection, Registration
        from adit.workers.runtime import EDGE_SNI, FEATURES

        creds = self._credentials
        registration = Registration(
            auth=TunnelAuth(creds["AccountTag"], base64.b64decode(creds["TunnelSecret"])),
            tunnel_id=uuid.UUID(creds["TunnelID"]),
            conn_index=0,
            options=ConnectionOptions(
                client=ClientInfo(
                    client_id=uuid.uuid4(), features=FEATURES, version="scripted", arch="test"
                )
            ),
        )
        context = ssl.create_default_context(cafile=str(self._edge.ca))
        host, port = split_hostport(self._edge.tunnel[0])
        _, connection = await self._loop.create_connection(
            lambda: EdgeConnection(registration, self.server, cast(Any, _Ingress)),
            host,
            port,
            ssl=context,
            server_hostname=EDGE_SNI,
        )
        self._connection = connection
        await asyncio.wait_for(connection.registered, 10)


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

    def fd_kinds(self) -> dict[str, int]:
        """The process's descriptors counted by kind (``socket``, ``pipe``,
        ``anon_inode:[eventfd]``, a file's path...), for a failure to say what was left."""
        counts: dict[str, int] = {}
        folder = f"/proc/{self.pid}/fd"
        for fd in os.listdir(folder):
            try:
                target = os.readlink(f"{folder}/{fd}")
            except OSError:
                continue  # closed meanwhile
            kind = target.split(":[", 1)[0] if target.startswith(("socket:", "pipe:")) else target
            counts[kind] = counts.get(kind, 0) + 1
        return counts

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
            f"fds={self.fds()} {self.fd_kinds()} tcp={self.tcp_states()}"
        )


def probe(proc: Proc) -> ProcessProbe:
    """A probe of a harness process (the edge runs in the process the harness started)."""
    return ProcessProbe(proc.popen.pid)


def worker_pids(connector: Proc) -> list[int]:
    """The connector's worker processes (children of its supervisor)."""
    return [child.pid for child in psutil.Process(connector.popen.pid).children()]


def wait_for_worker_channels(connector: Proc, timeout: float = 20.0) -> None:
    """Until the connector's supervisor has heard of its registered connections.

    A worker opens its ZeroMQ channel to the supervisor only once its first connection has
    registered (``adit.workers.process``): a test that reads the worker's descriptors right
    after the first request through it may read them before the channel's sockets, eventfds
    and epolls exist. The supervisor learns of registrations only over that channel, so a
    ``/ready`` that counts one means the channel is up."""
    address = cloudflared_metrics(connector)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if int(metrics_json(address, "/ready", timeout=2).get("readyConnections", 0)) >= 1:
                return
        time.sleep(0.05)
    raise AssertionError(f"{connector.name}: the supervisor heard of no registration in {timeout}s")


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
    env: dict[str, str] | None = None,
) -> Tenant:
    """Log a new account in, create and route a tunnel, run its connector (``env``: added to
    the connector's environment)."""
    home = processes.tmp / f"home-{name}"
    account = login(edge, home, name)
    tunnel = create_tunnel(account, name, hostname)
    config = write_config(
        processes.tmp / f"config-{name}.yml", hostname, rules or [{"service": origin_url}]
    )
    connector = start_connector(
        processes, tunnel, config, name=f"connector-{name}", extra=extra, wait=wait, env=env
    )
    return Tenant(account, tunnel, connector, hostname)


@dataclass
class Outcome:
    """One request of a :class:`SteadyLoad`: when it started, how long it took, its status."""

    started: float
    seconds: float
    status: int
    error: str = ""


class _Load:
    """Requests to one hostname, each on a new connection, from threads; every outcome kept
    with its start time, so a test can look at any window."""

    def __init__(self, edge: Edge, host: str, path: str, timeout: float) -> None:
        self.edge = edge
        self.host = host
        self.path = path
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ).encode()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _start(self, *targets: Callable[[], None]) -> None:
        for target in targets:
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def _one(self) -> None:
        """One request; its outcome is recorded."""
        started = time.monotonic()
        status, error = 0, ""
        try:
            status = status_of(exchange(self.edge.http, self._request, self.timeout))
        except OSError as exc:
            error = repr(exc)
        outcome = Outcome(started, time.monotonic() - started, status, error)
        with self._lock:
            self.outcomes.append(outcome)

    def between(self, start: float, end: float) -> list[Outcome]:
        """Outcomes of the requests started in ``[start, end)`` (monotonic seconds)."""
        with self._lock:
            return [o for o in self.outcomes if start <= o.started < end]

    def answered_between(self, start: float, end: float) -> list[Outcome]:
        """Requests answered 200 within ``[start, end)`` (by the time they ended)."""
        with self._lock:
            return [
                o for o in self.outcomes if o.status == 200 and start <= o.started + o.seconds < end
            ]

    def failures(self) -> list[Outcome]:
        """Every request that did not get a 200."""
        with self._lock:
            return [o for o in self.outcomes if o.status != 200]


class SteadyLoad(_Load):
    """Requests at a fixed rate, each started on schedule in a thread of its own.

    Used to show that another tenant's requests are answered throughout an attack.
    """

    def __init__(
        self, edge: Edge, host: str, rate: float = 20.0, path: str = "/", timeout: float = 10.0
    ) -> None:
        super().__init__(edge, host, path, timeout)
        self.interval = 1.0 / rate

    def __enter__(self) -> SteadyLoad:
        self._start(self._run)
        return self

    def _run(self) -> None:
        # A request that takes longer than the interval must not hold the next one back: each
        # runs in its own thread, started on schedule (bounded by the load's duration).
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._start(self._one)
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))


class SequentialLoad(_Load):
    """``clients`` threads, each sending one request after another.

    Unlike :class:`SteadyLoad`, a client whose request hangs sends nothing more until it is
    answered or times out: the way browsers and API clients with a small pool behave, and the
    load under which one stuck connection can stall a whole tunnel.
    """

    def __init__(
        self, edge: Edge, host: str, clients: int = 4, path: str = "/", timeout: float = 20.0
    ) -> None:
        super().__init__(edge, host, path, timeout)
        self.clients = clients

    def __enter__(self) -> SequentialLoad:
        self._start(*(self._run for _ in range(self.clients)))
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._one()


def tmp_file(tmp: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``tmp/name`` and return the path."""
    path = tmp / name
    path.write_text(text)
    return path


# --- systemd's side of sd_notify ---------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """One sd_notify datagram: when it arrived, which process sent it, what it said."""

    at: float
    pid: int
    state: str


class NotifySocket:
    """A real unix datagram socket given to a process as ``NOTIFY_SOCKET``.

    Like systemd it asks the kernel for each sender's credentials (``SO_PASSCRED``), so a test
    can tell which process sent a state (``NotifyAccess=main`` accepts the main process only).
    """

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
        self._dir = tempfile.TemporaryDirectory(prefix="adit-n-")
        self.path = str(Path(self._dir.name) / "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)
        self.received: list[Notification] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        space = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._stop.is_set():
            try:
                data, ancillary, _flags, _addr = self._sock.recvmsg(4096, space)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[: struct.calcsize("3i")])[0]
            with self._lock:
                self.received.append(Notification(time.monotonic(), pid, data.decode()))

    @property
    def messages(self) -> list[tuple[float, str]]:
        """``(arrival, state)`` of every datagram so far."""
        with self._lock:
            return [(n.at, n.state) for n in self.received]

    def states(self) -> list[str]:
        """Every state string so far, in order."""
        with self._lock:
            return [n.state for n in self.received]

    def wait_for(self, predicate: str, timeout: float = 15.0, start: int = 0) -> int:
        """Index of the first message from ``start`` on that starts with ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, message in enumerate(self.states()[start:], start):
                if message.startswith(predicate):
                    return index
            time.sleep(0.02)
        raise AssertionError(f"no {predicate!r} from sd_notify; got {self.states()[start:]}")

    def close(self) -> None:
        """Stop reading and remove the socket."""
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
        self._dir.cleanup()


@contextlib.contextmanager
def notify_socket() -> Iterator[NotifySocket]:
    """A :class:`NotifySocket`, closed on exit."""
    sock = NotifySocket()
    try:
        yield sock
    finally:
        sock.close()


# --- an edge the test can speak for ----------------------------------------------------------

_T = TypeVar("_T")


@dataclass
class EdgeAnswer:
    """What a connector answered to a request the in-process edge sent."""

    status: int
    headers: list[tuple[str, str]]


class InProcessEdge:
    """adit's own tunnel listener (``TunnelSession``, store, CA) in a thread of the test.

    For connector tests that need to send what a visitor cannot: a request stream with headers
    only the edge may set (``Cf-Access-Jwt-Assertion`` once Access has authenticated the
    visitor, say), or registration answers the real edge gives rarely (:attr:`refusals`). The
    tunnel side is the real edge code; there is no public listener, the test opens streams
    itself with :meth:`request`. :meth:`credentials` writes a credentials
    file (with this edge's address and CA) for ``adit tunnel run --credentials-file``.
    """

    def __init__(self, state_dir: Path) -> None:
        # Everything the loop's thread runs is imported here, in the test's thread: CPython
        # 3.11's compiler keeps per-interpreter state that two threads compiling modules at
        # once corrupt ("AST constructor recursion depth mismatch" later, anywhere).
        from adit.edge.ca import EdgeCA
        from adit.edge.registry import ConnectionRegistry
        from adit.edge.store import Store

        state_dir.mkdir(parents=True, exist_ok=True)
        self.ca = EdgeCA.load_or_create(state_dir)
        self.ca_path = state_dir / "ca.pem"
        self.ca_path.write_text(self.ca.cert_pem)
        self.store = Store.open_in(state_dir)
        self.registry = ConnectionRegistry()
        self._sessions: list[TunnelSession] = []
        #: Answers to the next registrations, before any is accepted (a refusing edge).
        self.refusals: list[RegistrationError] = []
        #: When each registration was asked for (monotonic seconds).
        self.attempts: list[float] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server = self._run(self._listen())
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        self.tunnel_id = uuid.UUID(int=0)

    def _run(self, coroutine: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _listen(self) -> asyncio.Server:
        identity = EdgeIdentity(location="inproc")
        edge = self

        class Session(TunnelSession):
            """The edge's own session; answers the queued :attr:`refusals` first."""

            def _register(self, *args: Any, **kwargs: Any) -> Any:
                edge.attempts.append(time.monotonic())
                if edge.refusals:
                    return edge.refusals.pop(0)
                return super()._register(*args, **kwargs)

        def session() -> TunnelSession:
            made = Session(self.store, self.registry, identity)
            self._sessions.append(made)
            return made

        return await self.loop.create_server(
            session, "127.0.0.1", 0, ssl=self.ca.tunnel_server_context()
        )

    def credentials(self, path: Path, name: str = "inproc") -> Path:
        """Create an account and a tunnel; write its credentials file to ``path``."""
        from adit.credentials import TunnelCredentials, write_credentials_file

        account = self.store.create_account(name)
        tunnel = self.store.create_tunnel(account.tag, name)
        self.tunnel_id = tunnel.id
        creds = TunnelCredentials(
            account.tag,
            tunnel.secret,
            tunnel.id,
            edge=(self.address,),
            edge_ca_pem=self.ca.cert_pem,
        )
        write_credentials_file(path, creds)
        return path

    def wait_registered(self, timeout: float = 20.0) -> None:
        """Until the tunnel has a live connection."""
        deadline = time.monotonic() + timeout
        while self._run(self._pick()) is None:
            assert time.monotonic() < deadline, "no connection registered at the in-process edge"
            time.sleep(0.05)

    async def _pick(self) -> object:
        return self.registry.pick(self.tunnel_id)

    def request(
        self, host: str, path: str = "/", headers: list[tuple[str, str]] | None = None
    ) -> EdgeAnswer:
        """A GET for ``host`` through the tunnel, ``headers`` exactly as given."""
        return self._run(self._request(host, path, headers or []))

    async def _request(self, host: str, path: str, headers: list[tuple[str, str]]) -> EdgeAnswer:
        from adit.protocol.headers import RequestType

        live = self.registry.pick(self.tunnel_id)
        assert live is not None, "no live connection"
        stream = live.handle.open_request(  # type: ignore[attr-defined]
            "GET", path, host, headers, request_type=RequestType.HTTP, end_stream=True
        )
        try:
            answer = await stream.response()
            return EdgeAnswer(answer.status, list(answer.headers))
        finally:
            live.handle.finished(stream)  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close the listener and every tunnel connection, stop the loop."""

        async def stop() -> None:
            self._server.close()
            for session in self._sessions:
                session.close("test over")
                if session.transport is not None:
                    session.transport.abort()
            await self._server.wait_closed()
            await asyncio.sleep(0)  # the aborted transports' connection_lost

        self._run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
        self.store.close()


# --- an HTTPS JSON endpoint (a JWKS) -----------------------------------------------------------


class JsonOverHttps:
    """An HTTPS server on 127.0.0.1 answering every GET with ``document`` as JSON.

    ``document = None`` answers 503 (an endpoint that is down). Every GET's path is kept in
    ``fetches``, with its time.
    """

    def __init__(self, context: object, document: object = None) -> None:
        import http.server
        import json
        import ssl

        assert isinstance(context, ssl.SSLContext)
        self.document = document
        self.fetches: list[tuple[float, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches.append((time.monotonic(), self.path))
                if owner.document is None:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# --- the unmodified cloudflared ----------------------------------------------------------------

#: A cloudflared binary built from its source (never committed); tests using it skip without.
CLOUDFLARED = os.environ.get("ADIT_CLOUDFLARED", "")
#: Set in the private network namespace that :func:`rerun_in_private_netns` makes.
INSIDE_NETNS = os.environ.get("ADIT_INTEROP_NAMESPACE") == "1"


def rerun_in_private_netns(
    nodeid: str,
    timeout: float = 300,
    needs: tuple[str, ...] = ("unshare",),
    *,
    resolver: bool = False,
) -> None:
    """Run the test ``nodeid`` (``path::name``) again in a fresh network namespace.

    cloudflared looks up DNS records on the machine's resolver at start: in a namespace that
    holds only a loopback interface, edge, origins, cloudflared and client all live on
    127.0.0.1 and nothing leaves the machine. The inner run sees :data:`INSIDE_NETNS`. The
    test is skipped without root or one of the commands it ``needs``. With ``resolver``, the
    namespace's ``/etc/resolv.conf`` (in a mount namespace of its own) names 127.0.0.1, where
    the test serves the DNS records it needs (``dns_records.serving``).
    """
    if INSIDE_NETNS:
        pytest.skip("already inside the namespace")
    if any(shutil.which(command) is None for command in needs) or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(needs)} for a private network namespace")
    inner = f'ip link set lo up && exec "{sys.executable}" -m pytest -q -p no:cacheprovider'
    command = ["unshare", "-n"]
    if resolver:
        conf = Path(tempfile.mkdtemp(prefix="adit-resolv-")) / "resolv.conf"
        conf.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        inner = f'mount --bind "{conf}" /etc/resolv.conf && {inner}'
        command.append("-m")
    result = subprocess.run(
        [*command, "sh", "-c", f'{inner} "{nodeid}"'],
        env={**os.environ, "ADIT_INTEROP_NAMESPACE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout


def start_cloudflared(
    processes: Processes,
    tunnel: Tunnel,
    config: Path,
    edge: Edge,
    *,
    protocol: str | None = "http2",
    edges: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    name: str = "cloudflared",
    wait: float | None = 30,
    token: str | None = None,
) -> Proc:
    """The unmodified cloudflared serving ``tunnel`` through ``edge`` (``protocol``: its
    ``--protocol``; None leaves cloudflared's default, ``auto``), at ``edges`` (``--edge``
    values; default the edge's first tunnel address), ``token`` instead of the credentials
    file, with its metrics server (``/config``,
    ``/ready``) on an ephemeral port; waits ``wait`` seconds for a registration."""
    proc = processes.start(
        name,
        [
            CLOUDFLARED,
            "tunnel",
            "--no-autoupdate",
            "--config",
            str(config),
            *[flag for address in edges or edge.tunnel[:1] for flag in ("--edge", address)],
            "--cacert",
            str(edge.ca),
            *(["--protocol", protocol] if protocol else []),
            "--no-prechecks",
            "--metrics",
            "127.0.0.1:0",
            "--grace-period",
            "3s",
            *extra,
            "run",
            *(
                ["--token", token]
                if token
                else ["--credentials-file", str(tunnel.credentials), tunnel.id]
            ),
        ],
    )
    if wait is not None:
        proc.wait_for_log("Registered tunnel connection", timeout=wait)
    return proc


def metrics_json(address: str, path: str, timeout: float = 10.0) -> Any:
    """The JSON a metrics server (``host:port``) answers at ``path`` (``/ready``, ``/config``)."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def cloudflared_metrics(proc: Proc) -> str:
    """``host:port`` of a cloudflared's metrics server, from its log."""
    match = re.search(r"Starting metrics server on (\S+)/metrics", proc.text())
    assert match, proc.text()
    return match.group(1)


# --- a hostile connector ---------------------------------------------------------------------

#: The SNI connectors send to the tunnel listener (PROTOCOL.md §1.4).
TUNNEL_SNI = "h2.cftunnel.com"


#: Answers one eyeball request on a :class:`HostileConnector`: queue the answer on the sans-IO
#: connection (``send_response``...) and/or return raw bytes to write after what it queued.
HostileAnswer = Callable[[ConnectorTunnelConnection, RequestReceived], bytes]


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
        self,
        address: str,
        ca_pem: str,
        credentials: TunnelCredentials,
        conn_index: int = 0,
        answer: HostileAnswer | None = None,
    ) -> None:
        self.address = address
        #: Answers each eyeball request (none: requests go unanswered).
        self.answer = answer
        #: The eyeball requests the edge opened on this connection, in order.
        self.requests: list[RequestReceived] = []
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
    def for_tunnel(
        cls,
        edge: Edge,
        tunnel: Tunnel,
        conn_index: int = 0,
        answer: HostileAnswer | None = None,
    ) -> HostileConnector:
        """A hostile connector holding ``tunnel``'s credentials, dialling ``edge``."""
        return cls(
            edge.tunnel[0],
            edge.ca.read_text(),
            load_credentials_file(tunnel.credentials),
            conn_index,
            answer,
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
                if self.registered is None or self.answer is not None:
                    # Registering, or answering requests: acknowledge what an honest
                    # connector would (SETTINGS, the edge's PINGs, window updates).
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
            elif isinstance(event, RequestReceived):
                self.requests.append(event)
                if self.answer is not None:
                    raw = self.answer(self.conn, event)
                    self._write_now(self.conn.data_to_send() + raw)
            elif isinstance(event, DataReceived) and event.stream_id == self.control_stream:
                self.conn.acknowledge(event.stream_id, event.flow_controlled_length)
                for answer in self.rpc.receive_data(event.data):
                    self._answered(answer)
                self._send_rpc()

    def _write_now(self, data: bytes) -> None:
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

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
