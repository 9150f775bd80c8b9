"""UDP through a tunnel, driven from the edge's side: an in-process edge, a UDP echo origin.

The edge's :meth:`~adit.edge.quic_listener.QuicTunnelSession.open_udp` has no client of its own
yet (``adit access udp`` comes later): tests run :class:`~adit.edge.server.EdgeServer` in
their event loop, on real sockets on 127.0.0.1, and call it on the connection the connector
(adit's, in process or as a process, or cloudflared) registered. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from adit.edge.quic_listener import QuicTunnelSession
from adit.edge.server import EdgeServer, EdgeSettings
from adit.edge.store import Account, Tunnel
from adit.edge.udp_flows import UdpFlow, UdpFlowClosed
from ports import free_port

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


@dataclass
class InProcessEdge:
    """An edge server in this event loop, with one account and one tunnel."""

    server: EdgeServer
    account: Account
    tunnel: Tunnel
    ca_path: Path

    @property
    def tunnel_address(self) -> str:
        return self.server.addresses["tunnel"][0]

    def write_credentials(self, path: Path) -> Path:
        """The tunnel's credentials file, as ``tunnel create`` writes it (cloudflared's form)."""
        path.write_text(
            json.dumps(
                {
                    "AccountTag": self.account.tag,
                    "TunnelSecret": base64.b64encode(self.tunnel.secret).decode(),
                    "TunnelID": str(self.tunnel.id),
                }
            )
        )
        return path

    async def session(self, *, timeout: float = 30.0) -> QuicTunnelSession:
        """The tunnel's registered QUIC connection, once there is one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for live in self.server.registry.connections(self.tunnel.id):
                if isinstance(live.handle, QuicTunnelSession) and not live.draining:
                    return live.handle
            await asyncio.sleep(0.05)
        raise AssertionError("no QUIC connection registered for the tunnel")


@contextlib.asynccontextmanager
async def in_process_edge(state_dir: Path) -> AsyncIterator[InProcessEdge]:
    """An edge listening on ephemeral 127.0.0.1 ports, stopped on exit."""
    settings = EdgeSettings(
        state_dir=state_dir,
        tunnel_listen=("127.0.0.1:0",),
        http_listen=("127.0.0.1:0",),
        api_listen=("127.0.0.1:0",),
    )
    server = EdgeServer(settings)
    await server.start()
    try:
        account = server.store.create_account("udp")
        tunnel = server.store.create_tunnel(account.tag, "udp")
        ca_path = state_dir / "ca-for-connectors.pem"
        ca_path.write_text(server.ca.cert_pem)
        yield InProcessEdge(server, account, tunnel, ca_path)
    finally:
        server.stop_listening()
        await server.stop()


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1
        if self.transport is not None:
            self.transport.sendto(data, addr)


@contextlib.asynccontextmanager
async def udp_echo() -> AsyncIterator[tuple[int, _Echo]]:
    """A UDP echo origin on 127.0.0.1: its port, and what it counted."""
    loop = asyncio.get_running_loop()
    transport, echo = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    try:
        yield int(transport.get_extra_info("sockname")[1]), echo
    finally:
        transport.close()


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nobody listens on (:func:`ports.free_port`)."""
    return free_port("udp")


@dataclass
class EchoTally:
    """How many datagrams went through an echo and came back intact."""

    sent: int = 0
    refused: int = 0
    received: int = 0
    corrupt: int = 0
    seen: set[int] = field(default_factory=set)

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 0.0


async def pump_echo(
    flow: UdpFlow, count: int, *, size: int = 512, window: int = 64, wait: float = 1.0
) -> EchoTally:
    """Send ``count`` numbered datagrams of ``size`` bytes through ``flow`` to an echo, at most
    ``window`` unanswered at a time, and count what comes back intact. When no echo comes
    for ``wait`` seconds the unanswered ones are written off as lost (UDP may lose), so the
    run is bounded however lossy the path."""
    tally = EchoTally()
    filler = bytes(range(256)) * (size // 256 + 1)
    body = filler[: size - 4]
    outstanding = 0

    async def one() -> bool:
        nonlocal outstanding
        try:
            data = await asyncio.wait_for(flow.receive(), wait)
        except TimeoutError:
            outstanding = 0  # written off
            return False
        outstanding = max(0, outstanding - 1)
        number = int.from_bytes(data[:4], "big")
        if data[4:] != body or number in tally.seen:
            tally.corrupt += 1
        else:
            tally.seen.add(number)
            tally.received += 1
        return True

    for number in range(count):
        while outstanding >= window and await one():
            pass
        if flow.send(number.to_bytes(4, "big") + body):
            tally.sent += 1
            outstanding += 1
        else:
            tally.refused += 1
    while outstanding and await one():
        pass
    return tally


async def receive_closed(flow: UdpFlow, *, timeout: float = 20.0) -> str:
    """Read ``flow`` until it closes (bounded); the reason it closed with."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            await asyncio.wait_for(flow.receive(), max(0.01, deadline - loop.time()))
        except UdpFlowClosed as exc:
            return str(exc)
        except TimeoutError:
            break
    raise AssertionError(f"the flow {flow.session_id} did not close within {timeout:g}s")


async def eventually(check: Any, *, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``check()`` until it is true (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s")
        await asyncio.sleep(0.02)


def random_session() -> uuid.UUID:
    return uuid.uuid4()
