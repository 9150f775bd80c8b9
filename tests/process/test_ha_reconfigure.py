"""WorkerRuntime.reconfigure against a real `adit edge` (real TLS), driven in-process.

New edge addresses roll every connection to its new address with zero failed requests; a
replacement the edge refuses leaves the old connection serving.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import uuid
from pathlib import Path

import msgspec
import pytest

from adit.ipc.messages import (
    ConnectionRegistered,
    EdgeTarget,
    Event,
    IngressSnapshot,
    RegistrationRefused,
    WorkerSettings,
)
from adit.workers.runtime import WorkerRuntime
from harness import Edge, Origin, Processes, create_tunnel, login, request, start_edge

pytestmark = pytest.mark.process

HOST = "roll.example.test"


class Loop:
    """Requests from one thread until stopped (bounded)."""

    def __init__(self, edge: Edge, limit: int = 5000) -> None:
        self.edge = edge
        self.limit = limit
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        for n in range(self.limit):
            if self.stop.is_set():
                return
            try:
                reply = request(self.edge, HOST, path=f"/r/{n}", timeout=15)
            except OSError as exc:
                self.failures.append(f"{n}: {exc!r}")
                continue
            if reply.status == 200 and reply.body == f"hello /r/{n}".encode():
                self.ok += 1
            else:
                self.failures.append(f"{n}: {reply.status} {reply.body[:200]!r}")

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _target(address: str, location: int) -> EdgeTarget:
    host, _, port = address.rpartition(":")
    return EdgeTarget(host, int(port), location=location)


@pytest.mark.parametrize("protocol", ["http2", "quic"])
def test_new_edge_addresses_roll_every_connection_without_failures(
    processes: Processes, origin: Origin, tmp_path: Path, protocol: str
) -> None:
    edge = start_edge(processes, tunnel_listen=["127.0.0.1:0"] * 4)
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "roll", HOST)
    creds = json.loads(tunnel.credentials.read_text())
    first = [_target(edge.tunnel[0], 0), _target(edge.tunnel[1], 1)]
    second = [_target(edge.tunnel[2], 0), _target(edge.tunnel[3], 1)]
    settings = WorkerSettings(
        slot=0,
        connector_id=str(uuid.uuid4()),
        account_tag=creds["AccountTag"],
        tunnel_secret=base64.b64decode(creds["TunnelSecret"]),
        tunnel_id=creds["TunnelID"],
        conn_indexes=[0, 1],
        edges=first,
        edge_ca_pem=edge.ca.read_text(),
        ingress=IngressSnapshot(version=1, cli_url=origin.url),
        grace_period=5.0,
        ha_connections=2,
        protocol=protocol,
    )

    async def scenario() -> tuple[list[Event], Loop]:
        events: list[Event] = []
        changed = asyncio.Event()

        def publish(event: Event) -> None:
            events.append(event)
            changed.set()

        async def registrations(count: int) -> list[ConnectionRegistered]:
            async def wait() -> None:
                while len([e for e in events if isinstance(e, ConnectionRegistered)]) < count:
                    changed.clear()
                    await changed.wait()

            await asyncio.wait_for(wait(), 30)
            return [e for e in events if isinstance(e, ConnectionRegistered)]

        runtime = WorkerRuntime(settings, publish)
        running = asyncio.ensure_future(runtime.run())
        registered = await registrations(2)
        assert sorted(e.edge for e in registered) == sorted(edge.tunnel[:2])
        loop = Loop(edge)
        loop.start()
        try:
            await asyncio.sleep(0.3)
            # A replacement the edge refuses (wrong secret): the old connections keep serving.
            wrong = msgspec.structs.replace(settings, tunnel_secret=b"\x01" * 32)
            await asyncio.wait_for(runtime.reconfigure(wrong), 30)
            assert any(isinstance(e, RegistrationRefused) for e in events)
            assert len(runtime.connections) == 2
            await asyncio.sleep(0.3)
            # The right secret and new addresses: both connections move, one at a time.
            moved = msgspec.structs.replace(settings, edges=second)
            await asyncio.wait_for(runtime.reconfigure(moved), 60)
            rolled = (await registrations(4))[2:]
            assert sorted(e.edge for e in rolled) == sorted(edge.tunnel[2:])
            assert [e.conn_index for e in rolled] == [0, 1]
            await asyncio.sleep(0.5)
        finally:
            await asyncio.to_thread(loop.finish)
            runtime.begin_drain(5.0)
            await asyncio.wait_for(running, 20)
        return events, loop

    _events, loop = asyncio.run(scenario())
    assert loop.failures == []
    assert loop.ok > 10
    text = edge.proc.text()
    # The edge served each connection index on two addresses during the roll.
    assert text.count("connection replaced tunnelID=") >= 2
    assert "connector unregistered" in text
