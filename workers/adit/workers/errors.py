"""Errors of the worker's origin side.

Policy is decided by type, never by message: every :class:`OriginError` happened before or
while talking to an origin and costs only the one request (502 before the response started,
a stream reset after). Each class carries a ``hint`` an operator can act on.
"""

from __future__ import annotations

__all__ = [
    "BastionDestinationMissing",
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
    """Base: the request to the origin failed; only this request is affected.

    ``reason`` names the failure for the edge's error page (header
    ``adit-origin-error``); empty when no specific page applies.
    """

    hint = "check that the origin service is running and reachable from the connector"
    reason = ""


class OriginUnreachable(OriginError):
    """No connection to the origin could be made (refused, reset, DNS failure...)."""

    reason = "refused"


class OriginConnectTimeout(OriginUnreachable):
    """The TCP (or unix socket) connect did not finish within ``connectTimeout``."""

    hint = "the origin did not accept the connection in time; raise originRequest.connectTimeout"
    reason = "timeout"


class OriginTLSError(OriginUnreachable):
    """The TLS handshake failed or exceeded ``tlsTimeout``."""

    hint = (
        "the TLS handshake with the origin failed; check originServerName, add the origin's CA "
        "with originRequest.caPool, or set originRequest.noTLSVerify"
    )
    reason = "tls"


class OriginProtocolError(OriginError):
    """The origin broke HTTP/1.1 or closed the connection before the response ended."""

    hint = "the origin sent an invalid or truncated HTTP/1.1 response"


class UnsupportedService(OriginError):
    """The request cannot be served by the rule's kind of service."""

    hint = "TCP services take WebSocket clients such as `adit access tcp`"


class BastionDestinationMissing(OriginError):
    """A bastion rule got a stream without ``Cf-Access-Jump-Destination``."""

    hint = "run the client with --destination host:port"
