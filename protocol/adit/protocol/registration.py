"""Values exchanged by `registerConnection` (cloudflared's tunnelrpc.capnp, PROTOCOL.md §3.1).

Plain frozen values: the RPC engine (``rpc``) turns them into Cap'n Proto and back; the edge and
the connector only ever see these.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from adit.protocol.values import Value

__all__ = [
    "DUPLICATE_CONNECTION",
    "ClientInfo",
    "ConnectionDetails",
    "ConnectionOptions",
    "DuplicateConnection",
    "PermanentRefusal",
    "RegistrationError",
    "RegistrationRefusal",
    "RegistrationResult",
    "TemporaryRefusal",
    "TunnelAuth",
]

#: The cause an edge gives for a connection index this connector already holds there
#: (cloudflared's ``connection.DuplicateConnectionError``).
DUPLICATE_CONNECTION = "EDUPCONN"


class TunnelAuth(Value, frozen=True):
    """What proves a connector may serve a tunnel: the account tag and the tunnel secret."""

    account_tag: str
    tunnel_secret: bytes

    hidden_in_repr: ClassVar[frozenset[str]] = frozenset({"tunnel_secret"})


class ClientInfo(Value, frozen=True):
    """The connector process: a random id per process, features, version, ``GOOS_GOARCH``."""

    client_id: uuid.UUID
    features: tuple[str, ...]
    version: str
    arch: str


class ConnectionOptions(Value, frozen=True):
    """Per-connection options sent with ``registerConnection``."""

    client: ClientInfo
    origin_local_ip: bytes = b""
    replace_existing: bool = False
    compression_quality: int = 0
    num_previous_attempts: int = 0


class ConnectionDetails(Value, frozen=True):
    """A successful registration: the edge's connection id and its location name."""

    uuid: uuid.UUID
    location_name: str
    tunnel_is_remotely_managed: bool = False


class RegistrationError(Value, frozen=True):
    """A refused registration as the wire carries it; :meth:`refusal` gives its meaning."""

    cause: str
    retry_after_ns: int = 0
    should_retry: bool = False

    def refusal(self) -> RegistrationRefusal:
        """The typed refusal: the one place the wire's cause and flags are interpreted."""
        if self.cause == DUPLICATE_CONNECTION:
            return DuplicateConnection(self.cause)
        if self.should_retry:
            return TemporaryRefusal(self.cause, max(0, self.retry_after_ns) / 1e9)
        return PermanentRefusal(self.cause)


class RegistrationRefusal(Exception):
    """The edge refused ``registerConnection``; the class says what the connector does next.

    ``retry_after`` (seconds) is the edge's own wait before the next attempt (0: none given).
    """

    #: Trying again with the same credentials can succeed.
    retryable: ClassVar[bool] = True
    #: The next attempt should dial another edge address.
    try_another_address: ClassVar[bool] = False
    #: ``cloudflared_tunnel_tunnel_register_fail``'s ``error`` label.
    metric_label: ClassVar[str] = "server_error"

    def __init__(self, cause: str, retry_after: float = 0.0) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


class DuplicateConnection(RegistrationRefusal):
    """This connection index is already registered at that edge (``EDUPCONN``): another
    address may take it (cloudflared's ``DupConnRegisterTunnelError``)."""

    try_another_address = True
    metric_label = "dup_edge_conn"


class TemporaryRefusal(RegistrationRefusal):
    """``should_retry``: the edge cannot register now; try again after ``retry_after``."""


class PermanentRefusal(RegistrationRefusal):
    """Not ``should_retry``: the same credentials will be refused again (cloudflared's
    ``ServerRegisterTunnelError`` with ``Permanent``); only new settings can change that."""

    retryable = False


RegistrationResult = ConnectionDetails | RegistrationError
