"""Events of the QUIC transport's RPC stream sessions (:mod:`adit.protocol.quic_rpc`).

Calls that return nothing report :class:`~adit.protocol.rpc_events.CallReturned`, failed calls
:class:`~adit.protocol.rpc_events.CallFailed`, and the peer's Abort
:class:`~adit.protocol.rpc_events.RpcAborted`, as on the control stream.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from adit.protocol.quic_rpc_codec import IPAddress
from adit.protocol.rpc_events import CallFailed, CallReturned, RpcAborted
from adit.protocol.values import Value

__all__ = [
    "CloudflaredClientEvent",
    "CloudflaredServerEvent",
    "ConfigurationUpdated",
    "RegisterUdpSessionCalled",
    "SessionManagerClientEvent",
    "SessionManagerServerEvent",
    "UdpSessionRegistered",
    "UnregisterUdpSessionCalled",
    "UpdateConfigurationCalled",
]


class RegisterUdpSessionCalled(Value, frozen=True):
    """The edge asks the connector to proxy a UDP session (datagram v2, §6.1); answer with
    ``answer_register_udp`` once the origin socket is up (or could not be opened).

    ``close_after_idle`` is in seconds; 0 means cloudflared's default (210 s).
    """

    answer_id: int
    session_id: uuid.UUID
    dst_ip: IPAddress
    dst_port: int
    close_after_idle: float
    trace_context: str


class UnregisterUdpSessionCalled(Value, frozen=True):
    """The peer ended a UDP session and says why; answer with ``answer_empty``."""

    answer_id: int
    session_id: uuid.UUID
    message: str


class UpdateConfigurationCalled(Value, frozen=True):
    """The edge pushes remote configuration ``version`` (JSON, §4.6.2); answer with
    ``answer_update_configuration``."""

    answer_id: int
    version: int
    config: bytes

    hidden_in_repr: ClassVar[frozenset[str]] = frozenset({"config"})


class UdpSessionRegistered(Value, frozen=True):
    """The connector answered ``registerUdpSession``: ``error`` is None when the session is up.

    ``spans`` are the connector's protobuf OTLP spans of a traced registration.
    """

    question_id: int
    error: str | None
    spans: bytes = b""

    hidden_in_repr: ClassVar[frozenset[str]] = frozenset({"spans"})


class ConfigurationUpdated(Value, frozen=True):
    """The connector answered ``updateConfiguration``: the version it now runs, and ``error``
    (None on success) when the pushed one was not applied."""

    question_id: int
    latest_applied_version: int
    error: str | None


CloudflaredServerEvent = (
    RegisterUdpSessionCalled | UnregisterUdpSessionCalled | UpdateConfigurationCalled | RpcAborted
)
"""What :class:`~adit.protocol.quic_rpc.CloudflaredServerSession` reports."""

SessionManagerServerEvent = UnregisterUdpSessionCalled | RpcAborted
"""What :class:`~adit.protocol.quic_rpc.SessionManagerServerSession` reports."""

SessionManagerClientEvent = UdpSessionRegistered | CallReturned | CallFailed | RpcAborted
"""What :class:`~adit.protocol.quic_rpc.SessionManagerClientSession` reports."""

CloudflaredClientEvent = SessionManagerClientEvent | ConfigurationUpdated
"""What :class:`~adit.protocol.quic_rpc.CloudflaredClientSession` reports."""
