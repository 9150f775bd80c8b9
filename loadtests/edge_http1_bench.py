"""CPU cost of the edge's eyeball HTTP/1.1 side alone: parse, answer, serialise, socket I/O.

Serves ``adit.edge.http1.Http1Connection`` on loopback with a stub handler that does what the
public listener does with a request's head and a 1 KiB, 8-header response (no tunnel), and
drives keep-alive GETs from a client in another process. The figure is this process's CPU
time per request, so it holds up on a busy machine better than requests/s. Usage:
``python loadtests/edge_http1_bench.py [--requests N] [--depth D] [--rounds R]``
(``--depth`` > 1 pipelines D requests per write).

``--tunnel`` measures the whole public path instead, in one process and without sockets:
``PublicListener`` (route, pick, forwarded headers) → ``TunnelSession`` (HTTP/2, serialised
headers) → a sans-IO connector that answers every stream with the same 1 KiB response →
back to the eyeball's ``Http1Connection``. ``--concurrency C`` eyeballs each send a request
before the connector answers them all in one read (as under load). The connector's own CPU is
measured apart and left out: the figure is the edge's Python per request, no syscalls, no TLS.

``--tunnel --access`` compares that path with the same path through Access: a hostname an
application guards, with an allow policy, and requests that carry a valid ``CF_Authorization``
cookie. The two alternate round by round in one process, so a busy machine slows both alike;
the figure of interest is the ratio (issue 18's goal: at most 1.10). ``--tunnel
--access-parts`` takes that cost apart: five variants of the path, each adding one piece (the
cookie, the guarded hostname, the admission's headers, the real gate), alternated likewise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import sys
import time
import uuid
from typing import Any

import uvloop

from adit.edge.access.decisions import DecisionLog
from adit.edge.access.gate import AccessGate
from adit.edge.http1 import BadRequest, Http1Connection, Request
from adit.edge.public import PublicListener
from adit.edge.registry import ConnectionRegistry, LiveConnection
from adit.edge.store import Store
from adit.edge.tunnel_session import EdgeIdentity, TunnelSession
from adit.protocol.http2 import ConnectorTunnelConnection, RequestReceived

_BODY = b"x" * 1024
_HEADERS = [
    ("Server", "nginx/1.22.1"),
    ("Date", "Wed, 25 Nov 2026 23:00:00 GMT"),
    ("Content-Type", "application/octet-stream"),
    ("Content-Length", "1024"),
    ("Last-Modified", "Wed, 25 Nov 2026 20:00:00 GMT"),
    ("ETag", '"6565f0c0-400"'),
    ("Accept-Ranges", "bytes"),
    ("Cf-Ray", "0123456789abcdef-LHR"),
]

# The client: blocking socket, D requests per write, reads D responses by Content-Length.
_CLIENT = r"""
import socket, sys
port, n, depth = (int(a) for a in sys.argv[1:4])
req = (b"GET /file-1k HTTP/1.1\r\nHost: bench.localhost\r\nUser-Agent: bench/1.0\r\n"
       b"Accept: */*\r\nAccept-Encoding: gzip\r\n\r\n")
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf, done = b"", 0
while done < n:
    k = min(depth, n - done)
    s.sendall(req * k)
    got = 0
    while got < k:
        i = buf.find(b"\r\n\r\n")
        if i >= 0:
            length = int(buf[:i].lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(buf) >= i + 4 + length:
                assert buf.startswith(b"HTTP/1.1 200 "), buf[:40]
                buf, got = buf[i + 4 + length:], got + 1
                continue
        data = s.recv(1 << 16)
        assert data, "closed"
        buf += data
    done += k
s.close()
"""


async def _handle(conn: Http1Connection, request: Request) -> bool:
    # What the public listener does with a head before the tunnel: headers as latin-1 text.
    _ = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers]
    await conn.start_response(200, _HEADERS, flush=False)
    await conn.send_body(_BODY, flush=False)
    await conn.end_response()
    return True


async def _bad_request(conn: Http1Connection, exc: BadRequest) -> None:
    raise exc


async def _drive(port: int, requests: int, depth: int) -> None:
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLIENT, str(port), str(requests), str(depth)
    )
    if await client.wait() != 0:
        raise RuntimeError("the client failed")


async def _run(requests: int, depth: int, rounds: int) -> list[float]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Http1Connection(_handle, _bad_request), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    await _drive(port, 300, depth)  # warm-up
    figures = []
    for _ in range(rounds):
        start = time.process_time()
        await _drive(port, requests, depth)
        figures.append((time.process_time() - start) / requests * 1e6)
    server.close()
    return figures


class _Transport:
    """Stands in for a socket: keeps what is written."""

    def __init__(self) -> None:
        self.out: list[bytes | memoryview] = []
        self.closing = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | memoryview) -> None:
        self.out.append(data)

    def writelines(self, parts: list[bytes | memoryview]) -> None:
        self.out.extend(parts)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


_REQUEST = (
    b"GET /file-1k HTTP/1.1\r\nHost: bench.localhost\r\nUser-Agent: bench/1.0\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip\r\n\r\n"
)
_ACCESS_HOST = "app.bench.test"


class _TunnelPath:
    """The edge's public path wired to an in-process connector (see the module docstring)."""

    def __init__(self, concurrency: int, access: bool = False) -> None:
        store = Store(":memory:")
        account = store.create_account("bench")
        tunnel = store.create_tunnel(account.tag, "bench")
        store.route_quick_tunnel(account.tag, tunnel.id, "bench")  # bench.localhost
        registry = ConnectionRegistry()
        gate = None
        self.request = _REQUEST
        if access:
            gate, self.request = _guarded(store, account.tag, tunnel.id)
        self.listener = PublicListener(
            store, registry, location="bench", scheme="https", access=gate
        )
        self.session = TunnelSession(store, registry, EdgeIdentity("bench"))
        self.session.live = LiveConnection(
            tunnel_id=tunnel.id,
            account_tag=account.tag,
            connection_id=uuid.uuid4(),
            client_id=uuid.uuid4(),
            conn_index=0,
            location="bench",
            origin_ip="127.0.0.1",
            opened_at=datetime.datetime.now(datetime.UTC),
            client_version="bench",
            arch="bench",
            features=(),
            handle=self.session,
        )
        registry.add(self.session.live)
        self.session.serialize_headers = True
        self.tunnel = _Transport()
        self.session.connection_made(self.tunnel)  # type: ignore[arg-type]
        self.connector = ConnectorTunnelConnection()
        self.connector.initiate()
        self.connector_cpu = 0.0
        self.eyeballs = []
        for _ in range(concurrency):
            transport = _Transport()
            conn = self.listener.protocol()
            conn.connection_made(transport)  # type: ignore[arg-type]
            self.eyeballs.append((conn, transport))

    def answer(self) -> bytes:
        """The connector's turn: answer every request the edge sent (timed apart)."""
        start = time.thread_time()
        connector = self.connector
        for event in connector.receive_data(self.tunnel.take()):
            if isinstance(event, RequestReceived) and event.request_type.value == "http":
                connector.send_response(event.stream_id, 200, _HEADERS)
                connector.send_data(event.stream_id, _BODY, end_stream=True)
        out = connector.data_to_send()
        self.connector_cpu += time.thread_time() - start
        return out

    async def settle(self) -> None:
        """Let the edge's tasks and callbacks run until nothing is left to do."""
        for _ in range(8):
            await asyncio.sleep(0)

    async def round(self) -> None:
        """One request on every eyeball connection, answered together."""
        request = self.request
        for conn, _ in self.eyeballs:
            conn.data_received(request)
        await self.settle()
        self.session.data_received(self.answer())
        await self.settle()
        for _, transport in self.eyeballs:
            response = transport.take()
            if not response.startswith(b"HTTP/1.1 200 ") or not response.endswith(_BODY):
                raise RuntimeError(f"unexpected response {response[:80]!r}")


def _guarded(store: Store, account: str, tunnel_id: uuid.UUID) -> tuple[AccessGate, bytes]:
    """An application on :data:`_ACCESS_HOST` (routed to the tunnel) with an allow policy,
    its gate, and a request carrying a session cookie the gate admits."""
    store.add_zone(account, "bench.test")
    store.route_hostname(account, tunnel_id, _ACCESS_HOST)
    app = store.access.create_app(account, {"name": "Bench", "domain": _ACCESS_HOST})
    store.access.create_policy(
        account,
        app.id,
        {"name": "staff", "decision": "allow", "include": [{"email_domain": {"domain": "a.test"}}]},
    )
    gate = AccessGate(store.access, DecisionLog(store.access.db))
    token = gate.mint_session(app, email="ann@a.test", sub="ann")
    request = (
        f"GET /file-1k HTTP/1.1\r\nHost: {_ACCESS_HOST}\r\nUser-Agent: bench/1.0\r\n"
        f"Accept: */*\r\nAccept-Encoding: gzip\r\nCookie: CF_Authorization={token}\r\n\r\n"
    ).encode()
    return gate, request


async def _ready(concurrency: int, access: bool) -> _TunnelPath:
    path = _TunnelPath(concurrency, access)
    await path.settle()
    path.session.data_received(path.answer())  # SETTINGS both ways
    for _ in range(300 // concurrency + 1):
        await path.round()  # warm-up
    return path


async def _measure(path: _TunnelPath, per_round: int, concurrency: int) -> float:
    path.connector_cpu = 0.0
    start = time.process_time()
    for _ in range(per_round):
        await path.round()
    spent = time.process_time() - start - path.connector_cpu
    return spent / (per_round * concurrency) * 1e6


async def _run_tunnel(requests: int, concurrency: int, rounds: int) -> list[float]:
    path = await _ready(concurrency, access=False)
    per_round = max(1, requests // concurrency)
    return [await _measure(path, per_round, concurrency) for _ in range(rounds)]


async def _run_access(
    requests: int, concurrency: int, rounds: int
) -> tuple[list[float], list[float]]:
    """Rounds of the plain path and of the Access path, alternated."""
    plain = await _ready(concurrency, access=False)
    guarded = await _ready(concurrency, access=True)
    per_round = max(1, requests // concurrency)
    without, with_access = [], []
    for _ in range(rounds):
        without.append(await _measure(plain, per_round, concurrency))
        with_access.append(await _measure(guarded, per_round, concurrency))
    return without, with_access


#: ``--access-parts``: Access's cost taken apart, each variant of the path adding one piece.
_PARTS = ("plain", "plain+cookie", "guarded", "admission", "access")


async def _part(kind: str, concurrency: int) -> _TunnelPath:
    """One variant: ``plain``; ``plain+cookie`` (the plain hostname, with the Access path's
    ~900-byte cookie); ``guarded`` (the Access hostname, the gate answering "no application");
    ``admission`` (the gate answering the session's admission at once: its headers added);
    ``access`` (the real gate)."""
    path = _TunnelPath(concurrency, access=kind != "plain")
    gate = path.listener.access
    if kind == "plain+cookie":
        cookie = path.request.split(b"\r\nCookie: ", 1)[1].split(b"\r\n", 1)[0]
        path.listener.access = None
        path.request = _REQUEST[:-2] + b"Cookie: " + cookie + b"\r\n\r\n"
    elif kind in ("guarded", "admission") and gate is not None:
        real = gate.check
        kept: list[object] = []

        def stub(*args: Any, **kwargs: Any) -> Any:
            if kind == "guarded":
                return None
            if not kept:
                kept.append(real(*args, **kwargs))
            return kept[0]

        gate.check = stub  # type: ignore[method-assign]
    await path.settle()
    path.session.data_received(path.answer())
    for _ in range(300 // concurrency + 1):
        await path.round()
    return path


async def _run_parts(requests: int, concurrency: int, rounds: int) -> dict[str, list[float]]:
    """Every variant of :data:`_PARTS`, alternated round by round."""
    paths = {kind: await _part(kind, concurrency) for kind in _PARTS}
    per_round = max(1, requests // concurrency)
    figures: dict[str, list[float]] = {kind: [] for kind in _PARTS}
    for _ in range(rounds):
        for kind, path in paths.items():
            figures[kind].append(await _measure(path, per_round, concurrency))
    return figures


def main() -> None:
    """Print CPU µs per request (median, min, max over the rounds) as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tunnel", action="store_true", help="the whole public path")
    parser.add_argument("--concurrency", type=int, default=8, help="with --tunnel")
    parser.add_argument("--access", action="store_true", help="with --tunnel: Access's cost")
    parser.add_argument(
        "--access-parts", action="store_true", help="with --tunnel: Access's cost taken apart"
    )
    args = parser.parse_args()
    if args.tunnel and args.access_parts:
        parts = uvloop.run(_run_parts(args.requests, args.concurrency, args.rounds))
        medians = {kind: round(statistics.median(values), 1) for kind, values in parts.items()}
        print(json.dumps({"rounds": args.rounds, "us_per_request_median": medians}))
        return
    if args.tunnel and args.access:
        without, with_access = uvloop.run(_run_access(args.requests, args.concurrency, args.rounds))
        plain, guarded = statistics.median(without), statistics.median(with_access)
        print(
            json.dumps(
                {
                    "requests": args.requests,
                    "concurrency": args.concurrency,
                    "rounds": args.rounds,
                    "plain_us_per_request_median": round(plain, 1),
                    "access_us_per_request_median": round(guarded, 1),
                    "ratio": round(guarded / plain, 3),
                    "ratios_by_round": [
                        round(b / a, 3) for a, b in zip(without, with_access, strict=True)
                    ],
                }
            )
        )
        return
    if args.tunnel:
        figures = uvloop.run(_run_tunnel(args.requests, args.concurrency, args.rounds))
    else:
        figures = uvloop.run(_run(args.requests, args.depth, args.rounds))
    result = {
        "requests": args.requests,
        "depth": args.depth,
        "tunnel": args.tunnel,
        "concurrency": args.concurrency if args.tunnel else 1,
        "cpu_us_per_request_median": round(statistics.median(figures), 1),
        "min": round(min(figures), 1),
        "max": round(max(figures), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
