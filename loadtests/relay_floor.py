"""The floor under any Python edge plus Python connector on this machine: two bare relays.

Two uvloop processes that copy bytes and do nothing else (no HTTP, no HTTP/2, no routing)
stand where ``adit edge`` and ``adit tunnel run`` stand: client → relay 1 → relay 2 → nginx.
Run once as they are, and once with TLS between them (the edge's CA and certificate, as on a
tunnel connection). Each run gives wrk's requests/s at 64 connections and h2load's p50 at the
bench's fixed rate, next to the direct path measured in the same run, with each relay's CPU
per request. What adit adds beyond these figures is its protocol work; what these figures
already cost, no Python design of the two processes can win back.

    .venv/bin/python loadtests/relay_floor.py [--seconds N] [--rate R]

Loopback only, best in a network namespace of its own (``unshare -n sh -c 'ip link set lo up
&& exec .venv/bin/python loadtests/relay_floor.py'``); every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

HERE = Path(__file__).resolve().parent
#: The name the connector side asks for (one of the edge's tunnel names).
_SERVER_NAME = "h2.cftunnel.com"


# -- the relay process ------------------------------------------------------------------------


class _Side(asyncio.Protocol):
    """One socket of a relayed connection; what it reads goes to the other side as it is."""

    def __init__(self) -> None:
        self.peer: _Side | None = None
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        if self.peer.transport is None:
            self.peer.early.append(data)  # the outbound side is still dialling
        else:
            self.peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def _relay(
    listen: int, target: int, server: ssl.SSLContext | None, client: ssl.SSLContext | None
) -> None:
    loop = asyncio.get_running_loop()
    dialling: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def accepted() -> _Side:
        inbound, outbound = _Side(), _Side()
        inbound.peer, outbound.peer = outbound, inbound

        async def dial() -> None:
            try:
                await loop.create_connection(
                    lambda: outbound,
                    "127.0.0.1",
                    target,
                    ssl=client,
                    server_hostname=_SERVER_NAME if client else None,
                )
            except OSError:
                if inbound.transport is not None:
                    inbound.transport.close()
                return
            assert outbound.transport is not None
            for data in outbound.early:
                outbound.transport.write(data)
            outbound.early.clear()

        task = loop.create_task(dial())
        dialling.add(task)
        task.add_done_callback(dialling.discard)
        return inbound

    server_socket = await loop.create_server(accepted, "127.0.0.1", listen, ssl=server)
    await server_socket.serve_forever()


def _run_relay(argv: list[str]) -> None:
    import uvloop

    from adit.edge.ca import EdgeCA

    parser = argparse.ArgumentParser(prog="relay_floor.py relay")
    parser.add_argument("listen", type=int)
    parser.add_argument("target", type=int)
    parser.add_argument("--tls-in", type=Path, help="edge state dir: serve TLS on listen")
    parser.add_argument("--tls-out", type=Path, help="edge state dir: dial target with TLS")
    args = parser.parse_args(argv)
    server = EdgeCA.load_or_create(args.tls_in).tunnel_server_context() if args.tls_in else None
    client = EdgeCA.load_or_create(args.tls_out).client_context() if args.tls_out else None
    uvloop.run(_relay(args.listen, args.target, server, client))


# -- the measurement --------------------------------------------------------------------------


def _measure(tls: bool, args: argparse.Namespace) -> dict[str, object]:
    import bench
    import drivers
    from drivers import Target
    from processes import Processes, free_port, wait_port
    from services import start_origin

    with tempfile.TemporaryDirectory(prefix="relay-floor-") as scratch:
        tmp = Path(scratch)
        processes = Processes(tmp)
        try:
            origin = start_origin(processes, tmp, 1 << 20)
            inner, outer = free_port(), free_port()
            me = [sys.executable, str(Path(__file__).resolve()), "relay"]
            serve_tls = ["--tls-in", str(tmp / "ca")] if tls else []
            dial_tls = ["--tls-out", str(tmp / "ca")] if tls else []
            relay2 = processes.start("relay2", [*me, str(inner), str(origin.port), *serve_tls])
            wait_port(inner)  # relay 2 has made the CA that relay 1 trusts
            relay1 = processes.start("relay1", [*me, str(outer), str(inner), *dial_tls])
            wait_port(outer)
            roles = {"relay1": relay1.pid, "relay2": relay2.pid}
            figures: dict[str, object] = {}
            for name, port in (("direct", origin.port), ("relays", outer)):
                target = Target(name, f"127.0.0.1:{port}", "", "")
                gets = drivers.small_gets(target, seconds=args.seconds)
                figures[f"{name}_rps"] = gets.get("rps")
                before, wall = bench.cpu_seconds(roles), time.monotonic()
                rated, _ = drivers.latency(
                    target,
                    rate=args.rate,
                    clients=10,
                    seconds=args.seconds,
                    log_file=tmp / f"h2load-{name}.log",
                )
                figures[f"{name}_p50_ms"] = rated.get("p50_ms")
                if name == "relays":
                    used = bench.cpu_seconds(roles)
                    wall = time.monotonic() - wall
                    count = rated.get("count")
                    cpu = bench.cpu_figures(before, used, wall, count)
                    figures.update({k: v for k, v in cpu.items() if k.startswith("cpu_us_")})
            for service in (relay1, relay2):
                if service.popen.poll() is not None:
                    figures[f"{service.name}_log"] = service.text()[-2000:]
            return figures
        finally:
            processes.cleanup()


def main(argv: list[str]) -> int:
    if argv[:1] == ["relay"]:
        _run_relay(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=int, default=200, help="fixed rate for p50, requests/s")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    results = {"plain": _measure(False, args), "tls": _measure(True, args)}
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
