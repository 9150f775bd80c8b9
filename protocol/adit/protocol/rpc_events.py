"""Events produced by the registration RPC sessions (:mod:`adit.protocol.rpc`)."""

from __future__ import annotations

import uuid
from typing import ClassVar

from adit.protocol.registration import ConnectionOptions, RegistrationResult, TunnelAuth
from adit.protocol.values import Value

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


class RegisterConnectionCalled(Value, frozen=True):
    """The connector called ``registerConnection``; answer with ``answer_register``."""

    answer_id: int
    auth: TunnelAuth
    tunnel_id: uuid.UUID
    conn_index: int
    options: ConnectionOptions


class UnregisterConnectionCalled(Value, frozen=True):
    """The connector is shutting down gracefully; answer with ``answer_empty``."""

    answer_id: int


class UpdateLocalConfigurationCalled(Value, frozen=True):
    """The connector reported its local configuration (JSON); answer with ``answer_empty``."""

    answer_id: int
    config: bytes

    hidden_in_repr: ClassVar[frozenset[str]] = frozenset({"config"})


class RpcAborted(Value, frozen=True):
    """The peer sent ``Abort``: the RPC connection is over."""

    reason: str


class RegistrationReturned(Value, frozen=True):
    """The edge answered ``registerConnection`` (success or a registration error)."""

    result: RegistrationResult


class RegistrationFailed(Value, frozen=True):
    """``registerConnection`` (or the bootstrap it was pipelined on) raised an RPC exception."""

    reason: str


class CallReturned(Value, frozen=True):
    """A call on the registration capability returned normally."""

    question_id: int


class CallFailed(Value, frozen=True):
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
