"""Errors of the wire protocol. Every one means: the peer broke the protocol; fail that peer.

A daemon catches :class:`ProtocolError` around each connection and never dies of one.
(Shared file: the RPC layer adds its own subclasses below.)
"""

from __future__ import annotations

__all__ = [
    "BadRequestTarget",
    "FramingError",
    "HeaderDecodeError",
    "Http2TunnelError",
    "ProtocolError",
    "ProtocolUsageError",
    "RpcProtocolError",
]


class ProtocolError(Exception):
    """Base class: the remote side sent something this protocol does not allow."""


class HeaderDecodeError(ProtocolError):
    """A serialised header value (``cf-cloudflared-*-headers``) could not be decoded."""


class BadRequestTarget(ProtocolError):
    """An eyeball's request target is not one unambiguous path of the host it is sent to
    (:mod:`adit.protocol.request_target`): the edge answers 400 and forwards nothing."""


class Http2TunnelError(ProtocolError):
    """The HTTP/2 layer of a tunnel connection failed (bad frames, bad headers)."""


class RpcProtocolError(ProtocolError):
    """The peer's Cap'n Proto RPC byte stream is malformed or breaks the RPC rules."""


class FramingError(RpcProtocolError):
    """A Cap'n Proto stream-framing header is absurd (too many or too large segments)."""


class ProtocolUsageError(Exception):
    """Our own code used a protocol object in a way its state does not allow.

    Deliberately not a :class:`ProtocolError`: it is a bug on this side, not the peer's fault, and
    must not be mistaken for (and silently handled as) a misbehaving peer.
    """
