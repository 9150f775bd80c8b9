"""A stream the edge resets stops the work serving it: the task is cancelled at once (so the
origin request and its connection end), not when it next reads or writes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

from adit.protocol.http2 import EdgeTunnelConnection
from adit.protocol.registration import ClientInfo, ConnectionOptions, TunnelAuth
from adit.workers.edge_connection import EdgeConnection, Registration
from adit.workers.stream import TunnelStream
from asynctests import uvloop_test


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.out += part

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


class _Hung:
    """Serves a stream by waiting forever (an origin that never answers)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def serve_private(self, stream: TunnelStream, options: object) -> None:
        await self.serve(stream, options)

    async def serve(self, stream: TunnelStream, rule: object) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


class _Rules:
    def find_matching_rule(self, host: str, path: str) -> None:
        return None


@uvloop_test
async def test_a_reset_stream_cancels_the_task_serving_it() -> None:
    registration = Registration(
        auth=TunnelAuth("acct", b"s" * 32),
        tunnel_id=uuid.uuid4(),
        conn_index=0,
        options=ConnectionOptions(
            client=ClientInfo(client_id=uuid.uuid4(), features=(), version="t", arch="t")
        ),
    )
    server = _Hung()
    connector = EdgeConnection(registration, server, cast(Any, _Rules))
    transport = _Transport()
    connector.connection_made(transport)  # type: ignore[arg-type]
    edge = EdgeTunnelConnection()
    edge.initiate()
    connector.data_received(edge.data_to_send())
    edge.receive_data(transport.take())
    stream_id = edge.send_request("GET", "/", "app.example.com", [])
    connector.data_received(edge.data_to_send())
    await asyncio.wait_for(server.started.wait(), 1)
    assert len(connector.tasks) == 1
    edge.reset_stream(stream_id)
    connector.data_received(edge.data_to_send())
    await asyncio.wait_for(server.cancelled.wait(), 1)
    await asyncio.sleep(0)
    assert connector.tasks == set()
