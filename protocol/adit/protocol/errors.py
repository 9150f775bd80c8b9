"""Errors of the wire protocol. Every one means: the peer broke the protocol; fail that peer.

A daemon catches :class:`ProtocolError` around each connection and never dies of one.
(Shared file: the RPC layer adds its own subclasses below.)
"""

from __future__ import annotations

__all__ = ["HeaderDecodeError", "Http2TunnelError", "ProtocolError"]


class ProtocolError(Exception):
    """Base class: the remote side sent something this protocol does not allow."""


class HeaderDecodeError(ProtocolError):
    """A serialised header value (``cf-cloudflared-*-headers``) could not be decoded."""


class Http2TunnelError(ProtocolError):
    """The HTTP/2 layer of a tunnel connection failed (bad frames, bad headers)."""
