"""The ``/diag/*`` endpoints: cloudflared's shapes, the worker of each connection, no secret."""

from __future__ import annotations

import base64
import json
import signal

from adit.ipc.messages import ConnectionLost, ConnectionRegistered, EdgeTarget
from adit.metrics_listener import MetricsServer
from adit.supervisor.diag_endpoints import diag_routes
from adit.supervisor.settings import SupervisorSettings
from adit.supervisor.state import SupervisorState

SECRET = bytes(range(32))


def _state() -> SupervisorState:
    settings = SupervisorSettings(
        tunnel_id="6ff42ae2-765d-4adf-8112-31c55c1551ef",
        account_tag="acct-tag-0123",
        tunnel_secret=SECRET,
        edge_ca_pem="-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n",
        edges=(EdgeTarget("127.0.0.1", 7844), EdgeTarget("::1", 7845)),
        ha_connections=2,
        workers=2,
        connector_id="c0ffee00-0000-4000-8000-000000000000",
        cli_flags={"token": "*****", "metrics": "127.0.0.1:0"},
    )
    state = SupervisorState(settings, cpus=[0, 1])
    state.start(0.0)
    state.worker_started(0, 100, 0.0)
    state.worker_started(1, 101, 0.0)
    return state


def _get(server: MetricsServer, path: str) -> object:
    status, content_type, body = server.respond("GET", path)
    assert (status, content_type) == (200, "application/json")
    for secret in (SECRET, base64.b64encode(SECRET), SECRET.hex().encode(), b"acct-tag-0123"):
        assert secret not in body
    assert b"QUJD" not in body  # the edge CA
    return json.loads(body)


def test_tunnel_state_names_each_connection_and_its_worker() -> None:
    state = _state()
    state.handle_event(ConnectionRegistered(0, 0, "c-0", "TST1", "127.0.0.1:7844", "quic"), 1.0)
    state.handle_event(ConnectionRegistered(1, 1, "c-1", "TST2", "[::1]:7845", "http2"), 1.0)
    server = MetricsServer(state.ready_body, lambda: b"", routes=diag_routes(state))
    body = _get(server, "/diag/tunnel")
    assert body == {
        "tunnelID": "6ff42ae2-765d-4adf-8112-31c55c1551ef",
        "connectorID": "c0ffee00-0000-4000-8000-000000000000",
        "connections": [
            {"index": 0, "isConnected": True, "protocol": 1,
             "protocolName": "quic", "edgeAddress": "127.0.0.1",
             "edge": "127.0.0.1:7844", "location": "TST1", "connectionId": "c-0",
             "workerPid": 100},
            {"index": 1, "isConnected": True, "protocol": 0,
             "protocolName": "http2", "edgeAddress": "::1",
             "edge": "[::1]:7845", "location": "TST2", "connectionId": "c-1", "workerPid": 101},
        ],
        "edgeAddresses": ["127.0.0.1:7844", "[::1]:7845"],
        "pid": body["pid"],  # type: ignore[index]
    }  # fmt: skip

    # A lost connection stays listed, disconnected, with the protocol it had.
    state.handle_event(ConnectionLost(1, 1, "edge closed", 1.0), 2.0)
    connections = _get(server, "/diag/tunnel")["connections"]  # type: ignore[index]
    assert connections[1] == {
        "index": 1,
        "isConnected": False,
        "protocol": 0,
        "protocolName": "http2",
    }

    # Draining: nothing counts as connected any more (as /ready says 503).
    state.handle_signal(signal.SIGTERM, 3.0)
    connections = _get(server, "/diag/tunnel")["connections"]  # type: ignore[index]
    assert [c["isConnected"] for c in connections] == [False, False]


def test_configuration_system_and_runtime() -> None:
    state = _state()
    server = MetricsServer(state.ready_body, lambda: b"", routes=diag_routes(state))
    flags = _get(server, "/diag/configuration")
    assert isinstance(flags, dict)
    assert flags["token"] == "*****"
    assert flags["metrics"] == "127.0.0.1:0"
    assert flags["uid"].isdigit()
    system = _get(server, "/diag/system")
    assert isinstance(system, dict)
    assert system["info"]["osSystem"] == "linux"
    runtime = _get(server, "/diag/runtime")
    assert isinstance(runtime, dict)
    assert [w["pid"] for w in runtime["workers"]] == [100, 101]
    assert server.respond("GET", "/diag/nope")[0] == 404
