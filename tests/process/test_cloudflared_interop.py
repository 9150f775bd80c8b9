"""The unmodified cloudflared as the connector of `adit edge` (PROTOCOL.md §9, issue 2 §8).

Needs a cloudflared binary: set ADIT_CLOUDFLARED=/path/to/cloudflared (never committed; build it
from cloudflared's source). cloudflared looks up DNS records on the machine's resolver at start,
so the test re-runs itself inside a fresh network namespace (`unshare -n`) holding only a
loopback interface: edge, origins, cloudflared and the client all live there.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
import websockets.asyncio.client

from adversary import CLOUDFLARED, INSIDE_NETNS, rerun_in_private_netns, start_cloudflared
from harness import Account, Edge, Origin, Processes, create_tunnel, request, write_config

pytestmark = pytest.mark.process

HOST = "cfd.example.test"


@pytest.mark.skipif(not CLOUDFLARED, reason="set ADIT_CLOUDFLARED to a cloudflared binary")
def test_cloudflared_in_a_loopback_only_namespace() -> None:
    rerun_in_private_netns(f"{Path(__file__)}::test_cloudflared_connects_and_proxies")


@pytest.mark.skipif(not INSIDE_NETNS, reason="runs inside the namespace made by the test above")
def test_cloudflared_connects_and_proxies(
    processes: Processes,
    edge: Edge,
    account: Account,
    origin: Origin,
    ws_origin: int,
    tmp_path: Path,
) -> None:
    tunnel = create_tunnel(account, "cfd", HOST)
    config = write_config(
        tmp_path / "config.yml",
        HOST,
        [{"path": "^/ws", "service": f"http://127.0.0.1:{ws_origin}"}, {"service": origin.url}],
    )
    cloudflared = start_cloudflared(processes, tunnel, config, edge)

    reply = request(edge, HOST, path="/headers", headers=[("X-Dup", "1"), ("X-Dup", "2")])
    assert reply.status == 200
    assert [v for n, v in reply.headers if n == "X-Multi"] == ["one", "two"]
    upload = os.urandom(1024 * 1024)
    echoed = request(edge, HOST, "POST", "/echo", body=upload)
    assert hashlib.sha256(echoed.body).digest() == hashlib.sha256(upload).digest()

    address, port = edge.http.rsplit(":", 1)

    async def talk() -> tuple[object, object]:
        async with websockets.asyncio.client.connect(
            f"ws://{HOST}/ws", host=address, port=int(port), open_timeout=10
        ) as ws:
            await ws.send("text through cloudflared")
            text = await asyncio.wait_for(ws.recv(), 10)
            await ws.send(b"\x00binary\xff")
            return text, await asyncio.wait_for(ws.recv(), 10)

    assert asyncio.run(talk()) == ("text through cloudflared", b"\x00binary\xff")

    cloudflared.signal(15)
    assert cloudflared.wait(timeout=30) == 0
    assert "Unregistered tunnel connection" in cloudflared.text()
    assert "connector unregistered" in edge.proc.text()
