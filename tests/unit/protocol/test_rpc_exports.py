"""The RPC modules' public names resolve, and the modules stay sans-IO."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

MODULES = [
    "adit.protocol.framing",
    "adit.protocol.quic_rpc",
    "adit.protocol.quic_rpc_client",
    "adit.protocol.quic_rpc_codec",
    "adit.protocol.quic_rpc_events",
    "adit.protocol.quic_rpc_server",
    "adit.protocol.registration_codec",
    "adit.protocol.rpc",
    "adit.protocol.rpc_client",
    "adit.protocol.rpc_events",
    "adit.protocol.rpc_messages",
    "adit.protocol.rpc_server",
    "adit.protocol.rpc_targets",
]
BANNED = {"asyncio", "socket", "ssl", "zmq", "uvloop", "time", "threading"}


@pytest.mark.parametrize("name", MODULES)
def test_all_names_resolve(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert sorted(exported) == sorted(set(exported))
    for attribute in exported:
        assert hasattr(module, attribute), attribute


@pytest.mark.parametrize("name", MODULES)
def test_no_io_or_clock_imports(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & BANNED


def test_schemas_ship_inside_the_package() -> None:
    module = importlib.import_module("adit.protocol.rpc_messages")
    assert module.__file__ is not None
    schema_dir = Path(module.__file__).with_name("capnp_schema")
    names = {path.name for path in schema_dir.glob("*.capnp")}
    assert names == {"rpc.capnp", "tunnelrpc.capnp", "quic_metadata_protocol.capnp"}


def test_the_connector_registers_without_pycapnp() -> None:
    # A worker's first registration must not pay for importing pycapnp (rpc_client's design).
    script = """
import sys, uuid
from adit.protocol.registration import ClientInfo, ConnectionOptions, TunnelAuth
from adit.protocol.rpc_client import RegistrationClientSession
client = RegistrationClientSession()
options = ConnectionOptions(ClientInfo(uuid.UUID(int=1), (), "", ""))
client.register(TunnelAuth("a", b"s"), uuid.UUID(int=2), 0, options)
assert client.data_to_send()
assert "capnp" not in sys.modules, "pycapnp was imported"
"""
    subprocess.run([sys.executable, "-c", script], check=True)
