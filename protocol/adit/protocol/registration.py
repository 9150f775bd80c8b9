"""Values exchanged by `registerConnection` (cloudflared's tunnelrpc.capnp, PROTOCOL.md §3.1).

Plain frozen values: the RPC engine (``rpc``) turns them into Cap'n Proto and back; the edge and
the connector only ever see these.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from adit.protocol.values import Value

__all__ = [
    "ClientInfo",
    "ConnectionDetails",
    "ConnectionOptions",
    "RegistrationError",
    "RegistrationResult",
    "TunnelAuth",
]


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
    """A refused registration; ``cause == "EDUPCONN"`` means a duplicate connection."""

    cause: str
    retry_after_ns: int = 0
    should_retry: bool = False


RegistrationResult = ConnectionDetails | RegistrationError
