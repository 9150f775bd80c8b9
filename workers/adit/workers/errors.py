"""Errors of the worker's origin side.

Policy is decided by type, never by message: every :class:`OriginError` happened before or
while talking to an origin and costs only the one request (502 before the response started,
a stream reset after). Each class carries a ``hint`` an operator can act on.
"""

from __future__ import annotations

__all__ = [
    "OriginConnectTimeout",
    "OriginError",
    "OriginProtocolError",
    "OriginTLSError",
    "OriginUnreachable",
    "UnsupportedService",
]

UNREACHABLE_MESSAGE = (
    "Unable to reach the origin service. The service may be down or it may not be "
    "responding to traffic from cloudflared"
)


class OriginError(Exception):
    """Base: the request to the origin failed; only this request is affected."""

    hint = "check that the origin service is running and reachable from the connector"


class OriginUnreachable(OriginError):
    """No connection to the origin could be made (refused, reset, DNS failure...)."""


class OriginConnectTimeout(OriginUnreachable):
    """The TCP (or unix socket) connect did not finish within ``connectTimeout``."""

    hint = "the origin did not accept the connection in time; raise originRequest.connectTimeout"


class OriginTLSError(OriginUnreachable):
    """The TLS handshake failed or exceeded ``tlsTimeout``."""

    hint = (
        "the TLS handshake with the origin failed; check originServerName, add the origin's CA "
        "with originRequest.caPool, or set originRequest.noTLSVerify"
    )


class OriginProtocolError(OriginError):
    """The origin broke HTTP/1.1 or closed the connection before the response ended."""

    hint = "the origin sent an invalid or truncated HTTP/1.1 response"


class UnsupportedService(OriginError):
    """The rule's service kind is not served by this version of the worker."""

    hint = "this service type (TCP over WebSocket, bastion, socks-proxy) arrives in a later release"
