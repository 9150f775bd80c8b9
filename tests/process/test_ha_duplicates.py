"""The edge's duplicate-connection rule against a real `adit edge`: same connector id and
connection index is EDUPCONN, unless the connector asks ``replace_existing`` (a roll)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path

import pytest

from adit.config.ingress import Ingress
from adit.ipc.messages import IngressSnapshot
from adit.ipc.snapshot import build_ingress
from adit.protocol.registration import (
    ClientInfo,
    ConnectionDetails,
    ConnectionOptions,
    RegistrationError,
    RegistrationResult,
    TunnelAuth,
)
from adit.workers.edge_connection import EdgeConnection, Registration
from adit.workers.proxy import OriginProxy
from adit.workers.runtime import EDGE_SNI, edge_tls_context
from harness import Processes, create_tunnel, login, start_edge

pytestmark = pytest.mark.process


def test_duplicate_index_is_refused_unless_replacing(processes: Processes, tmp_path: Path) -> None:
    edge = start_edge(processes)
    account = login(edge, tmp_path / "home")
    tunnel = create_tunnel(account, "dup", "dup.example.test")
    creds = json.loads(tunnel.credentials.read_text())
    host, _, port = edge.tunnel[0].rpartition(":")
    client = ClientInfo(uuid.uuid4(), ("serialized_headers",), "test", "linux_amd64")
    auth = TunnelAuth(creds["AccountTag"], base64.b64decode(creds["TunnelSecret"]))

    async def scenario() -> list[RegistrationResult]:
        tls = edge_tls_context(edge.ca.read_text())
        proxy = OriginProxy(client.client_id)
        ingress: Ingress = build_ingress(IngressSnapshot(version=1, cli_url="http://127.0.0.1:1"))
        opened: list[EdgeConnection] = []

        async def register(replace: bool) -> RegistrationResult:
            registration = Registration(
                auth=auth,
                tunnel_id=uuid.UUID(creds["TunnelID"]),
                conn_index=0,
                options=ConnectionOptions(client=client, replace_existing=replace),
            )
            _, connection = await asyncio.get_running_loop().create_connection(
                lambda: EdgeConnection(registration, proxy, lambda: ingress),
                host,
                int(port),
                ssl=tls,
                server_hostname=EDGE_SNI,
            )
            opened.append(connection)
            return await asyncio.wait_for(connection.registered, 10)

        try:
            return [await register(False), await register(False), await register(True)]
        finally:
            for connection in opened:
                if connection.transport is not None:
                    connection.transport.abort()
            await asyncio.wait([c.lost for c in opened], timeout=5)
            await proxy.aclose()

    first, duplicate, replacement = asyncio.run(scenario())
    assert isinstance(first, ConnectionDetails)
    assert isinstance(duplicate, RegistrationError) and duplicate.cause == "EDUPCONN"
    assert isinstance(replacement, ConnectionDetails)
    assert replacement.uuid != first.uuid
    edge.proc.wait_for_log(rf"connection replaced tunnelID=\S+ connIndex=0 old={first.uuid}")
