"""Cap'n Proto RPC on the QUIC transport's short RPC streams: the public surface (§5.6, §6.1).

* :class:`CloudflaredServerSession` — the connector serves ``CloudflaredServer`` on a stream the
  edge opened (``registerUdpSession``, ``unregisterUdpSession``, ``updateConfiguration``).
* :class:`CloudflaredClientSession` — the edge calls it.
* :class:`SessionManagerServerSession` — the edge serves ``SessionManager`` on a stream the
  connector opened (``unregisterUdpSession`` when a datagram v2 UDP session ends).
* :class:`SessionManagerClientSession` — the connector calls it, byte for byte like cloudflared.

Like the control stream's sessions (:mod:`adit.protocol.rpc`) they are sans-IO:
``receive_data(bytes) -> list[event]`` and ``data_to_send() -> bytes``, raising
:class:`~adit.protocol.errors.RpcProtocolError` when the peer breaks the protocol. The stream's
6-byte RPC signature is not theirs to read or write.
"""

from __future__ import annotations

from adit.protocol.errors import RpcProtocolError
from adit.protocol.quic_rpc_client import CloudflaredClientSession, SessionManagerClientSession
from adit.protocol.quic_rpc_codec import (
    CONFIGURATION_MANAGER_INTERFACE_ID,
    SESSION_MANAGER_INTERFACE_ID,
    IPAddress,
)
from adit.protocol.quic_rpc_events import (
    CloudflaredClientEvent,
    CloudflaredServerEvent,
    ConfigurationUpdated,
    RegisterUdpSessionCalled,
    SessionManagerClientEvent,
    SessionManagerServerEvent,
    UdpSessionRegistered,
    UnregisterUdpSessionCalled,
    UpdateConfigurationCalled,
)
from adit.protocol.quic_rpc_server import CloudflaredServerSession, SessionManagerServerSession
from adit.protocol.rpc_client import SHUTDOWN_REASON
from adit.protocol.rpc_events import CallFailed, CallReturned, RpcAborted

__all__ = [
    "CONFIGURATION_MANAGER_INTERFACE_ID",
    "SESSION_MANAGER_INTERFACE_ID",
    "SHUTDOWN_REASON",
    "CallFailed",
    "CallReturned",
    "CloudflaredClientEvent",
    "CloudflaredClientSession",
    "CloudflaredServerEvent",
    "CloudflaredServerSession",
    "ConfigurationUpdated",
    "IPAddress",
    "RegisterUdpSessionCalled",
    "RpcAborted",
    "RpcProtocolError",
    "SessionManagerClientEvent",
    "SessionManagerClientSession",
    "SessionManagerServerEvent",
    "SessionManagerServerSession",
    "UdpSessionRegistered",
    "UnregisterUdpSessionCalled",
    "UpdateConfigurationCalled",
]
