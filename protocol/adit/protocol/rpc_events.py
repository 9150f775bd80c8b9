"""Events produced by the registration RPC sessions (:mod:`adit.protocol.rpc`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from adit.protocol.registration import ConnectionOptions, RegistrationResult, TunnelAuth

__all__ = [
    "CallFailed",
    "CallReturned",
    "ClientEvent",
    "RegisterConnectionCalled",
    "RegistrationFailed",
    "RegistrationReturned",
    "RpcAborted",
    "ServerEvent",
    "UnregisterConnectionCalled",
    "UpdateLocalConfigurationCalled",
]


@dataclass(frozen=True, slots=True)
class RegisterConnectionCalled:
    """The connector called ``registerConnection``; answer with ``answer_register``."""

    answer_id: int
    auth: TunnelAuth
    tunnel_id: uuid.UUID
    conn_index: int
    options: ConnectionOptions


@dataclass(frozen=True, slots=True)
class UnregisterConnectionCalled:
    """The connector is shutting down gracefully; answer with ``answer_empty``."""

    answer_id: int


@dataclass(frozen=True, slots=True)
class UpdateLocalConfigurationCalled:
    """The connector reported its local configuration (JSON); answer with ``answer_empty``."""

    answer_id: int
    config: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RpcAborted:
    """The peer sent ``Abort``: the RPC connection is over."""

    reason: str


@dataclass(frozen=True, slots=True)
class RegistrationReturned:
    """The edge answered ``registerConnection`` (success or a registration error)."""

    result: RegistrationResult


@dataclass(frozen=True, slots=True)
class RegistrationFailed:
    """``registerConnection`` (or the bootstrap it was pipelined on) raised an RPC exception."""

    reason: str


@dataclass(frozen=True, slots=True)
class CallReturned:
    """A call on the registration capability returned normally."""

    question_id: int


@dataclass(frozen=True, slots=True)
class CallFailed:
    """A call on the registration capability raised an RPC exception."""

    question_id: int
    reason: str


ServerEvent = (
    RegisterConnectionCalled
    | UnregisterConnectionCalled
    | UpdateLocalConfigurationCalled
    | RpcAborted
)
"""What :class:`~adit.protocol.rpc.RegistrationServerSession` reports."""

ClientEvent = RegistrationReturned | RegistrationFailed | CallReturned | CallFailed | RpcAborted
"""What :class:`~adit.protocol.rpc.RegistrationClientSession` reports."""
