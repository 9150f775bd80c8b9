"""Cap'n Proto RPC for cloudflared's control stream: the public surface (PROTOCOL.md §3.4, §4.3).

* :class:`RegistrationServerSession` — the edge serves ``RegistrationServer``.
* :class:`RegistrationClientSession` — the connector calls it, byte for byte like cloudflared.

Both are sans-IO: ``receive_data(bytes) -> list[event]`` and ``data_to_send() -> bytes``; they
raise :class:`~adit.protocol.errors.RpcProtocolError` when the peer breaks the protocol.
"""

from __future__ import annotations

from adit.protocol.errors import FramingError, RpcProtocolError
from adit.protocol.framing import MessageSplitter
from adit.protocol.registration_codec import REGISTRATION_SERVER_INTERFACE_ID
from adit.protocol.rpc_client import SHUTDOWN_REASON, RegistrationClientSession
from adit.protocol.rpc_events import (
    CallFailed,
    CallReturned,
    ClientEvent,
    RegisterConnectionCalled,
    RegistrationFailed,
    RegistrationReturned,
    RpcAborted,
    ServerEvent,
    UnregisterConnectionCalled,
    UpdateLocalConfigurationCalled,
)
from adit.protocol.rpc_server import BOOTSTRAP_EXPORT_ID, RegistrationServerSession

__all__ = [
    "BOOTSTRAP_EXPORT_ID",
    "REGISTRATION_SERVER_INTERFACE_ID",
    "SHUTDOWN_REASON",
    "CallFailed",
    "CallReturned",
    "ClientEvent",
    "FramingError",
    "MessageSplitter",
    "RegisterConnectionCalled",
    "RegistrationClientSession",
    "RegistrationFailed",
    "RegistrationReturned",
    "RegistrationServerSession",
    "RpcAborted",
    "RpcProtocolError",
    "ServerEvent",
    "UnregisterConnectionCalled",
    "UpdateLocalConfigurationCalled",
]
