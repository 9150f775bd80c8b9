"""CPU cost of a worker's Python per proxied request, without sockets or other processes.

The whole-system figure (``./run bench``) moves with whatever else the machine runs and
includes the kernel's loopback work. This one drives the real worker code in one process —
:class:`~adit.workers.edge_connection.EdgeConnection` (tunnel HTTP/2, stream channels) and
:class:`~adit.workers.proxy.OriginProxy` (ingress rule, request head, pooled HTTP/1.1 origin
connection, response) — over in-memory transports: the edge's bytes are made by the sans-IO
:class:`~adit.protocol.http2.EdgeTunnelConnection` and the origin's answer is nginx's, canned.
Only the worker's part is timed (process CPU time), so a change can be judged on a busy
machine; ``--profile`` prints cProfile's top functions of that part.

    .venv/bin/python loadtests/worker_bench.py [--requests N] [--concurrency C] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import time
import uuid
from typing import Any

import uvloop

from adit.config.ingress import ingress_from_cli
from adit.protocol.http2 import EdgeTunnelConnection, ResponseReceived
from adit.protocol.registration import ClientInfo, ConnectionOptions, TunnelAuth
from adit.workers.edge_connection import EdgeConnection, Registration
from adit.workers.origins.dialer import Early, OriginKey
from adit.workers.origins.http1 import OriginConnection
from adit.workers.proxy import OriginProxy

_EYEBALL = [
    ("Host", "bench.localhost"),
    ("User-Agent", "wrk"),
    ("Accept", "*/*"),
    ("X-Forwarded-For", "127.0.0.1"),
    ("X-Forwarded-Proto", "http"),
    ("Cf-Connecting-Ip", "127.0.0.1"),
]
_BODY = bytes(1024)
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 02:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Wed, 25 Nov 2026 21:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6566a7b0-400"\r\nAccept-Ranges: bytes\r\n\r\n' + _BODY
)


class _Transport(asyncio.Transport):
    """Collects what is written; tells a waiter when something was."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []
        self.protocol: Any = None
        self.wrote: asyncio.Future[None] | None = None

    def write(self, data: Any) -> None:
        self.out.append(bytes(data))
        if self.wrote is not None and not self.wrote.done():
            self.wrote.set_result(None)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol  # type: ignore[no-any-return]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _until_written(transport: _Transport, count: int) -> None:
    while len(transport.out) < count:
        transport.wrote = asyncio.get_running_loop().create_future()
        await transport.wrote


async def run(requests: int, concurrency: int, profile: cProfile.Profile | None) -> float:
    """Worker CPU µs per request (``concurrency`` requests in flight per round)."""
    registration = Registration(
        TunnelAuth("bench", b"\0" * 32),
        uuid.uuid4(),
        0,
        ConnectionOptions(ClientInfo(uuid.uuid4(), (), "bench", "linux_amd64")),
    )
    proxy = OriginProxy(uuid.uuid4())
    ingress = ingress_from_cli("http://127.0.0.1:8080")
    worker = EdgeConnection(registration, proxy, lambda: ingress)
    tunnel = _Transport()
    worker.connection_made(tunnel)
    edge = EdgeTunnelConnection()
    edge.initiate()
    origins: list[_Transport] = []
    for _ in range(concurrency):
        transport = _Transport()
        connection = OriginConnection(transport, Early())
        proxy._pool.checkin(
            OriginKey("127.0.0.1", 8080), connection, max_idle=concurrency, idle_timeout=1e9
        )
        origins.append(transport)

    def to_worker() -> None:
        data = edge.data_to_send()
        if data:
            worker.data_received(data)

    def to_edge() -> list[Any]:
        worker.write_held()
        return edge.receive_data(tunnel.take())

    to_worker()
    await asyncio.sleep(0)
    to_edge()
    spent = 0.0
    done = 0
    while done < requests:
        for _ in range(concurrency):
            edge.send_request(
                "GET",
                "/1k.bin",
                "bench.localhost",
                _EYEBALL,
                serialize_headers=True,
                end_stream=True,
            )
        data = edge.data_to_send()
        busy = [t for t in origins if t.protocol is not None]
        started = time.process_time()
        if profile:
            profile.enable()
        worker.data_received(data)
        # Every request reaches an origin connection (which one is the pool's choice).
        for _ in range(1000):
            if sum(len(t.out) for t in origins) >= concurrency:
                break
            await asyncio.sleep(0)
        else:
            raise SystemExit("the requests did not reach the origin connections")
        for transport in origins:
            if transport.out:
                transport.out.clear()
                transport.protocol.data_received(_RESPONSE)
        for _ in range(20):
            await asyncio.sleep(0)
        worker.write_held()
        if profile:
            profile.disable()
        spent += time.process_time() - started
        events = to_edge()
        answered = [e for e in events if isinstance(e, ResponseReceived)]
        if len(answered) != concurrency or not busy:
            raise SystemExit(f"expected {concurrency} responses, got {len(answered)}: {events}")
        for event in events:
            if hasattr(event, "flow_controlled_length"):
                edge.acknowledge(event.stream_id, event.flow_controlled_length)
        to_worker()
        done += concurrency
    return 1e6 * spent / done


def main() -> None:
    """Print worker CPU µs per request as JSON (best of three)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    profile = cProfile.Profile() if args.profile else None
    figures = [
        uvloop.run(run(args.requests, args.concurrency, profile if i == 0 else None))
        for i in range(3)
    ]
    print(json.dumps({"worker_us_per_request": round(min(figures), 1)}))
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(35)


if __name__ == "__main__":
    main()
